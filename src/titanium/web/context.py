"""The request id of the request being handled, for logs and outgoing calls."""

import re
import secrets
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"
_VALID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


def new_request_id(incoming: str | None) -> str:
    """Keep a well-formed incoming id (a caller's trace), otherwise make one."""
    # fullmatch: `$` alone would also accept a trailing newline (a forged log line).
    if incoming and _VALID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)
