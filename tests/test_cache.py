"""blog-service's response cache is never stale after a write, from anywhere, on both backends."""

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from pydantic import TypeAdapter
from pydantic_core import to_json

from support.api import new_post, register
from support.database import BACKENDS, run_sql
from support.env import settings_for
from support.ports import free_port
from support.postgres import ADMIN_URL
from support.stack import RunningStack
from support.wait import wait_until
from titanium.db.engine import Database
from titanium.db.migrations import upgrade_schema
from titanium.db.tables import posts
from titanium.runner import wait_until_ready
from titanium.services.blog.cache import Cached, DataVersionWatch, ResponseCache
from titanium.services.blog.repository import BlogRepository, CategoryChoice, PostFilter
from titanium.services.blog.schemas import Category, Post, PostSummary

BOTH = pytest.mark.parametrize("live", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def second_blog(live: RunningStack) -> Iterator[str]:
    """Another blog-service replica on the same database."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "titanium", "serve", "blog", "--port", str(port)],
        env=live.stack.child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/ready", process, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)


def titles(base: str, author: str) -> list[str]:
    answer = httpx.get(f"{base}/blog/api/posts", params={"author": author})
    return [post["title"] for post in answer.json()]


@BOTH
def test_a_write_through_one_replica_reaches_the_other(
    live: RunningStack, second_blog: str
) -> None:
    user = register(live.client)
    assert titles(second_blog, user["username"]) == []  # now cached as empty there
    new_post(live.client, user["headers"], title="fresh", content="c")
    # The writing replica answers with the change at once (read your writes) ...
    assert titles(live.stack.url("blog"), user["username"]) == ["fresh"]
    # ... and the other one as soon as PostgreSQL's notification arrives.
    wait_until(
        lambda: titles(second_blog, user["username"]) == ["fresh"],
        2.0,
        "the other replica lists the new post",
        interval=0.02,
    )


@BOTH
def test_a_write_outside_the_api_empties_the_cache(live: RunningStack) -> None:
    user = register(live.client)
    post_id = new_post(live.client, user["headers"], title="before", content="c")["id"]
    blog = live.stack.url("blog")
    assert httpx.get(f"{blog}/blog/api/posts/{post_id}").json()["title"] == "before"
    run_sql(
        live.settings, "blog", sa.update(posts).where(posts.c.id == post_id).values(title="psql")
    )
    wait_until(
        lambda: httpx.get(f"{blog}/blog/api/posts/{post_id}").json()["title"] == "psql",
        2.0,
        "the post read after the outside write",
        interval=0.02,
    )


@pytest.mark.parametrize("live", ["postgresql"], indirect=True)
def test_without_its_listener_the_cache_answers_nothing(live: RunningStack) -> None:
    user = register(live.client)
    post_id = new_post(live.client, user["headers"], title="one", content="c")["id"]
    blog = live.stack.url("blog")
    database = live.env["POSTGRES_DB"]

    async def listeners(action: str) -> int:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            return int(
                await conn.fetchval(
                    f"SELECT count({action}) FROM pg_stat_activity "
                    "WHERE datname = $1 AND application_name = 'titanium-blog-listener'",
                    database,
                )
            )
        finally:
            await conn.close()

    assert httpx.get(f"{blog}/blog/api/posts/{post_id}").json()["title"] == "one"
    assert asyncio.run(listeners("pg_terminate_backend(pid)")) == 1
    # Immediately: a change the dead listener can no longer hear is still served.
    run_sql(
        live.settings, "blog", sa.update(posts).where(posts.c.id == post_id).values(title="two")
    )
    assert httpx.get(f"{blog}/blog/api/posts/{post_id}").json()["title"] == "two"


def test_sqlite_cache_serves_until_any_connection_commits(tmp_path: Path) -> None:
    path = tmp_path / "blog.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x INTEGER)")
    cache = ResponseCache(8)
    watch = DataVersionWatch(path, cache)
    watch.start()
    page = Cached(b"[]", {})

    cache.put("k", cache.generation, page)
    assert cache.get("k") is page  # served from memory while nothing changes
    other.execute("INSERT INTO t VALUES (1)")  # another connection, as another process would
    assert cache.get("k") is None

    generation = cache.generation
    other.execute("INSERT INTO t VALUES (2)")  # lands while a read is in flight
    cache.put("k", generation, page)
    assert cache.get("k") is None  # what was read before that commit is not kept

    cache.put("k", cache.generation, page)
    assert cache.get("k") is page
    asyncio.run(watch.stop())
    assert cache.get("k") is None  # no watch, no cache
    other.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bodies_are_what_the_documented_models_would_send(
    backend: str, database_env: Callable[[str], dict[str, str]]
) -> None:
    # blog-service serialises its rows without validating them against the response
    # models (services/blog/app.py _cached): the bytes must be the models' anyway.
    settings = settings_for(database_env(backend))

    async def go() -> None:
        await upgrade_schema(settings, "blog")
        db = Database(settings, "blog")
        try:
            repo = BlogRepository(db)
            made = await repo.create_post("ana", 7, "Tïtle", "body\nline", CategoryChoice("Näme"))
            async with db.write() as conn:  # an unowned legacy post, with microseconds
                await conn.execute(
                    sa.insert(posts).values(
                        title="old", content="x" * 300, author="gone",
                        created_at=datetime(2024, 2, 29, 23, 59, 59, 123456),
                    )
                )  # fmt: skip
            listed, _ = await repo.list_posts(PostFilter(), 0, 20)
            cases: list[tuple[Any, Any]] = [
                (list[PostSummary], listed),
                (Post, await repo.get_post(made["id"])),
                (Post, made),
                (list[Category], await repo.list_categories()),
            ]
            for model, found in cases:
                adapter: TypeAdapter[Any] = TypeAdapter(model)
                assert to_json(found) == adapter.dump_json(adapter.validate_python(found))
            assert listed[0]["author_id"] == 7 and listed[1]["author_id"] is None
        finally:
            await db.dispose()

    asyncio.run(go())
