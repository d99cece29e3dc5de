"""Timestamps as SQLite applications write them, normalised to naive UTC.

PostgreSQL's `TIMESTAMP` (without time zone) silently drops an offset, so every
value is converted to UTC here first. Accepted, per storage class:

- TEXT `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DD HH:MM:SS[.f]` (up to 6
  fraction digits), with `T` instead of the space, optionally followed by `Z` or
  an offset `+HH`, `+HHMM`, `+HH:MM`. Naive values are UTC (SQLite's
  `CURRENT_TIMESTAMP` writes UTC).
- INTEGER or REAL unix epoch seconds or milliseconds, or a REAL/INTEGER Julian
  day number (what SQLite's `julianday()` returns), each only inside the window
  2001-09-09 .. 2286-11-20, where the three scales cannot be confused.

Everything else is a problem, never a guess: a bare year, numeric text (epoch
or year or Julian day?), `'now'`, impossible dates such as `2024-02-30`, year
0000, hour 24, leap second 60, more than microsecond precision, BLOBs.

The canonical form, used in the COPY stream and the checksums on both sides,
is what PostgreSQL prints with the ISO DateStyle: `YYYY-MM-DD HH:MM:SS`, plus
the fraction without trailing zeros when it is not zero.
"""

import re
from datetime import datetime, timedelta
from fractions import Fraction
from typing import cast

_EPOCH = datetime(1970, 1, 1)
_JULIAN_AT_EPOCH = Fraction(4881175, 2)  # 2440587.5, the Julian day of 1970-01-01 00:00 UTC
# The window in which numbers are read as instants; outside it the unit is ambiguous.
_WINDOW_SECONDS = (1_000_000_000, 10_000_000_000)

_TEXT = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
    r"(?:[ T](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<zone>Z|[+-]\d{2}(?::?\d{2})?)?)?",
    re.ASCII,
)
_NUMERIC_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


class TimestampError(ValueError):
    """A value that is not an unambiguous point in time."""


def canonical(value: datetime) -> str:
    """The canonical text of a naive UTC datetime: exactly what PostgreSQL prints for it
    (ISO DateStyle: fraction without trailing zeros, none when zero)."""
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text


def parse(storage_class: str, value: object) -> str:
    """Canonical UTC text of a stored timestamp; TimestampError says why it is refused.

    `value` is what SQLite holds: bytes for TEXT and BLOB (so invalid UTF-8 is
    seen, not hidden by decoding), int for INTEGER, float for REAL.
    """
    if storage_class == "text" and isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise TimestampError("text is not valid UTF-8") from None
        return _parse_text(text)
    if storage_class == "integer" and isinstance(value, int):
        return _from_number(Fraction(value), str(value))
    if storage_class == "real" and isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TimestampError(f"REAL {value!r} is not a number")
        return _from_number(Fraction(value), repr(value))
    raise TimestampError(f"{storage_class.upper()} value is not a timestamp")


def _parse_text(text: str) -> str:
    match = _TEXT.fullmatch(text)
    if match is None:
        if _NUMERIC_TEXT.fullmatch(text):
            raise TimestampError(
                f"numeric text {text[:40]!r} is ambiguous "
                "(a year, epoch seconds or milliseconds, or a Julian day?)"
            )
        if text.strip().lower() in {"now", "today", "yesterday", "tomorrow"}:
            raise TimestampError(f"{text[:40]!r} is not a stored point in time")
        raise TimestampError(f"{text[:40]!r} is not a recognised timestamp format")
    fraction = match["fraction"] or ""
    if len(fraction) > 6:
        raise TimestampError(f"{text!r} is more precise than microseconds (would be rounded)")
    if match["year"] == "0000":
        raise TimestampError(f"{text!r}: year 0000 does not exist")
    try:
        local = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"] or 0),
            int(match["minute"] or 0),
            int(match["second"] or 0),
            int(fraction.ljust(6, "0")) if fraction else 0,
        )
    except ValueError as exc:
        raise TimestampError(f"{text!r} is not a real date or time ({exc})") from None
    offset = _offset(match["zone"], text)
    try:
        utc = local - offset
    except OverflowError:
        raise TimestampError(f"{text!r} is out of range once converted to UTC") from None
    return canonical(utc)


