"""Posts belong to accounts (ids), not names; categories go when their last post leaves."""

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from fixtures.migrate.builders import SEED_POSTS_DDL, SEED_USERS_DDL, create, insert, query
from support.database import BACKENDS, run_sql
from support.env import settings_for
from support.inprocess import Served, bearer, register, running, served, sqlite_settings
from titanium.config import Settings
from titanium.db.migrations import upgrade_schema
from titanium.db.tables import posts, users
from titanium.migrate.report import Status
from titanium.migrate.run import MigrationOptions, migrate_sqlite_to_postgres, verify
from titanium.migrate.target import target_from_settings
from titanium.services.blog.app import create_app as create_blog
from titanium.services.blog.legacy import link_legacy_posts
from titanium.services.users.app import create_app as create_users
from titanium.web.client import open_downstream

DatabaseEnv = Callable[[str], dict[str, str]]


async def delete_account(url: str, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.delete("/api/users/me", headers=headers)).status_code == 204


@pytest.mark.anyio
async def test_a_re_registered_name_does_not_inherit_the_posts(
    blog: httpx.AsyncClient, user_service: Served, installation: Settings
) -> None:
    name = f"bob_{uuid.uuid4().hex[:8]}"
    first = await register(user_service.url, username=name)
    created = await blog.post(
        "/blog/api/posts",
        json={"title": "mine", "content": "by the first bob"},
        headers=bearer(installation, first),
    )
    assert created.status_code == 201, created.text
    post = created.json()
    assert (post["author"], post["author_id"]) == (name, first["id"])
    await delete_account(user_service.url, bearer(installation, first))

    second = await register(user_service.url, username=name)
    assert second["id"] != first["id"]
    impostor = bearer(installation, second)
    edit = await blog.patch(f"/blog/api/posts/{post['id']}", json={"title": "x"}, headers=impostor)
    assert edit.status_code == 403, edit.text
    assert (await blog.delete(f"/blog/api/posts/{post['id']}", headers=impostor)).status_code == 403
    # Still there, under the old name, for everyone to read.
    listed = (await blog.get("/blog/api/posts", params={"author": name})).json()
    assert [(p["id"], p["title"], p["author"]) for p in listed] == [(post["id"], "mine", name)]
    # The new bob's own posts are his to change.
    own = (
        await blog.post("/blog/api/posts", json={"title": "t", "content": "c"}, headers=impostor)
    ).json()
    assert own["author_id"] == second["id"]
    changed = await blog.patch(
        f"/blog/api/posts/{own['id']}", json={"title": "new"}, headers=impostor
    )
    assert changed.status_code == 200


async def categories(blog: httpx.AsyncClient) -> dict[str, int]:
    return {c["name"]: c["post_count"] for c in (await blog.get("/blog/api/categories")).json()}


@pytest.mark.anyio
async def test_a_category_goes_with_its_last_post(
    blog: httpx.AsyncClient, user_service: Served, installation: Settings
) -> None:
    headers = bearer(installation, await register(user_service.url, "cat"))
    x, y = f"X {uuid.uuid4().hex[:6]}", f"Y {uuid.uuid4().hex[:6]}"
    first = (
        await blog.post(
            "/blog/api/posts", json={"title": "1", "content": "c", "category_name": x},
            headers=headers,
        )
    ).json()  # fmt: skip
    second = (
        await blog.post(
            "/blog/api/posts", json={"title": "2", "content": "c", "category_name": x},
            headers=headers,
        )
    ).json()  # fmt: skip
    assert (await categories(blog))[x] == 2  # read once: the cache holds this list now
    assert (await blog.delete(f"/blog/api/posts/{first['id']}", headers=headers)).status_code == 204
    assert (await categories(blog))[x] == 1
    assert (
        await blog.delete(f"/blog/api/posts/{second['id']}", headers=headers)
    ).status_code == 204
    assert x not in await categories(blog)

    moved = (
        await blog.post(
            "/blog/api/posts", json={"title": "3", "content": "c", "category_name": x},
            headers=headers,
        )
    ).json()  # fmt: skip
    assert x in await categories(blog)
    patched = await blog.patch(
        f"/blog/api/posts/{moved['id']}", json={"category_name": y}, headers=headers
    )
    assert patched.status_code == 200, patched.text
    after = await categories(blog)
    assert x not in after
    assert after[y] == 1
    # The seed's categories and the default stay, empty or not.
    plain = (
        await blog.post("/blog/api/posts", json={"title": "4", "content": "c"}, headers=headers)
    ).json()
    assert plain["category"]["name"] == "Uncategorized"
    await blog.delete(f"/blog/api/posts/{plain['id']}", headers=headers)
    await blog.delete(f"/blog/api/posts/{moved['id']}", headers=headers)
    left = await categories(blog)
    assert {"Uncategorized", "Troubleshooting", "Test"} <= set(left)
    assert y not in left


