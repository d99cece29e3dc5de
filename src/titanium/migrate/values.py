"""Source values as SQLite stores them, and their lossless JSON form."""

import base64
import json
from typing import NamedTuple

JsonValue = None | bool | int | float | str | dict[str, str]

# With text_factory=bytearray, TEXT arrives as bytearray and BLOB as bytes:
# the storage class is visible in Python without asking SQLite per value.
TEXT_TYPE = bytearray
_STORAGE_CLASSES: dict[type, str] = {
    TEXT_TYPE: "text",
    bytes: "blob",
    int: "integer",
    float: "real",
    type(None): "null",
}


class StoredValue(NamedTuple):
    """One stored value: its `typeof()` and the raw value (TEXT and BLOB as bytes)."""

    storage_class: str
    raw: object


# A target column the source table does not have: loaded as NULL.
ABSENT = StoredValue("absent", None)


class SourceRow(NamedTuple):
    """One source row: its rowid and every source column's value, in source order."""

    rowid: int
    values: dict[str, StoredValue]


def fetched(value: object) -> StoredValue:
    """A value fetched with text_factory=TEXT_TYPE, with its storage class."""
    raw = bytes(value) if isinstance(value, TEXT_TYPE) else value
    return StoredValue(_STORAGE_CLASSES[type(value)], raw)


def json_value(value: StoredValue) -> JsonValue:
    """A stored value as JSON, losslessly.

    Text that is valid UTF-8 becomes a JSON string; BLOBs and text that is not
    valid UTF-8 become `{"base64": ...}` (standard alphabet, padded); REAL
    infinities become `{"real": "inf"}`.
    """
    raw = value.raw
    if raw is None:
        return None
    if isinstance(raw, bytes):
        if value.storage_class == "text":
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


def preview(value: StoredValue) -> str:
    """A stored value as short JSON text, for messages."""
    text = json.dumps(json_value(value), ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
