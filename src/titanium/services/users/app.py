"""user-service: accounts, profiles and the internal credential check for auth-service."""

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Path, Request, Response, status

from titanium.config import ServiceName, Settings
from titanium.contracts import ACCOUNT_PATH, CREDENTIALS_PATH, Credentials, VerifiedUser
from titanium.db.engine import Database
from titanium.db.revisions import check_schema
from titanium.db.tables import INTEGER_MAX
from titanium.errors import Forbidden, NotFound, Unauthorized
from titanium.security import passwords
from titanium.security.ratelimit import Budget, LoginThrottle, Throttle
from titanium.security.tokens import TokenVerifier
from titanium.security.usernames import key_or_none
from titanium.services.users.repository import User, UserRepository
from titanium.services.users.schemas import (
    OwnProfile,
    PublicProfile,
    Registration,
)
from titanium.web.auth import CurrentIdentity
from titanium.web.clients import client_address, is_internal
from titanium.web.metrics import Metric, counter, gauge, gauge_family, pool_families
from titanium.web.service import install_common, service_app

if TYPE_CHECKING:
    # Only for the signature: user-service never loads the HTTP client (memory budget).
    from titanium.web.client import Downstream

# Each argon2 hash takes 12 MiB for a few tens of ms; one at a time keeps the
# process under its 120 MB budget (more logins per second come from more replicas).
HASHING_CONCURRENCY = 1


