"""Service-to-service authentication: INTERNAL_TOKEN on every internal call.

user-service's /internal routes answer only callers holding the token, and never
check a password for anyone else; X-Forwarded-For counts only on a request that
carries it (one the gateway relayed); the gateway never passes a client's own copy
on. The stack's four services are real processes (`titanium serve`, started by the
same `Stack` as `titanium run`, which makes the throwaway token); the gateway runs
in-process where the test must choose the client's address.
"""

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

from support.inprocess import CLIENT, running, served, sqlite_settings
from support.stack import RunningStack, start_stack
from titanium.config import Settings, load_settings
from titanium.errors import ConfigError
from titanium.security import passwords
from titanium.services.gateway.app import create_app as create_gateway
from titanium.services.users.app import create_app as create_users
from titanium.web.clients import INTERNAL_HEADER

PASSWORD = "correct horse"
TOKEN = "t" * 40


@pytest.fixture(scope="module")
def stack(
    database_env: Callable[[str], dict[str, str]],
    keys: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningStack]:
    """The four services on SQLite, with a per-client login budget small enough to reach."""
    env = {**database_env("sqlite"), **keys, "LOGIN_MAX_FAILURES_PER_CLIENT": "3"}
    running_stack = RunningStack(start_stack(env, tmp_path_factory.mktemp("logs")), "sqlite", env)
    yield running_stack
    running_stack.client.close()
    running_stack.stack.stop()


def account(stack: RunningStack) -> dict[str, Any]:
    username = f"int_{uuid.uuid4().hex[:10]}"
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    created = stack.client.post("/api/register", json=body)
    assert created.status_code == 201, created.text
    return {"id": created.json()["id"], "username": username}


def refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["status"] == "failed"
    assert body["message"] == body["detail"] == "only Titanium's services may call internal routes"
    assert "username" not in response.text


@pytest.fixture
def guarded_users(tmp_path: Path, keys: dict[str, str]) -> Settings:
    """A fresh SQLite installation whose user-service holds TOKEN."""
    return sqlite_settings(tmp_path, keys, internal_token=TOKEN)


@pytest.mark.stack
def test_internal_routes_refuse_callers_without_the_token(stack: RunningStack) -> None:
    user = account(stack)
    credentials = {"username": user["username"], "password": PASSWORD}
    with stack.service("users", internal=False) as anyone:
        for headers in ({}, {INTERNAL_HEADER: "x" * 43}, {INTERNAL_HEADER: ""}):
            refused(anyone.post("/internal/credentials", json=credentials, headers=headers))
            refused(anyone.get(f"/internal/users/{user['id']}", headers=headers))
    with stack.service("users") as fellow:
        checked = fellow.post("/internal/credentials", json=credentials)
        assert checked.json() == {"id": user["id"], "username": user["username"]}
        found = fellow.get(f"/internal/users/{user['id']}")
        assert found.json() == {"id": user["id"], "username": user["username"]}


@pytest.mark.anyio
async def test_a_refused_credential_check_evaluates_no_password(
    guarded_users: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = guarded_users
    verified: list[str] = []
    real_verify = passwords.verify_password

    def spy(password: str, stored: str) -> bool:
        verified.append(password)
        return real_verify(password, stored)

    monkeypatch.setattr(passwords, "verify_password", spy)
    async with running(create_users(settings)) as users:
        body = {"username": "someone_x", "email": "someone@example.com", "password": PASSWORD}
        assert (await users.post("/api/users", json=body)).status_code == 201
        guess = {"username": "someone_x", "password": "guess"}
        for headers in ({}, {INTERNAL_HEADER: TOKEN[:-1] + "u"}):
            refused(await users.post("/internal/credentials", json=guess, headers=headers))
        assert verified == []
        right = {"username": "someone_x", "password": PASSWORD}
        answer = await users.post(
            "/internal/credentials", json=right, headers={INTERNAL_HEADER: TOKEN}
        )
        assert answer.status_code == 200, answer.text
        assert verified == [PASSWORD]


def login(client: httpx.Client, headers: dict[str, str]) -> int:
    body = {"username": f"nobody_{uuid.uuid4().hex[:8]}", "password": "wrong-pw"}
    return client.post("/api/login", json=body, headers=headers).status_code


@pytest.mark.stack
def test_auth_throttles_a_direct_caller_by_its_socket_not_its_forwarded_for(
    stack: RunningStack,
) -> None:
    with stack.service("auth", internal=False) as anyone:
        # Each guess claims another address; all of them come from 127.0.0.1.
        forged = [login(anyone, {"X-Forwarded-For": f"192.0.2.{n}"}) for n in range(4)]
    assert forged == [401, 401, 401, 429]
    with stack.service("auth") as gateway_like:
        # With the token, the last X-Forwarded-For entry is the client: a fresh budget.
        honoured = [
            login(gateway_like, {"X-Forwarded-For": f"10.1.0.1, 198.18.0.{n}"}) for n in range(4)
        ]
    assert honoured == [401] * 4


@pytest.mark.anyio
@pytest.mark.stack
async def test_auth_throttles_by_the_address_the_gateway_saw(stack: RunningStack) -> None:
    settings = stack.settings.model_copy(
        update={
            "auth_service_url": stack.stack.url("auth"),
            "user_service_url": stack.stack.url("users"),
            "blog_service_url": stack.stack.url("blog"),
            "internal_token": SecretStr(stack.stack.internal_token),
        }
    )
    body = {"username": f"nobody_{uuid.uuid4().hex[:8]}", "password": "wrong-pw"}
    # The gateway in-process, so the client has an address of its own (CLIENT[0]).
    async with running(create_gateway(settings), client=CLIENT) as gateway:
        through = [(await gateway.post("/api/login", json=body)).status_code for _ in range(4)]
    assert through == [401, 401, 401, 429]
    # The budget spent was CLIENT[0]'s, not that of the gateway's own address.
    with stack.service("auth") as gateway_like:
        assert login(gateway_like, {"X-Forwarded-For": "198.18.1.1"}) == 401
        assert login(gateway_like, {"X-Forwarded-For": CLIENT[0]}) == 429


class Echo:
    """A stand-in for every service: answers with the request headers it received."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        body = json.dumps(headers).encode()
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.anyio
async def test_the_gateway_replaces_a_client_sent_internal_header(tmp_path: Path) -> None:
    with served(Echo(), "off") as echo:
        settings = Settings(
            use_postgres=False,
            database_path=None,
            data_dir=tmp_path,
            internal_token=TOKEN,
            user_service_url=echo.url,
            auth_service_url=echo.url,
            blog_service_url=echo.url,
        )
        async with running(create_gateway(settings)) as gateway:
            for path in ("/api/users/alice", "/api/login", "/blog/api/posts"):
                sent = {INTERNAL_HEADER: "forged-by-the-client-" + "x" * 20}
                answer = await gateway.get(path, headers=sent)
                seen = [v for k, v in answer.json() if k == INTERNAL_HEADER.lower()]
                assert seen == [TOKEN], (path, seen)


@pytest.mark.parametrize(
    "value", ["short", "replace-with-a-random-token", "has spaces in it but is long enough"]
)
def test_a_weak_or_placeholder_token_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTERNAL_TOKEN", value)
    with pytest.raises(ConfigError, match="INTERNAL_TOKEN"):
        load_settings()
