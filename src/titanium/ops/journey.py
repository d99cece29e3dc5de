"""`titanium verify URL`: the seed's "CRUD works" check as a journey through the gateway.

A throwaway user registers, logs in, creates, reads, lists, updates and deletes
a post, and confirms the 404; the post and the user are removed afterwards even
when a step fails.
"""

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp


@dataclass
class Step:
    """The outcome of one step of the journey."""

    name: str
    ok: bool
    status: int | None
    latency_ms: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The step as JSON-ready data."""
        return asdict(self)


class StepFailed(Exception):
    """A step got an answer other than the one expected."""


class Journey:
    """Runs the steps in order against one gateway, recording each."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.steps: list[Step] = []
        self.headers: dict[str, str] = {}

    async def call(self, name: str, method: str, path: str, expect: int, body: Any = None) -> Any:
        """Make one request; record it as a step; raise StepFailed on a wrong status."""
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self.session.request(
                method, self.base + path, json=body, headers=self.headers
            ) as response:
                status = response.status
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._record(name, False, None, started, f"no answer: {exc!r}")
            raise StepFailed(name) from exc
        if status != expect:
            self._record(name, False, status, started, f"expected {expect}: {text[:200]}")
            raise StepFailed(name)
        self._record(name, True, status, started)
        return _json(text)

    def _record(
        self, name: str, ok: bool, status: int | None, started: float, detail: str = ""
    ) -> None:
        latency = (time.perf_counter() - started) * 1000
        self.steps.append(Step(name, ok, status, round(latency, 1), detail))


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


async def run_journey(base_url: str, timeout_seconds: float = 10.0) -> list[Step]:
    """Check health and readiness, then the full CRUD journey; return every step."""
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        journey = Journey(session, base_url)
        username = f"verify-{uuid.uuid4().hex[:12]}"
        password = uuid.uuid4().hex
        post_id: int | None = None
        registered = False

        async def health() -> None:
            await journey.call("health", "GET", "/health", 200)

        async def ready() -> None:
            await journey.call("ready", "GET", "/ready", 200)

        async def register() -> None:
            nonlocal registered
            body = {"username": username, "email": f"{username}@example.com", "password": password}
            await journey.call("register", "POST", "/api/register", 201, body)
            journey.steps[-1].detail = f"throwaway user {username}"
            registered = True

        async def login() -> None:
            body = {"username": username, "password": password}
            answer = await journey.call("login", "POST", "/api/login", 200, body)
            journey.headers = {"Authorization": f"Bearer {answer['token']}"}

        async def create() -> None:
            nonlocal post_id
            body = {"title": "titanium verify", "content": f"probe {username}"}
            post_id = (await journey.call("create post", "POST", "/blog/api/posts", 201, body))[
                "id"
            ]

        async def read() -> None:
            await journey.call("read post", "GET", f"/blog/api/posts/{post_id}", 200)

        async def listed() -> None:
            items = await journey.call(
                "list posts", "GET", f"/blog/api/posts?author={username}", 200
            )
            if not any(item["id"] == post_id for item in items):
                journey.steps[-1].ok = False
                journey.steps[-1].detail = "the new post is not in the list"
                raise StepFailed("list posts")

        async def update() -> None:
            body = {"title": "titanium verify (updated)"}
            await journey.call("update post", "PATCH", f"/blog/api/posts/{post_id}", 200, body)

        async def delete() -> None:
            nonlocal post_id
            await journey.call("delete post", "DELETE", f"/blog/api/posts/{post_id}", 204)
            deleted, post_id = post_id, None
            await journey.call("confirm 404", "GET", f"/blog/api/posts/{deleted}", 404)

        steps: list[Callable[[], Awaitable[None]]] = [
            health,
            ready,
            register,
            login,
            create,
            read,
            listed,
            update,
            delete,
        ]
        try:
            for step in steps:
                await step()
        except StepFailed:
            pass
        finally:
            await _clean_up(journey, post_id, registered)
        return journey.steps


async def _clean_up(journey: Journey, post_id: int | None, registered: bool) -> None:
    # Best effort: a cleanup that fails is reported as a failed step too.
    if post_id is not None and journey.headers:
        with suppress(StepFailed):
            await journey.call("clean up post", "DELETE", f"/blog/api/posts/{post_id}", 204)
    if registered and journey.headers:
        with suppress(StepFailed):
            await journey.call("clean up user", "DELETE", "/api/users/me", 204)
