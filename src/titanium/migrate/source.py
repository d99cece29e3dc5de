"""Reading the source SQLite files: read-only, from one consistent snapshot.

Each file is opened with `mode=ro` (never `immutable`: the old service may
still be writing) and read inside one read transaction, so the preflight pass
and the load pass see the same rows even while another process commits. In WAL
mode that snapshot does not block the writer; in rollback-journal mode the
writer waits for our shared lock, which is why the runbook asks for a
read-only window. The database file itself is never written; SQLite may create
its `-wal`/`-shm` side files, as any reader does.
"""

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from titanium.migrate import timestamps
from titanium.migrate.errors import SourceError
from titanium.migrate.schema import ColumnSpec, TableSpec
from titanium.security.usernames import assign_keys

# Rows per fetch: large enough to amortise Python's per-call cost, small enough
# (a few MB of posts) to keep memory flat whatever the size of the file.
BATCH_ROWS = 2000
# Batches queued between the reading thread and the consumer.
QUEUE_DEPTH = 4
# SQLite's page cache per connection (negative = KiB); no mmap, so the resident
# size does not grow with the file.
CACHE_KIB = 4 * 1024
MIN_SQLITE = (3, 37, 0)


def quote_ident(name: str) -> str:
    """An SQL identifier, quoted for SQLite and PostgreSQL alike."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class SourceTable:
    """A source table as found in the file, matched by column name to a target table."""

    spec: TableSpec
    name: str
    columns: list[str]
    matched: dict[str, str]
    ignored: list[str]
    high_water_mark: int | None
    id_is_rowid: bool = False
    rows: int = 0
    # Target columns the source lacks but that are computed from it: SQL per column.
    derived: dict[str, str] = field(default_factory=dict)

    def expr(self, column: ColumnSpec) -> str:
        """SQL expression for a target column: the source column, or NULL when absent."""
        if column.name in self.derived:
            return self.derived[column.name]
        source = self.matched.get(column.name)
        return quote_ident(source) if source is not None else "NULL"

    @property
    def missing(self) -> list[str]:
        """Target columns the source does not have (loaded as NULL)."""
        return [
            c.name
            for c in self.spec.columns
            if c.name not in self.matched and c.name not in self.derived
        ]


@dataclass
class SourceFile:
    """One SQLite file, open read-only inside a single read transaction."""

    path: Path
    connection: sqlite3.Connection
    journal_mode: str
    tables: dict[str, SourceTable] = field(default_factory=dict)

    def close(self) -> None:
        """End the read transaction and close the file."""
        # Nothing was written, so a failed ROLLBACK (no transaction) changes nothing.
        with contextlib.suppress(sqlite3.Error):
            self.connection.execute("ROLLBACK")
        self.connection.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Run a statement, turning SQLite errors into SourceError."""
        try:
            return self.connection.execute(sql, params)
        except sqlite3.Error as exc:
            raise SourceError(f"{self.path}: {exc}") from exc

    def batches(
        self,
        sql: str,
        text_factory: type = bytes,
        rows: int = BATCH_ROWS,
        params: tuple[Any, ...] = (),
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Fetch a query's rows in batches, in the caller's thread.

        TEXT values arrive as `text_factory` (bytes by default: no decoding,
        so invalid UTF-8 is data to report rather than an exception).
        """
        self.connection.text_factory = text_factory
        try:
            cursor = self.execute(sql, params)
            try:
                while batch := cursor.fetchmany(rows):
                    yield batch
            except sqlite3.Error as exc:
                raise SourceError(f"{self.path}: {exc}") from exc
            finally:
                cursor.close()
        finally:
            self.connection.text_factory = bytes


def _ts_function(storage_class: str, value: object) -> str | None:
    # Called by SQLite for timestamps outside the fast path; rows that reach the
    # load were already accepted by the same function, so None never happens there.
    try:
        return timestamps.parse(storage_class, value)
    except timestamps.TimestampError:
        return None


def open_source(path: Path, specs: tuple[TableSpec, ...]) -> SourceFile:
    """Open a SQLite file read-only, start its snapshot and match its tables to `specs`."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        # pragma_table_list (3.37) tells WITHOUT ROWID tables apart.
        raise SourceError(f"SQLite {sqlite3.sqlite_version} is too old; 3.37 or newer is needed")
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        # isolation_level=None: the transaction below is ours, not the driver's.
        connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise SourceError(f"{path}: cannot open read-only ({exc})") from exc
    connection.text_factory = bytes
    connection.create_function("titanium_ts", 2, _ts_function, deterministic=True)
    source = SourceFile(path, connection, journal_mode="?")
    try:
        source.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        source.execute("PRAGMA temp_store=FILE")
        source.execute("BEGIN")
        # The first read fixes the snapshot every later query of this run sees.
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        source.journal_mode = _text(source.execute("PRAGMA journal_mode").fetchone()[0])
        for spec in specs:
            table = _match(source, spec)
            if table is not None:
                source.tables[spec.name] = table
    except BaseException:
        source.close()
        raise
    return source


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _match(source: SourceFile, spec: TableSpec) -> SourceTable | None:
    found = source.execute(
        "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND lower(name) = ?",
        (spec.name,),
    ).fetchone()
    if found is None:
        if spec.required:
            raise SourceError(f"{source.path}: has no table {spec.name}")
        return None
    name, without_rowid = _text(found[0]), found[1]
    if without_rowid:
        raise SourceError(f"{source.path}: table {name} is WITHOUT ROWID, which is not supported")
    info = source.execute("SELECT name, type, pk FROM pragma_table_info(?)", (name,)).fetchall()
    columns = [_text(row[0]) for row in info]
    primary = [row for row in info if row[2]]
    # `id INTEGER PRIMARY KEY` is the rowid itself: always a unique integer.
    rowid_alias = (
        len(primary) == 1
        and _text(primary[0][0]).lower() == "id"
        and _text(primary[0][1]).upper() == "INTEGER"
    )
    by_lower = {column.lower(): column for column in columns}
    matched = {c.name: by_lower[c.name] for c in spec.columns if c.name in by_lower}
    for column in spec.columns:
        if column.name not in matched and not column.nullable:
            raise SourceError(
                f"{source.path}: table {name} has no column {column.name}, which is required"
            )
    wanted = set(spec.column_names)
    ignored = [column for column in columns if column.lower() not in wanted]
    table = SourceTable(
        spec, name, columns, matched, ignored, _high_water_mark(source, name), rowid_alias
    )
    table.rows = int(source.execute(f"SELECT count(*) FROM main.{quote_ident(name)}").fetchone()[0])  # noqa: S608 - quoted identifiers only
    if spec.name == "users" and "username_key" not in matched:
        _derive_username_keys(source, table)
    return table


USERNAME_KEYS = "temp.titanium_username_keys"


def _derive_username_keys(source: SourceFile, table: SourceTable) -> None:
    """Keys for a source from before them (the original system's file): revision 0003's rule.

    Computed once per run into a TEMP table, so that preflight, the COPY and
    `migrate verify` all read the same keys. Rows whose id or username cannot
    be loaded get none (preflight rejects them anyway).
    """
    id_expr, name_expr = (quote_ident(table.matched[c]) for c in ("id", "username"))
    rows = source.execute(
        f"SELECT rowid, {name_expr} FROM main.{quote_ident(table.name)} "  # noqa: S608 - quoted identifiers only
        f"WHERE typeof({id_expr}) = 'integer' AND typeof({name_expr}) = 'text' "
        f"ORDER BY {id_expr}, rowid"
    ).fetchall()
    named: list[tuple[int, str]] = []
    for position, (_rowid, raw) in enumerate(rows):
        try:
            named.append((position, raw.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    keys = assign_keys(named)
    source.execute(f"CREATE TEMP TABLE {USERNAME_KEYS} (rid INTEGER PRIMARY KEY, key TEXT)")
    source.connection.executemany(
        f"INSERT INTO {USERNAME_KEYS} (rid, key) VALUES (?, ?)",  # noqa: S608 - fixed name
        [(rows[position][0], key) for position, key in keys.items() if key is not None],
    )
    table.derived["username_key"] = (
        f"(SELECT key FROM {USERNAME_KEYS} WHERE rid = main.{quote_ident(table.name)}.rowid)"  # noqa: S608 - quoted identifiers only
    )


def _high_water_mark(source: SourceFile, table: str) -> int | None:
    # AUTOINCREMENT remembers the largest id ever handed out, even if that row
    # was deleted; the target's sequence must not reuse it.
    exists = source.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone()
    if exists is None:
        return None
    row = source.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    if row is None or not isinstance(row[0], int):
        return None
    return int(row[0])


class BatchReader:
    """Produces items in a background thread and hands them over a bounded queue.

    sqlite3 releases the GIL while SQLite steps, so reading overlaps with what
    the consumer does with the previous item. The source connection must not
    be used by anyone else until the reader is closed.
    """

    _DONE = object()

    def __init__(
        self,
        source: SourceFile,
        items: Callable[[], Iterator[Any]],
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self._source = source
        self._items = items
        self._transform = transform
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="titanium-sqlite-reader")
        self._thread.daemon = True
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for produced in self._items():
                item = self._transform(produced) if self._transform else produced
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def get(self) -> Any | None:
        """The next batch (transformed), or None at the end; re-raises the reader's error."""
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                # A closed reader must not leave a caller (an executor thread) blocked,
                # and an early end must never pass for the end of the data.
                if self._stop.is_set() or not self._thread.is_alive():
                    raise SourceError(f"{self._source.path}: reading stopped early") from None
        if item is self._DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[Any]:
        while (item := self.get()) is not None:
            yield item

    def close(self) -> None:
        """Stop the reader and wait for its thread."""
        self._stop.set()
        self._thread.join()
