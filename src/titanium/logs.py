"""Log format of every Titanium process: one line per event, service name included.

`line` is for people (`time level service logger: message`); `json` is one JSON
object per line for a log pipeline (Promtail, Alloy), with the request's ids and,
on the request line, its method, path, route, status and duration as fields.
"""

import json
import logging
import re
import time
from typing import Literal

from titanium.web.context import request_id_var, span_var

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: each
# could end a log line early or move the cursor where a reader sees the log.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# What the request log line passes in `extra=`, in the order a JSON line shows them.
REQUEST_FIELDS = ("method", "path", "route", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object: time (RFC 3339, UTC), level, service, logger, message.

    In a request, also its request_id and trace_id; the fields of REQUEST_FIELDS
    when the record carries them. ASCII only: every control character (a CR/LF a
    client sent included) is an escape, so one record stays one line.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        request_id = fields.get("request_id") or request_id_var.get()
        if request_id != "-":
            entry["request_id"] = request_id
        trace_id = fields.get("trace_id")
        if trace_id is None and (span := span_var.get()) is not None:
            trace_id = span.trace_id
        if trace_id is not None:
            entry["trace_id"] = trace_id
        for name in REQUEST_FIELDS:
            if name in fields:
                entry[name] = fields[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def configure_logging(
    level: str, service: str, log_format: Literal["line", "json"] = "line"
) -> None:
    """Send logs to stderr: as `time level service logger: message`, or as JSON lines."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Neither format shows the caller's file and line, thread or process: the
    # logging HOWTO's optimisations skip finding them, a tenth of the request line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
