"""Preflight: every source row is checked before anything is written.

Rows are read in windows of 2,000 (by rowid). For each window one aggregate
query has SQLite check what is cheap for it (storage classes with typeof(),
references, duplicates, id ranges, the longest text) and concatenate each
text and timestamp column; Python then validates the concatenations with
C-level operations (one UTF-8 decode, strided slices and fromisoformat for
timestamps). SQLite does its part inside a single step in a reader thread,
without the GIL, while Python checks the previous window.

Only a window that fails is read again row by row, and only the rows that
fail there are examined value by value by the rules that decide and explain
(`_check_value`). Whatever a fast path accepts the detailed rules accept too;
a row a fast path flags may still be fine (a timestamp with an offset).

Rejected rows are remembered by rowid in a TEMP table of the source
connection (SQLite's temp store, on disk), so memory stays flat whatever
their number; the load pass leaves them out.
"""

import base64
import json
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

from titanium.migrate import timestamps
from titanium.migrate.errors import Interrupted
from titanium.migrate.progress import ProgressSink
from titanium.migrate.schema import ID_MAX, ID_MIN, ColumnSpec, Kind
from titanium.migrate.source import BatchReader, SourceFile, SourceTable, quote_ident

# Problems kept in memory for the summary and the JSON report; all of them go
# to the rejects file and into the counts.
KEEP_PROBLEMS = 1000
# Flagged rows examined per detailed query.
DETAIL_BATCH = 500

JsonValue = None | bool | int | float | str | dict[str, str]


@dataclass(frozen=True)
class Problem:
    """Why one value of one source row cannot be loaded."""

    table: str
    rowid: int
    id: JsonValue
    column: str
    storage_class: str
    code: str
    reason: str

    def as_json(self) -> dict[str, JsonValue]:
        """The problem as a JSON object."""
        return {
            "table": self.table,
            "rowid": self.rowid,
            "id": self.id,
            "column": self.column,
            "storage_class": self.storage_class,
            "code": self.code,
            "reason": self.reason,
        }


@dataclass
class TablePreflight:
    """Preflight outcome of one table."""

    table: str
    rows: int = 0
    rejected: int = 0
    examined: int = 0
    seconds: float = 0.0


@dataclass
class PreflightResult:
    """Outcome of the preflight over every table."""

    tables: dict[str, TablePreflight] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        """Rows with at least one problem."""
        return sum(table.rejected for table in self.tables.values())

    def add(self, problem: Problem) -> None:
        """Record a problem (the first KEEP_PROBLEMS are kept in full)."""
        self.problem_count += 1
        self.counts[(problem.table, problem.column, problem.code)] += 1
        if len(self.problems) < KEEP_PROBLEMS:
            self.problems.append(problem)


def json_value(storage_class: str, raw: object) -> JsonValue:
    """A stored SQLite value as JSON, losslessly.

    Text that is valid UTF-8 becomes a JSON string; BLOBs and text that is not
    valid UTF-8 become `{"base64": ...}` (standard alphabet, padded); REAL
    infinities become `{"real": "inf"}`.
    """
    if raw is None:
        return None
    if isinstance(raw, bytes):
        if storage_class == "text":
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(raw, float):
        if raw != raw or raw in (float("inf"), float("-inf")):
            return {"real": repr(raw)}
        return raw
    if isinstance(raw, int):
        return raw
    return str(raw)


def _preview(storage_class: str, raw: object) -> str:
    value = json_value(storage_class, raw)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


