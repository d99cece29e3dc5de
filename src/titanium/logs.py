"""Log format of every Titanium process: one line per event, service name included."""

import logging


def configure_logging(level: str, service: str) -> None:
    """Send logs to stderr as `time level service logger: message`."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        force=True,
    )
    # Alembic narrates every context it opens; the readiness probe opens one per call.
    logging.getLogger("alembic").setLevel(logging.WARNING)
