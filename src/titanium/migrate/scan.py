"""The fast path of preflight: a table checked a window of rows at a time.

Rows are read in windows of WINDOW_ROWS (by rowid). For each window one
aggregate query has SQLite check what is cheap for it (storage classes with
typeof(), the other-row tests, id ranges, the longest text) and concatenate
each text and timestamp column; Python then validates the concatenations with
C-level operations (one UTF-8 decode, strided slices and fromisoformat for
timestamps). SQLite does its part inside a single step in a reader thread,
without the GIL, while Python checks the previous window.

Only a window that fails is read again row by row (`_flag_batch`): there a
column that fails its batch check has each value judged by `rules`, and the
rows flagged go to the detailed pass (`examine`). The text and integer checks
apply the predicates of `rules` to bounds (the longest text, the smallest and
largest id), so whatever they accept the rules accept too
(tests/test_sqlite_to_postgres_preflight.py checks it on generated values); a value they
refuse may still be fine (a timestamp with an offset). The timestamp check takes
the number of values from SQLite's count(), never from the newlines of the
concatenation: a value holding a newline (two timestamps in one) would otherwise
be split into values that each look good.
"""

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from titanium.migrate import timestamps
from titanium.migrate.rules import check_value, fits_length, integer_fits, text_is_clean
from titanium.migrate.schema import ColumnSpec, Kind
from titanium.migrate.source import SourceFile, SourceTable, quote_ident
from titanium.migrate.temp_tables import other_rows_test
from titanium.migrate.values import TEXT_TYPE, fetched

# Rows per window, each one aggregate query (see above).
WINDOW_ROWS = 2000
_ROWID_MIN = -(2**63)
_ROWID_MAX = 2**63 - 1
_NONE_TYPE = type(None)


class ColumnSummary(NamedTuple):
    """What SQLite reports about one column over a window; None where not asked."""

    low: int | None  # INTEGER columns: the smallest value
    high: int | None  # INTEGER columns: the largest value
    longest: int | None  # TEXT columns with a limit: the most characters
    joined: bytes | None  # TEXT and TIMESTAMP columns: every value, joined by newlines
    present: int | None  # TIMESTAMP columns: how many values are not NULL (SQLite's count)


class WindowSummary(NamedTuple):
    """One window's aggregate row."""

    start: int  # the rowid the window's query started from
    rows: int
    last_rowid: int
    passed: bool  # every storage class and other-row test held
    columns: tuple[ColumnSummary, ...]


def _aggregates(column: ColumnSpec, value: str) -> tuple[str, str, str, str, str]:
    """SQL for the fields of ColumnSummary (NULL where the column's checks need none)."""
    if column.kind is Kind.INTEGER:
        return f"min({value})", f"max({value})", "NULL", "NULL", "NULL"
    if column.kind is Kind.TIMESTAMP:
        # The count splits the concatenation; its newlines cannot (a value may hold one).
        return "NULL", "NULL", "NULL", f"group_concat({value}, x'0a')", f"count({value})"
    longest = "NULL"
    if column.max_length is not None:
        longest = f"max(length({value}))"
    return "NULL", "NULL", longest, f"group_concat({value}, x'0a')", "NULL"


def _storage_test(column: ColumnSpec, value: str) -> str:
    wanted = "'integer'" if column.kind is Kind.INTEGER else "'text'"
    if column.nullable:
        wanted += ", 'null'"
    return f"typeof({value}) IN ({wanted})"