class RejectsWriter:
    """Writes rejected rows as JSON lines, one object per row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = path.open("w", encoding="utf-8")
        self.rows = 0

    def write(self, record: dict[str, Any]) -> None:
        """Append one rejected row."""
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.rows += 1

    def close(self) -> None:
        """Flush and close the file."""
        self._handle.close()


def rejected_table(table: str) -> str:
    """Name of the TEMP table holding the rowids preflight rejected."""
    return f"temp.titanium_rejected_{table}"


def valid_ids_table(table: str) -> str:
    """Name of the TEMP table holding the ids a reference to `table` may use."""
    return f"temp.titanium_valid_{table}"


def _duplicates_table(table: str, column: str) -> str:
    return f"temp.titanium_dup_{table}_{column}"


def _sql_test(table: SourceTable, column: ColumnSpec, duplicates: set[str]) -> str | None:
    """The checks that look at other rows, which only SQLite can make cheaply:
    references (`category_id`) and duplicates (unique columns)."""
    e = table.expr(column)
    tests = []
    if column.references:
        # NULL IN (...) is NULL: coalesce keeps NULLs passing with one reference.
        tests.append(f"coalesce({e} IN (SELECT id FROM {valid_ids_table(column.references)}), 1)")  # noqa: S608 - quoted identifiers only
    if column.name in duplicates:
        dup = _duplicates_table(table.spec.name, column.name)
        tests.append(f"coalesce(({e} COLLATE BINARY) NOT IN (SELECT v FROM {dup}), 1)")  # noqa: S608 - quoted identifiers only
    return " AND ".join(tests) if tests else None


# With text_factory=bytearray, TEXT arrives as bytearray and BLOB as bytes:
# the storage class is visible in Python without asking SQLite per value.
_TEXT_TYPE = bytearray
_NONE_TYPE = type(None)


def _text_is_clean(blob: bytes | bytearray) -> bool:
    if b"\0" in blob:
        return False
    if blob.isascii():  # word-at-a-time in C, far faster than decoding
        return True
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _column_ok(column: ColumnSpec, values: list[Any]) -> bool:
    """Fast check of one column over a whole batch; False means "look closer"."""
    types = set(map(type, values))
    if _NONE_TYPE in types:
        if not column.nullable:
            return False
        types.discard(_NONE_TYPE)
        values = [value for value in values if value is not None]
        if not values:
            return True
    if column.kind is Kind.INTEGER:
        return types == {int} and min(values) >= ID_MIN and max(values) <= ID_MAX
    if types != {_TEXT_TYPE}:
        return False
    if column.kind is Kind.TIMESTAMP:
        return timestamps.all_valid_fast(values)
    # Bytes never undercount characters, so a short enough byte length proves
    # the character limit; only longer values need decoding to count.
    if column.max_length is not None and max(map(len, values)) > column.max_length:
        return False
    # One C-level join and decode per batch instead of one per value.
    return _text_is_clean(b"\n".join(values))


def _value_ok(column: ColumnSpec, value: Any) -> bool:
    """`_column_ok` for one value."""
    if value is None:
        return column.nullable
    if column.kind is Kind.INTEGER:
        return type(value) is int and ID_MIN <= value <= ID_MAX
    if type(value) is not _TEXT_TYPE:
        return False
    if column.kind is Kind.TIMESTAMP:
        return timestamps.valid_fast(bytes(value))
    if not _text_is_clean(value):
        return False
    return column.max_length is None or len(value.decode("utf-8")) <= column.max_length


def _flag_batch(batch: list[tuple[Any, ...]], columns: list[ColumnSpec]) -> list[int]:
    """Rowids of the rows in a batch that need a closer look.

    Rows are (rowid, SQL test, value per column); most batches pass every
    column's batch check and cost no per-row Python at all.
    """
    by_column = list(zip(*batch, strict=True))  # one C-level transposition per batch
    flagged = {rowid for rowid, ok in zip(by_column[0], by_column[1], strict=True) if not ok}
    for position, column in enumerate(columns, start=2):
        values = list(by_column[position])
        if _column_ok(column, values):
            continue
        for row in batch:
            if row[0] not in flagged and not _value_ok(column, row[position]):
                flagged.add(row[0])
    return sorted(flagged)


# Rows per preflight window. Each window is one aggregate query: SQLite reads
# and checks the rows inside a single step (without the GIL, in the reader
# thread) while this thread decodes the previous window's text.
WINDOW_ROWS = 2000
_ROWID_MIN = -(2**63)
_ROWID_MAX = 2**63 - 1


def _window_source(table: SourceTable, checked: list[ColumnSpec], tests: list[str]) -> str:
    values = [f"{table.expr(c)} AS c{number}" for number, c in enumerate(checked)]
    ok = " AND ".join(tests) or "1"
    return (
        f"SELECT rowid AS r, {ok} AS ok, {', '.join(values)} FROM main.{quote_ident(table.name)} "  # noqa: S608 - quoted identifiers only
        f"WHERE rowid >= ? ORDER BY rowid LIMIT {WINDOW_ROWS}"
    )


def _storage_test(column: ColumnSpec, value: str) -> str:
    wanted = "'integer'" if column.kind is Kind.INTEGER else "'text'"
    if column.nullable:
        wanted += ", 'null'"
    return f"typeof({value}) IN ({wanted})"


def _window_sql(table: SourceTable, checked: list[ColumnSpec], tests: list[str]) -> str:
    """One row per window: row count, last rowid, whether every storage class and
    SQL test passed, then per column what Python needs (id range, longest text,
    the values joined by newlines)."""
    classes = " AND ".join(_storage_test(c, f"c{n}") for n, c in enumerate(checked)) or "1"
    aggregates = ["count(*)", "max(r)", f"min(ok AND {classes})"]
    for number, column in enumerate(checked):
        v = f"c{number}"
        if column.kind is Kind.INTEGER:
            aggregates += [f"min({v})", f"max({v})"]
        elif column.kind is Kind.TEXT and column.max_length is not None:
            aggregates += [f"max(length({v}))", f"group_concat({v}, x'0a')"]
        else:
            aggregates.append(f"group_concat({v}, x'0a')")
    return f"SELECT {', '.join(aggregates)} FROM ({_window_source(table, checked, tests)})"  # noqa: S608 - quoted identifiers only


def _rows_sql(table: SourceTable, checked: list[ColumnSpec], tests: list[str]) -> str:
    """The rows of one window, for a closer look (`_flag_batch`)."""
    values = ", ".join(f"c{number}" for number in range(len(checked)))
    return f"SELECT r, ok, {values} FROM ({_window_source(table, checked, tests)})"  # noqa: S608 - quoted identifiers only


def _windows(source: SourceFile, sql: str) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(first rowid, aggregate row) per window, in rowid order."""
    start = _ROWID_MIN
    while True:
        aggregate = source.execute(sql, (start,)).fetchone()
        if not aggregate or not aggregate[0]:
            return
        yield start, aggregate
        if aggregate[1] >= _ROWID_MAX:
            return
        start = aggregate[1] + 1


