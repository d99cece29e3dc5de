"""db/engine.py's translation of driver errors, on both real backends."""

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from support.database import BACKENDS
from support.env import settings_for
from titanium.db.engine import Database
from titanium.db.migrations import upgrade_schema
from titanium.db.tables import users
from titanium.errors import Conflict


def row(name: str, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "username": name,
        "email": f"{name}@example.com",
        "password_hash": "x",
        "created_at": datetime.now(UTC).replace(tzinfo=None),
    }
    return values | overrides


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_a_unique_violation_is_a_conflict(
    backend: str, database_env: Callable[[str], dict[str, str]]
) -> None:
    settings = settings_for(database_env(backend))

    async def scenario() -> None:
        await upgrade_schema(settings, "users")
        db = Database(settings, "users")
        try:
            async with db.write() as conn:
                await conn.execute(sa.insert(users).values(**row("alice")))
            with pytest.raises(Conflict, match="unique value is already taken"):
                async with db.write() as conn:
                    await conn.execute(sa.insert(users).values(**row("alice")))
            # A NOT NULL violation is a bug in the writer, not the client's conflict.
            with pytest.raises(sa_exc.IntegrityError):
                async with db.write() as conn:
                    await conn.execute(sa.insert(users).values(**row("bob", email=None)))
        finally:
            await db.dispose()

    asyncio.run(scenario())


class Boom(Exception):
    """Raised inside a unit of work, after it wrote."""


def _insert_then_fail(conn: sa.Connection, name: str) -> None:
    conn.execute(sa.insert(users).values(**row(name)))
    raise Boom


def _names(conn: sa.Connection) -> list[str]:
    return list(conn.execute(sa.select(users.c.username).order_by(users.c.id)).scalars())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_unit_of_work_commits_on_return_and_rolls_back_on_raise(
    backend: str, database_env: Callable[[str], dict[str, str]]
) -> None:
    settings = settings_for(database_env(backend))

    def insert(conn: sa.Connection, name: str) -> int:
        return int(
            conn.execute(sa.insert(users).values(**row(name)).returning(users.c.id)).one()[0]
        )

    async def scenario() -> None:
        await upgrade_schema(settings, "users")
        db = Database(settings, "users")
        writes: list[str] = []
        db.after_write(lambda: writes.append("done"))
        try:
            assert await db.run_write(insert, "alice") >= 1
            with pytest.raises(Boom):
                await db.run_write(_insert_then_fail, "bob")
            with pytest.raises(Conflict, match="unique value is already taken"):
                await db.run_write(insert, "alice")
            # Seen by a read, and by the block form, which shares the pools' gates.
            assert await db.run_read(_names) == ["alice"]
            async with db.read() as conn:
                assert await conn.run_sync(_names) == ["alice"]
            # Every write, committed or not, tells the after-write callbacks.
            assert writes == ["done"] * 3
        finally:
            await db.dispose()

    asyncio.run(scenario())


def test_sqlite_work_runs_off_the_event_loop(
    database_env: Callable[[str], dict[str, str]],
) -> None:
    """A slow SQLite read holds a worker thread, not the loop: other tasks go on meanwhile."""
    settings = settings_for(database_env("sqlite"))

    def slow(conn: sa.Connection) -> int:
        time.sleep(0.3)  # as a long query would, in the driver
        return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())

    async def scenario() -> None:
        await upgrade_schema(settings, "users")
        db = Database(settings, "users")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            started = time.perf_counter()
            counts = await asyncio.gather(*(db.run_read(slow) for _ in range(4)))
            elapsed = time.perf_counter() - started
        finally:
            ticker.cancel()
            await db.dispose()
        assert counts == [0] * 4
        # Four readers at once, each on its own thread; the loop kept ticking.
        assert elapsed < 0.9, elapsed
        assert ticks >= 10, ticks

    asyncio.run(scenario())