# The same services on PostgreSQL, for the concurrent case


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_posts_into_a_category_being_emptied_never_fail(
    backend: str, database_env: DatabaseEnv, keys: dict[str, str], tmp_path: Path
) -> None:
    if backend == "postgresql":
        settings = settings_for({**database_env("postgresql"), **keys})
        for service in ("users", "blog"):
            asyncio.run(upgrade_schema(settings, service))
    else:
        settings = sqlite_settings(tmp_path, keys)

    async def go(users_url: str) -> None:
        pool = open_downstream("user-service", users_url, timeout_seconds=10)
        try:
            async with running(create_blog(settings, downstreams={"users": pool})) as client:
                headers = bearer(settings, await register(users_url, username="racer"))
                for round_ in range(15):
                    name = f"Race {round_}"

                    async def create(n: int, name: str = name) -> httpx.Response:
                        body = {"title": f"{n}", "content": "c", "category_name": name}
                        return await client.post("/blog/api/posts", json=body, headers=headers)

                    seed = await create(0)
                    assert seed.status_code == 201, seed.text

                    async def remove(post_id: int = seed.json()["id"]) -> httpx.Response:
                        return await client.delete(f"/blog/api/posts/{post_id}", headers=headers)

                    answers = await asyncio.gather(remove(), create(1), create(2), remove())
                    codes = sorted(a.status_code for a in answers)
                    # One delete wins, the other finds the post gone; both creates succeed.
                    assert codes == [201, 201, 204, 404], [a.text for a in answers]
                    counts = await categories(client)
                    assert counts[name] == 2
        finally:
            await pool.close()

    with served(create_users(settings)) as server:
        asyncio.run(go(server.url))


# Legacy posts: made at blog revision 0003, linked by the step


def _at_0003(settings: Settings) -> None:
    asyncio.run(upgrade_schema(settings, "users"))
    asyncio.run(upgrade_schema(settings, "blog", "0003"))


def _add_user(settings: Settings, username: str, created_at: datetime | None) -> int:
    rows = run_sql(
        settings,
        "users",
        sa.insert(users)
        .values(username=username, email="e@example.com", password_hash="x", created_at=created_at)
        .returning(users.c.id),
    )
    return int(rows[0][0])


def _add_legacy_post(settings: Settings, author: str, created_at: datetime) -> int:
    # No author_id: the column does not exist yet at revision 0003.
    statement = sa.text(
        "INSERT INTO posts (title, content, author, created_at, updated_at) "
        "VALUES ('old', 'legacy', :author, :at, :at) RETURNING id"
    ).bindparams(sa.bindparam("at", type_=sa.DateTime))
    return int(run_sql(settings, "blog", statement.bindparams(author=author, at=created_at))[0][0])


def _owners(settings: Settings) -> dict[int, int | None]:
    rows = run_sql(settings, "blog", sa.select(posts.c.id, posts.c.author_id))
    return {row.id: row.author_id for row in rows}


