"""Fixtures: throwaway databases on both backends and the stack as real processes.

PostgreSQL tests run against a real server: the local one (trust auth) or the
one `TITANIUM_TEST_POSTGRES_URL` names. Each run creates its own databases
and drops them at the end. No server means a failed run, never a skipped one.
"""

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from titanium.config import Settings
from titanium.runner import Stack
from titanium.security.tokens import generate_key_pair

ADMIN_URL = os.environ.get(
    "TITANIUM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgresql"]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class PostgresServer:
    """Creates throwaway databases on the test server and drops them at the end."""

    def __init__(self) -> None:
        self.url = make_url(ADMIN_URL)
        self.created: list[str] = []

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"titanium_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return name

    def env(self, database: str) -> dict[str, str]:
        """Environment selecting PostgreSQL database `database` on this server."""
        return {
            "USE_POSTGRES": "true",
            "POSTGRES_HOST": self.url.host or "127.0.0.1",
            "POSTGRES_PORT": str(self.url.port or 5432),
            "POSTGRES_DB": database,
            "POSTGRES_USER": self.url.username or "postgres",
            # The local server trusts; any non-empty password satisfies the settings check.
            "POSTGRES_PASSWORD": self.url.password or "trust-auth",
        }

    def drop_all(self) -> None:
        """Drop every database this run created."""
        for name in self.created:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The PostgreSQL server of this test run."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {make_url(ADMIN_URL).render_as_string()} ({exc}). "
            "Start the local server (pg_ctlcluster 15 main start) or set "
            "TITANIUM_TEST_POSTGRES_URL=postgresql://USER:PASSWORD@HOST:PORT/postgres",
            pytrace=False,
        )
    server = PostgresServer()
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment naming a token key pair made for this run."""
    private, public = generate_key_pair(tmp_path_factory.mktemp("keys"))
    return {"JWT_PRIVATE_KEY_FILE": str(private), "JWT_PUBLIC_KEY_FILE": str(public)}


@pytest.fixture(scope="session")
def database_env(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, str]]:
    """Factory: the environment of a fresh, empty database on a backend."""

    def make(backend: str) -> dict[str, str]:
        if backend == "postgresql":
            return postgres.env(postgres.create_database())
        return {"USE_POSTGRES": "false", "DATA_DIR": str(tmp_path_factory.mktemp("sqlite"))}

    return make


def settings_for(env: dict[str, str]) -> Settings:
    """Settings as a process with this environment would read them."""
    return Settings(**{key.lower(): value for key, value in env.items()})


class RunningStack:
    """The four services started as processes, with an HTTP client on the gateway."""

    def __init__(self, stack: Stack, backend: str, env: dict[str, str]) -> None:
        self.stack = stack
        self.backend = backend
        self.env = env
        self.settings = settings_for(env)
        self.gateway = stack.url("gateway")
        self.client = httpx.Client(base_url=self.gateway, timeout=30)

    def service(self, name: Any) -> httpx.Client:
        """A client talking to one service directly (not through the gateway)."""
        return httpx.Client(base_url=self.stack.url(name), timeout=30)


def start_stack(env: dict[str, str], log_dir: Path) -> Stack:
    """Apply migrations and start the four services on free ports."""
    from titanium.db.migrations import SERVICES, migrate

    settings = settings_for(env)
    for service in SERVICES:
        asyncio.run(migrate(settings, service))
    ports = {name: free_port() for name in ("gateway", "users", "auth", "blog")}
    stack = Stack(env={**os.environ, **env}, ports=ports, log_dir=log_dir)  # type: ignore[arg-type]
    stack.start()
    return stack


@pytest.fixture(scope="session", params=BACKENDS)
def live(
    request: pytest.FixtureRequest,
    database_env: Callable[[str], dict[str, str]],
    keys: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningStack]:
    """The whole platform on one backend, as real processes, shared by the API tests."""
    backend: str = request.param
    env = {
        **database_env(backend),
        **keys,
        # Many tests log in from 127.0.0.1; the per-client budget is tested on its own.
        "LOGIN_MAX_FAILURES_PER_CLIENT": "50",
    }
    stack = start_stack(env, tmp_path_factory.mktemp(f"logs-{backend}"))
    running = RunningStack(stack, backend, env)
    yield running
    running.client.close()
    stack.stop()


def register(
    client: httpx.Client, username: str | None = None, password: str = "correct horse"
) -> dict[str, Any]:
    """Register a user through the gateway; returns username, password and token."""
    username = username or f"user_{uuid.uuid4().hex[:10]}"
    response = client.post(
        "/api/register",
        json={"username": username, "email": f"{username}@example.com", "password": password},
    )
    assert response.status_code == 201, response.text
    login = client.post("/api/login", json={"username": username, "password": password})
    assert login.status_code == 200, login.text
    token = login.json()["token"]
    return {
        "username": username,
        "password": password,
        "id": response.json()["id"],
        "token": token,
        "headers": {"Authorization": f"Bearer {token}"},
    }


def run_sql(settings: Settings, service: Any, statement: Any) -> list[Any]:
    """Execute one SQLAlchemy statement on a service's database, committed; return rows."""
    from titanium.db.engine import Database

    async def go() -> list[Any]:
        db = Database(settings, service)
        try:
            async with db.write() as conn:
                result = await conn.execute(statement)
                return list(result.all()) if result.returns_rows else []
        finally:
            await db.dispose()

    return asyncio.run(go())
