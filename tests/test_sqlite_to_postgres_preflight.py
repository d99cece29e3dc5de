"""Preflight of the SQLite → PostgreSQL migration: one test per kind of bad value.

Every case runs twice against the same target: with `stop` the report names
the row and the target is unchanged; with `skip` the target holds exactly the
good rows and the rejects file holds the bad one with its original value.
Then the timestamp forms, and the agreement of the fast path with the rules on
generated values.
"""

import base64
import bisect
import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures.migrate import edge_values
from fixtures.migrate.builders import (
    LOOSE_DDL,
    AsText,
    create,
    insert,
    query,
    schema_at_head,
    snapshot,
    target,
)
from fixtures.migrate.edge_values import Candidate
from titanium.migrate import scan, timestamps
from titanium.migrate.examine import examine
from titanium.migrate.problems import PreflightResult, TablePreflight
from titanium.migrate.report import Status
from titanium.migrate.rules import check_value
from titanium.migrate.run import MigrationOptions, migrate_sqlite_to_postgres, verify
from titanium.migrate.schema import TABLES, ColumnSpec, Kind, TableSpec
from titanium.migrate.source import open_source
from titanium.migrate.temp_tables import (
    create_rejected,
    find_duplicates,
    prepare_valid_ids,
    rejected_table,
)
from titanium.migrate.values import fetched

HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$" + "A" * 43
WHEN = "2024-01-01 10:00:00"
GOOD = {
    "users": [
        {"id": 1, "username": "alice", "email": "a@example.com", "password_hash": HASH,
         "created_at": WHEN},
        {"id": 2, "username": "bob", "email": "b@example.com", "password_hash": HASH,
         "created_at": WHEN},
    ],
    "categories": [
        {"id": 1, "name": "기술 스택", "slug": "tech-stack", "color": "#3b82f6"},
        {"id": 2, "name": "Troubleshooting", "slug": "troubleshooting", "color": "#ef4444"},
        {"id": 3, "name": "Test", "slug": "test", "color": "#10b981"},
    ],
    "posts": [
        # 200 Korean characters are 600 bytes: within VARCHAR(200), which counts characters.
        {"id": 1, "title": "가" * 200, "content": "hello", "author": "alice",
         "created_at": WHEN, "updated_at": WHEN, "category_id": 1},
        {"id": 2, "title": "second", "content": "world", "author": "bob",
         "created_at": "2024-01-02T03:04:05+09:00", "updated_at": 1_700_000_000,
         "category_id": None},
    ],
}  # fmt: skip
TEMPLATE = {
    "users": {"id": 10, "username": "zed", "email": "z@example.com", "password_hash": HASH,
              "created_at": WHEN},
    "categories": {"id": 10, "name": "Ten", "slug": "ten", "color": "#000000"},
    "posts": {"id": 10, "title": "bad", "content": "c", "author": "alice", "created_at": WHEN,
              "updated_at": WHEN, "category_id": 2},
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """A bad row added to good ones, and the problems preflight must report."""

    name: str
    table: str
    values: dict[str, Any]
    problems: list[tuple[Any, str, str, str]]  # id, column, storage class, code
    reason: str
    loaded: dict[str, set[int]] = field(default_factory=dict)


CASES = [
    Case("username_too_long", "users", {"username": "u" * 101},
         [(10, "username", "text", "too_long")], "101 characters, longer than VARCHAR(100)"),
    Case("title_too_long_in_characters", "posts", {"title": "가" * 201},
         [(10, "title", "text", "too_long")], "201 characters"),
    Case("category_color_too_long", "categories", {"color": "#00000000"},
         [(10, "color", "text", "too_long")], "VARCHAR(7)"),
    Case("nul_in_email", "users", {"email": "a\x00b@example.com"},
         [(10, "email", "text", "nul")], "NUL"),
    Case("invalid_utf8_in_content", "posts", {"content": AsText(b"caf\xe9")},
         [(10, "content", "text", "invalid_utf8")], "not valid UTF-8"),
    Case("blob_in_content", "posts", {"content": b"\x89PNG\r\n"},
         [(10, "content", "blob", "not_text")], "BLOB"),
    Case("integer_in_author", "posts", {"author": 42},
         [(10, "author", "integer", "not_text")], "INTEGER 42"),
    Case("null_email", "users", {"email": None},
         [(10, "email", "null", "not_null")], "NULL in NOT NULL column email"),
    Case("null_title", "posts", {"title": None},
         [(10, "title", "null", "not_null")], "NOT NULL"),
    Case("duplicate_username", "users", {"username": "alice"},
         [(1, "username", "text", "duplicate"), (10, "username", "text", "duplicate")],
         "appears in more than one row", {"users": {2}}),
    Case("duplicate_id", "posts", {"id": 1},
         [(1, "id", "integer", "duplicate"), (1, "id", "integer", "duplicate")],
         "more than one row", {"posts": {2}}),
    Case("text_id", "posts", {"id": "abc"},
         [("abc", "id", "text", "not_integer")], "not an integer"),
    Case("real_id", "posts", {"id": 2.5}, [(2.5, "id", "real", "not_integer")], "REAL 2.5"),
    Case("id_beyond_integer", "posts", {"id": 2**31},
         [(2**31, "id", "integer", "out_of_range")], "outside 1..2147483647"),
    Case("id_zero", "users", {"id": 0}, [(0, "id", "integer", "out_of_range")], "outside"),
    Case("dangling_category", "posts", {"category_id": 99},
         [(10, "category_id", "integer", "dangling_reference")], "matches no categories row"),
    Case("impossible_date", "posts", {"created_at": "2024-02-30 10:00:00"},
         [(10, "created_at", "text", "timestamp")], "not a real date"),
    Case("zero_date", "posts", {"updated_at": "0000-00-00 00:00:00"},
         [(10, "updated_at", "text", "timestamp")], "year 0000"),
    Case("now_as_text", "posts", {"created_at": "now"},
         [(10, "created_at", "text", "timestamp")], "not a stored point in time"),
    Case("bare_year_text", "posts", {"created_at": "2024"},
         [(10, "created_at", "text", "timestamp")], "ambiguous"),
    Case("bare_year_integer", "users", {"created_at": 2024},
         [(10, "created_at", "integer", "timestamp")], "unit cannot be told"),
    Case("hour_24", "posts", {"created_at": "2024-01-01 24:00:00"},
         [(10, "created_at", "text", "timestamp")], "not a real date or time"),
    Case("more_than_microseconds", "posts", {"created_at": "2024-01-01 10:00:00.1234567"},
         [(10, "created_at", "text", "timestamp")], "more precise than microseconds"),
    Case("blob_timestamp", "posts", {"created_at": b"2024-01-01 10:00:00"},
         [(10, "created_at", "blob", "timestamp")], "BLOB value is not a timestamp"),
    # One value holding two good timestamps: the window's newline-joined aggregate
    # must not count it as two values (it did, and the load then aborted).
    Case("two_timestamps_joined_by_newline", "users", {"created_at": f"{WHEN}\n{WHEN}"},
         [(10, "created_at", "text", "timestamp")], "not a recognised timestamp format"),
    Case("two_timestamps_joined_by_cr", "users", {"created_at": f"{WHEN}\r{WHEN}"},
         [(10, "created_at", "text", "timestamp")], "not a recognised timestamp format"),
]  # fmt: skip


@pytest.fixture(scope="module")
def target_env(database_env: Callable[[str], dict[str, str]]) -> Iterator[dict[str, str]]:
    """One target database, at the schema's head, shared by the cases."""
    env = database_env("postgresql")
    schema_at_head(env)
    yield env


def _source(directory: Path, case: Case) -> tuple[Path, Path]:
    users = create(directory / "users.db", LOOSE_DDL["users"])
    blog = create(directory / "blog.db", LOOSE_DDL["categories"], LOOSE_DDL["posts"])
    for table, rows in GOOD.items():
        bad = [{**TEMPLATE[table], **case.values}] if table == case.table else []
        insert(users if table == "users" else blog, table, rows + bad)
    return users, blog


def _stored(value: Any) -> Any:
    """A source value the way the rejects file writes it."""
    if isinstance(value, bytes):  # a BLOB: always base64
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, AsText):  # TEXT: a string when it is valid UTF-8
        try:
            return value.data.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value.data).decode()}
    return value


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_preflight_problem(case: Case, target_env: dict[str, str], tmp_path: Path) -> None:
    users, blog = _source(tmp_path, case)
    before = snapshot(target_env)
    stop = migrate_sqlite_to_postgres(
        MigrationOptions(users, blog, target(target_env), truncate=True)
    )
    assert stop.status is Status.ABORTED and stop.exit_code == 5
    found = [(p.id, p.column, p.storage_class, p.code) for p in stop.preflight.problems]
    assert sorted(found, key=repr) == sorted(case.problems, key=repr)
    assert all(p.table == case.table for p in stop.preflight.problems)
    assert case.reason in stop.preflight.problems[-1].reason
    assert "nothing was written" in stop.message
    assert snapshot(target_env) == before

    rejects = tmp_path / "rejects.jsonl"
    skip = migrate_sqlite_to_postgres(
        MigrationOptions(users, blog, target(target_env), on_error="skip", rejects=rejects,
                         truncate=True)
    )  # fmt: skip
    assert skip.status is Status.REJECTED and skip.exit_code == 3
    for table in ("users", "categories", "posts"):
        expected = case.loaded.get(table, {row["id"] for row in GOOD[table]})
        loaded = {row["id"] for row in query(target_env, f"SELECT id FROM {table}")}
        assert loaded == expected, table
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert len(records) == len(case.problems)  # every case has one problem per bad row
    bad = next(r for r in records if r["rowid"] == len(GOOD[case.table]) + 1)
    for column, value in case.values.items():
        assert bad["row"][column] == _stored(value)
    assert bad["table"] == case.table and bad["problems"][0]["code"] == case.problems[-1][3]
    assert verify(users, blog, target(target_env)).status is Status.OK