@dataclass(frozen=True)
class Scan:
    """The fast checks of one table: the columns the source has, and the other-row tests."""

    table: SourceTable
    columns: tuple[ColumnSpec, ...]
    tests: tuple[str, ...]

    @classmethod
    def of(cls, table: SourceTable, duplicates: set[str]) -> "Scan":
        """The scan of a table whose unique columns with repeated values are `duplicates`."""
        columns = tuple(c for c in table.spec.columns if c.name in table.matched)
        tests = tuple(t for c in columns if (t := other_rows_test(table, c, duplicates)))
        return cls(table, columns, tests)

    def _window_source(self) -> str:
        values = [f"{self.table.expr(c)} AS c{number}" for number, c in enumerate(self.columns)]
        ok = " AND ".join(self.tests) or "1"
        return (
            f"SELECT rowid AS r, {ok} AS ok, {', '.join(values)} "  # noqa: S608 - quoted identifiers only
            f"FROM main.{quote_ident(self.table.name)} "
            f"WHERE rowid >= ? ORDER BY rowid LIMIT {WINDOW_ROWS}"
        )

    def window_sql(self) -> str:
        """The aggregate query of one window, its fields in WindowSummary's order."""
        classes = [_storage_test(c, f"c{n}") for n, c in enumerate(self.columns)]
        aggregates = ["count(*)", "max(r)", f"min(ok AND {' AND '.join(classes) or '1'})"]
        for number, column in enumerate(self.columns):
            aggregates += _aggregates(column, f"c{number}")
        return f"SELECT {', '.join(aggregates)} FROM ({self._window_source()})"  # noqa: S608 - quoted identifiers only

    def rows_sql(self) -> str:
        """The rows of one window as (rowid, other-row tests passed, value per column)."""
        values = ", ".join(f"c{number}" for number in range(len(self.columns)))
        return f"SELECT r, ok, {values} FROM ({self._window_source()})"  # noqa: S608 - quoted identifiers only

    def windows(self, source: SourceFile) -> Iterator[WindowSummary]:
        """The summary of every window, in rowid order."""
        sql = self.window_sql()
        width = len(ColumnSummary._fields)
        start = _ROWID_MIN
        while True:
            found = source.execute(sql, (start,)).fetchone()
            if found is None or not found[0]:
                return
            rows, last_rowid, passed, *per_column = found
            columns = tuple(
                ColumnSummary(*per_column[at : at + width])
                for at in range(0, len(per_column), width)
            )
            yield WindowSummary(start, rows, last_rowid, bool(passed), columns)
            if last_rowid >= _ROWID_MAX:
                return
            start = last_rowid + 1

    def window_ok(self, window: WindowSummary) -> bool:
        """True when every row of a window certainly passes; False means "look closer"."""
        return window.passed and all(
            _summary_ok(column, summary)
            for column, summary in zip(self.columns, window.columns, strict=True)
        )

    def flagged(self, source: SourceFile, starts: list[int]) -> list[int]:
        """Rowids, in order, of the rows of the windows at `starts` that need a closer look."""
        sql = self.rows_sql()
        found: array[int] = array("q")
        for start in starts:
            for batch in source.batches(sql, text_factory=TEXT_TYPE, params=(start,)):
                found.extend(_flag_batch(batch, self.columns))
        return sorted(found)


def _summary_ok(column: ColumnSpec, summary: ColumnSummary) -> bool:
    # A field is None when the window holds only NULLs, which the storage-class test allowed.
    if column.kind is Kind.INTEGER:
        if summary.low is None or summary.high is None:
            return True
        return integer_fits(summary.low) and integer_fits(summary.high)
    if summary.longest is not None and not fits_length(column, summary.longest):
        return False
    if summary.joined is None:
        return True
    if column.kind is Kind.TEXT:
        return text_is_clean(summary.joined)
    # joined_valid_fast requires exactly present - 1 newlines, so a value holding one
    # fails here and is judged by the rules.
    return summary.present is not None and timestamps.joined_valid_fast(
        summary.joined, summary.present
    )


def column_ok(column: ColumnSpec, values: list[Any]) -> bool:
    """Fast check of one column over a batch (values as fetched); False means "look closer"."""
    types = set(map(type, values))
    if _NONE_TYPE in types:
        if not column.nullable:
            return False
        types.discard(_NONE_TYPE)
        values = [value for value in values if value is not None]
        if not values:
            return True
    if column.kind is Kind.INTEGER:
        return types == {int} and integer_fits(min(values)) and integer_fits(max(values))
    if types != {TEXT_TYPE}:
        return False
    if column.kind is Kind.TIMESTAMP:
        return timestamps.all_valid_fast(values)
    # Bytes never undercount characters, so a short enough byte length proves
    # the character limit; only longer values need decoding to count.
    if not fits_length(column, max(map(len, values))):
        return False
    # One C-level join and decode per batch instead of one per value.
    return text_is_clean(b"\n".join(values))


def _flag_batch(batch: list[tuple[Any, ...]], columns: tuple[ColumnSpec, ...]) -> list[int]:
    """Rowids of the rows of a batch (as `Scan.rows_sql` returns them) that need a closer look.

    A column that passes its batch check costs no per-row Python; in one that
    does not, each value is judged by the rules on its own.
    """
    rowids, passed, *by_column = zip(*batch, strict=True)  # one C-level transposition
    flagged = {rowid for rowid, ok in zip(rowids, passed, strict=True) if not ok}
    for column, values in zip(columns, by_column, strict=True):
        if column_ok(column, list(values)):
            continue
        for rowid, value in zip(rowids, values, strict=True):
            if rowid not in flagged and check_value(column, fetched(value)) is not None:
                flagged.add(rowid)
    return sorted(flagged)
