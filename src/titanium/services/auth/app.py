"""auth-service: logs users in and verifies tokens. It owns no database.

Credentials are checked, and login attempts throttled, by user-service's
internal route (the throttle's counts live in its database, shared by every
replica); only this service holds the private key, so only it can mint tokens.
"""

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from pydantic import BaseModel

from titanium.config import ServiceName, Settings
from titanium.contracts import CREDENTIALS_PATH, Credentials, VerifiedUser
from titanium.errors import NotReady, RateLimited, Unauthorized, Unavailable
from titanium.security.tokens import TokenIssuer, TokenVerifier
from titanium.web.auth import CurrentIdentity
from titanium.web.client import Downstream, forward_headers, service_pools
from titanium.web.clients import client_address
from titanium.web.metrics import Metric, counter_family
from titanium.web.service import install_common, service_app


class LoginResult(BaseModel):
    """A successful login: `token` for the old clients, OAuth2-style fields for new ones."""

    status: str = "success"
    token: str
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - a token type, not a secret
    expires_in: int
    user: VerifiedUser


class VerifiedToken(BaseModel):
    """What a valid token says."""

    user_id: int
    username: str
    exp: int


class VerifyResult(BaseModel):
    """The old clients' /verify answer."""

    status: str = "success"
    data: VerifiedToken


def create_app(
    settings: Settings, *, downstreams: Mapping[ServiceName, Downstream] | None = None
) -> FastAPI:
    """Build auth-service (given `downstreams` stay the caller's); config errors surface here."""
    issuer = TokenIssuer(settings)
    verifier = TokenVerifier(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_pools(settings, ["users"], downstreams) as pools:
            app.state.users = pools["users"]
            yield

    app = service_app("auth", lifespan)
    app.state.verifier = verifier

    async def ready(request: Request) -> dict[str, Any]:
        users: Downstream = request.app.state.users
        if await users.alive():
            return {"user_service": "ok"}
        raise NotReady(f"{users.name} is unreachable", reason="downstream")

    outcomes = dict.fromkeys(("success", "failure", "throttled"), 0)

    def collect() -> list[Metric]:
        return [counter_family("titanium_login_attempts", "Login decisions", "outcome", outcomes)]

    install_common(app, service="auth", settings=settings, ready=ready, collect=collect)

    @app.post("/api/login", response_model=LoginResult, summary="Log in and get a token")
    async def login(body: Credentials, request: Request) -> LoginResult:
        client = client_address(request, settings.internal_token)
        try:
            user = await _check_credentials(request.app.state.users, body, client)
        except RateLimited:
            outcomes["throttled"] += 1
            raise
        if user is None:
            outcomes["failure"] += 1
            # Same answer for an unknown user and a wrong password.
            raise Unauthorized("invalid username or password")
        outcomes["success"] += 1
        token = issuer.issue(user.id, user.username)
        return LoginResult(
            token=token, access_token=token, expires_in=issuer.ttl_seconds, user=user
        )

    @app.get("/verify", response_model=VerifyResult, summary="Check a token")
    async def verify(identity: CurrentIdentity) -> VerifyResult:
        return VerifyResult(
            data=VerifiedToken(
                user_id=identity.user_id, username=identity.username, exp=identity.expires_at
            )
        )

    return app


async def _check_credentials(
    users: Downstream, body: Credentials, client: str
) -> VerifiedUser | None:
    """The account if the password is right, None if not; RateLimited, Unavailable."""
    # The client goes on as the gateway's entry would: user-service throttles by it.
    headers = {**forward_headers(), "X-Forwarded-For": client}
    try:
        async with users.session.post(
            users.url(CREDENTIALS_PATH), json=body.model_dump(), headers=headers
        ) as response:
            if response.status == 200:
                return VerifiedUser.model_validate(await response.json())
            if response.status in (401, 422):
                return None
            if response.status == 429:
                refused = await response.json()
                retry_after = int(response.headers.get("Retry-After", "1"))
                raise RateLimited(str(refused.get("message")), retry_after)
            raise Unavailable(f"{users.name} answered {response.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(f"{users.name} is unreachable") from exc
