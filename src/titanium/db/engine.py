"""Engine factory: the only place that knows SQLite and PostgreSQL differ at run time.

`Database.read()` and `Database.write()` hand out connections inside a
transaction and translate driver failures into Titanium's domain errors, so
services never see a driver exception and never branch on the backend.
`Database.run_read()` and `Database.run_write()` do the same for a whole unit of
work written as a plain function of a connection: on SQLite it runs on a worker
thread in one hop, on PostgreSQL on the event loop through the async driver.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from titanium.config import DataService, Settings
from titanium.errors import Conflict, Unavailable

log = logging.getLogger(__name__)
SQLITE_READERS = 4
P = ParamSpec("P")
T = TypeVar("T")
# A unit of database work: a plain function of a connection (see Database.run_read).
Work = Callable[Concatenate[sa.Connection, P], T]


def is_sqlite(url: URL) -> bool:
    """True when the URL points at an SQLite file."""
    return url.get_backend_name() == "sqlite"


def pool_size(settings: Settings, url: URL, role: str) -> int:
    """Connections an engine of this role keeps."""
    # SQLite has one writer at a time: one write connection per process queues
    # writers in-process instead of letting them fight over the file lock. Its
    # readers each hold a thread and a page cache; four keep both cores busy.
    if is_sqlite(url):
        return 1 if role == "write" else min(settings.db_pool_size, SQLITE_READERS)
    return settings.db_pool_size


def insert_for(dialect: str, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's own INSERT, for ON CONFLICT: SQLAlchemy's generic one has none.

    Both constructs take the same `on_conflict_do_update(index_elements, set_)`
    and `excluded`, so callers write one statement for both backends.
    """
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


def create_engine(
    settings: Settings, service: DataService, *, role: str = "read", null_pool: bool = False
) -> AsyncEngine:
    """Create an engine for a service; `role` is `read`, `write` or `migrate`."""
    url = settings.database_url(service)
    pool: dict[str, Any]
    if null_pool:
        pool = {"poolclass": NullPool}
    else:
        pool = {
            "pool_size": pool_size(settings, url, role),
            "max_overflow": 0,
            "pool_timeout": settings.db_pool_timeout_seconds,
        }
    if is_sqlite(url):
        assert url.database is not None
        _create_private(settings.sqlite_path(service))
        engine = create_async_engine(
            url, connect_args={"timeout": settings.sqlite_busy_timeout_seconds}, **pool
        )
        _configure_sqlite(engine.sync_engine, settings, role)
        return engine

    async def connect() -> asyncpg.Connection:
        return await connect_postgres(
            settings,
            f"titanium-{service}",
            command_timeout=settings.db_statement_timeout_seconds,
        )

    # Our own connect, not the dialect's: it tries each server of POSTGRES_HOST
    # with a timeout of its own and keeps only the one that accepts writes.
    engine = create_async_engine(url, async_creator=connect, **pool)
    _discard_closed_connections(engine)
    _discard_demoted_connections(engine)
    return engine


