"""The detailed pass: the rows the fast path flagged, judged value by value.

Each flagged row is read again with every source column's storage class and
raw value (TEXT and BLOB as bytes, so invalid UTF-8 is seen rather than lost
in decoding) and what SQLite knows about the other rows. A row with any
problem is rejected: its problems go to the result, the row to the rejects
file and its rowid to the TEMP table the load leaves out.
"""

from typing import Any

from titanium.migrate.problems import PreflightResult, Problem, RejectsWriter, TablePreflight
from titanium.migrate.rules import OtherRows, check_value
from titanium.migrate.source import SourceFile, SourceTable, quote_ident
from titanium.migrate.temp_tables import duplicate_sql, record_rejected, referenced_sql
from titanium.migrate.values import ABSENT, SourceRow, StoredValue, json_value

# Flagged rows examined per detailed query.
DETAIL_BATCH = 500


def examine(
    source: SourceFile,
    table: SourceTable,
    rowids: list[int],
    duplicates: set[str],
    result: PreflightResult,
    rejects: RejectsWriter | None,
    outcome: TablePreflight,
) -> None:
    """Judge the rows at `rowids`; record every rejected row and its problems."""
    select = _select(table, duplicates)
    for start in range(0, len(rowids), DETAIL_BATCH):
        chunk = rowids[start : start + DETAIL_BATCH]
        placeholders = ", ".join("?" * len(chunk))
        found = source.execute(f"{select}({placeholders}) ORDER BY rowid", tuple(chunk))
        rejected: list[int] = []
        for fetched_row in found.fetchall():
            row, other_rows = _parse(table, fetched_row)
            problems = _problems(table, row, other_rows)
            if not problems:
                continue
            outcome.rejected += 1
            rejected.append(row.rowid)
            for problem in problems:
                result.add(problem)
            if rejects is not None:
                rejects.write(table, row, problems)
        if rejected:
            record_rejected(source, table.spec.name, rejected)


def _raw_sql(expr: str) -> str:
    # Text and BLOBs as bytes, so invalid UTF-8 is seen rather than lost in decoding.
    return f"CASE WHEN typeof({expr}) IN ('text', 'blob') THEN CAST({expr} AS BLOB) ELSE {expr} END"


def _select(table: SourceTable, duplicates: set[str]) -> str:
    """The detailed query, up to its rowid list: the rowid, (storage class, raw value)
    per source column, then (duplicate, referenced) per target column."""
    select = ["rowid"]
    for name in table.columns:
        select += [f"typeof({quote_ident(name)})", _raw_sql(quote_ident(name))]
    for column in table.spec.columns:
        select.append(duplicate_sql(table, column) if column.name in duplicates else "0")
        select.append(referenced_sql(table, column) if column.references else "1")
    return f"SELECT {', '.join(select)} FROM main.{quote_ident(table.name)} WHERE rowid IN "  # noqa: S608 - quoted identifiers only


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _parse(table: SourceTable, found: tuple[Any, ...]) -> tuple[SourceRow, dict[str, OtherRows]]:
    """A row of `_select` as the source row and, per target column, what the other rows say."""
    rowid, *rest = found
    width = 2 * len(table.columns)
    stored, flags = rest[:width], rest[width:]
    values = {
        name: StoredValue(_text(storage_class), raw)
        for name, storage_class, raw in zip(table.columns, stored[0::2], stored[1::2], strict=True)
    }
    other_rows = {
        column.name: OtherRows(duplicate=bool(duplicate), referenced=bool(referenced))
        for column, duplicate, referenced in zip(
            table.spec.columns, flags[0::2], flags[1::2], strict=True
        )
    }
    return SourceRow(int(rowid), values), other_rows


def _problems(
    table: SourceTable, row: SourceRow, other_rows: dict[str, OtherRows]
) -> list[Problem]:
    source_id = table.matched.get("id")
    row_id = json_value(row.values[source_id]) if source_id is not None else None
    problems = []
    for column in table.spec.columns:
        source_name = table.matched.get(column.name)
        value = row.values[source_name] if source_name is not None else ABSENT
        found = check_value(column, value, other_rows[column.name])
        if found is not None:
            problems.append(
                Problem(
                    table=table.spec.name,
                    rowid=row.rowid,
                    id=row_id,
                    column=column.name,
                    storage_class=value.storage_class,
                    code=found.code,
                    reason=found.reason,
                )
            )
    return problems