def _offset(zone: str | None, text: str) -> timedelta:
    if zone is None or zone == "Z":
        return timedelta(0)
    digits = zone[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise TimestampError(f"{text!r} has an impossible UTC offset {zone}")
    sign = 1 if zone[0] == "+" else -1
    return sign * timedelta(hours=hours, minutes=minutes)


def _from_number(number: Fraction, shown: str) -> str:
    low, high = _WINDOW_SECONDS
    julian_low = _JULIAN_AT_EPOCH + Fraction(low, 86400)
    julian_high = _JULIAN_AT_EPOCH + Fraction(high, 86400)
    if low <= number < high:
        seconds = number
    elif low * 1000 <= number < high * 1000:
        seconds = number / 1000
    elif julian_low <= number < julian_high:
        seconds = (number - _JULIAN_AT_EPOCH) * 86400
    else:
        raise TimestampError(
            f"number {shown} is neither epoch seconds, epoch milliseconds nor a Julian day "
            "between 2001-09-09 and 2286-11-20, so its unit cannot be told"
        )
    micro = round(seconds * 1_000_000)
    return canonical(_EPOCH + timedelta(microseconds=micro))


# Fast paths for the forms the services write, checked a whole batch at a time
# (SQLite's date functions and per-value regular expressions each cost about a
# microsecond, too much for millions of rows). A value that fails them is not
# wrong: `parse` decides.
_SECONDS_LENGTH = 19
# Where the separators of `YYYY-MM-DD HH:MM:SS.ffffff` are.
_SEPARATORS = {4: b"-", 7: b"-", 13: b":", 16: b":", 19: b"."}
_DIGITS = b"0123456789"


def _uniform(values: list[object]) -> tuple[bytes, int] | None:
    """The values joined by newlines, and their length, when all are TEXT of one length."""
    try:
        joined = b"\n".join(values)  # type: ignore[arg-type]
    except TypeError:  # a NULL or a number in the batch
        return None
    first = values[0]
    assert isinstance(first, bytes | bytearray)
    length = len(first)
    count = len(values)
    if len(joined) != count * (length + 1) - 1 or joined.count(b"\n") != count - 1:
        return None
    return joined, length


def _naive_shape(joined: bytes, length: int, count: int) -> bool:
    # Fixed positions of the separators, and digits everywhere else, checked
    # with strided slices and one translate instead of a loop over values.
    if length != _SECONDS_LENGTH and not 21 <= length <= 26:
        return False
    step = length + 1
    for position, separator in _SEPARATORS.items():
        if position < length and joined[position::step] != separator * count:
            return False
    if joined[10::step].translate(None, b" T"):
        return False
    separators = sum(1 for position in _SEPARATORS if position < length) + 1
    return len(joined.translate(None, _DIGITS)) == count * (separators + 1) - 1


def all_valid_fast(values: list[object]) -> bool:
    """True when every value is TEXT `YYYY-MM-DD[ T]HH:MM:SS[.f{1,6}]` and a real instant."""
    if not values:
        return True
    uniform = _uniform(values)
    return uniform is not None and joined_valid_fast(uniform[0], len(values))


def joined_valid_fast(joined: bytes, count: int) -> bool:
    """`all_valid_fast` for `count` values already joined by newlines.

    `count` must be known apart from `joined` (SQLite's count(), len(values)):
    counted from the newlines, a value holding one would pass as two.
    """
    if count <= 0 or (len(joined) + 1) % count or joined.count(b"\n") != count - 1:
        return False
    length = (len(joined) + 1) // count - 1
    if not _naive_shape(joined, length, count):
        return False
    try:
        # fromisoformat (C) rejects impossible dates, hour 24, second 60, year 0.
        list(map(datetime.fromisoformat, joined.decode("ascii").split("\n")))
    except ValueError:
        return False
    return True


def canonical_batch(values: list[object]) -> list[bytes]:
    """Canonical bytes of values preflight accepted (NULL as the stream's 0xFD marker)."""
    uniform = _uniform(values) if values else None
    if uniform is not None:
        joined, length = uniform
        count = len(values)
        naive = _naive_shape(joined, length, count) and joined[10 :: length + 1] == b" " * count
        texts = cast(list[bytes], values)  # _uniform joined them: all bytes
        if naive and length == _SECONDS_LENGTH:
            return texts
        if naive and length == 26:
            # What SQLAlchemy writes; PostgreSQL prints the fraction without
            # trailing zeros (and without the dot when it is zero).
            return [value.rstrip(b"0").rstrip(b".") for value in texts]
    return [_canonical_value(value) for value in values]


def _canonical_value(value: object) -> bytes:
    if value is None:
        return b"\xfd"
    if isinstance(value, bytes | bytearray):
        return parse("text", bytes(value)).encode("ascii")
    storage_class = "integer" if isinstance(value, int) else "real"
    return parse(storage_class, value).encode("ascii")