def create_sqlite_engine(settings: Settings, service: DataService, role: str) -> sa.Engine:
    """A synchronous engine on the service's SQLite file, for work run on worker threads.

    aiosqlite sends every cursor operation to its thread and back: four or five
    hops of the event loop for one SELECT. The stdlib driver on a thread of our
    own runs a whole unit of work in one hop, and holds SQLite's write lock only
    for as long as the SQL takes, not while the event loop gets round to the next
    statement.
    """
    url = settings.database_url(service).set(drivername="sqlite+pysqlite")
    _create_private(settings.sqlite_path(service))
    engine = sa.create_engine(
        url,
        # A connection moves between the worker threads, used by one at a time.
        connect_args={"timeout": settings.sqlite_busy_timeout_seconds, "check_same_thread": False},
        pool_size=pool_size(settings, url, role),
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    _configure_sqlite(engine, settings, role)
    return engine


def _create_private(path: Path) -> None:
    """Create the SQLite file (empty is a valid database) readable by its owner only.

    SQLite would create it with 0644 less the umask; it gives the -wal and -shm
    files the database file's mode, so those follow. An existing file is left as it is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _discard_closed_connections(engine: AsyncEngine) -> None:
    # Instead of pool_pre_ping, which costs asyncpg three round trips per checkout
    # (BEGIN, ";", ROLLBACK): a connection the server closed (pg_terminate_backend,
    # restart, idle timeout) is already marked closed by asyncpg, and the pool
    # replaces it before anyone uses it.
    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise sa_exc.DisconnectionError("connection closed by the server")


# Errors after which a pooled connection must never be used again: the server
# became read-only (a demoted primary still answers SELECT 1, so only a write
# finds out), or it is shutting down, crashed, or not yet accepting connections.
_DISCONNECT_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03"})


def _discard_demoted_connections(engine: AsyncEngine) -> None:
    # Marked as a disconnect, SQLAlchemy drops the connection and every other
    # one the pool made before it (they went to the same server), so the next
    # checkouts connect afresh, to whichever server accepts writes now.
    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: Any) -> None:
        if getattr(context.original_exception, "sqlstate", None) in _DISCONNECT_SQLSTATES:
            context.is_disconnect = True


def _configure_sqlite(engine: sa.Engine, settings: Settings, role: str) -> None:
    busy_ms = int(settings.sqlite_busy_timeout_seconds * 1000)

    @event.listens_for(engine, "connect")
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
    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn driver and pool failures into Conflict or Unavailable."""
    try:
        yield
    except sa_exc.IntegrityError as exc:
        # Only a taken unique value is the client's conflict; a foreign-key or
        # not-null violation is a bug in the code that wrote the row.
        if _is_unique_violation(exc):
            raise Conflict("a unique value is already taken") from exc
        raise
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
# connection exception, insufficient resources, operator intervention (shutdown, starting
# up), and a read-only transaction (the server was a primary and is a standby now).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P", "25006")


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return sqlstate if isinstance(sqlstate, str) else None


def _is_unique_violation(exc: sa_exc.IntegrityError) -> bool:
    # PostgreSQL says 23505; SQLite's extended result code names the constraint kind
    # (a PRIMARY KEY collision is a unique violation too).
    name = getattr(exc.orig, "sqlite_errorname", None)
    if name is not None:
        return name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")
    return _sqlstate(exc) == "23505"


def _is_unavailability(exc: sa_exc.DBAPIError) -> bool:
    # No statement means the failure happened while connecting: whatever the
    # server said (database not accepting connections, too many clients), the
    # database is unavailable, not the request wrong.
    if exc.connection_invalidated or exc.statement is None:
        return True
    sqlstate = _sqlstate(exc)
    return sqlstate is not None and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


# Errors of one server that the next server may not share: it is down, slow,
# starting up or shutting down, or read-only. Anything else (a wrong password,
# a missing database) is the same everywhere and is raised at once.
_TRY_NEXT_SERVER = (
    OSError,
    TimeoutError,
    asyncpg.TargetServerAttributeNotMatched,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ConnectionDoesNotExistError,
)
# The server that last accepted a connection, per database and POSTGRES_HOST list:
# tried first next time.
_preferred: dict[tuple[str, tuple[tuple[str, int], ...]], int] = {}


async def connect_postgres(
    settings: Settings,
    application_name: str,
    *,
    command_timeout: float | None = None,
    **server_settings: str,
) -> asyncpg.Connection:
    """An asyncpg connection to the configured PostgreSQL that accepts writes.

    POSTGRES_HOST may list several servers; each is tried in turn (the last one
    that worked first) with DB_CONNECT_TIMEOUT_SECONDS of its own, so one
    black-holed server cannot use up the others' time (asyncpg's own multi-host
    connect shares one timeout), and a standby is passed over as libpq's
    target_session_attrs=read-write does. ConnectionError when none accepts
    writes. The pools connect through here; so does what a pooled SQLAlchemy
    connection cannot do: LISTEN, COPY, diagnosis.
    """
    password = settings.postgres_password.get_secret_value() if settings.postgres_password else ""
    servers = settings.postgres_servers
    where = (settings.postgres_db, servers)
    start = _preferred.get(where, 0)
    failures = []
    for index in [*range(start, len(servers)), *range(start)]:
        host, port = servers[index]
        try:
            conn = await asyncpg.connect(
                host=host,
                port=port,
                user=settings.postgres_user,
                password=password or None,
                database=settings.postgres_db,
                timeout=settings.db_connect_timeout_seconds,
                command_timeout=command_timeout,
                target_session_attrs="read-write",
                server_settings={"application_name": application_name, **server_settings},
            )
        except _TRY_NEXT_SERVER as exc:
            failures.append(f"{host}:{port}: {exc!r}")
            continue
        _preferred[where] = index
        return conn
    raise ConnectionError(f"no PostgreSQL server accepts writes ({'; '.join(failures)})")


class FairGate:
    """First come, first served admission to a connection pool, with a bounded wait.

    SQLAlchemy's async pool waits on an asyncio.Queue, where a request arriving
    just as a connection comes back takes it ahead of those already waiting. Under
    load some requests waited out the whole pool timeout (503) while the mean wait
    was milliseconds. asyncio.Semaphore serves waiters in order, so with one gate
    as wide as the pool, the pool itself never has anyone waiting.
    """

    def __init__(self, size: int, timeout_seconds: float) -> None:
        self._slots = asyncio.Semaphore(size)
        self.timeout_seconds = timeout_seconds
        # Read by /metrics (web/metrics.py pool_families), kept as plain numbers:
        # a few additions per request instead of metric objects on the hot path.
        self.size = size
        self.in_use = 0
        self.waiting = 0
        self.wait_seconds = 0.0
        self.acquired = 0
        self.timeouts = 0

    @asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        """Hold one slot for the block; Unavailable after waiting the timeout."""
        queued = time.perf_counter()
        self.waiting += 1
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self._slots.acquire()
        except TimeoutError as exc:
            self.timeouts += 1
            log.warning("database pool exhausted for %.1f s", self.timeout_seconds)
            raise Unavailable("the database is busy, retry shortly") from exc
        finally:
            self.waiting -= 1
        self.wait_seconds += time.perf_counter() - queued
        self.acquired += 1
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._slots.release()


class Database:
    """The connections of one data-owning service."""

    def __init__(self, settings: Settings, service: DataService) -> None:
        self.service: DataService = service
        self.url = settings.database_url(service)
        self.backend = self.url.get_backend_name()
        self._writer = create_engine(settings, service, role="write")
        sqlite = is_sqlite(self.url)
        pooled = create_engine(settings, service, role="read") if sqlite else self._writer
        timeout = settings.db_pool_timeout_seconds
        self._write_gate = FairGate(pool_size(settings, self.url, "write"), timeout)
        # On PostgreSQL reads and writes share one pool, so they share its gate.
        self._read_gate = (
            FairGate(pool_size(settings, self.url, "read"), timeout) if sqlite else self._write_gate
        )
        # Reads run in autocommit: no BEGIN/ROLLBACK round trips around each page.
        # The list's count and page may then see different snapshots under
        # concurrent writes, which X-Total-Count can live with. On PostgreSQL this
        # copy shares the writer's pool; the level is set per checkout, so writes
        # stay transactions.
        self._reader = pooled.execution_options(isolation_level="AUTOCOMMIT")
        self._engines = {self._writer, pooled}
        self._after_write: list[Callable[[], None]] = []
        # SQLite: the engines and threads that run_read/run_write use, made on first use.
        self._settings = settings
        self._threads: dict[str, tuple[sa.Engine, ThreadPoolExecutor]] = {}

    def gates(self) -> dict[str, FairGate]:
        """The pool gates by the `pool` label of the metrics: one on PostgreSQL, two on SQLite."""
        if self._read_gate is self._write_gate:
            return {"shared": self._write_gate}
        return {"read": self._read_gate, "write": self._write_gate}

    def after_write(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every write block, whether it committed or failed."""
        self._after_write.append(callback)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads, in autocommit (each statement its own snapshot)."""
        async with self._read_gate.enter(), translate_errors(), self._reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a write transaction, committed when the block exits cleanly."""
        async with self._writing(), self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        # Every write, in either form: admitted by the write gate, its errors
        # translated, and the after-write callbacks told however it ended.
        try:
            async with self._write_gate.enter(), translate_errors():
                yield
        finally:
            for callback in self._after_write:
                callback()

    async def run_read(self, work: Work[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`work(connection, *args, **kwargs)` run as a read() block is, and its result."""
        if self.backend != "sqlite":
            async with self.read() as conn:
                return await conn.run_sync(work, *args, **kwargs)
        async with self._read_gate.enter(), translate_errors():
            return await self._on_thread("read", work, *args, **kwargs)

    async def run_write(self, work: Work[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`work(connection, *args, **kwargs)` run as a write() block is, and its result."""
        if self.backend != "sqlite":
            async with self.write() as conn:
                return await conn.run_sync(work, *args, **kwargs)
        async with self._writing():
            return await self._on_thread("write", work, *args, **kwargs)

    async def _on_thread(self, role: str, work: Work[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        # The gate in front admits no more callers than the role has threads and
        # pooled connections, so the executor's queue stays empty.
        engine, threads = self._sqlite_threads(role)

        def run() -> T:
            with engine.begin() if role == "write" else engine.connect() as conn:
                return work(conn, *args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(threads, run)

    def _sqlite_threads(self, role: str) -> tuple[sa.Engine, ThreadPoolExecutor]:
        made = self._threads.get(role)
        if made is None:
            engine = create_sqlite_engine(self._settings, self.service, role)
            if role == "read":
                engine = engine.execution_options(isolation_level="AUTOCOMMIT")
            size = pool_size(self._settings, self.url, role)
            made = self._threads[role] = (
                engine,
                ThreadPoolExecutor(size, thread_name_prefix=f"{self.service}-sqlite-{role}"),
            )
        return made

    async def dispose(self) -> None:
        """Close every pooled connection."""
        for engine in self._engines:
            await engine.dispose()
        for sync_engine, threads in self._threads.values():
            threads.shutdown(wait=True)
            sync_engine.dispose()
        self._threads.clear()
