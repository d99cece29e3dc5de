"""Engine factory: the only place that knows SQLite and PostgreSQL differ at run time.

`Database.read()` and `Database.write()` hand out connections inside a
transaction and translate driver failures into Titanium's domain errors, so
services never see a driver exception and never branch on the backend.
"""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from titanium.config import DataService, Settings
from titanium.errors import Conflict, Unavailable

log = logging.getLogger(__name__)
SQLITE_READERS = 4


def is_sqlite(url: URL) -> bool:
    """True when the URL points at an SQLite file."""
    return url.get_backend_name() == "sqlite"


def create_engine(
    settings: Settings, service: DataService, *, role: str = "read", null_pool: bool = False
) -> AsyncEngine:
    """Create an engine for a service; `role` is `read`, `write` or `migrate`."""
    url = settings.database_url(service)
    pool: dict[str, Any]
    if null_pool:
        pool = {"poolclass": NullPool}
    else:
        # SQLite has one writer at a time: one write connection per process queues
        # writers in-process instead of letting them fight over the file lock. Its
        # readers each hold a thread and a page cache; four keep both cores busy.
        size = settings.db_pool_size
        if is_sqlite(url):
            size = 1 if role == "write" else min(size, SQLITE_READERS)
        pool = {
            "pool_size": size,
            "max_overflow": 0,
            "pool_timeout": settings.db_pool_timeout_seconds,
            "pool_pre_ping": not is_sqlite(url),
        }
    if is_sqlite(url):
        assert url.database is not None
        settings.sqlite_path(service).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, connect_args={"timeout": settings.sqlite_busy_timeout_seconds}, **pool
        )
        _configure_sqlite(engine, settings, role)
        return engine
    return create_async_engine(
        url,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": settings.db_statement_timeout_seconds,
            "server_settings": {"application_name": f"titanium-{service}"},
        },
        **pool,
    )


def _configure_sqlite(engine: AsyncEngine, settings: Settings, role: str) -> None:
    busy_ms = int(settings.sqlite_busy_timeout_seconds * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        # FULL: a commit that returned is on disk even after a power cut.
        cursor.execute("PRAGMA synchronous=FULL")
        # 1 MiB of page cache per connection (SQLite's default is 2 MiB): the OS page
        # cache holds the file anyway, and five connections stay within the budget.
        cursor.execute("PRAGMA cache_size=-1024")
        if role != "migrate":
            cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        if role == "write":
            # Take transaction control from the driver so BEGIN is ours to choose.
            dbapi_connection.isolation_level = None

    if role != "write":
        return

    # A deferred transaction that later writes can fail with "database is locked"
    # without waiting; BEGIN IMMEDIATE takes the write lock up front and waits
    # up to busy_timeout for it.
    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn driver and pool failures into Conflict or Unavailable."""
    try:
        yield
    except sa_exc.IntegrityError as exc:
        raise Conflict("a unique value is already taken") from exc
    except sa_exc.TimeoutError as exc:
        log.warning("database pool exhausted: %s", exc)
        raise Unavailable("the database is busy, retry shortly") from exc
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        log.warning("database unavailable: %s", exc.orig)
        raise Unavailable("the database is unavailable") from exc
    except sa_exc.DBAPIError as exc:
        if _is_unavailability(exc):
            log.warning("database unavailable: %s", exc.orig)
            raise Unavailable("the database is unavailable") from exc
        raise
    except (OSError, TimeoutError) as exc:
        log.warning("database unreachable: %r", exc)
        raise Unavailable("the database is unavailable") from exc


# SQLSTATE classes that mean "the server cannot serve you now", not "your query is wrong":
# connection exception, insufficient resources, operator intervention (shutdown, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def _is_unavailability(exc: sa_exc.DBAPIError) -> bool:
    # No statement means the failure happened while connecting: whatever the
    # server said (database not accepting connections, too many clients), the
    # database is unavailable, not the request wrong.
    if exc.connection_invalidated or exc.statement is None:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


class Database:
    """The connections of one data-owning service."""

    def __init__(self, settings: Settings, service: DataService) -> None:
        self.service: DataService = service
        self.url = settings.database_url(service)
        self.backend = self.url.get_backend_name()
        self._writer = create_engine(settings, service, role="write")
        pooled = (
            create_engine(settings, service, role="read") if is_sqlite(self.url) else self._writer
        )
        # Reads run in autocommit: no BEGIN/ROLLBACK round trips around each page.
        # The list's count and page may then see different snapshots under
        # concurrent writes, which X-Total-Count can live with. On PostgreSQL this
        # copy shares the writer's pool; the level is set per checkout, so writes
        # stay transactions.
        self._reader = pooled.execution_options(isolation_level="AUTOCOMMIT")
        self._engines = {self._writer, pooled}
        self._after_write: list[Callable[[], None]] = []

    def after_write(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every write block, whether it committed or failed."""
        self._after_write.append(callback)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads, in autocommit (each statement its own snapshot)."""
        async with translate_errors(), self._reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a write transaction, committed when the block exits cleanly."""
        try:
            async with translate_errors(), self._writer.begin() as conn:
                yield conn
        finally:
            for callback in self._after_write:
                callback()

    async def dispose(self) -> None:
        """Close every pooled connection."""
        for engine in self._engines:
            await engine.dispose()