def _window_ok(aggregate: tuple[Any, ...], checked: list[ColumnSpec]) -> bool:
    """True when every row of a window certainly passes; False means "look closer"."""
    if not aggregate[2]:  # an SQL test or a storage class failed somewhere
        return False
    position = 3
    for column in checked:
        if column.kind is Kind.INTEGER:
            low, high = aggregate[position], aggregate[position + 1]
            position += 2
            if low is not None and not (low >= ID_MIN and high <= ID_MAX):
                return False
            continue
        if column.kind is Kind.TEXT and column.max_length is not None:
            longest = aggregate[position]
            position += 1
            if longest is not None and longest > column.max_length:
                return False
        joined = aggregate[position]
        position += 1
        if joined is None:  # only NULLs, which the storage-class test allowed
            continue
        if column.kind is Kind.TEXT:
            if not _text_is_clean(joined):
                return False
        elif not timestamps.joined_valid_fast(joined, joined.count(b"\n") + 1):
            return False
    return True


def _find_duplicates(source: SourceFile, table: SourceTable) -> set[str]:
    found = set()
    for column in table.spec.columns:
        if not column.unique or column.name not in table.matched:
            continue
        if column.name == "id" and table.id_is_rowid:
            continue
        e = table.expr(column)
        name = _duplicates_table(table.spec.name, column.name)
        source.execute(f"DROP TABLE IF EXISTS {name}")
        source.execute(f"CREATE TEMP TABLE {name.removeprefix('temp.')} (v PRIMARY KEY)")
        # BINARY: PostgreSQL's unique index compares bytes, whatever collation
        # the SQLite column was declared with.
        source.execute(
            f"INSERT INTO {name} SELECT {e} FROM main.{quote_ident(table.name)} "  # noqa: S608 - quoted identifiers only
            f"WHERE {e} IS NOT NULL GROUP BY {e} COLLATE BINARY HAVING count(*) > 1"
        )
        if source.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone() is not None:  # noqa: S608 - quoted identifiers only
            found.add(column.name)
    return found


def _raw_sql(expr: str) -> str:
    # Text and BLOBs as bytes, so invalid UTF-8 is seen rather than lost in decoding.
    return f"CASE WHEN typeof({expr}) IN ('text', 'blob') THEN CAST({expr} AS BLOB) ELSE {expr} END"


