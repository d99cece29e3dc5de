"""Fixtures: throwaway databases on both backends and the stack as real processes.

PostgreSQL tests run against a real server: the local one (trust auth) or the
one `TITANIUM_TEST_POSTGRES_URL` names. Each run creates its own databases
and drops them at the end. No server means a failed run, never a skipped one.

Only fixtures and the marking hook live here; the plain helpers they use (and the
tests import) are modules of tests/support/.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from support.checkout import Checkout
from support.database import BACKENDS
from support.inprocess import Served, running, served, sqlite_settings
from support.ports import free_port
from support.postgres import PrivateServer, SharedServer
from support.stack import RunningStack, start_stack
from titanium.config import Settings
from titanium.security.tokens import generate_key_pair
from titanium.services.blog.app import create_app as create_blog
from titanium.services.users.app import create_app as create_users
from titanium.web.client import Downstream, open_downstream


@pytest.fixture(scope="session")
def postgres() -> Iterator[SharedServer]:
    """The PostgreSQL server of this test run (tests/support/postgres.py)."""
    server = SharedServer()
    try:
        server.execute("SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {server.url.render_as_string()} ({exc}). "
            "Start the local server (pg_ctlcluster 15 main start) or set "
            "TITANIUM_TEST_POSTGRES_URL=postgresql://USER:PASSWORD@HOST:PORT/postgres",
            pytrace=False,
        )
    yield server
    server.drop_all()


@pytest.fixture
def anyio_backend() -> str:
    """The in-process tests' event loop: aiohttp, between the services, runs on asyncio only."""
    return "asyncio"


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
    postgres: SharedServer, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, str]]:
    """Factory: the environment of a fresh, empty database on a backend."""

    def make(backend: str) -> dict[str, str]:
        if backend == "postgresql":
            return postgres.env(postgres.create_database())
        return {"USE_POSTGRES": "false", "DATA_DIR": str(tmp_path_factory.mktemp("sqlite"))}

    return make


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


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Settings:
    """One SQLite installation (both schemas at head) per test module; a module may override it."""
    return sqlite_settings(tmp_path_factory.mktemp("installation"), keys)


@pytest.fixture(scope="module")
def user_service(installation: Settings) -> Iterator[Served]:
    """user-service on the module's installation, served on a free port for its callers."""
    with served(create_users(installation)) as server:
        yield server


@pytest.fixture
async def users_pool(user_service: Served) -> AsyncIterator[Downstream]:
    """A keep-alive pool to the served user-service, owned by the test."""
    pool = open_downstream("user-service", user_service.url, timeout_seconds=5)
    yield pool
    await pool.close()


@pytest.fixture
async def blog(installation: Settings, users_pool: Downstream) -> AsyncIterator[httpx.AsyncClient]:
    """blog-service in-process on the module's installation, calling the served user-service."""
    async with running(create_blog(installation, downstreams={"users": users_pool})) as client:
        yield client


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


# What a test needs follows from the fixtures it uses (directly or through other
# fixtures: `database_env` asks for `postgres`), so no test carries the markers
# by hand. A file that needs a tool throughout says so with a `pytestmark`.
MARKERS_BY_FIXTURE = {
    "live": ("stack",),
    "postgres": ("postgres",),
    "private_postgres": ("postgres",),
    "checkout": ("infra",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with what it needs: `make test-fast` deselects stack, postgres, ui, infra."""
    for item in items:
        needs = {
            marker
            for fixture in getattr(item, "fixturenames", ())
            for marker in MARKERS_BY_FIXTURE.get(fixture, ())
        }
        for marker in sorted(needs):
            item.add_marker(marker)
