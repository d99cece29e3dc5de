"""The target PostgreSQL database: where it is, what it holds, and the load itself."""

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from titanium.config import Settings
from titanium.db.engine import connect_postgres
from titanium.db.seed import SEED_CATEGORIES
from titanium.migrate.errors import TargetError
from titanium.migrate.schema import TableSpec
from titanium.migrate.source import quote_ident
from titanium.migrate.stream import Checksum, target_sql

# Waiting longer than this for a table lock means something still uses the
# target (a running service); better to say so than to hang.
LOCK_TIMEOUT = "30s"
# Rows shown as "at least N" when telling why a target is not empty.
COUNT_CAP = 1000
# Sort memory for rebuilding the indexes, for this transaction only.
MAINTENANCE_WORK_MEM = "256MB"


@dataclass(frozen=True)
class Target:
    """Connection settings of the target database (password never shown)."""

    settings: Settings

    @property
    def display(self) -> str:
        """postgresql://user@host:port/db, without the password."""
        s = self.settings
        return f"postgresql://{s.postgres_user}@{s.postgres_address}/{s.postgres_db}"

    async def connect(self) -> asyncpg.Connection:
        """Open a connection, translating failures into TargetError."""
        try:
            # ISO DateStyle: timestamps print in the form the checksum expects.
            return await connect_postgres(self.settings, "titanium-migrate", DateStyle="ISO, YMD")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise TargetError(f"cannot connect to {self.display}: {exc}") from exc


def target_from_settings(settings: Settings, url: str | None = None) -> Target:
    """The target: `url` if given, else the POSTGRES_* settings (USE_POSTGRES not required)."""
    if url is None:
        if not settings.postgres_user:
            raise TargetError("no target: pass --to URL or set POSTGRES_USER and POSTGRES_PASSWORD")
        return Target(settings.model_copy(update={"use_postgres": True}))
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise TargetError(f"--to: not a database URL ({exc})") from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise TargetError("--to: the target must be a postgresql:// URL")
    if not parsed.database or not parsed.username:
        raise TargetError("--to: the URL needs a user and a database name")
    update = {
        "use_postgres": True,
        "postgres_host": parsed.host or "127.0.0.1",
        "postgres_port": parsed.port or 5432,
        "postgres_db": parsed.database,
        "postgres_user": parsed.username,
        "postgres_password": SecretStr(parsed.password or ""),
    }
    return Target(settings.model_copy(update=update))


def seed_categories() -> set[tuple[int, str, str, str]]:
    """The rows the blog schema migration inserts (id, name, slug, color)."""
    return {
        (index, row["name"], row["slug"], row["color"])
        for index, row in enumerate(SEED_CATEGORIES, start=1)
    }


@dataclass
class TargetState:
    """What the target holds before the load."""

    tables: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    categories: set[tuple[int, str, str, str]] = field(default_factory=set)

    @property
    def has_schema(self) -> bool:
        """The tables exist (the schema migrations ran)."""
        return {"users", "posts", "categories"} <= self.tables

    def user_data(self) -> list[str]:
        """Why the target is not empty, or [] when it is.

        The schema migration itself seeds three categories, so categories count
        as data only when they differ from that seed.
        """
        reasons = []
        for table in ("users", "posts"):
            count = self.counts.get(table, 0)
            if count:
                shown = f"at least {COUNT_CAP}" if count >= COUNT_CAP else str(count)
                reasons.append(f"{table} has {shown} rows")
        if self.categories - seed_categories():
            reasons.append("categories holds rows the schema migration did not create")
        return reasons

    def category_ids(self) -> list[int]:
        """Ids of the categories the target has (or will have after its migration)."""
        rows = self.categories if "categories" in self.tables else seed_categories()
        return sorted(row[0] for row in rows)


async def inspect(conn: asyncpg.Connection) -> TargetState:
    """Read the target's tables, row counts (capped) and categories."""
    state = TargetState()
    for table in ("users", "posts", "categories"):
        if await conn.fetchval("SELECT to_regclass($1)", f"public.{table}") is not None:
            state.tables.add(table)
    for table in ("users", "posts"):
        if table in state.tables:
            state.counts[table] = int(
                await conn.fetchval(
                    f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT {COUNT_CAP}) AS capped"  # noqa: S608 - quoted identifiers only
                )
            )
    if "categories" in state.tables:
        rows = await conn.fetch("SELECT id, name, slug, color FROM categories")
        state.categories = {(r["id"], r["name"], r["slug"], r["color"]) for r in rows}
    return state