def preflight_table(
    source: SourceFile,
    table: SourceTable,
    result: PreflightResult,
    rejects: RejectsWriter | None,
    progress: ProgressSink,
    cancelled: threading.Event | None = None,
) -> TablePreflight:
    """Check every row of one table; record problems and the rejected rowids.

    `cancelled` (set on Ctrl-C) stops the scan at the next window.
    """

    started = time.monotonic()
    name = table.spec.name
    outcome = TablePreflight(name)
    rejected = rejected_table(name)
    source.execute(f"DROP TABLE IF EXISTS {rejected}")
    source.execute(f"CREATE TEMP TABLE {rejected.removeprefix('temp.')} (rid INTEGER PRIMARY KEY)")
    duplicates = _find_duplicates(source, table)
    checked = [c for c in table.spec.columns if c.name in table.matched]
    tests = [t for c in checked if (t := _sql_test(table, c, duplicates)) is not None]
    window = _window_sql(table, checked, tests)
    failed: list[int] = []
    task = f"preflight {name}"
    progress.start(task, table.rows)
    reader = BatchReader(source, partial(_windows, source, window))
    try:
        for start, aggregate in reader:
            if cancelled is not None and cancelled.is_set():
                raise Interrupted("interrupted during preflight; nothing was written")
            outcome.rows += aggregate[0]
            if not _window_ok(aggregate, checked):
                failed.append(start)
            progress.advance(task, aggregate[0])
    finally:
        reader.close()
    # Only windows that failed a check are read again row by row.
    flagged: array[int] = array("q")
    rows = _rows_sql(table, checked, tests)
    for start in failed:
        for batch in source.batches(rows, text_factory=_TEXT_TYPE, params=(start,)):
            flagged.extend(_flag_batch(batch, checked))
    progress.finish(task)
    outcome.examined = len(flagged)
    _examine(source, table, sorted(flagged), duplicates, result, rejects, outcome)
    outcome.seconds = time.monotonic() - started
    result.tables[name] = outcome
    return outcome


def _examine(
    source: SourceFile,
    table: SourceTable,
    rowids: list[int],
    duplicates: set[str],
    result: PreflightResult,
    rejects: RejectsWriter | None,
    outcome: TablePreflight,
) -> None:
    spec = table.spec
    select = ["rowid"]
    for name in table.columns:
        e = quote_ident(name)
        select += [f"typeof({e})", _raw_sql(e)]
    for column in spec.columns:
        e = table.expr(column)
        if column.name in duplicates:
            select.append(
                f"({e} COLLATE BINARY) IN "  # noqa: S608 - quoted identifiers only
                f"(SELECT v FROM {_duplicates_table(spec.name, column.name)})"
            )
        else:
            select.append("0")
        if column.references:
            select.append(f"{e} IN (SELECT id FROM {valid_ids_table(column.references)})")  # noqa: S608 - quoted identifiers only
        else:
            select.append("1")
    position = {name.lower(): index for index, name in enumerate(table.columns)}
    base = f"SELECT {', '.join(select)} FROM main.{quote_ident(table.name)} WHERE rowid IN "  # noqa: S608 - quoted identifiers only
    for start in range(0, len(rowids), DETAIL_BATCH):
        chunk = rowids[start : start + DETAIL_BATCH]
        placeholders = ", ".join("?" * len(chunk))
        rows = source.execute(f"{base}({placeholders}) ORDER BY rowid", tuple(chunk)).fetchall()
        bad: list[tuple[int]] = []
        for row in rows:
            problems = _check_row(table, row, position)
            if not problems:
                continue
            outcome.rejected += 1
            bad.append((row[0],))
            for problem in problems:
                result.add(problem)
            if rejects is not None:
                rejects.write(_reject_record(table, row, problems))
        if bad:
            source.connection.executemany(
                f"INSERT INTO {rejected_table(spec.name)} (rid) VALUES (?)",  # noqa: S608 - quoted identifiers only
                bad,
            )


def _decode(raw: object) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _check_row(table: SourceTable, row: tuple[Any, ...], position: dict[str, int]) -> list[Problem]:
    spec = table.spec
    rowid = int(row[0])
    flags_at = 1 + 2 * len(table.columns)
    id_index = position.get(table.matched.get("id", "").lower())
    row_id = (
        json_value(_decode(row[1 + 2 * id_index]), row[2 + 2 * id_index])
        if id_index is not None
        else None
    )
    problems = []
    for number, column in enumerate(spec.columns):
        source_name = table.matched.get(column.name)
        if source_name is None:
            storage_class, raw = "absent", None
        else:
            index = position[source_name.lower()]
            storage_class, raw = _decode(row[1 + 2 * index]), row[2 + 2 * index]
        duplicate = bool(row[flags_at + 2 * number])
        referenced = bool(row[flags_at + 2 * number + 1])
        found = _check_value(column, storage_class, raw, duplicate, referenced)
        if found is not None:
            code, reason = found
            problems.append(
                Problem(spec.name, rowid, row_id, column.name, storage_class, code, reason)
            )
    return problems


