"""Schema migrations: one Alembic history per data-owning service.

Each service has its own script directory and version table
(`alembic_version_users`, `alembic_version_blog`), so both can share the
PostgreSQL database `titanium` and still evolve independently.
"""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from titanium.config import DataService, Settings
from titanium.db.engine import create_engine, is_sqlite, translate_errors
from titanium.db.revisions import read_revision

_HERE = Path(__file__).parent
# One advisory lock for every Titanium migration: two `titanium db upgrade`
# processes (two pods, two replicas' init containers) run one after the other.
_ADVISORY_LOCK_KEY = 0x7469_7461_6E69  # "titani"


def alembic_config(service: DataService) -> Config:
    """Alembic configuration for a service, without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(_HERE / service))
    return config


@contextmanager
def _file_lock(settings: Settings, service: DataService) -> Iterator[None]:
    # SQLite: held from before the first connection until the last one is closed,
    # so a second process does not even open the file (its connect-time PRAGMAs
    # could meet the first one's schema change) until the first is done.
    lock_path = settings.sqlite_path(service).with_suffix(".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(connection: Connection) -> Iterator[None]:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    connection.commit()
    try:
        yield
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        connection.commit()


def _run(connection: Connection, service: DataService, action: str, revision: str) -> str | None:
    # On SQLite, _apply() already holds the file lock.
    with nullcontext() if is_sqlite(connection.engine.url) else _advisory_lock(connection):
        config = alembic_config(service)
        config.attributes["connection"] = connection
        if action == "upgrade":
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)
        connection.commit()
        return read_revision(connection, service)


async def upgrade_schema(
    settings: Settings, service: DataService, revision: str = "head"
) -> str | None:
    """Upgrade one service's schema (to its head by default); return the revision it is at."""
    return await _apply(settings, service, "upgrade", revision)


async def downgrade_schema(settings: Settings, service: DataService, revision: str) -> str | None:
    """Revert one service's schema to `revision` (`base`: none); return where it ends."""
    return await _apply(settings, service, "downgrade", revision)


async def _apply(
    settings: Settings, service: DataService, action: str, revision: str
) -> str | None:
    engine = create_engine(settings, service, role="migrate", null_pool=True)
    with _file_lock(settings, service) if is_sqlite(engine.url) else nullcontext():
        try:
            async with translate_errors(), engine.connect() as conn:
                return await conn.run_sync(_run, service, action, revision)
        finally:
            await engine.dispose()


async def current_revision(settings: Settings, service: DataService) -> str | None:
    """The revision a service's schema is at, or None before the first upgrade."""
    engine = create_engine(settings, service, role="migrate", null_pool=True)
    try:
        async with translate_errors(), engine.connect() as conn:
            return await conn.run_sync(read_revision, service)
    finally:
        await engine.dispose()