async def prepare_load(conn: asyncpg.Connection, tables: list[str], truncate: bool) -> None:
    """Inside the load transaction: lock, check emptiness again, and empty the tables.

    TRUNCATE in the same transaction is what allows COPY ... FREEZE (rows are
    written already frozen, so the first read after the load does not rewrite
    every page to set hint bits), and a rollback restores everything.
    """
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await conn.execute("SET LOCAL statement_timeout = 0")
    names = ", ".join(quote_ident(t) for t in ("users", "categories", "posts"))
    try:
        await conn.execute(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
    except asyncpg.LockNotAvailableError:
        raise TargetError(
            f"the target tables stayed locked for {LOCK_TIMEOUT}: stop the services using them"
        ) from None
    if not truncate:
        reasons = (await inspect(conn)).user_data()
        if reasons:
            raise TargetError(
                "target is not empty (" + "; ".join(reasons) + "): pass --truncate to replace it"
            )
    await conn.execute(f"TRUNCATE {', '.join(quote_ident(t) for t in tables)}")


@dataclass(frozen=True)
class Definitions:
    """Constraints and indexes of the loaded tables, as the catalog defines them."""

    constraints: tuple[tuple[str, str, str, str], ...]  # table, name, type, definition
    indexes: tuple[tuple[str, str, str], ...]  # table, name, CREATE INDEX statement


async def definitions(conn: asyncpg.Connection, tables: list[str]) -> Definitions:
    """Read the primary keys, unique and foreign keys, and plain indexes touching `tables`."""
    oids = [await conn.fetchval("SELECT $1::regclass::oid", t) for t in tables]
    constraints = await conn.fetch(
        "SELECT conrelid::regclass::text AS tbl, conname, contype::text AS kind, "
        "pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE contype IN ('p', 'u', 'f') AND (conrelid = ANY($1) OR confrelid = ANY($1)) "
        "ORDER BY 1, 2",
        oids,
    )
    indexes = await conn.fetch(
        "SELECT i.indrelid::regclass::text AS tbl, i.indexrelid::regclass::text AS name, "
        "pg_get_indexdef(i.indexrelid) AS def FROM pg_index i "
        "WHERE i.indrelid = ANY($1) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1, 2",
        oids,
    )
    return Definitions(
        tuple((r["tbl"], r["conname"], r["kind"], r["def"]) for r in constraints),
        tuple((r["tbl"], r["name"], r["def"]) for r in indexes),
    )


async def drop_indexes(conn: asyncpg.Connection, found: Definitions) -> None:
    """Drop constraints and indexes before COPY (foreign keys first).

    Maintaining four B-trees row by row doubles the load time; building them
    once from the loaded table is much faster. This happens inside the load
    transaction, from the catalog's own definitions, so the schema the
    migrations created is what is rebuilt, and a rollback restores it.
    """
    for kind in ("f", "p", "u"):
        for table, name, constraint_kind, _definition in found.constraints:
            if constraint_kind == kind:
                await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {quote_ident(name)}")
    for _table, name, _definition in found.indexes:
        await conn.execute(f"DROP INDEX {name}")


async def rebuild_indexes(conn: asyncpg.Connection, tables: list[str], found: Definitions) -> None:
    """Recreate what `drop_indexes` dropped, then check the schema is exactly as before."""
    await conn.execute(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
    for kind in ("p", "u"):
        for table, name, constraint_kind, definition in found.constraints:
            if constraint_kind == kind:
                await conn.execute(
                    f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(name)} {definition}"
                )
    for _table, _name, definition in found.indexes:
        await conn.execute(definition)
    for table, name, constraint_kind, definition in found.constraints:
        if constraint_kind == "f":
            await conn.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(name)} {definition}"
            )
    if await definitions(conn, tables) != found:
        raise TargetError("the rebuilt indexes differ from the schema's: the load was rolled back")


async def copy_in(
    conn: asyncpg.Connection,
    table: str,
    columns: tuple[str, ...],
    next_chunk: Callable[[], Awaitable[bytes | None]],
) -> int:
    """COPY text chunks into a table (FREEZE); returns the rows PostgreSQL counted."""

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await next_chunk()) is not None:
            yield chunk

    status = await conn.copy_to_table(
        table, source=chunks(), columns=list(columns), format="text", freeze=True
    )
    return int(str(status).rsplit(" ", 1)[-1])


async def set_sequence(conn: asyncpg.Connection, table: str, highest: int) -> int:
    """Make the next id of `table` be `highest + 1` (1 when `highest` is 0); return it."""
    sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
    if sequence is None:
        raise TargetError(f"{table}.id has no sequence in the target schema")
    if highest >= 1:
        await conn.execute("SELECT setval($1, $2, true)", sequence, highest)
        return highest + 1
    await conn.execute("SELECT setval($1, 1, false)", sequence)
    return 1


async def checksum(conn: asyncpg.Connection, query: str) -> Checksum:
    """SHA-256 and row count of a query's COPY text output, streamed."""
    result = Checksum()

    async def sink(data: bytes) -> None:
        result.update(data)

    await conn.copy_from_query(query, output=sink, format="text")
    return result


async def checksum_after_load(conn: asyncpg.Connection, spec: TableSpec) -> Checksum:
    """The checksum of a table just loaded, inside the load transaction.

    The table was truncated and filled by one COPY in id order, so its heap
    is in id order: a sequential scan from block 0 (no synchronised scan, no
    parallel workers) reads the rows in that order without walking the
    primary key. The caller computes it again with ORDER BY before calling
    a difference a mismatch.
    """
    await conn.execute("SET LOCAL synchronize_seqscans = off")
    await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    found = await checksum(conn, target_sql(spec, ordered=False))
    return found
