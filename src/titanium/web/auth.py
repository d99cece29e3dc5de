"""The Bearer-token dependency of the services that accept signed-in users."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from titanium.errors import Unauthorized
from titanium.security.tokens import Identity, TokenVerifier

# auto_error=False: a missing token is our Unauthorized (JSON body), not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="A token from POST /api/login")
# Dependencies here are `async def` on purpose: FastAPI runs plain `def`
# dependencies in a thread pool, a thread hop on every request.


async def current_identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    """The verified identity of the caller; 401 without a valid Bearer token."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("a Bearer token is required")
    verifier: TokenVerifier = request.app.state.verifier
    return verifier.verify(credentials.credentials)


CurrentIdentity = Annotated[Identity, Depends(current_identity)]
