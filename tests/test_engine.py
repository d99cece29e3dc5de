"""db/engine.py's translation of driver errors, on both real backends."""

import asyncio
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
