"""The migration and the verification, end to end.

Order of a run, and why:
1. Open both SQLite files read-only in one snapshot each.
2. Look at the target (read only) and refuse a non-empty one early, before
   spending minutes on preflight.
3. Preflight every row (nothing is written yet; `--dry-run` stops here).
4. Bring the target schema to head with the services' own Alembic revisions.
5. One transaction: lock, check emptiness again, TRUNCATE, drop the keys and
   indexes, COPY ... FREEZE every table in id order, rebuild the keys and
   indexes, set the sequences, compute the target checksums and compare. Any
   failure or mismatch rolls everything back; only a verified load is
   committed.
"""

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import asyncpg

from titanium.config import DataService
from titanium.db.migrations import upgrade_schema
from titanium.errors import TitaniumError
from titanium.migrate import target as pg
from titanium.migrate.errors import Interrupted, MigrationError, SourceError, TargetError
from titanium.migrate.preflight import preflight_table
from titanium.migrate.problems import PreflightResult, RejectsWriter
from titanium.migrate.progress import NullProgress, ProgressSink
from titanium.migrate.report import MigrationResult, Status
from titanium.migrate.schema import ID_MAX, ID_MIN, TABLES
from titanium.migrate.source import SourceFile, SourceTable, open_source, quote_ident
from titanium.migrate.stream import Checksum, SourceStream, load_columns, target_sql
from titanium.migrate.temp_tables import prepare_valid_ids, rejected_table
from titanium.services.blog.legacy import link_legacy_posts
from titanium.services.registry import DATA_SERVICES

OnError = Literal["stop", "skip"]
# Filled in on the target after the load (services/blog/legacy.py).
LINKED_AFTER_LOAD: dict[str, tuple[str, ...]] = {"posts": ("author_id",)}
T = TypeVar("T")
DEFAULT_REJECTS = Path("titanium-rejects.jsonl")


@dataclass(frozen=True)
class MigrationOptions:
    """What `titanium migrate sqlite-to-postgres` was asked to do."""

    users_db: Path
    blog_db: Path
    target: pg.Target
    dry_run: bool = False
    on_error: OnError = "stop"
    rejects: Path | None = None
    truncate: bool = False


class _Mismatch(Exception):
    """Raised inside the load transaction so that it rolls back."""


@dataclass
class _Sources:
    files: dict[DataService, SourceFile]

    def tables(self) -> Iterator[tuple[SourceFile, SourceTable]]:
        for spec in TABLES:
            source = self.files[spec.service]
            if spec.name in source.tables:
                yield source, source.tables[spec.name]

    def close(self) -> None:
        for source in self.files.values():
            source.close()


def _open_sources(users_db: Path, blog_db: Path) -> _Sources:
    specs = {service: tuple(s for s in TABLES if s.service == service) for service in DATA_SERVICES}
    files: dict[DataService, SourceFile] = {}
    try:
        files["users"] = open_source(users_db, specs["users"])
        files["blog"] = open_source(blog_db, specs["blog"])
    except BaseException:
        for opened in files.values():
            opened.close()
        raise
    sources = _Sources(files)
    for source, table in sources.tables():
        if table.high_water_mark is not None and table.high_water_mark > ID_MAX:
            sources.close()
            raise SourceError(
                f"{source.path}: sqlite_sequence says {table.name} handed out id "
                f"{table.high_water_mark}, beyond PostgreSQL INTEGER ({ID_MAX})"
            )
    return sources


def _describe_sources(sources: _Sources, result: MigrationResult) -> None:
    for service, source in sources.files.items():
        result.source[service] = f"{source.path} (journal_mode={source.journal_mode})"
        for table in source.tables.values():
            if table.missing:
                result.notes.append(
                    f"{source.path}: {table.name} has no {', '.join(table.missing)}: loaded as NULL"
                )
            for column in table.derived:
                result.notes.append(
                    f"{source.path}: {table.name} has no {column}: computed from the "
                    "source's own columns, as the schema migration that added it does"
                )
            if table.ignored:
                result.notes.append(
                    f"{source.path}: {table.name}.{', '.join(table.ignored)} has no place in "
                    "the target schema and is not migrated"
                )
    if "categories" not in sources.files["blog"].tables:
        result.notes.append(
            "the blog source has no categories table: the target keeps the categories "
            "its schema migration created"
        )


