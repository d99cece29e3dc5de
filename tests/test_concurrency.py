"""Concurrent writes through the gateway lose nothing and never fail, on both backends."""

import asyncio

import httpx

from conftest import RunningStack, register


def test_fifty_concurrent_post_creations_are_all_stored(live: RunningStack) -> None:
    author = register(live.client)

    async def create_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.gateway, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/blog/api/posts",
                        json={"title": f"concurrent {i}", "content": f"body {i}"},
                        headers=author["headers"],
                    )
                    for i in range(50)
                )
            )

    responses = asyncio.run(create_all())
    assert [r.status_code for r in responses] == [201] * 50
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 50
    stored = live.client.get("/blog/api/posts", params={"author": author["username"], "limit": 100})
    assert stored.headers["x-total-count"] == "50"
    assert {post["id"] for post in stored.json()} == ids
    assert {post["title"] for post in stored.json()} == {f"concurrent {i}" for i in range(50)}
