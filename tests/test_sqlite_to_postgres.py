"""SQLite → PostgreSQL migration end to end: real services, real files, real PostgreSQL."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fixtures.migrate.builders import (
    SEED_POSTS_DDL,
    SEED_USERS_DDL,
    create,
    current_schema,
    dsn,
    file_state,
    insert,
    query,
    schema_at_head,
    snapshot,
    target,
    werkzeug_hash,
)
from support.api import register
from support.stack import start_stack
from titanium.cli import app
from titanium.migrate.errors import TargetError
from titanium.migrate.report import Status
from titanium.migrate.run import MigrationOptions, migrate_sqlite_to_postgres, verify

DatabaseEnv = Callable[[str], dict[str, str]]
# Text that breaks naive COPY pipelines: escapes, the NULL marker as text,
# line ends, end-of-data marker, control characters, emoji, Korean.
AWKWARD = [
    "back\\slash and trailing\\",
    "tab\there\tand at the end\t",
    "\\N",
    "\\\\N",
    "line1\r\nline2\rline3\n",
    "\\.",
    "\n\\.\n",
    "\x08\x0b\x0c\x01\x1f\x7f",
    "emoji 🎉👩‍💻 and 한국어 텍스트",
    "",
    "'quotes' \"double\" ,comma; semi",
    "\u2028\u2029\ufeff\U0010fffd",
]


def _migrate(users: Path, blog: Path, env: dict[str, str], **options: Any) -> Any:
    return migrate_sqlite_to_postgres(MigrationOptions(users, blog, target(env), **options))


def test_round_trip_through_the_services(
    database_env: DatabaseEnv, keys: dict[str, str], tmp_path: Path
) -> None:
    sqlite_env = {**database_env("sqlite"), **keys}
    stack = start_stack(sqlite_env, tmp_path / "logs-sqlite")
    try:
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            people = [register(client, password=f"pw-{n}-correct horse") for n in range(3)]
            posts = []
            for n, text in enumerate([*AWKWARD[:5], AWKWARD[8]]):
                body: dict[str, Any] = {"title": f"글 {n} {text[:20]}", "content": text or "x"}
                if n == 1:
                    body["category_name"] = "마이그레이션 notes"
                response = client.post(
                    "/blog/api/posts", json=body, headers=people[n % 3]["headers"]
                )
                assert response.status_code == 201, response.text
                posts.append(response.json())
            # The last post is deleted: SQLite's AUTOINCREMENT remembers its id.
            gone = client.post(
                "/blog/api/posts",
                json={"title": "bye", "content": "x"},
                headers=people[0]["headers"],
            ).json()
            assert (
                client.delete(
                    f"/blog/api/posts/{gone['id']}", headers=people[0]["headers"]
                ).status_code
                == 204
            )
            categories = client.get("/blog/api/categories").json()
    finally:
        stack.stop()
    settings_dir = Path(sqlite_env["DATA_DIR"])
    users_db, blog_db = settings_dir / "users.db", settings_dir / "blog.db"
    before = {path: file_state(path) for path in (users_db, blog_db)}

    pg_env = {**database_env("postgresql"), **keys}
    result = _migrate(users_db, blog_db, pg_env)
    assert result.status is Status.OK, result.message
    assert {path: file_state(path) for path in (users_db, blog_db)} == before
    assert all(table.checksum_match for table in result.tables)

    stack = start_stack(pg_env, tmp_path / "logs-postgresql")
    try:
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            for person in people:
                login = client.post(
                    "/api/login",
                    json={"username": person["username"], "password": person["password"]},
                )
                assert login.status_code == 200, login.text
                profile = client.get(f"/api/users/{person['username']}").json()
                assert profile["id"] == person["id"]
            for post in posts:
                served = client.get(f"/blog/api/posts/{post['id']}")
                assert served.status_code == 200
                assert served.json() == post
            assert client.get(f"/blog/api/posts/{gone['id']}").status_code == 404
            assert client.get("/blog/api/categories").json() == categories
            new = client.post(
                "/blog/api/posts", json={"title": "after", "content": "on PostgreSQL"},
                headers=people[0]["headers"],
            )  # fmt: skip
            assert new.status_code == 201
            assert new.json()["id"] == gone["id"] + 1
            newcomer = register(client)
            assert newcomer["id"] > max(person["id"] for person in people)
    finally:
        stack.stop()


def test_seed_schema_source_with_werkzeug_hash(
    database_env: DatabaseEnv, keys: dict[str, str], tmp_path: Path
) -> None:
    users_db = create(tmp_path / "users.db", SEED_USERS_DDL)
    blog_db = create(tmp_path / "blog.db", SEED_POSTS_DDL)
    insert(users_db, "users", [
        {"username": "oldtimer", "email": "old@example.com",
         "password_hash": werkzeug_hash("legacy password")},
    ])  # fmt: skip
    with sqlite3.connect(blog_db) as conn:
        conn.execute(
            "INSERT INTO posts (title, content, author) VALUES ('default times', 'a', 'oldtimer')"
        )
        conn.execute(
            "INSERT INTO posts (title, content, author, created_at, updated_at) VALUES "
            "('iso', 'b', 'oldtimer', '2024-05-01T09:30:00+09:00', '2024-05-02T00:00:00.5Z')"
        )
        written = conn.execute("SELECT created_at FROM posts WHERE id = 1").fetchone()[0]
    conn.close()

    pg_env = {**database_env("postgresql"), **keys}
    result = _migrate(users_db, blog_db, pg_env)
    assert result.status is Status.OK, result.message
    assert any("no created_at" in note for note in result.notes)
    assert any("no categories table" in note for note in result.notes)
    rows = query(pg_env, "SELECT id, created_at, updated_at, category_id FROM posts ORDER BY id")
    assert str(rows[0]["created_at"]) == written
    assert str(rows[1]["created_at"]) == "2024-05-01 00:30:00"
    assert str(rows[1]["updated_at"]) == "2024-05-02 00:00:00.500000"
    assert rows[1]["category_id"] is None
    assert query(pg_env, "SELECT created_at FROM users")[0]["created_at"] is None
    assert [r["slug"] for r in query(pg_env, "SELECT slug FROM categories ORDER BY id")] == [
        "tech-stack",
        "troubleshooting",
        "test",
    ]

    stack = start_stack(pg_env, tmp_path / "logs")
    try:
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            login = client.post(
                "/api/login", json={"username": "oldtimer", "password": "legacy password"}
            )
            assert login.status_code == 200, login.text
            assert client.get("/blog/api/posts/2").json()["title"] == "iso"
    finally:
        stack.stop()
    # The successful login replaced the werkzeug hash with argon2id.
    assert query(pg_env, "SELECT password_hash FROM users")[0]["password_hash"].startswith(
        "$argon2id$"
    )


def _big_source(directory: Path, posts: int) -> tuple[Path, Path]:
    users_db, blog_db = current_schema(directory)
    insert(users_db, "users", [
        {"username": "writer", "email": "w@example.com", "password_hash": "x"},
    ])  # fmt: skip
    body = "본문 content with some length. " * 40
    with sqlite3.connect(blog_db) as conn:
        conn.executemany(
            "INSERT INTO posts (title, content, author, created_at, updated_at, category_id) "
            "VALUES (?, ?, 'writer', '2024-01-01 00:00:00.000001', '2024-01-01 00:00:00', 1)",
            ((f"post {n}", f"{n} {body}") for n in range(posts)),
        )
    conn.close()
    return users_db, blog_db


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "titanium", "migrate", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_stopped_during_copy_leaves_nothing_and_a_rerun_succeeds(
    signum: signal.Signals, database_env: DatabaseEnv, tmp_path: Path
) -> None:
    users_db, blog_db = _big_source(tmp_path, 40_000)
    pg_env = database_env("postgresql")
    args = ("sqlite-to-postgres", "--users-db", str(users_db), "--blog-db", str(blog_db))
    process = _cli(*args, env=pg_env)
    copied = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        rows = query(
            pg_env,
            "SELECT p.tuples_processed FROM pg_stat_progress_copy p "
            "JOIN pg_class c ON c.oid = p.relid WHERE c.relname = 'posts'",
        )
        copied = rows[0]["tuples_processed"] if rows else 0
        if copied > 0:
            break
        time.sleep(0.01)
    assert copied > 0, process.communicate()
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    if signum == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 5, err.decode()
        assert b"interrupted" in out + err
    assert (
        query(pg_env, "SELECT (SELECT count(*) FROM posts) + (SELECT count(*) FROM users) AS n")[0][
            "n"
        ]
        == 0
    )

    rerun = _cli(*args, "--report", str(tmp_path / "report.json"), env=pg_env)
    _out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "ok"
    assert [t["rows_loaded"] for t in report["tables"]] == [1, 3, 40_000]
    assert "copy posts: done" in err.decode()  # plain log lines when not a terminal
    check = _cli("verify", "--users-db", str(users_db), "--blog-db", str(blog_db), env=pg_env)
    check.communicate(timeout=60)
    assert check.returncode == 0


def test_every_byte_round_trips(database_env: DatabaseEnv, tmp_path: Path) -> None:
    users_db, blog_db = current_schema(tmp_path)
    insert(users_db, "users", [
        {"username": f"user{n}", "email": f"{n}@example.com", "password_hash": text or "h"}
        for n, text in enumerate(AWKWARD)
    ])  # fmt: skip
    insert(blog_db, "posts", [
        {"title": text[:200], "content": text + text, "author": text[:100],
         "created_at": "2024-06-01 12:00:00.120000", "updated_at": None}
        for text in AWKWARD
    ])  # fmt: skip
    pg_env = database_env("postgresql")
    result = _migrate(users_db, blog_db, pg_env)
    assert result.status is Status.OK, result.message
    rows = query(
        pg_env, "SELECT title, content, author, created_at, updated_at FROM posts ORDER BY id"
    )
    assert [(r["title"], r["content"], r["author"]) for r in rows] == [
        (text[:200], text + text, text[:100]) for text in AWKWARD
    ]
    assert {str(r["created_at"]) for r in rows} == {"2024-06-01 12:00:00.120000"}
    assert {r["updated_at"] for r in rows} == {None}
    hashes = [
        r["password_hash"] for r in query(pg_env, "SELECT password_hash FROM users ORDER BY id")
    ]
    assert hashes == [text or "h" for text in AWKWARD]


def test_sequences_continue_above_every_id_sqlite_handed_out(
    database_env: DatabaseEnv, tmp_path: Path
) -> None:
    users_db, blog_db = current_schema(tmp_path)
    insert(blog_db, "posts", [
        {"id": n, "title": "t", "content": "c", "author": "a"} for n in (1, 2, 5, 9)
    ])  # fmt: skip
    with sqlite3.connect(blog_db) as conn:
        conn.execute("DELETE FROM posts WHERE id = 9")  # the high-water mark stays 9
        conn.execute("DELETE FROM categories WHERE id = 3")
    conn.close()
    pg_env = database_env("postgresql")
    result = _migrate(users_db, blog_db, pg_env)
    assert result.status is Status.OK, result.message
    next_ids = query(
        pg_env,
        "SELECT nextval(pg_get_serial_sequence('posts', 'id')) AS posts, "
        "nextval(pg_get_serial_sequence('users', 'id')) AS users, "
        "nextval(pg_get_serial_sequence('categories', 'id')) AS categories",
    )[0]
    assert (next_ids["posts"], next_ids["users"], next_ids["categories"]) == (10, 1, 4)
    assert [r["id"] for r in query(pg_env, "SELECT id FROM categories ORDER BY id")] == [1, 2]


def test_non_empty_target_needs_truncate(database_env: DatabaseEnv, tmp_path: Path) -> None:
    users_db, blog_db = _big_source(tmp_path, 3)
    pg_env = database_env("postgresql")
    assert _migrate(users_db, blog_db, pg_env).status is Status.OK
    query(pg_env, "UPDATE posts SET title = 'edited on PostgreSQL' WHERE id = 1")
    before = snapshot(pg_env)
    with pytest.raises(TargetError, match=r"not empty .*posts has 3 rows.*--truncate"):
        _migrate(users_db, blog_db, pg_env)
    assert snapshot(pg_env) == before
    assert verify(users_db, blog_db, target(pg_env)).status is Status.MISMATCH
    assert _migrate(users_db, blog_db, pg_env, truncate=True).status is Status.OK
    assert query(pg_env, "SELECT title FROM posts WHERE id = 1")[0]["title"] == "post 0"


def test_verify_finds_changed_and_missing_rows(database_env: DatabaseEnv, tmp_path: Path) -> None:
    users_db, blog_db = _big_source(tmp_path, 5)
    pg_env = database_env("postgresql")
    assert _migrate(users_db, blog_db, pg_env).status is Status.OK
    assert verify(users_db, blog_db, target(pg_env)).status is Status.OK
    query(
        pg_env, "UPDATE posts SET created_at = created_at + interval '1 microsecond' WHERE id = 2"
    )
    changed = verify(users_db, blog_db, target(pg_env))
    assert changed.status is Status.MISMATCH and changed.exit_code == 4
    assert [t.table for t in changed.tables if t.checksum_match is False] == ["posts"]
    query(pg_env, "DELETE FROM users")
    missing = verify(users_db, blog_db, target(pg_env))
    assert next(t for t in missing.tables if t.table == "users").target_rows == 0


def test_mismatch_during_the_load_rolls_everything_back(
    database_env: DatabaseEnv, tmp_path: Path
) -> None:
    users_db, blog_db = _big_source(tmp_path, 5)
    pg_env = database_env("postgresql")
    schema_at_head(pg_env)
    # Something between the COPY stream and the table that alters data: the
    # checksum of what PostgreSQL stored no longer matches what was sent.
    query(
        pg_env,
        "CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.title := upper(NEW.title); RETURN NEW; END $$",
    )
    query(
        pg_env, "CREATE TRIGGER shout BEFORE INSERT ON posts FOR EACH ROW EXECUTE FUNCTION shout()"
    )
    before = snapshot(pg_env)
    result = _migrate(users_db, blog_db, pg_env)
    assert result.status is Status.MISMATCH and result.exit_code == 4
    assert "rolled back" in result.message
    assert snapshot(pg_env) == before


def test_dry_run_writes_nothing(database_env: DatabaseEnv, tmp_path: Path) -> None:
    users_db, blog_db = _big_source(tmp_path, 3)
    pg_env = database_env("postgresql")
    result = _migrate(users_db, blog_db, pg_env, dry_run=True)
    assert result.status is Status.OK and "dry run" in result.message
    assert snapshot(pg_env) == {}
    assert (
        query(pg_env, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'")[0]["n"]
        == 0
    )


def test_snapshot_of_a_source_another_process_is_writing(
    database_env: DatabaseEnv, tmp_path: Path
) -> None:
    users_db, blog_db = _big_source(tmp_path, 4)
    writer = sqlite3.connect(blog_db, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    # Committed but only in the WAL file: part of the snapshot.
    writer.execute("INSERT INTO posts (title, content, author) VALUES ('in wal', 'c', 'writer')")
    # Still open when the migration reads: not part of it, and not blocked by it.
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO posts (title, content, author) VALUES ('uncommitted', 'c', 'w')")
    before = file_state(blog_db)
    try:
        pg_env = database_env("postgresql")
        result = _migrate(users_db, blog_db, pg_env)
        assert result.status is Status.OK, result.message
        titles = [r["title"] for r in query(pg_env, "SELECT title FROM posts ORDER BY id")]
        assert titles[-1] == "in wal" and "uncommitted" not in titles
        assert file_state(blog_db) == before
    finally:
        writer.execute("COMMIT")
        writer.close()


def test_cli_exit_codes_and_report(database_env: DatabaseEnv, tmp_path: Path) -> None:
    users_db, blog_db = _big_source(tmp_path, 2)
    insert(blog_db, "posts", [{"title": "x" * 300, "content": "c", "author": "a"}])
    # Taken before any run, so the end can tell whether a run wrote to the sources.
    sources_before = {path: file_state(path) for path in (users_db, blog_db)}
    pg_env = database_env("postgresql")
    url = dsn(pg_env)
    runner = CliRunner()
    base = ["migrate", "sqlite-to-postgres", "--users-db", str(users_db), "--blog-db", str(blog_db)]
    report = tmp_path / "report.json"
    stopped = runner.invoke(app, [*base, "--to", url, "--report", str(report)])
    assert stopped.exit_code == 5, stopped.output
    assert "300 characters, longer than VARCHAR(200)" in stopped.output
    assert json.loads(report.read_text())["problems"]["by_reason"] == [
        {"table": "posts", "column": "title", "code": "too_long", "count": 1}
    ]
    rejects = tmp_path / "rejects.jsonl"
    skipped = runner.invoke(
        app,
        [
            *base,
            "--to",
            url,
            "--on-error",
            "skip",
            "--rejects",
            str(rejects),
            "--report",
            str(report),
        ],
    )
    assert skipped.exit_code == 3, skipped.output
    assert json.loads(rejects.read_text())["row"]["title"] == "x" * 300
    loaded = json.loads(report.read_text())
    assert loaded["status"] == "completed_with_rejects"
    assert {t["table"]: (t["rows_read"], t["rows_loaded"], t["rows_rejected"], t["checksum_match"])
            for t in loaded["tables"]} == {
        "users": (1, 1, 0, True), "categories": (3, 3, 0, True), "posts": (3, 2, 1, True)
    }  # fmt: skip
    again = runner.invoke(app, [*base, "--to", url])
    assert again.exit_code == 5 and "--truncate" in again.output
    verified = runner.invoke(
        app,
        ["migrate", "verify", "--users-db", str(users_db), "--blog-db", str(blog_db), "--to", url],
    )
    assert verified.exit_code == 0, verified.output
    unreachable = runner.invoke(app, [*base, "--to", "postgresql://nobody@127.0.0.1:1/none"])
    assert unreachable.exit_code == 5 and "cannot connect" in unreachable.output
    assert {path: file_state(path) for path in (users_db, blog_db)} == sources_before