def _run_preflight(
    sources: _Sources,
    state: pg.TargetState,
    rejects: RejectsWriter | None,
    progress: ProgressSink,
    cancelled: threading.Event,
) -> PreflightResult:
    """Preflight every table in load order (categories before posts)."""
    result = PreflightResult()
    blog = sources.files["blog"]
    for source, table in sources.tables():
        if table.spec.name == "posts" and "categories" not in blog.tables:
            prepare_valid_ids(blog, "categories", None, state.category_ids())
        preflight_table(source, table, result, rejects, progress, cancelled)
        if table.spec.name == "categories":
            ids = (
                f"SELECT {table.expr(table.spec.columns[0])} FROM main.{quote_ident(table.name)} "  # noqa: S608 - quoted identifiers only
                f"WHERE rowid NOT IN (SELECT rid FROM {rejected_table('categories')})"
            )
            prepare_valid_ids(blog, "categories", ids, [])
    return result


def _highest_id(source: SourceFile, table: SourceTable) -> int:
    # Every id the source ever used counts, rejected rows included: an operator
    # who fixes and re-inserts a rejected row must not collide with a new post.
    e = table.expr(next(c for c in table.spec.columns if c.name == "id"))
    row = source.execute(
        f"SELECT max({e}) FROM main.{quote_ident(table.name)} "  # noqa: S608 - quoted identifiers only
        f"WHERE typeof({e}) = 'integer' AND {e} BETWEEN {ID_MIN} AND {ID_MAX}"
    ).fetchone()
    highest = int(row[0]) if row and row[0] is not None else 0
    return max(highest, table.high_water_mark or 0)


