"""Who is calling: another Titanium service or not, and the client address to throttle by."""

import hmac

from pydantic import SecretStr
from starlette.requests import Request

# Carries INTERNAL_TOKEN on every call between services and on every request the
# gateway relays; the gateway drops a client's own copy (services/gateway/app.py).
INTERNAL_HEADER = "X-Titanium-Internal"


def internal_headers(token: SecretStr | None) -> dict[str, str]:
    """The header that marks a call as coming from a Titanium service (none without a token)."""
    return {INTERNAL_HEADER: token.get_secret_value()} if token is not None else {}


def is_internal(request: Request, token: SecretStr) -> bool:
    """True when the request carries the internal token (compared in constant time)."""
    sent = request.headers.get(INTERNAL_HEADER)
    if sent is None:
        return False
    return hmac.compare_digest(sent.encode("latin-1"), token.get_secret_value().encode())


def client_address(request: Request, token: SecretStr | None = None) -> str:
    """The caller's address: the entry the gateway appended to X-Forwarded-For, if any.

    X-Forwarded-For counts only on a request that carries the internal token, i.e.
    one the gateway relayed; anyone else who reaches the port directly is throttled
    by the socket's peer address. Without a token configured (INTERNAL_TOKEN unset)
    the header is taken as it is, as before service authentication existed.
    """
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and (token is None or is_internal(request, token)):
        return forwarded.rsplit(",", 1)[-1].strip()
    return request.client.host if request.client else "unknown"