def _check_value(
    column: ColumnSpec, storage_class: str, raw: object, duplicate: bool, referenced: bool
) -> tuple[str, str] | None:
    if storage_class in ("null", "absent"):
        if column.nullable:
            return None
        return "not_null", f"NULL in NOT NULL column {column.name}"
    if column.kind is Kind.INTEGER:
        return _check_integer(column, storage_class, raw, duplicate, referenced)
    if column.kind is Kind.TEXT:
        return _check_text(column, storage_class, raw, duplicate)
    try:
        timestamps.parse(storage_class, raw)
    except timestamps.TimestampError as exc:
        return "timestamp", str(exc)
    return None


def _check_integer(
    column: ColumnSpec, storage_class: str, raw: object, duplicate: bool, referenced: bool
) -> tuple[str, str] | None:
    if storage_class != "integer" or not isinstance(raw, int):
        return (
            "not_integer",
            f"{storage_class.upper()} {_preview(storage_class, raw)} is not an integer",
        )
    if not ID_MIN <= raw <= ID_MAX:
        return "out_of_range", f"{raw} is outside {ID_MIN}..{ID_MAX} (PostgreSQL INTEGER ids)"
    if duplicate:
        return "duplicate", f"{column.name} {raw} appears in more than one row"
    if column.references and not referenced:
        return (
            "dangling_reference",
            f"{column.name} {raw} matches no {column.references} row that will be loaded",
        )
    return None


def _check_text(
    column: ColumnSpec, storage_class: str, raw: object, duplicate: bool
) -> tuple[str, str] | None:
    if storage_class != "text" or not isinstance(raw, bytes):
        return (
            "not_text",
            f"{storage_class.upper()} {_preview(storage_class, raw)} in a text column "
            "(converting it would be a guess)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            "invalid_utf8",
            f"not valid UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})",
        )
    if "\0" in text:
        return (
            "nul",
            f"contains NUL (U+0000) at character {text.index(chr(0))}, "
            "which PostgreSQL text cannot hold",
        )
    if column.max_length is not None and len(text) > column.max_length:
        return "too_long", f"{len(text)} characters, longer than {column.type_name}"
    if duplicate:
        return (
            "duplicate",
            f"{column.name} {_preview(storage_class, raw)} appears in more than one row",
        )
    return None


def _reject_record(
    table: SourceTable, row: tuple[Any, ...], problems: list[Problem]
) -> dict[str, Any]:
    values: dict[str, JsonValue] = {}
    classes: dict[str, str] = {}
    for index, column in enumerate(table.columns):
        storage_class = _decode(row[1 + 2 * index])
        classes[column] = storage_class
        values[column] = json_value(storage_class, row[2 + 2 * index])
    return {
        "table": table.spec.name,
        "source_table": table.name,
        "rowid": int(row[0]),
        "id": problems[0].id,
        "problems": [
            {
                "column": p.column,
                "storage_class": p.storage_class,
                "code": p.code,
                "reason": p.reason,
            }
            for p in problems
        ],
        "row": values,
        "storage_classes": classes,
    }


def prepare_valid_ids(source: SourceFile, table: str, ids_sql: str | None, ids: list[int]) -> None:
    """Fill the TEMP table of ids that references to `table` may use.

    Either from the source (`ids_sql`, the rows of `table` preflight kept) or
    from a list (the target's existing rows when the source lacks the table).
    """
    name = valid_ids_table(table)
    source.execute(f"DROP TABLE IF EXISTS {name}")
    source.execute(f"CREATE TEMP TABLE {name.removeprefix('temp.')} (id INTEGER PRIMARY KEY)")
    if ids_sql is not None:
        source.execute(f"INSERT OR IGNORE INTO {name} (id) {ids_sql}")
    else:
        source.connection.executemany(
            f"INSERT OR IGNORE INTO {name} (id) VALUES (?)",  # noqa: S608 - quoted identifiers only
            [(i,) for i in ids],
        )
