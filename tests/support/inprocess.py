"""Services inside the test process: driven through ASGI, or served on 127.0.0.1 by uvicorn.

`httpx.ASGITransport` calls an app directly but sends it no lifespan events, so
`running` enters the app's lifespan itself (asgi-lifespan is not installed).
A service that another one calls over HTTP (through aiohttp) is served for real
by `Served`: uvicorn in a background thread, on a port the OS picked.
"""

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from titanium.config import ServiceName, Settings
from titanium.db.migrations import upgrade_schema
from titanium.security.tokens import TokenIssuer
from titanium.services.gateway.app import create_app as create_gateway
from titanium.services.registry import DATA_SERVICES, service_name
from titanium.web.client import open_downstream

START_SECONDS = 10.0
# The password of every account `register` makes.
PASSWORD = "correct horse"
STOP_SECONDS = 10.0
# What ASGITransport reports as the caller; an address no test machine has, so a
# test can tell it from 127.0.0.1 (the address of every served service).
CLIENT = ("198.51.100.7", 50123)


def sqlite_settings(
    directory: Path, keys: Mapping[str, str], *, schema: bool = True, **overrides: Any
) -> Settings:
    """Settings of a fresh SQLite installation in `directory`, with the schema applied.

    Every field a developer's environment could change under the test
    (USE_POSTGRES, DATABASE_PATH...) is given here; `overrides` win. With
    `schema=False` the databases are left empty, as before `titanium db upgrade`.
    """
    fields: dict[str, Any] = {
        "use_postgres": False,
        "database_path": None,
        "data_dir": directory,
        **{name.lower(): value for name, value in keys.items()},
        **overrides,
    }
    settings = Settings(**fields)
    for service in DATA_SERVICES if schema else ():
        asyncio.run(upgrade_schema(settings, service))
    return settings


@asynccontextmanager
async def running(
    app: Starlette, client: tuple[str, int] = CLIENT
) -> AsyncIterator[httpx.AsyncClient]:
    """`app` through its lifespan, with a client calling it in-process (no socket)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=10
        ) as http:
            yield http


def refused_url() -> tuple[socket.socket, str]:
    """A URL on 127.0.0.1 where connections are refused, and the socket that keeps it so.

    Bound but not listening: nothing else can take the port while the socket is open.
    """
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    return holder, f"http://127.0.0.1:{holder.getsockname()[1]}"


class Served:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: ASGIApp, lifespan: Literal["on", "off"] = "on") -> None:
        # Bound here and handed to uvicorn: no window in which another process
        # could take the port between choosing and listening.
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(
            app, loop="asyncio", lifespan=lifespan, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> None:
        """Serve, and return once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server for {self.url} stopped while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.url} did not start within {START_SECONDS}s")
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut the server down (its app's lifespan ends) and wait for the thread."""
        self.server.should_exit = True
        self._thread.join(STOP_SECONDS)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"{self.url} did not stop within {STOP_SECONDS}s")


@contextmanager
def served(app: ASGIApp, lifespan: Literal["on", "off"] = "on") -> Iterator[Served]:
    """`app` served on a free 127.0.0.1 port for the duration of the block."""
    server = Served(app, lifespan)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def gateway_over(
    settings: Settings, urls: Mapping[ServiceName, str], *, timeout_seconds: float = 5.0
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process, with a keep-alive pool to each URL in `urls` (closed after)."""
    downstreams = {
        key: open_downstream(service_name(key), url, timeout_seconds=timeout_seconds)
        for key, url in urls.items()
    }
    try:
        async with running(create_gateway(settings, downstreams=downstreams)) as client:
            yield client
    finally:
        for downstream in downstreams.values():
            await downstream.close()


async def register(
    users: httpx.AsyncClient | str, prefix: str = "user", *, username: str | None = None
) -> dict[str, Any]:
    """A new account on user-service (a client, or its served URL): id, username, email.

    Named `username` when given, else `prefix` and a random suffix.
    """
    username = username or f"{prefix}_{uuid.uuid4().hex[:10]}"
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    if isinstance(users, str):
        async with httpx.AsyncClient(base_url=users, timeout=10) as client:
            response = await client.post("/api/users", json=body)
    else:
        response = await users.post("/api/users", json=body)
    assert response.status_code == 201, response.text
    account: dict[str, Any] = response.json()
    return account


def bearer(settings: Settings, account: dict[str, Any]) -> dict[str, str]:
    """Authorization header with a token auth-service would issue for `account`."""
    token = TokenIssuer(settings).issue(account["id"], account["username"])
    return {"Authorization": f"Bearer {token}"}
