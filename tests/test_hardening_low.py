"""The low-severity hardening findings, one regression test (or a few) each.

The services run in-process on one SQLite installation, served by uvicorn where
the gateway calls them; the gateway runs through ASGI, or served for real where
a test needs a socket of its own (a client that hangs up mid-body).
"""

import asyncio
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import aiohttp
import httpx
import pytest
from starlette.types import ASGIApp

from support.database import BACKENDS
from support.env import settings_for
from support.inprocess import Served, gateway_over, served, sqlite_settings
from support.wait import wait_until
from titanium.config import ServiceName, Settings
from titanium.db.engine import Database
from titanium.db.migrations import upgrade_schema
from titanium.db.tables import CATEGORY_NAME_MAX, CATEGORY_SLUG_MAX
from titanium.services.auth.app import create_app as create_auth
from titanium.services.blog.app import create_app as create_blog
from titanium.services.blog.repository import BlogRepository, CategoryChoice
from titanium.services.gateway.app import _public_location
from titanium.services.gateway.app import create_app as create_gateway
from titanium.services.users.app import create_app as create_users
from titanium.web.client import Downstream

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Settings:
    """One SQLite installation (both schemas at head) for the services of this module."""
    return sqlite_settings(tmp_path_factory.mktemp("hardening"), keys)


@pytest.fixture(scope="module")
def services(installation: Settings) -> Iterator[dict[ServiceName, Served]]:
    """The three services, each served on its own port."""
    apps: dict[ServiceName, ASGIApp] = {
        "auth": create_auth(installation),
        "users": create_users(installation),
        "blog": create_blog(installation),
    }
    with ExitStack() as stack:
        yield {key: stack.enter_context(served(app)) for key, app in apps.items()}


