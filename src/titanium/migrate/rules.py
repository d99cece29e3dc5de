"""What a value must be to go into PostgreSQL: the rules, written once.

`check_value` decides and explains: a code and a reason for each refused
value. The fast paths (`scan.py`) apply the same predicates (`integer_fits`,
`fits_length`, `text_is_clean`) to whole windows and batches at once, so they
can only be stricter, never looser. Timestamps are ruled by `timestamps.parse`;
duplicates and dangling references are found by SQLite (`temp_tables.py`) and
only judged here.
"""

from typing import NamedTuple

from titanium.migrate import timestamps
from titanium.migrate.schema import ID_MAX, ID_MIN, ColumnSpec, Kind
from titanium.migrate.values import StoredValue, preview


class Rejection(NamedTuple):
    """Why a value cannot be loaded: a stable code and a sentence for the operator."""

    code: str
    reason: str


class OtherRows(NamedTuple):
    """What SQLite found about a value by looking at the other rows."""

    duplicate: bool = False
    referenced: bool = True


# A value judged on its own: the other rows are someone else's check.
ALONE = OtherRows()


def integer_fits(value: int) -> bool:
    """Whether an integer is a storable id (PostgreSQL INTEGER, see schema.ID_MIN)."""
    return ID_MIN <= value <= ID_MAX


def fits_length(column: ColumnSpec, characters: int) -> bool:
    """Whether text of `characters` characters fits the column (VARCHAR(n) counts characters)."""
    return column.max_length is None or characters <= column.max_length


def text_is_clean(blob: bytes | bytearray) -> bool:
    """Whether text is valid UTF-8 without NUL, the only text PostgreSQL can hold."""
    if b"\0" in blob:
        return False
    if blob.isascii():  # word-at-a-time in C, far faster than decoding
        return True
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_value(
    column: ColumnSpec, value: StoredValue, other_rows: OtherRows = ALONE
) -> Rejection | None:
    """Why `value` cannot be loaded into `column`, or None when it can."""
    if value.storage_class in ("null", "absent"):
        if column.nullable:
            return None
        return Rejection("not_null", f"NULL in NOT NULL column {column.name}")
    if column.kind is Kind.INTEGER:
        return _check_integer(column, value, other_rows)
    if column.kind is Kind.TEXT:
        return _check_text(column, value, other_rows)
    try:
        timestamps.parse(value.storage_class, value.raw)
    except timestamps.TimestampError as exc:
        return Rejection("timestamp", str(exc))
    return None


def _check_integer(
    column: ColumnSpec, value: StoredValue, other_rows: OtherRows
) -> Rejection | None:
    storage_class, raw = value
    if storage_class != "integer" or not isinstance(raw, int):
        return Rejection(
            "not_integer", f"{storage_class.upper()} {preview(value)} is not an integer"
        )
    if not integer_fits(raw):
        return Rejection(
            "out_of_range", f"{raw} is outside {ID_MIN}..{ID_MAX} (PostgreSQL INTEGER ids)"
        )
    if other_rows.duplicate:
        return Rejection("duplicate", f"{column.name} {raw} appears in more than one row")
    if column.references and not other_rows.referenced:
        return Rejection(
            "dangling_reference",
            f"{column.name} {raw} matches no {column.references} row that will be loaded",
        )
    return None


def _check_text(column: ColumnSpec, value: StoredValue, other_rows: OtherRows) -> Rejection | None:
    storage_class, raw = value
    if storage_class != "text" or not isinstance(raw, bytes):
        return Rejection(
            "not_text",
            f"{storage_class.upper()} {preview(value)} in a text column "
            "(converting it would be a guess)",
        )
    if not text_is_clean(raw):
        return _unclean(raw)
    characters = len(raw.decode("utf-8"))
    if not fits_length(column, characters):
        return Rejection("too_long", f"{characters} characters, longer than {column.type_name}")
    if other_rows.duplicate:
        return Rejection(
            "duplicate", f"{column.name} {preview(value)} appears in more than one row"
        )
    return None


def _unclean(raw: bytes) -> Rejection:
    """Which part of `text_is_clean` failed; invalid UTF-8 is reported first."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(
            "invalid_utf8",
            f"not valid UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})",
        )
    return Rejection(
        "nul",
        f"contains NUL (U+0000) at character {text.index(chr(0))}, "
        "which PostgreSQL text cannot hold",
    )