async def _in_thread(function: Callable[[], T]) -> T:
    """Run a blocking call (SQLite) without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, function)


async def _cancellable(work: Callable[[threading.Event], T]) -> T:
    """Run blocking work in a thread; on cancellation (Ctrl-C) tell it to stop.

    A thread cannot be killed, and asyncio.run waits for it before exiting,
    so the work checks the event and ends early instead.
    """
    cancelled = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, work, cancelled)
    try:
        return await future
    except asyncio.CancelledError:
        cancelled.set()
        raise


@contextlib.asynccontextmanager
async def _connection(target: pg.Target) -> AsyncIterator[asyncpg.Connection]:
    conn = await target.connect()
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)


def migrate_sqlite_to_postgres(
    options: MigrationOptions, progress: ProgressSink | None = None
) -> MigrationResult:
    """Migrate both SQLite files into PostgreSQL; see the module docstring for the steps.

    Returns the result for every outcome the operator must read (success,
    rejects, mismatch, preflight abort); raises MigrationError when the run
    cannot even get that far (unreadable source, unreachable or non-empty
    target, interruption). The target is unchanged in every case but success
    and completed-with-rejects.
    """
    try:
        return asyncio.run(_migrate(options, progress or NullProgress()))
    except KeyboardInterrupt:
        raise Interrupted("interrupted: the load transaction was rolled back") from None


async def _migrate(options: MigrationOptions, progress: ProgressSink) -> MigrationResult:
    started = time.monotonic()
    result = MigrationResult("sqlite-to-postgres", dry_run=options.dry_run)
    result.target = options.target.display
    sources = await _in_thread(lambda: _open_sources(options.users_db, options.blog_db))
    try:
        _describe_sources(sources, result)
        async with _connection(options.target) as conn:
            state = await pg.inspect(conn)
            reasons = state.user_data()
            if reasons and not options.truncate:
                raise TargetError(
                    "target is not empty (" + "; ".join(reasons) + "): "
                    "pass --truncate to replace its data"
                )
            if reasons:
                result.notes.append("--truncate: replacing " + "; ".join(reasons))
            await _preflight_phase(options, sources, state, result, progress)
            if result.status is Status.ABORTED or options.dry_run:
                result.phases["total"] = time.monotonic() - started
                return result
            schema_started = time.monotonic()
            for service in DATA_SERVICES:
                try:
                    await upgrade_schema(options.target.settings, service)
                except TitaniumError as exc:
                    raise TargetError(
                        f"schema migration of {service} failed: {exc.message}"
                    ) from exc
            result.phases["schema"] = time.monotonic() - schema_started
            await _load(conn, options, sources, result, progress)
            if result.status in (Status.OK, Status.REJECTED):
                await _link_authors(options, result)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise TargetError(f"{options.target.display}: {exc}") from exc
    finally:
        sources.close()
    result.phases["total"] = time.monotonic() - started
    return result


async def _link_authors(options: MigrationOptions, result: MigrationResult) -> None:
    """After the committed load: tie posts without author_id to their accounts.

    Outside the load transaction, so the verified rows are exactly the source's;
    it is idempotent, and `titanium db upgrade` runs it again if this one fails.
    """
    try:
        report = await link_legacy_posts(options.target.settings)
    except TitaniumError as exc:
        result.notes.append(
            f"posts were loaded but not linked to their accounts ({exc.message}): "
            "run `titanium db upgrade` against the target to link them"
        )
        return
    if report is not None:
        result.notes.append(report.message)


async def _preflight_phase(
    options: MigrationOptions,
    sources: _Sources,
    state: pg.TargetState,
    result: MigrationResult,
    progress: ProgressSink,
) -> None:
    started = time.monotonic()
    rejects_path = options.rejects
    if rejects_path is None and options.on_error == "skip" and not options.dry_run:
        rejects_path = DEFAULT_REJECTS
    writer = RejectsWriter(rejects_path) if rejects_path is not None else None
    try:
        preflight = await _cancellable(partial(_run_preflight, sources, state, writer, progress))
    finally:
        if writer is not None:
            writer.close()
    result.preflight = preflight
    result.rejects_path = rejects_path
    result.phases["preflight"] = time.monotonic() - started
    for _source, table in sources.tables():
        report = result.table(table.spec.name)
        report.rows_read = preflight.tables[table.spec.name].rows
        report.rows_rejected = preflight.tables[table.spec.name].rejected
    bad_rows = preflight.rejected
    if bad_rows and options.on_error == "stop":
        result.status = Status.ABORTED
        result.message = (
            f"preflight found {preflight.problem_count} problems in {bad_rows} rows; "
            "nothing was written (fix them, or use --on-error skip)"
        )
    elif options.dry_run:
        result.status = Status.REJECTED if bad_rows else Status.OK
        result.message = (
            f"dry run: {bad_rows} rows would be rejected; nothing was written"
            if bad_rows
            else "dry run: every row passed preflight; nothing was written"
        )


async def _load(
    conn: asyncpg.Connection,
    options: MigrationOptions,
    sources: _Sources,
    result: MigrationResult,
    progress: ProgressSink,
) -> None:
    blog = sources.files["blog"]
    truncated = ["users", "posts"] + (["categories"] if "categories" in blog.tables else [])
    load_started = time.monotonic()
    try:
        async with conn.transaction():
            await pg.prepare_load(conn, truncated, options.truncate)
            loaded = [table.spec.name for _source, table in sources.tables()]
            found = await pg.definitions(conn, loaded)
            await pg.drop_indexes(conn, found)
            checksums: dict[str, Checksum] = {}
            for source, table in sources.tables():
                checksums[table.spec.name] = await _copy_table(
                    conn, source, table, result, progress
                )
            result.phases["load"] = time.monotonic() - load_started
            indexes_started = time.monotonic()
            progress.log("rebuilding indexes and constraints")
            await pg.rebuild_indexes(conn, loaded, found)
            result.phases["indexes"] = time.monotonic() - indexes_started
            sequences_started = time.monotonic()
            for source, table in sources.tables():
                highest = await _in_thread(partial(_highest_id, source, table))
                result.table(table.spec.name).next_id = await pg.set_sequence(
                    conn, table.spec.name, highest
                )
            result.phases["sequences"] = time.monotonic() - sequences_started
            verify_started = time.monotonic()
            mismatched = []
            for _source, table in sources.tables():
                report = result.table(table.spec.name)
                task = f"verify {table.spec.name}"
                progress.start(task, report.rows_loaded)
                stored = await pg.checksum_after_load(conn, table.spec)
                report.source_checksum = checksums[table.spec.name].hexdigest
                if stored.hexdigest != report.source_checksum:
                    stored = await pg.checksum(conn, target_sql(table.spec))
                progress.advance(task, stored.rows)
                progress.finish(task)
                report.target_checksum = stored.hexdigest
                report.target_rows = stored.rows
                if not report.checksum_match:
                    mismatched.append(table.spec.name)
            result.phases["verify"] = time.monotonic() - verify_started
            if mismatched:
                raise _Mismatch(", ".join(mismatched))
    except _Mismatch as exc:
        result.status = Status.MISMATCH
        result.message = (
            f"verification failed for {exc}: the load was rolled back, the target is unchanged"
        )
        return
    rejected = result.preflight.rejected
    if rejected:
        result.status = Status.REJECTED
        result.message = (
            f"loaded and verified; {rejected} rows rejected, written to {result.rejects_path}"
        )
    else:
        result.status = Status.OK
        result.message = "every row loaded and verified"


async def _copy_table(
    conn: asyncpg.Connection,
    source: SourceFile,
    table: SourceTable,
    result: MigrationResult,
    progress: ProgressSink,
) -> Checksum:
    report = result.table(table.spec.name)
    task = f"copy {table.spec.name}"
    progress.start(task, report.rows_read - report.rows_rejected)
    started = time.monotonic()
    stream = SourceStream(source, table, exclude_rejected=report.rows_rejected > 0)
    loop = asyncio.get_running_loop()

    async def next_chunk() -> bytes | None:
        item = await loop.run_in_executor(None, stream.next_chunk)
        if item is None:
            return None
        chunk, rows = item
        progress.advance(task, rows)
        return chunk

    try:
        report.rows_loaded = await pg.copy_in(
            conn, table.spec.name, tuple(c.name for c in load_columns(table.spec)), next_chunk
        )
    finally:
        stream.close()
    report.seconds = time.monotonic() - started
    progress.finish(task)
    if report.rows_loaded != stream.checksum.rows:
        raise MigrationError(
            f"{table.spec.name}: PostgreSQL counted {report.rows_loaded} rows, "
            f"{stream.checksum.rows} were sent"
        )
    return stream.checksum


def verify(
    users_db: Path, blog_db: Path, target: pg.Target, progress: ProgressSink | None = None
) -> MigrationResult:
    """Compare the sources with the target again: row counts and checksums per table.

    Rows that preflight rejects are left out of the source side, exactly as
    the migration left them out of the load.
    """
    try:
        return asyncio.run(_verify(users_db, blog_db, target, progress or NullProgress()))
    except KeyboardInterrupt:
        raise Interrupted("interrupted") from None


async def _verify(
    users_db: Path, blog_db: Path, target: pg.Target, progress: ProgressSink
) -> MigrationResult:
    started = time.monotonic()
    result = MigrationResult("verify")
    result.target = target.display
    sources = await _in_thread(lambda: _open_sources(users_db, blog_db))
    try:
        _describe_sources(sources, result)
        async with _connection(target) as conn:
            state = await pg.inspect(conn)
            if not state.has_schema:
                raise TargetError(f"{target.display} has no Titanium schema: nothing to verify")
            preflight_started = time.monotonic()
            result.preflight = await _cancellable(
                partial(_run_preflight, sources, state, None, progress)
            )
            result.phases["preflight"] = time.monotonic() - preflight_started
            verify_started = time.monotonic()
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                for source, table in sources.tables():
                    await _verify_table(conn, source, table, result, progress)
            result.phases["verify"] = time.monotonic() - verify_started
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise TargetError(f"{target.display}: {exc}") from exc
    finally:
        sources.close()
    bad = [t.table for t in result.tables if t.checksum_match is False]
    if bad:
        result.status = Status.MISMATCH
        result.message = f"target differs from the source in {', '.join(bad)}"
    else:
        result.status = Status.OK
        result.message = "row counts and checksums match"
    result.phases["total"] = time.monotonic() - started
    return result


async def _verify_table(
    conn: asyncpg.Connection,
    source: SourceFile,
    table: SourceTable,
    result: MigrationResult,
    progress: ProgressSink,
) -> None:
    name = table.spec.name
    report = result.table(name)
    report.rows_read = result.preflight.tables[name].rows
    report.rows_rejected = result.preflight.tables[name].rejected
    task = f"verify {name}"
    progress.start(task, report.rows_read - report.rows_rejected)
    started = time.monotonic()
    stream = SourceStream(source, table, exclude_rejected=report.rows_rejected > 0)
    # A column the source lacks but the target links after the load has nothing to compare.
    as_null = [column for column in table.missing if column in LINKED_AFTER_LOAD.get(name, ())]

    def drain() -> Checksum:
        while (item := stream.next_chunk()) is not None:
            progress.advance(task, item[1])
        return stream.checksum

    try:
        # Both sides at once: SQLite in a thread, PostgreSQL on the event loop.
        source_sum, target_sum = await asyncio.gather(
            _in_thread(drain), pg.checksum(conn, target_sql(table.spec, as_null=as_null))
        )
    finally:
        stream.close()
    progress.finish(task)
    report.seconds = time.monotonic() - started
    report.rows_loaded = source_sum.rows
    report.source_checksum = source_sum.hexdigest
    report.target_checksum = target_sum.hexdigest
    report.target_rows = target_sum.rows
