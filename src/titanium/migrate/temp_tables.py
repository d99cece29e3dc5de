"""The TEMP tables preflight keeps in a source connection, and the SQL that reads them.

SQLite's temp store is on disk, so memory stays flat whatever their size:
- the rowids preflight rejected, per table (the load and checksums leave them out);
- the ids a reference may use (`category_id`: the categories that will be loaded);
- the values of a unique column that occur in more than one row.

These are the checks that look at other rows, which only SQLite can make cheaply.
"""

from titanium.migrate.schema import ColumnSpec
from titanium.migrate.source import SourceFile, SourceTable, quote_ident


def rejected_table(table: str) -> str:
    """Name of the TEMP table holding the rowids preflight rejected."""
    return f"temp.titanium_rejected_{table}"


def _valid_ids_table(table: str) -> str:
    """Name of the TEMP table holding the ids a reference to `table` may use."""
    return f"temp.titanium_valid_{table}"


def _duplicates_table(table: str, column: str) -> str:
    return f"temp.titanium_dup_{table}_{column}"


def _create(source: SourceFile, name: str, columns: str) -> None:
    source.execute(f"DROP TABLE IF EXISTS {name}")
    source.execute(f"CREATE TEMP TABLE {name.removeprefix('temp.')} ({columns})")


def create_rejected(source: SourceFile, table: str) -> None:
    """Start an empty set of rejected rowids for `table`."""
    _create(source, rejected_table(table), "rid INTEGER PRIMARY KEY")


def record_rejected(source: SourceFile, table: str, rowids: list[int]) -> None:
    """Add rowids to the rejected set of `table`."""
    source.connection.executemany(
        f"INSERT INTO {rejected_table(table)} (rid) VALUES (?)",  # noqa: S608 - quoted identifiers only
        [(rowid,) for rowid in rowids],
    )


def prepare_valid_ids(source: SourceFile, table: str, ids_sql: str | None, ids: list[int]) -> None:
    """Fill the TEMP table of ids that references to `table` may use.

    Either from the source (`ids_sql`, the rows of `table` preflight kept) or
    from a list (the target's existing rows when the source lacks the table).
    """
    name = _valid_ids_table(table)
    _create(source, name, "id INTEGER PRIMARY KEY")
    if ids_sql is not None:
        source.execute(f"INSERT OR IGNORE INTO {name} (id) {ids_sql}")
    else:
        source.connection.executemany(
            f"INSERT OR IGNORE INTO {name} (id) VALUES (?)",  # noqa: S608 - quoted identifiers only
            [(i,) for i in ids],
        )


def find_duplicates(source: SourceFile, table: SourceTable) -> set[str]:
    """Fill a TEMP table per unique column with its repeated values; the columns that have any."""
    found = set()
    for column in table.spec.columns:
        if not column.unique or column.name not in table.matched:
            continue
        if column.name == "id" and table.id_is_rowid:
            continue
        e = table.expr(column)
        name = _duplicates_table(table.spec.name, column.name)
        _create(source, name, "v PRIMARY KEY")
        # BINARY: PostgreSQL's unique index compares bytes, whatever collation
        # the SQLite column was declared with.
        source.execute(
            f"INSERT INTO {name} SELECT {e} FROM main.{quote_ident(table.name)} "  # noqa: S608 - quoted identifiers only
            f"WHERE {e} IS NOT NULL GROUP BY {e} COLLATE BINARY HAVING count(*) > 1"
        )
        if source.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone() is not None:  # noqa: S608 - quoted identifiers only
            found.add(column.name)
    return found


def duplicate_sql(table: SourceTable, column: ColumnSpec) -> str:
    """SQL that is true when the row's value of a unique column occurs in other rows too."""
    dup = _duplicates_table(table.spec.name, column.name)
    return f"({table.expr(column)} COLLATE BINARY) IN (SELECT v FROM {dup})"  # noqa: S608 - quoted identifiers only


def referenced_sql(table: SourceTable, column: ColumnSpec) -> str:
    """SQL that is true when the row's reference matches a row that will be loaded."""
    assert column.references is not None
    return f"{table.expr(column)} IN (SELECT id FROM {_valid_ids_table(column.references)})"  # noqa: S608 - quoted identifiers only


def other_rows_test(table: SourceTable, column: ColumnSpec, duplicates: set[str]) -> str | None:
    """SQL that is true when no other row stands in the way of the row's value, if any applies."""
    tests = []
    # NULL IN (...) is NULL: coalesce lets NULLs pass, the NOT NULL rule is elsewhere.
    if column.references:
        tests.append(f"coalesce({referenced_sql(table, column)}, 1)")
    if column.name in duplicates:
        tests.append(f"coalesce(NOT ({duplicate_sql(table, column)}), 1)")
    return " AND ".join(tests) if tests else None
