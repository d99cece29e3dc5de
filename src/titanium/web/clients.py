"""Who is calling: the client address every service throttles by."""

from starlette.requests import Request


def client_address(request: Request) -> str:
    """The caller's address: the entry the gateway appended to X-Forwarded-For, if any."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()
    return request.client.host if request.client else "unknown"
