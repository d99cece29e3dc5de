"""Fixtures: throwaway databases on both backends and the stack as real processes.

PostgreSQL tests run against a real server: the local one (trust auth) or the
one `TITANIUM_TEST_POSTGRES_URL` names. Each run creates its own databases
and drops them at the end. No server means a failed run, never a skipped one.
"""

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from support.checkout import Checkout
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
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    """A clean clone of this tree, sealed to a throwaway age key (tests/support/checkout.py)."""
    return Checkout.create(tmp_path_factory.mktemp("checkout"))


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


class PrivateServer:
    """A PostgreSQL instance of this test run only: its own data directory, port and password."""

    def __init__(self, root: Path, port: int, password: str) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.password = password
        self.bin = (
            Path("/usr/lib/postgresql") / sorted(os.listdir("/usr/lib/postgresql"))[-1] / "bin"
        )

    def _as_postgres(self, *command: str) -> subprocess.CompletedProcess[str]:
        # initdb and pg_ctl refuse to run as root.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=60, check=True
        )

    def init(self) -> None:
        """Create the cluster with password (scram) authentication."""
        password_file = self.root / "pw"
        password_file.write_text(self.password)
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=scram-sha-256", f"--pwfile={password_file}",
        )  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server (fast: open sessions are cut)."""
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
        )

    async def connect(self, database: str = "postgres") -> asyncpg.Connection:
        """An admin connection to one of this server's databases."""
        return await asyncpg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.password,
            database=database,
        )

    def create_database(self) -> str:
        """A new empty database on this server; returns its name."""
        name = f"titanium_test_{uuid.uuid4().hex[:12]}"

        async def create() -> None:
            conn = await self.connect()
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return name

    def backend_pids(self, database: str) -> list[int]:
        """Process ids of the server backends connected to `database`."""

        async def query() -> list[int]:
            conn = await self.connect()
            try:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )
            finally:
                await conn.close()
            return [row["pid"] for row in rows]

        return asyncio.run(query())

    def env(self, database: str = "postgres", password: str | None = None) -> dict[str, str]:
        """Environment pointing a service at this server."""
        return {
            "USE_POSTGRES": "true",
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_DB": database,
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": password or self.password,
        }


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivateServer]:
    """A PostgreSQL server the tests may stop, freeze or misconfigure at will."""
    root = Path(tempfile.mkdtemp(prefix="titanium-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PrivateServer(root, free_port(), uuid.uuid4().hex)
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