class HashingGate:
    """At most `capacity` hashes at once; a waiting login goes before waiting registrations.

    A priority rather than a second slot: a slot of its own for logins would
    add a 12 MiB hash to a peak already near the memory budget.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._logins: deque[asyncio.Future[None]] = deque()
        self._registrations: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def slot(self, *, login: bool) -> AsyncIterator[None]:
        """Hold a hashing slot for the block; logins are served first, each class in order."""
        if self._free and not self._logins and not self._registrations:
            self._free -= 1
        else:
            turn = asyncio.get_running_loop().create_future()
            (self._logins if login else self._registrations).append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._hand_on()  # handed the slot just as it was cancelled
                raise
        try:
            yield
        finally:
            self._hand_on()

    @property
    def in_use(self) -> int:
        """Hashes running now."""
        return self.capacity - self._free

    def waiting(self) -> dict[str, int]:
        """Hashes queued, by kind (a cancelled waiter still queued is not counted)."""
        return {
            "login": sum(not turn.done() for turn in self._logins),
            "registration": sum(not turn.done() for turn in self._registrations),
        }

    def _hand_on(self) -> None:
        for queue in (self._logins, self._registrations):
            while queue:
                turn = queue.popleft()
                if not turn.done():  # a cancelled waiter is skipped
                    turn.set_result(None)
                    return
        self._free += 1


async def _repository(request: Request) -> UserRepository:
    return UserRepository(request.app.state.db)


Users = Annotated[UserRepository, Depends(_repository)]


async def _internal_caller(request: Request) -> None:
    # 403 whether the token is missing or wrong: auth-service reads a 401 from the
    # credential check as "wrong password", and a misconfigured token must show as
    # a 503 at login, not as users who suddenly cannot log in.
    token = request.app.state.internal_token
    if token is not None and not is_internal(request, token):
        raise Forbidden("only Titanium's services may call internal routes")


# On every /internal route; resolved before the body is used, so a refused call
# costs no password check and learns nothing about accounts.
InternalOnly = Depends(_internal_caller)


async def _hash_in_thread(request: Request, func: Any, *args: Any, login: bool) -> Any:
    gate: HashingGate = request.app.state.hash_gate
    async with gate.slot(login=login):
        return await anyio.to_thread.run_sync(func, *args)


def create_app(
    settings: Settings, *, downstreams: Mapping[ServiceName, "Downstream"] | None = None
) -> FastAPI:
    """Build user-service; configuration errors surface here, before serving."""
    # A leaf, it calls no service: `downstreams` is there so that every factory
    # has the one signature `app_factory` hands out.
    del downstreams
    db = Database(settings, "users")
    verifier = TokenVerifier(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.hash_gate = HashingGate(HASHING_CONCURRENCY)
        yield
        await db.dispose()

    app = service_app("users", lifespan)
    app.state.db = db
    app.state.verifier = verifier
    app.state.internal_token = settings.internal_token
    # Both throttles keep their counts in this service's database, shared by
    # every replica (security/ratelimit.py).
    app.state.logins = LoginThrottle(db, settings)
    app.state.registrations = Throttle(db, "too many registrations, retry later")
    app.state.registration_budget = Budget(
        "registration", settings.registration_max_per_client, settings.registration_window_seconds
    )

    async def ready(_request: Request) -> dict[str, Any]:
        return await check_schema(db)

    async def stats(_request: Request) -> dict[str, Any]:
        return {"database": db.backend, "users": await UserRepository(db).count()}

    def collect() -> list[Metric]:
        families = pool_families(db.gates())
        families.append(
            counter(
                "titanium_registrations_throttled",
                "Registrations refused by the per-client limit",
                app.state.registrations.refused,
            )
        )
        gate: HashingGate | None = getattr(app.state, "hash_gate", None)
        if gate is not None:  # made by the lifespan, on the serving event loop
            families.append(gauge("titanium_hashing_in_use", "argon2 hashes running", gate.in_use))
            families.append(
                gauge_family(
                    "titanium_hashing_waiting", "argon2 hashes queued", "kind", gate.waiting()
                )
            )
        return families

    install_common(
        app, service="users", settings=settings, ready=ready, stats=stats, collect=collect
    )
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.post(
        "/api/register",
        status_code=status.HTTP_201_CREATED,
        response_model=OwnProfile,
        summary="Register (the old clients' path)",
    )
    @app.post(
        "/api/users",
        status_code=status.HTTP_201_CREATED,
        response_model=OwnProfile,
        summary="Register",
    )
    async def register(body: Registration, repo: Users, request: Request) -> User:
        registrations: Throttle = request.app.state.registrations
        client = client_address(request, request.app.state.internal_token)
        gate: HashingGate = request.app.state.hash_gate
        async with gate.slot(login=False):
            # Counted in its turn, before hashing: a refused registration costs no
            # argon2 work, and a flood's counting writes queue behind the slot one
            # at a time instead of ahead of the logins' writes.
            await registrations.attempt([(request.app.state.registration_budget, client)])
            password_hash = await anyio.to_thread.run_sync(passwords.hash_password, body.password)
        return await repo.create(body.username, body.email, password_hash)

    @app.get("/api/users/me", response_model=OwnProfile, summary="Own profile")
    async def me(identity: CurrentIdentity, repo: Users) -> User:
        user = await repo.by_id(identity.user_id)
        if user is None:
            # The account behind a still-valid token is gone.
            raise Unauthorized("the user of this token no longer exists")
        return user

    @app.delete(
        "/api/users/me",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        summary="Delete own account (posts stay, under the old name)",
    )
    async def delete_me(identity: CurrentIdentity, repo: Users) -> Response:
        if not await repo.delete(identity.user_id):
            raise Unauthorized("the user of this token no longer exists")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/api/users/{username}", response_model=PublicProfile, summary="Public profile")
    async def profile(username: str, repo: Users) -> User:
        user = await repo.by_username(username)
        if user is None:
            raise NotFound("no such user")
        return user

    @app.get(
        ACCOUNT_PATH,
        response_model=VerifiedUser,
        summary="Does this account exist? (blog-service only; never routed by the gateway)",
        dependencies=[InternalOnly],
    )
    async def account(user_id: Annotated[int, Path(ge=1, le=INTEGER_MAX)], repo: Users) -> User:
        user = await repo.by_id(user_id)
        if user is None:
            raise NotFound("no such user")
        return user

    @app.post(
        CREDENTIALS_PATH,
        response_model=VerifiedUser,
        summary="Check a password (auth-service only; never routed by the gateway)",
        dependencies=[InternalOnly],
    )
    async def check_credentials(body: Credentials, repo: Users, request: Request) -> User:
        logins: LoginThrottle = request.app.state.logins
        # auth-service passes the client on in X-Forwarded-For, trusted with the token.
        client = client_address(request, request.app.state.internal_token)
        account = throttle_account(body.username)
        # Counted before the password is checked, in the database every replica
        # shares: parallel guesses cannot all pass a budget that only completed
        # failures would have used up, on this replica or another.
        attempt = await logins.attempt(account, client)
        user = await repo.by_username(body.username)
        stored = user.password_hash if user else passwords.DUMMY_HASH
        valid = await _hash_in_thread(
            request, passwords.verify_password, body.password, stored, login=True
        )
        if user is None or not valid:
            raise Unauthorized("invalid username or password")
        await logins.succeeded(attempt, account, client)
        if passwords.needs_rehash(stored):
            new_hash = await _hash_in_thread(
                request, passwords.hash_password, body.password, login=True
            )
            await repo.set_password_hash(user.id, new_hash)
        return user


def throttle_account(username: str) -> str:
    """The account a login names, as the throttle counts it: look-alike spellings are one.

    A name the username policy refuses still counts, under its own spelling.
    """
    return key_or_none(username) or username