def test_rejects_keep_every_original_value(target_env: dict[str, str], tmp_path: Path) -> None:
    users = create(tmp_path / "users.db", LOOSE_DDL["users"])
    blog = create(tmp_path / "blog.db", LOOSE_DDL["categories"], LOOSE_DDL["posts"])
    insert(users, "users", GOOD["users"])
    insert(blog, "categories", GOOD["categories"])
    bad = {**TEMPLATE["posts"], "title": b"\x00\xff", "content": AsText(b"\xed\xa0\x80"),
           "created_at": float("inf"), "updated_at": 1.5}  # fmt: skip
    insert(blog, "posts", [bad])
    rejects = tmp_path / "out" / "rejects.jsonl"
    result = migrate_sqlite_to_postgres(
        MigrationOptions(
            users, blog, target(target_env), dry_run=True, rejects=rejects, truncate=True
        )
    )
    assert result.status is Status.ABORTED
    (record,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert record["row"]["title"] == {"base64": base64.b64encode(b"\x00\xff").decode()}
    assert record["storage_classes"]["title"] == "blob"
    # A UTF-16 surrogate encoded in UTF-8 is invalid UTF-8 for PostgreSQL too.
    assert record["row"]["content"] == {"base64": base64.b64encode(b"\xed\xa0\x80").decode()}
    assert record["storage_classes"]["content"] == "text"
    assert record["row"]["created_at"] == {"real": "inf"}
    assert record["row"]["updated_at"] == 1.5
    codes = {(p["column"], p["code"]) for p in record["problems"]}
    assert codes == {
        ("title", "not_text"),
        ("content", "invalid_utf8"),
        ("created_at", "timestamp"),
        ("updated_at", "timestamp"),
    }


ACCEPTED = [
    (b"2024-03-01 12:34:56", "2024-03-01 12:34:56"),
    (b"2024-03-01 12:34:56.500000", "2024-03-01 12:34:56.5"),
    (b"2024-03-01 12:34:56.000000", "2024-03-01 12:34:56"),
    (b"2024-03-01T12:34:56.123", "2024-03-01 12:34:56.123"),
    (b"2024-03-01T12:34:56Z", "2024-03-01 12:34:56"),
    (b"2024-03-01T09:00:00+09:00", "2024-03-01 00:00:00"),
    (b"2024-03-01 09:00:00.25-0130", "2024-03-01 10:30:00.25"),
    (b"2024-03-01T00:30+01", "2024-02-29 23:30:00"),
    (b"2024-02-29 23:59:59.999999", "2024-02-29 23:59:59.999999"),
    (b"2024-03-01 12:34", "2024-03-01 12:34:00"),
    (b"2024-03-01", "2024-03-01 00:00:00"),
    (b"0001-01-01 00:00:00", "0001-01-01 00:00:00"),
    (1_700_000_000, "2023-11-14 22:13:20"),
    (1_700_000_000_123, "2023-11-14 22:13:20.123"),
    (1_700_000_000.25, "2023-11-14 22:13:20.25"),
    (2_460_000.5, "2023-02-25 00:00:00"),
]
REFUSED = [
    b"2024",
    b"1700000000",
    b"now",
    b"2024-02-30 00:00:00",
    b"2023-02-29 00:00:00",
    b"0000-00-00 00:00:00",
    b"0000-01-01 00:00:00",
    b"2024-01-01 24:00:00",
    b"2024-01-01 23:60:00",
    b"2024-01-01 23:59:60",
    b"2024-01-01 12:00:00.1234567",
    b"2024-01-01 12:00:00+25:00",
    b" 2024-01-01 12:00:00",
    b"2024-01-01\t12:00:00",
    b"12:00:00",
    b"2024-13-01",
    b"\xff2024-01-01",
    b"0001-01-01 00:00:00+01:00",
    2024,
    0,
    -1_700_000_000,
    99_999_999_999_999,
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED)
def test_timestamp_forms_normalise_to_utc(value: object, expected: str) -> None:
    storage_class = {bytes: "text", int: "integer", float: "real"}[type(value)]
    assert timestamps.parse(storage_class, value) == expected
    # The load's batch fast path agrees with the full parser.
    assert timestamps.canonical_batch([value]) == [expected.encode()]
    assert timestamps.canonical_batch([value, value]) == [expected.encode()] * 2


@pytest.mark.parametrize("value", REFUSED, ids=[repr(v) for v in REFUSED])
def test_ambiguous_or_impossible_timestamps_are_refused(value: object) -> None:
    storage_class = "text" if isinstance(value, bytes) else "integer"
    with pytest.raises(timestamps.TimestampError):
        timestamps.parse(storage_class, value)
    assert not timestamps.all_valid_fast([value])
    assert not timestamps.all_valid_fast([b"2024-01-01 00:00:00", value])


def test_sqlite_timestamps_as_sqlite_writes_them_are_accepted(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "t.db")
    values = conn.execute(
        "SELECT CURRENT_TIMESTAMP, datetime('now'), strftime('%Y-%m-%d %H:%M:%f', 'now'), "
        "julianday('now'), unixepoch('now')"
    ).fetchone()
    conn.close()
    for value in values:
        raw = value.encode() if isinstance(value, str) else value
        storage_class = {bytes: "text", int: "integer", float: "real"}[type(raw)]
        assert timestamps.parse(storage_class, raw).startswith(values[0][:10])


# Agreement of the fast path with the rules, on generated TEXT, INTEGER and TIMESTAMP
# values: whatever a fast check accepts, the detailed rules must accept too, or a bad
# value would be loaded unexamined (a fast check may refuse more: the rules then decide).
AGREEMENT = [(spec, column) for spec in TABLES for column in spec.columns]


def _candidates(column: ColumnSpec) -> list[Candidate]:
    if column.kind is Kind.INTEGER:
        return edge_values.integer_values()
    if column.kind is Kind.TIMESTAMP:
        return edge_values.timestamp_values()
    return edge_values.text_values(column.max_length)


def _good(column: ColumnSpec, n: int) -> Candidate:
    """A value of row `n` that every check accepts (unique per row where it must be)."""
    if column.kind is Kind.TIMESTAMP:
        return WHEN
    if column.references:
        return 1  # prepared as a valid category id below
    if column.kind is Kind.INTEGER:
        return 1_000_000_000 + n
    if column.unique:
        return f"g{n}"
    return "x" * (column.max_length or 300)  # ASCII at the limit passes every check


def _refused(column: ColumnSpec, batch: list[object]) -> list[tuple[object, str]]:
    found = [(value, check_value(column, fetched(value))) for value in batch]
    return [(value, rejection.code) for value, rejection in found if rejection is not None]


@pytest.mark.parametrize(
    ("spec", "column"), AGREEMENT, ids=[f"{s.name}.{c.name}" for s, c in AGREEMENT]
)
def test_batch_fast_path_accepts_only_what_the_rules_accept(
    spec: TableSpec, column: ColumnSpec
) -> None:
    good = edge_values.as_fetched(_good(column, 0))
    values = [edge_values.as_fetched(value) for value in _candidates(column)]
    rng = random.Random(edge_values.SEED)
    batches = [[value] for value in values]
    batches += [[good, value, good] for value in values]
    batches += [rng.sample(values, 5) for _ in range(300)]
    accepted = [batch for batch in batches if scan.column_ok(column, batch)]
    wrong = [refused for batch in accepted if (refused := _refused(column, batch))]
    assert not wrong, f"{spec.name}.{column.name}: fast path accepted {wrong[:5]!r}"[:2000]
    # Not vacuous: the fast path accepts some batches, the rules refuse some values.
    assert accepted and _refused(column, values)


@pytest.mark.parametrize("window_rows", [1, 5])
@pytest.mark.parametrize("spec", TABLES, ids=[spec.name for spec in TABLES])
def test_window_fast_path_accepts_only_what_the_rules_accept(
    spec: TableSpec, window_rows: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One candidate per window: the candidate's row, then good rows up to the window size.
    monkeypatch.setattr(scan, "WINDOW_ROWS", window_rows)
    rows: list[dict[str, Candidate]] = []
    candidates = []
    for column in spec.columns:
        for value in filter(edge_values.storable, _candidates(column)):
            for offset in range(window_rows):
                row = {c.name: _good(c, len(rows)) for c in spec.columns}
                if offset == 0:
                    row[column.name] = value
                    candidates.append(len(rows) + 1)  # its rowid
                rows.append(row)
    # Untyped columns, one per target column (the original's tables lack Titanium's additions).
    loose = f"CREATE TABLE {spec.name} ({', '.join(spec.column_names)})"
    path = create(tmp_path / "source.db", loose)
    insert(path, spec.name, rows)
    source = open_source(path, (spec,))
    try:
        table = source.tables[spec.name]
        if any(c.references for c in spec.columns):
            prepare_valid_ids(source, "categories", None, [1, 2, 3])
        create_rejected(source, spec.name)
        duplicates = find_duplicates(source, table)
        fast = scan.Scan.of(table, duplicates)
        accepted = [window for window in fast.windows(source) if fast.window_ok(window)]
        every_row = list(range(1, len(rows) + 1))  # a fresh table: rowids in insertion order
        examine(source, table, every_row, duplicates, PreflightResult(), None, TablePreflight(""))
        rejected = sorted(
            rid for (rid,) in source.execute(f"SELECT rid FROM {rejected_table(spec.name)}")
        )
    finally:
        source.close()
    wrong = []
    for window in accepted:
        first = bisect.bisect_left(rejected, window.start)
        if first < len(rejected) and rejected[first] <= window.last_rowid:
            wrong.append(rows[rejected[first] - 1])
    assert not wrong, f"{spec.name}: fast path accepted rows {wrong[:3]!r}"[:2000]
    # Not vacuous: good rows pass, candidates are both accepted and refused.
    assert set(rejected) <= set(candidates)
    assert accepted and rejected
