"""The COPY stream of a table, and the checksum over it.

SQLite builds each row as its raw values joined by the bytes 0xFF (between
columns) and 0xFE (between rows), with 0xFD for NULL. None of these bytes can
occur in valid UTF-8, which preflight guarantees for every loaded value, so a
batch can then be turned into PostgreSQL's COPY text format with a few
`bytes.replace` calls in C, instead of a Python loop per value (SQLite's own
`replace()` is many times slower).

The result is exactly what `COPY (SELECT ...) TO STDOUT` prints for the loaded
rows (same escapes, timestamps as PostgreSQL prints them, rows in
id order), so the checksum on both sides is a SHA-256 over the same bytes:
computed over what is sent during the load, and over what PostgreSQL gives back
when verifying.
"""

import hashlib
from collections.abc import Collection
from typing import cast

from titanium.migrate import timestamps
from titanium.migrate.errors import SourceError
from titanium.migrate.schema import ColumnSpec, Kind, TableSpec
from titanium.migrate.source import BatchReader, SourceFile, SourceTable, quote_ident
from titanium.migrate.temp_tables import rejected_table

_COLUMN = b"\xff"
_ROW = b"\xfe"
_NULL = b"\xfd"
# PostgreSQL's COPY text format escapes, in the order that keeps them unambiguous:
# backslashes first, then the characters COPY TO writes as escapes.
_ESCAPES = (
    (b"\\", b"\\\\"),
    (b"\t", b"\\t"),
    (b"\n", b"\\n"),
    (b"\r", b"\\r"),
    (b"\x08", b"\\b"),
    (b"\x0b", b"\\v"),
    (b"\x0c", b"\\f"),
    (_COLUMN, b"\t"),
    (_ROW, b"\n"),
    (_NULL, b"\\N"),
)


def escape(chunk: bytes) -> bytes:
    """COPY text format of rows joined with the 0xFF/0xFE/0xFD markers."""
    for old, new in _ESCAPES:
        chunk = chunk.replace(old, new)
    return chunk


def load_columns(spec: TableSpec) -> tuple[ColumnSpec, ...]:
    """Columns in stream order: timestamps last, because Python finishes those."""
    plain = tuple(c for c in spec.columns if c.kind is not Kind.TIMESTAMP)
    return plain + tuple(c for c in spec.columns if c.kind is Kind.TIMESTAMP)


def stream_sql(table: SourceTable, exclude_rejected: bool) -> str:
    """The query producing, per loadable row in id order, the marker-joined plain
    columns followed by each timestamp column's raw value."""
    columns = load_columns(table.spec)
    plain = [c for c in columns if c.kind is not Kind.TIMESTAMP]
    line = " || x'ff' || ".join(f"coalesce({table.expr(c)}, x'fd')" for c in plain)
    stamps = [table.expr(c) for c in columns if c.kind is Kind.TIMESTAMP]
    where = ""
    if exclude_rejected:
        where = f" WHERE rowid NOT IN (SELECT rid FROM {rejected_table(table.spec.name)})"  # noqa: S608 - quoted identifiers only
    order = table.expr(next(c for c in columns if c.name == "id"))
    select = ", ".join([line, *stamps])
    return f"SELECT {select} FROM main.{quote_ident(table.name)}{where} ORDER BY {order}"  # noqa: S608 - quoted identifiers only


def target_sql(spec: TableSpec, ordered: bool = True, as_null: Collection[str] = ()) -> str:
    """The PostgreSQL query whose COPY output must equal the source stream.

    Timestamps are printed by PostgreSQL itself (the connection uses the ISO
    DateStyle); the source side writes the same form (timestamps.canonical).
    `ordered=False` relies on the heap order, which is the id order only right
    after the load (see target.checksum_after_load). Columns in `as_null` are
    read as NULL: ones the source lacks that the target fills in after the load.
    """
    selected = ", ".join(
        f"NULL AS {quote_ident(column.name)}"
        if column.name in as_null
        else quote_ident(column.name)
        for column in load_columns(spec)
    )
    order = " ORDER BY id" if ordered else ""
    return f"SELECT {selected} FROM {quote_ident(spec.name)}{order}"  # noqa: S608 - quoted identifiers only


class Checksum:
    """A running SHA-256 and row count over a COPY text stream."""

    def __init__(self) -> None:
        self.rows = 0
        self._hash = hashlib.sha256()

    def update(self, data: bytes, rows: int | None = None) -> None:
        """Add bytes; rows are counted by their line ends unless given
        (escaped COPY text has a raw newline only at the end of each row)."""
        self._hash.update(data)
        self.rows += data.count(b"\n") if rows is None else rows

    @property
    def hexdigest(self) -> str:
        """The checksum so far."""
        return self._hash.hexdigest()


class SourceStream:
    """A table's rows as COPY text chunks, read in a background thread, checksummed."""

    def __init__(self, source: SourceFile, table: SourceTable, exclude_rejected: bool) -> None:
        self.table = table
        self.checksum = Checksum()
        self._source = source
        sql = stream_sql(table, exclude_rejected)
        self._reader = BatchReader(source, lambda: source.batches(sql), self._encode)

    def _encode(self, batch: list[tuple[object, ...]]) -> tuple[bytes, int]:
        # Every part of the line is coalesced in SQL, so no line is NULL.
        by_column = list(zip(*batch, strict=True))
        columns = [cast(list[bytes], list(by_column[0]))]
        try:
            for stamps in by_column[1:]:
                columns.append(timestamps.canonical_batch(list(stamps)))
        except timestamps.TimestampError as exc:
            # Only possible if preflight and load disagreed about a value.
            raise SourceError(
                f"{self._source.path}: {self.table.name}: a timestamp preflight accepted "
                f"cannot be converted ({exc})"
            ) from exc
        rows = map(_COLUMN.join, zip(*columns, strict=True)) if len(columns) > 1 else columns[0]
        chunk = escape(_ROW.join(rows) + _ROW)
        self.checksum.update(chunk, len(batch))
        return chunk, len(batch)

    def next_chunk(self) -> tuple[bytes, int] | None:
        """The next chunk of COPY text and its row count, or None at the end."""
        item: tuple[bytes, int] | None = self._reader.get()
        return item

    def close(self) -> None:
        """Stop reading."""
        self._reader.close()
