"""Several PostgreSQL servers in POSTGRES_HOST: the services use the writable one, and move.

Two real servers stand for a primary and its successor: this run's private server
(first in the list) and the shared one. Turning on `default_transaction_read_only`
and reloading makes the private one answer as a demoted primary does: SELECT 1 still
works on every open connection, every write fails with SQLSTATE 25006, and new
connections report it read-only. The full failover on Patroni is tests/test_failover.py.
"""

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from support.env import settings_for
from support.postgres import PrivateServer, SharedServer
from titanium.config import Settings
from titanium.db.engine import Database, connect_postgres
from titanium.db.migrations import upgrade_schema
from titanium.db.tables import categories
from titanium.errors import Unavailable
from titanium.services.blog.cache import ChangeListener, ResponseCache

Servers = tuple[PrivateServer, SharedServer]


@dataclass(frozen=True)
class Pair:
    """One database name on both servers, and settings listing the private one first."""

    private: PrivateServer
    shared: SharedServer
    database: str
    settings: Settings

    def only(self, server: PrivateServer | SharedServer) -> Settings:
        """Settings naming one of the two servers alone."""
        return settings_for(server.env(self.database, self.private.password))

    async def set_read_only(self, on: bool) -> None:
        """Demote the private server (or undo it), as a reload does to every session."""
        value = "on" if on else "off"
        admin = await self.private.connect()
        try:
            await admin.execute(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
            await admin.execute("SELECT pg_reload_conf()")
        finally:
            await admin.close()
        deadline = time.monotonic() + 10
        while True:
            conn = await self.private.connect(self.database)
            try:
                if await conn.fetchval("SHOW default_transaction_read_only") == value:
                    return
            finally:
                await conn.close()
            assert time.monotonic() < deadline, "the reload did not reach new sessions"
            await asyncio.sleep(0.05)


@pytest.fixture
def pair(private_postgres: PrivateServer, postgres: SharedServer) -> Iterator[Pair]:
    if not (private_postgres.data / "postmaster.pid").exists():
        private_postgres.start()  # another test may have stopped it
    database = private_postgres.create_database()
    postgres.execute(f'CREATE DATABASE "{database}"')
    env = private_postgres.env(database, private_postgres.password)
    env["POSTGRES_HOST"] = f"127.0.0.1:{private_postgres.port},127.0.0.1:5432"
    made = Pair(private_postgres, postgres, database, settings_for(env))
    for settings in (made.only(private_postgres), made.only(postgres)):
        asyncio.run(upgrade_schema(settings, "blog"))
    try:
        yield made
    finally:
        asyncio.run(made.set_read_only(False))
        private_postgres.drop_database(database)
        postgres.drop_database(database)


async def _category_names(server: PrivateServer | SharedServer, database: str) -> set[str]:
    # A plain connection: the demoted server is read-only, which is all this needs.
    conn = await server.connect(database)
    try:
        return {row["name"] for row in await conn.fetch("SELECT name FROM categories")}
    finally:
        await conn.close()


async def _add(db: Database, name: str) -> None:
    async with db.write() as conn:
        await conn.execute(sa.insert(categories).values(name=name, slug=name))


def test_a_demoted_primary_costs_one_503_and_the_pool_moves_on(pair: Pair) -> None:
    async def go() -> None:
        db = Database(pair.settings, "blog")
        try:
            # A warm pool: several connections open on the (private) primary.
            await asyncio.gather(*(_add(db, f"before-{n}") for n in range(4)))
            await pair.set_read_only(True)
            async with db.read() as conn:  # the stale connections still answer reads
                assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
            # The write that finds out is a 503 (Unavailable), not a 500, and it
            # discards every connection made before it.
            with pytest.raises(Unavailable):
                await _add(db, "during")
            started = time.monotonic()
            await _add(db, "after")
            await asyncio.gather(*(_add(db, f"after-{n}") for n in range(4)))
            assert time.monotonic() - started < 5
        finally:
            await db.dispose()
        on_private = await _category_names(pair.private, pair.database)
        on_shared = await _category_names(pair.shared, pair.database)
        assert {"before-0", "before-3"} <= on_private and "after" not in on_private
        assert {"after", "after-0", "after-3"} <= on_shared and "during" not in on_shared

    asyncio.run(go())


def test_the_cache_listener_leaves_a_demoted_primary_and_listens_on_the_new_one(
    pair: Pair,
) -> None:
    async def go() -> None:
        cache = ResponseCache(max_entries=16)
        listener = ChangeListener(pair.settings, cache)
        listener.start()
        try:
            await _until(lambda: cache.live, "the listener never went live")
            first = await _backend_port(listener)
            assert first == pair.private.port
            await pair.set_read_only(True)
            # Off within two health intervals, then live again on the writable server.
            await _until(lambda: not cache.live, "the cache stayed on a read-only server")
            await _until(lambda: cache.live, "the listener did not move to the new primary")
            assert await _backend_port(listener) == 5432
        finally:
            await listener.stop()

    asyncio.run(go())


async def _backend_port(listener: ChangeListener) -> int:
    conn = listener.connection
    assert conn is not None
    return int(await conn.fetchval("SELECT inet_server_port()"))


async def _until(condition: Callable[[], bool], message: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that completes TCP handshakes and then never says a word (a hung server)."""
    holder = socket.create_server(("127.0.0.1", 0), backlog=16)
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def test_a_black_holed_server_costs_its_own_timeout_only(
    postgres: SharedServer, black_hole: int
) -> None:
    env = postgres.env()
    env["POSTGRES_HOST"] = f"127.0.0.1:{black_hole},127.0.0.1:5432"
    settings = settings_for({**env, "DB_CONNECT_TIMEOUT_SECONDS": "0.5"})

    async def go() -> tuple[float, float]:
        times = []
        for _ in range(2):
            started = time.monotonic()
            conn = await connect_postgres(settings, "titanium-test")
            times.append(time.monotonic() - started)
            assert await conn.fetchval("SELECT inet_server_port()") == 5432
            await conn.close()
        return times[0], times[1]

    first, second = asyncio.run(go())
    # The hung server had its half second, the working one the rest (asyncpg's own
    # multi-host connect would have spent the whole timeout and failed).
    assert 0.45 <= first < 1.5
    # The server that answered is tried first from then on.
    assert second < 0.4


def test_no_writable_server_is_unavailable_naming_each(postgres: SharedServer) -> None:
    refused = [socket.socket() for _ in range(2)]
    for holder in refused:
        holder.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    try:
        env = postgres.env()
        env["POSTGRES_HOST"] = ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in refused)

        async def go() -> None:
            db = Database(settings_for(env), "blog")
            try:
                with pytest.raises(Unavailable):
                    async with db.read() as conn:
                        await conn.execute(sa.text("SELECT 1"))
                with pytest.raises(ConnectionError, match="no PostgreSQL server accepts writes"):
                    await connect_postgres(settings_for(env), "titanium-test")
            finally:
                await db.dispose()

        asyncio.run(go())
    finally:
        for holder in refused:
            holder.close()
