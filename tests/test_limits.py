"""Memory and answer sizes stay bounded whatever clients store or send."""

import asyncio
import json
from pathlib import Path
from typing import Any

from support.database import run_sql
from support.inprocess import running, sqlite_settings
from titanium.config import Settings
from titanium.db.tables import posts
from titanium.services.blog.app import create_app as create_blog
from titanium.services.blog.cache import ENTRY_OVERHEAD_BYTES, Cached, ResponseCache
from titanium.services.users.app import create_app as create_users
from titanium.web.errors import MAX_ERROR_TEXT, MAX_FIELD_ERRORS


def body(size: int) -> Cached:
    return Cached(b"x" * (size - ENTRY_OVERHEAD_BYTES), {})


def live_cache(max_entries: int, max_bytes: int) -> ResponseCache:
    cache = ResponseCache(max_entries, max_bytes)
    cache.set_live(True)
    return cache


def test_the_cache_evicts_least_recently_used_entries_until_the_bytes_fit() -> None:
    cache = live_cache(100, 8000)
    for key in "abcd":
        cache.put(key, cache.generation, body(1000))
    assert cache.get("a") is not None  # "a" is now the most recently used
    for key in "efgh":
        cache.put(key, cache.generation, body(1000))
    assert cache.size_bytes == 8000
    cache.put("i", cache.generation, body(1000))
    assert cache.get("b") is None  # the oldest went first, "a" was kept by its use
    assert [key for key in "acdefghi" if cache.get(key) is None] == []
    cache.put("i", cache.generation, body(600))  # replacing counts the new size only
    assert cache.size_bytes == 7600
    cache.invalidate()
    assert (len(cache), cache.size_bytes) == (0, 0)


def test_an_entry_over_an_eighth_of_the_budget_is_not_kept() -> None:
    cache = live_cache(100, 8000)
    cache.put("small", cache.generation, body(1000))
    cache.put("large", cache.generation, body(1001))
    assert cache.get("large") is None
    assert cache.get("small") is not None  # and it pushed nothing out
    assert cache.size_bytes == 1000


def test_the_entry_cap_still_holds_when_bodies_are_tiny() -> None:
    cache = live_cache(3, 1 << 20)
    for key in "abcd":
        cache.put(key, cache.generation, body(ENTRY_OVERHEAD_BYTES + 2))
    assert (len(cache), cache.get("a")) == (3, None)


def test_by_default_the_byte_budget_alone_bounds_the_cache() -> None:
    """The default entry cap admits as many posts as the bytes hold, down to empty bodies."""
    defaults = Settings.model_fields
    entries = defaults["blog_cache_entries"].default
    max_bytes = defaults["blog_cache_bytes"].default
    cache = live_cache(entries, max_bytes)
    for post_id in range(max_bytes // ENTRY_OVERHEAD_BYTES):
        cache.put(("post", post_id), cache.generation, body(ENTRY_OVERHEAD_BYTES))
    assert cache.evictions == 0
    assert cache.size_bytes == max_bytes


def test_reading_many_large_posts_keeps_blog_cache_within_its_bytes(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    budget = 1024 * 1024
    settings = sqlite_settings(tmp_path, keys, blog_cache_bytes=budget)
    # 40 posts of 100 kB: under an eighth of the budget each, 4 MB together.
    run_sql(
        settings, "blog",
        posts.insert().values(
            [{"title": f"t{n}", "content": "x" * 100_000, "author": "a"} for n in range(40)]
        ),
    )  # fmt: skip
    ids = [row.id for row in run_sql(settings, "blog", posts.select())]

    async def read_all() -> dict[str, Any]:
        async with running(create_blog(settings)) as blog:
            for post_id in ids:
                assert (await blog.get(f"/blog/api/posts/{post_id}")).status_code == 200
            stats: dict[str, Any] = (await blog.get("/stats")).json()
            return stats

    cache = asyncio.run(read_all())["cache"]
    assert cache["max_bytes"] == budget
    assert budget - 120_000 < cache["bytes"] <= budget
    assert cache["entries"] == 10


def test_a_megabyte_of_unknown_fields_gets_a_small_422(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    # First a key name longer than any answer should repeat, then many short ones.
    names = ["y" * 5000] + [f"f{n:06d}" for n in range(72_000)]
    payload = json.dumps(dict.fromkeys(names, 1)).encode()
    assert 1_000_000 < len(payload) <= 1024 * 1024
    settings = sqlite_settings(tmp_path, keys)

    async def send() -> tuple[int, bytes, bytes]:
        async with running(create_users(settings)) as users:
            json_type = {"content-type": "application/json"}
            flood = await users.post("/api/register", content=payload, headers=json_type)
            one = {"username": "ab", "email": "ab@example.com", "password": "correct horse"}
            normal = await users.post("/api/register", json=one)
            return flood.status_code, flood.content, normal.content

    status, flood, normal = asyncio.run(send())
    assert status == 422
    assert len(flood) < 16 * 1024
    answer = json.loads(flood)
    left_out = 3 + len(names) - MAX_FIELD_ERRORS  # the three missing fields come first
    message = f"username: Field required (and {left_out} more errors not listed)"
    assert answer["status"] == "failed"
    assert answer["message"] == answer["detail"] == message
    fields = [error["field"] for error in answer["errors"]]
    assert fields[:3] == ["username", "email", "password"]
    assert fields[3] == "y" * (MAX_ERROR_TEXT - 1) + "…"
    assert fields[4:6] == ["f000000", "f000001"]
    assert len(fields) == MAX_FIELD_ERRORS

    # One bad field: the same answer as ever.
    text = "username: String should have at least 3 characters"
    assert json.loads(normal) == {
        "status": "failed",
        "message": text,
        "detail": text,
        "errors": [{"field": "username", "message": "String should have at least 3 characters"}],
    }