@pytest.mark.parametrize("backend", BACKENDS)
def test_legacy_posts_are_linked_only_to_an_account_older_than_them(
    backend: str, database_env: DatabaseEnv
) -> None:
    settings = settings_for(database_env(backend))
    _at_0003(settings)
    alice = _add_user(settings, "alice", datetime(2024, 1, 1))
    _add_user(settings, "carol", datetime(2024, 6, 1))  # re-registered after carol's post
    # No creation time: only accounts from the original system's files (which
    # predate every Titanium post) lack one; linked, as that system linked by name.
    dave = _add_user(settings, "dave", None)
    by_alice = _add_legacy_post(settings, "alice", datetime(2024, 2, 1))
    same_second = _add_legacy_post(settings, "alice", datetime(2024, 1, 1))
    by_old_carol = _add_legacy_post(settings, "carol", datetime(2024, 3, 1))
    by_dave = _add_legacy_post(settings, "dave", datetime(2024, 3, 1))
    by_nobody = _add_legacy_post(settings, "erin", datetime(2024, 3, 1))
    # The step waits for the schema: nothing happens at 0003.
    assert asyncio.run(link_legacy_posts(settings)) is None

    asyncio.run(upgrade_schema(settings, "blog"))
    report = asyncio.run(link_legacy_posts(settings))
    assert report is not None
    assert (report.linked, report.unowned) == (3, 2)
    assert _owners(settings) == {
        by_alice: alice,
        same_second: alice,
        by_old_carol: None,
        by_dave: dave,
        by_nobody: None,
    }
    # Idempotent: a second run finds nothing more to link.
    again = asyncio.run(link_legacy_posts(settings))
    assert again is not None
    assert (again.linked, again.unowned) == (0, 2)


def test_db_upgrade_links_and_says_how_many(database_env: DatabaseEnv) -> None:
    env = database_env("sqlite")
    settings = settings_for(env)
    _at_0003(settings)
    _add_user(settings, "frank", datetime(2024, 1, 1))
    _add_legacy_post(settings, "frank", datetime(2024, 2, 1))
    done = subprocess.run(
        [sys.executable, "-m", "titanium", "db", "upgrade"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "linked 1 legacy posts" in done.stdout
    assert "0 posts have no provable author" in done.stdout
    assert set(_owners(settings).values()) == {1}


# The SQLite → PostgreSQL data migration


def test_the_migration_carries_author_ids_and_links_the_original_system_s_posts(
    database_env: DatabaseEnv, tmp_path: Path
) -> None:
    # Titanium's own files, at head: author_id is copied as it is.
    sqlite = settings_for(database_env("sqlite"))
    _at_0003(sqlite)
    gina = _add_user(sqlite, "gina", datetime(2024, 1, 1))
    asyncio.run(upgrade_schema(sqlite, "blog"))
    run_sql(
        sqlite,
        "blog",
        sa.insert(posts).values(title="t", content="c", author="gina", author_id=gina),
    )
    pg_env = database_env("postgresql")
    target = target_from_settings(settings_for(pg_env))
    data = sqlite.data_dir
    result = migrate_sqlite_to_postgres(
        MigrationOptions(data / "users.db", data / "blog.db", target)
    )
    assert result.status is Status.OK, result.message
    assert [r["author_id"] for r in query(pg_env, "SELECT author_id FROM posts")] == [gina]

    # The original system's files have no author_id: the posts get linked.
    old = tmp_path / "old"
    users_db = create(old / "users.db", SEED_USERS_DDL[:-1] + ", created_at TEXT)")
    blog_db = create(old / "blog.db", SEED_POSTS_DDL)
    insert(users_db, "users", [
        {"username": "hana", "email": "h@example.com", "password_hash": "x",
         "created_at": "2023-01-01 00:00:00"},
        {"username": "ivan", "email": "i@example.com", "password_hash": "x",
         "created_at": "2025-01-01 00:00:00"},
    ])  # fmt: skip
    insert(blog_db, "posts", [
        {"title": "a", "content": "a", "author": "hana", "created_at": "2024-01-01 00:00:00"},
        {"title": "b", "content": "b", "author": "ivan", "created_at": "2024-01-01 00:00:00"},
    ])  # fmt: skip
    fresh = database_env("postgresql")
    target = target_from_settings(settings_for(fresh))
    result = migrate_sqlite_to_postgres(MigrationOptions(users_db, blog_db, target))
    assert result.status is Status.OK, result.message
    assert any("linked 1 legacy posts" in note for note in result.notes), result.notes
    rows = query(fresh, "SELECT p.author, p.author_id, u.id AS hana FROM posts p, users u "
                        "WHERE u.username = 'hana' ORDER BY p.id")  # fmt: skip
    assert [(r["author"], r["author_id"]) for r in rows] == [
        ("hana", rows[0]["hana"]),
        ("ivan", None),
    ]
    # Verifying again compares what was copied; the linked ids have no source to differ from.
    again = verify(users_db, blog_db, target)
    assert again.status is Status.OK, again.message
