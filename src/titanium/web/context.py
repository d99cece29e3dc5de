"""The request id and the trace span of the request being handled, for logs and outgoing calls."""

import re
import secrets
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from titanium.web.tracing import Span

REQUEST_ID_HEADER = "x-request-id"
_VALID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# The server span of the request being handled (its trace id goes in the logs); None outside.
span_var: "ContextVar[Span | None]" = ContextVar("span", default=None)


def new_request_id(incoming: str | None) -> str:
    """Keep a well-formed incoming id (a caller's trace), otherwise make one."""
    # fullmatch: `$` alone would also accept a trailing newline (a forged log line).
    if incoming and _VALID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)
