"""Log format of every Titanium process: one line per event, service name included."""

import logging
import re

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: each
# could end a log line early or move the cursor where a reader sees the log.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def configure_logging(level: str, service: str) -> None:
    """Send logs to stderr as `time level service logger: message`."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        force=True,
    )
    # Alembic narrates every context it opens; the readiness probe opens one per call.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def printable(text: str) -> str:
    """`text` for a log line: control characters as `\\xNN`/`\\uNNNN`, the rest as is.

    For values a client chose (a decoded path): a CR/LF in one would otherwise
    start a line that looks like another event.
    """
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
