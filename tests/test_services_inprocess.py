"""user-, auth- and blog-service in the test process, on a temporary SQLite installation.

user-service calls nobody, so it runs through ASGI alone. auth- and blog-service
call user-service over HTTP (aiohttp), so they get a real one: the same app,
served by uvicorn on 127.0.0.1 in a background thread. Nothing is mocked.
"""

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.inprocess import (
    PASSWORD,
    Served,
    bearer,
    refused_url,
    register,
    running,
    served,
    sqlite_settings,
)
from titanium.config import Settings
from titanium.security.tokens import TokenVerifier
from titanium.services.auth.app import create_app as create_auth
from titanium.services.blog.app import create_app as create_blog
from titanium.services.users.app import create_app as create_users
from titanium.web.client import Downstream, open_downstream

pytestmark = pytest.mark.anyio

LONG_CONTENT = "word " * 40  # 200 characters: the list shows an excerpt


@pytest.fixture
async def users_app(installation: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """user-service in-process, on the module's installation."""
    async with running(create_users(installation)) as client:
        yield client


@pytest.fixture
async def auth(installation: Settings, users_pool: Downstream) -> AsyncIterator[httpx.AsyncClient]:
    """auth-service in-process, calling the served user-service."""
    async with running(create_auth(installation, downstreams={"users": users_pool})) as client:
        yield client


def failed(response: httpx.Response, status: int) -> str:
    """The message of an error answer, after checking its shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "failed"
    assert body["detail"] == body["message"]
    return str(body["message"])


# user-service, through ASGI only


async def test_registration_and_profiles(
    users_app: httpx.AsyncClient, installation: Settings
) -> None:
    account = await register(users_app)
    assert set(account) == {"id", "username", "email", "created_at"}
    public = await users_app.get(f"/api/users/{account['username']}")
    assert public.status_code == 200
    assert set(public.json()) == {"id", "username", "created_at"}
    own = await users_app.get("/api/users/me", headers=bearer(installation, account))
    assert own.json()["email"] == account["email"]
    again = await users_app.post(
        "/api/users",
        json={"username": account["username"], "email": "x@example.com", "password": PASSWORD},
    )
    assert failed(again, 409) == "username already taken"
    assert failed(await users_app.get("/api/users/nobody_here"), 404) == "no such user"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "me", "email": "me@example.com", "password": PASSWORD}, "username"),
        ({"username": "a b c", "email": "ab@example.com", "password": PASSWORD}, "username"),
        ({"username": "shortpw", "email": "s@example.com", "password": "1234567"}, "password"),
        ({"username": "bademail", "email": "no-at-sign", "password": PASSWORD}, "email"),
        (
            {"username": "extra", "email": "e@example.com", "password": PASSWORD, "admin": 1},
            "admin",
        ),
    ],
)
async def test_invalid_registrations_are_422_naming_the_field(
    users_app: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await users_app.post("/api/users", json=body)
    failed(response, 422)
    assert [error["field"] for error in response.json()["errors"]] == [field]


async def test_credential_check_answers_the_same_for_unknown_user_and_wrong_password(
    users_app: httpx.AsyncClient,
) -> None:
    account = await register(users_app)
    right = await users_app.post(
        "/internal/credentials", json={"username": account["username"], "password": PASSWORD}
    )
    assert right.json() == {"id": account["id"], "username": account["username"]}
    wrong = await users_app.post(
        "/internal/credentials", json={"username": account["username"], "password": "nope"}
    )
    unknown = await users_app.post(
        "/internal/credentials", json={"username": "ghost_x", "password": PASSWORD}
    )
    assert failed(wrong, 401) == failed(unknown, 401) == "invalid username or password"


async def test_ready_only_when_the_schema_is_at_head(
    users_app: httpx.AsyncClient, tmp_path: Path, keys: dict[str, str]
) -> None:
    assert (await users_app.get("/ready")).json()["status"] == "ready"
    empty = sqlite_settings(tmp_path, keys, schema=False)
    async with running(create_users(empty)) as unmigrated:
        response = await unmigrated.get("/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert (await unmigrated.get("/health")).status_code == 200


async def test_request_ids_are_kept_made_and_logged(
    users_app: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="titanium.request"):
        kept = await users_app.get("/health", headers={"X-Request-ID": "trace-7"})
        made = await users_app.get("/api/users/nobody_here", headers={"X-Request-ID": "a b"})
    assert kept.headers["x-request-id"] == "trace-7"
    made_id = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made_id)
    lines = [record.getMessage() for record in caplog.records]
    trace = r" trace=[0-9a-f]{32}"
    assert re.fullmatch(r"GET /health 200 \d+\.\dms rid=trace-7" + trace, lines[0])
    made_line = rf"GET /api/users/nobody_here 404 \d+\.\dms rid={made_id}" + trace
    assert re.fullmatch(made_line, lines[1])


async def test_oversized_bodies_and_nul_in_urls_are_refused_first(
    installation: Settings,
) -> None:
    limited = installation.model_copy(update={"max_body_bytes": 1024})
    async with running(create_users(limited)) as users:
        big = await users.post("/api/users", content=b"{" + b" " * 2000 + b"}")
        assert failed(big, 413) == "request body too large"
        assert big.headers["x-request-id"]
        nul = await users.get("/api/users/a%00b")
        assert failed(nul, 422) == "NUL characters are not allowed in URLs"


# auth-service, with user-service served


async def test_login_issues_a_token_the_other_services_accept(
    auth: httpx.AsyncClient, user_service: Served, installation: Settings
) -> None:
    account = await register(user_service.url)
    response = await auth.post(
        "/api/login", json={"username": account["username"], "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token"] == body["access_token"]
    assert (body["token_type"], body["expires_in"]) == ("bearer", installation.jwt_ttl_seconds)
    assert body["user"] == {"id": account["id"], "username": account["username"]}
    identity = TokenVerifier(installation).verify(body["token"])
    assert (identity.user_id, identity.username) == (account["id"], account["username"])
    verified = await auth.get("/verify", headers={"Authorization": f"Bearer {body['token']}"})
    assert verified.json()["data"]["username"] == account["username"]
    assert failed(await auth.get("/verify"), 401) == "a Bearer token is required"


async def test_login_failures_look_the_same(auth: httpx.AsyncClient, user_service: Served) -> None:
    account = await register(user_service.url)
    wrong = await auth.post("/api/login", json={"username": account["username"], "password": "x"})
    unknown = await auth.post("/api/login", json={"username": "ghost_y", "password": PASSWORD})
    assert failed(wrong, 401) == failed(unknown, 401) == "invalid username or password"
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"


@pytest.fixture
def fresh_installation(tmp_path: Path, keys: dict[str, str]) -> Settings:
    """An installation of its own: the login budgets a test spends stay out of the others'."""
    return sqlite_settings(tmp_path, keys)


@asynccontextmanager
async def throttled_login(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """auth-service over a user-service of its own: the login budgets are user-service's."""
    with served(create_users(settings)) as users:
        pool = open_downstream("user-service", users.url, timeout_seconds=5)
        try:
            async with running(create_auth(settings, downstreams={"users": pool})) as auth:
                yield auth, users.url
        finally:
            await pool.close()


async def test_login_is_throttled_per_username_even_with_the_right_password(
    fresh_installation: Settings,
) -> None:
    settings = fresh_installation.model_copy(update={"login_max_failures_per_user": 2})
    async with throttled_login(settings) as (auth, users_url):
        victim, bystander = await register(users_url), await register(users_url)
        for _ in range(2):
            wrong = {"username": victim["username"], "password": "wrong"}
            assert (await auth.post("/api/login", json=wrong)).status_code == 401
        right = {"username": victim["username"].upper(), "password": PASSWORD}
        throttled = await auth.post("/api/login", json=right)
        assert failed(throttled, 429) == "too many failed logins, retry later"
        assert 1 <= int(throttled.headers["retry-after"]) <= settings.login_failure_window_seconds
        other = {"username": bystander["username"], "password": PASSWORD}
        assert (await auth.post("/api/login", json=other)).status_code == 200


async def test_login_is_throttled_per_client_by_the_address_the_gateway_appended(
    fresh_installation: Settings,
) -> None:
    settings = fresh_installation.model_copy(update={"login_max_failures_per_client": 2})
    async with throttled_login(settings) as (auth, users_url):
        account = await register(users_url)
        right = {"username": account["username"], "password": PASSWORD}
        for spoofed in ("1.1.1.1", "2.2.2.2"):
            # The first entries are the client's own claims; the last is the gateway's.
            headers = {"X-Forwarded-For": f"{spoofed}, 10.0.0.1"}
            wrong = {"username": f"ghost_{spoofed}", "password": "x"}
            assert (await auth.post("/api/login", json=wrong, headers=headers)).status_code == 401
        headers = {"X-Forwarded-For": "3.3.3.3,10.0.0.1"}
        failed(await auth.post("/api/login", json=right, headers=headers), 429)
        elsewhere = {"X-Forwarded-For": "10.0.0.2"}
        assert (await auth.post("/api/login", json=right, headers=elsewhere)).status_code == 200


async def test_auth_without_user_service_is_503_and_unready(installation: Settings) -> None:
    holder, url = refused_url()
    pool = open_downstream("user-service", url, timeout_seconds=5)
    try:
        async with running(create_auth(installation, downstreams={"users": pool})) as auth:
            login = await auth.post("/api/login", json={"username": "a", "password": "b"})
            ready = await auth.get("/ready")
            health = await auth.get("/health")
    finally:
        holder.close()
        await pool.close()
    assert failed(login, 503) == "user-service is unreachable"
    assert login.headers["retry-after"] == "1"
    assert ready.status_code == 503
    assert health.status_code == 200


async def test_an_injected_pool_is_left_open_and_an_own_one_closed(
    installation: Settings, users_pool: Downstream, user_service: Served
) -> None:
    account = await register(user_service.url)
    login = {"username": account["username"], "password": PASSWORD}
    injected = create_auth(installation, downstreams={"users": users_pool})
    async with running(injected) as auth:
        assert injected.state.users is users_pool
        assert (await auth.post("/api/login", json=login)).status_code == 200
    assert not users_pool.session.closed
    own = create_auth(installation.model_copy(update={"user_service_url": user_service.url}))
    async with running(own) as auth:
        opened: Downstream = own.state.users
        assert opened is not users_pool
        assert (await auth.post("/api/login", json=login)).status_code == 200
    assert opened.session.closed


# blog-service, with user-service served


async def test_a_post_from_creation_to_deletion(
    blog: httpx.AsyncClient, user_service: Served, installation: Settings
) -> None:
    author = await register(user_service.url, "author")
    headers = bearer(installation, author)
    body = {"title": "Hello", "content": LONG_CONTENT, "category_name": "Tech Stack"}
    created = await blog.post("/blog/api/posts", json=body, headers=headers)
    assert created.status_code == 201, created.text
    post = created.json()
    assert (post["author"], post["category"]["slug"]) == (author["username"], "tech-stack")
    listed = await blog.get("/blog/api/posts", params={"author": author["username"]})
    assert listed.headers["x-total-count"] == "1"
    [summary] = listed.json()
    assert summary["excerpt"] == LONG_CONTENT[:120] + "..."
    assert "content" not in summary
    by_category = await blog.get("/blog/api/posts", params={"category": "tech-stack"})
    assert post["id"] in [p["id"] for p in by_category.json()]
    changed = await blog.patch(
        f"/blog/api/posts/{post['id']}", json={"title": "Hello again"}, headers=headers
    )
    assert changed.json()["title"] == "Hello again"
    assert changed.json()["content"] == LONG_CONTENT
    deleted = await blog.delete(f"/blog/api/posts/{post['id']}", headers=headers)
    assert deleted.status_code == 204
    failed(await blog.get(f"/blog/api/posts/{post['id']}"), 404)


async def test_only_the_author_changes_a_post(
    blog: httpx.AsyncClient, user_service: Served, installation: Settings
) -> None:
    author, other = await register(user_service.url), await register(user_service.url)
    created = await blog.post(
        "/blog/api/posts", json={"title": "Mine", "content": "c"},
        headers=bearer(installation, author),
    )  # fmt: skip
    url = f"/blog/api/posts/{created.json()['id']}"
    intruder = bearer(installation, other)
    patch = await blog.patch(url, json={"title": "Yours"}, headers=intruder)
    assert failed(patch, 403) == "only the author may change this post"
    failed(await blog.delete(url, headers=intruder), 403)
    assert (await blog.get(url)).json()["title"] == "Mine"


async def test_writes_need_a_token_of_an_account_that_still_exists(
    blog: httpx.AsyncClient, user_service: Served, installation: Settings
) -> None:
    post = {"title": "t", "content": "c"}
    failed(await blog.post("/blog/api/posts", json=post), 401)
    gone = await register(user_service.url)
    headers = bearer(installation, gone)
    async with httpx.AsyncClient(base_url=user_service.url) as users:
        assert (await users.delete("/api/users/me", headers=headers)).status_code == 204
    refused = await blog.post("/blog/api/posts", json=post, headers=headers)
    assert failed(refused, 401) == "the user of this token no longer exists"
    # A valid signature on a name the id does not have: stale too.
    renamed = bearer(
        installation, {"id": (await register(user_service.url))["id"], "username": "x"}
    )
    failed(await blog.post("/blog/api/posts", json=post, headers=renamed), 401)


async def test_without_user_service_reads_work_and_writes_are_503(
    installation: Settings, user_service: Served
) -> None:
    author = await register(user_service.url)
    holder, url = refused_url()
    pool = open_downstream("user-service", url, timeout_seconds=5)
    try:
        async with running(create_blog(installation, downstreams={"users": pool})) as blog:
            write = await blog.post(
                "/blog/api/posts", json={"title": "t", "content": "c"},
                headers=bearer(installation, author),
            )  # fmt: skip
            read = await blog.get("/blog/api/posts")
    finally:
        holder.close()
        await pool.close()
    assert failed(write, 503) == "user-service is unreachable"
    assert read.status_code == 200


async def test_the_cache_is_emptied_by_writes_here_and_in_another_replica(
    installation: Settings, users_pool: Downstream, user_service: Served
) -> None:
    author = await register(user_service.url)
    headers = bearer(installation, author)
    mine = {"author": author["username"]}
    first = create_blog(installation, downstreams={"users": users_pool})
    second = create_blog(installation, downstreams={"users": users_pool})
    async with running(first) as one, running(second) as other:
        assert (await one.get("/blog/api/posts", params=mine)).json() == []
        assert (await one.get("/blog/api/posts", params=mine)).json() == []  # now cached
        assert first.state.cache.get(("list", 0, 20, None, author["username"])) is not None
        created = await one.post(
            "/blog/api/posts", json={"title": "one", "content": "c"}, headers=headers
        )
        assert [p["title"] for p in (await one.get("/blog/api/posts", params=mine)).json()] == [
            "one"
        ]
        # Written through the other replica: this one notices at its next read.
        await other.patch(
            f"/blog/api/posts/{created.json()['id']}", json={"title": "two"}, headers=headers
        )
        assert [p["title"] for p in (await one.get("/blog/api/posts", params=mine)).json()] == [
            "two"
        ]
    assert not users_pool.session.closed