@pytest.fixture
async def gateway(
    installation: Settings, services: dict[ServiceName, Served]
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process, its downstreams the served services."""
    async with gateway_over(installation, {k: s.url for k, s in services.items()}) as client:
        yield client


# 1. Category slugs that case folding makes longer than the column.


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_slug_lengthened_by_case_folding_fits_its_column(
    backend: str, database_env: Callable[[str], dict[str, str]], keys: dict[str, str]
) -> None:
    settings = settings_for({**database_env(backend), **keys})
    name = "İ" * CATEGORY_NAME_MAX  # lower-cased: "i" and a combining dot each

    async def create_twice() -> list[dict[str, Any]]:
        await upgrade_schema(settings, "blog")
        db = Database(settings, "blog")
        try:
            repo = BlogRepository(db)
            choice = CategoryChoice(name=name)
            first = await repo.create_post("author", 1, "t", "c", choice)
            second = await repo.create_post("author", 1, "t", "c", choice)
            category_id = first["category"]["id"]
            assert second["category"]["id"] == category_id
            return [c for c in await repo.list_categories() if c["id"] == category_id]
        finally:
            await db.dispose()

    [category] = asyncio.run(create_twice())
    assert category["name"] == name
    assert category["slug"] == "-".join("i" * 25)
    assert len(category["slug"]) <= CATEGORY_SLUG_MAX


# 2. Redirects naming a service's internal address.


async def test_a_trailing_slash_redirect_names_the_public_path_only(
    gateway: httpx.AsyncClient, services: dict[ServiceName, Served]
) -> None:
    response = await gateway.get("/blog/api/posts/?limit=5")
    assert response.status_code == 307
    assert response.headers["location"] == "/blog/api/posts?limit=5"
    for server in services.values():
        assert server.url.removeprefix("http://") not in response.headers["location"]


@pytest.mark.parametrize(
    ("location", "public"),
    [
        ("http://blog-service:8005/blog/api/posts?x=1#top", "/blog/api/posts?x=1#top"),
        ("https://blog-service:9/a%2Fb", "/a%2Fb"),  # any scheme or port on that host
        ("//blog-service:8005/blog/", "/blog/"),
        ("http://blog-service:8005", "/"),
        ("/blog/", "/blog/"),  # a path already
        ("posts/1", "posts/1"),
        ("https://example.com/blog/", "https://example.com/blog/"),  # another site
        ("http://[not a url", "http://[not a url"),
    ],
)
def test_locations_on_the_downstream_become_public_paths(location: str, public: str) -> None:
    downstream = address_only("http://blog-service:8005")
    assert _public_location(location.encode(), downstream) == public.encode()


def address_only(base_url: str) -> Downstream:
    """A downstream that is only an address: the Location policy opens no connection."""
    return Downstream("blog-service", base_url, session=cast(aiohttp.ClientSession, None))


# 3. CR/LF in a decoded path forging request log lines.


async def test_control_characters_in_a_path_are_escaped_in_its_log_line(
    gateway: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="titanium.request")
    await gateway.get("/blog/x%0d%0a2026-01-01 INFO gateway titanium.request: GET /forged%1b[2J")
    [record] = [r for r in caplog.records if r.name == "titanium.request"]
    line = record.getMessage()
    assert not any(ord(char) < 0x20 for char in line), line
    assert line.startswith("GET /blog/x\\x0d\\x0a2026-01-01 INFO gateway")
    assert "/forged\\x1b[2J 404 " in line


# 4. /metrics and /stats are for operators, not the public.


@pytest.mark.parametrize(
    "path",
    [
        "/blog/metrics",
        "/blog/stats",
        "/blog/api/metrics",
        "/api/users/metrics",
        "/api/users/stats",
        "/api/login/metrics",
    ],
)
async def test_no_service_metrics_or_stats_through_the_gateway(
    gateway: httpx.AsyncClient, path: str
) -> None:
    response = await gateway.get(path)
    assert response.status_code == 404, response.text
    assert "http_requests" not in response.text


@pytest.mark.parametrize("path", ["/metrics", "/stats"])
@pytest.mark.parametrize(
    "forwarded",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
    ],
)
async def test_the_gateway_own_metrics_and_stats_are_not_served_through_a_proxy(
    gateway: httpx.AsyncClient, path: str, forwarded: dict[str, str]
) -> None:
    # What an ingress or load balancer in front of the gateway adds to every request.
    response = await gateway.get(path, headers=forwarded)
    assert response.status_code == 404, response.text
    assert response.json()["status"] == "failed"


async def test_each_process_still_serves_its_metrics_to_a_direct_scrape(
    gateway: httpx.AsyncClient, services: dict[ServiceName, Served]
) -> None:
    assert "http_requests_total" in (await gateway.get("/metrics")).text
    assert (await gateway.get("/stats")).json()["service"] == "api-gateway"
    async with httpx.AsyncClient(timeout=10) as client:
        for server in services.values():
            assert "http_requests_total" in (await client.get(f"{server.url}/metrics")).text
            assert (await client.get(f"{server.url}/stats")).status_code == 200


# 5. A client that hangs up before its declared body is complete.


def test_a_client_gone_mid_body_is_one_log_line_and_no_server_error(
    installation: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    uvicorn_log = logging.getLogger("uvicorn.error")  # does not propagate to the root
    uvicorn_log.addHandler(caplog.handler)
    try:
        with served(create_gateway(installation)) as gateway:
            host, port = gateway.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                raw.sendall(
                    b"POST /blog/api/posts HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n0123456789"
                )

            def logged() -> list[logging.LogRecord]:
                return [r for r in caplog.records if r.name == "titanium.request"]

            wait_until(lambda: bool(logged()), 5, "the request's log line", interval=0.05)
            metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    [line] = [r.getMessage() for r in logged() if "/blog/api/posts" in r.getMessage()]
    assert line.startswith("POST /blog/api/posts 499 ")
    assert line.endswith(" client disconnected")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert 'status="500"' not in metrics
    assert 'route="/blog/{rest:path}",status="499"' in metrics


# 6. SQLite files readable by their owner only.


async def test_a_fresh_sqlite_database_and_its_wal_files_are_private(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    previous = os.umask(0o022)  # the usual one, which leaves new files 0644
    try:
        settings = sqlite_settings(tmp_path, keys, schema=False)
        db = Database(settings, "blog")
        try:
            async with db.write() as conn:
                await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            async with db.read() as conn:
                await conn.exec_driver_sql("SELECT * FROM t")
                path = settings.sqlite_path("blog")
                files = [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm")]
                modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
        finally:
            await db.dispose()
    finally:
        os.umask(previous)
    assert modes == {f.name: 0o600 for f in files}


# 7. Two Authorization headers: the gateway would relay the last, a service read the first.


async def test_two_authorization_headers_are_refused_at_the_gateway(
    gateway: httpx.AsyncClient,
) -> None:
    headers = [("Authorization", "Bearer first"), ("Authorization", "Bearer second")]
    response = await gateway.post("/blog/api/posts", headers=headers, json={})
    assert response.status_code == 400
    assert response.json()["message"] == "more than one Authorization header"
    one = await gateway.post("/blog/api/posts", headers=headers[:1], json={})
    assert one.status_code == 401  # a single (bad) token still reaches the service
