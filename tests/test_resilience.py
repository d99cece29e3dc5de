"""Staying power: database outages, frozen backends, pool exhaustion, shutdown, big bodies.

These tests own a PostgreSQL server of their own (`private_postgres`), so they can
stop it, freeze it and kill its backends without touching anything else.
"""

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import PrivateServer, register, start_stack
from titanium.runner import Stack


@dataclass
class Outcome:
    """One request of a load run."""

    kind: str
    status: int | None
    started: float
    seconds: float
    post_id: int | None = None
    title: str = ""


class Load:
    """Steady traffic through the gateway in a background thread, bounded in time and count."""

    def __init__(self, gateway: str, headers: dict[str, str], workers: int = 8) -> None:
        self.gateway = gateway
        self.headers = headers
        self.workers = workers
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _run(self) -> None:
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(base_url=self.gateway, timeout=30) as client:

            async def worker(number: int) -> None:
                for i in range(100_000):
                    if self._stop.is_set() or time.monotonic() > deadline:
                        return
                    await self._one(client, "write" if i % 3 == 0 else "read", f"w{number}-{i}")
                    await asyncio.sleep(0.02)

            await asyncio.gather(*(worker(n) for n in range(self.workers)))

    async def _one(self, client: httpx.AsyncClient, kind: str, title: str) -> None:
        started = time.monotonic()
        status, post_id = None, None
        try:
            if kind == "write":
                body = {"title": title, "content": "load"}
                response = await client.post("/blog/api/posts", json=body, headers=self.headers)
                if response.status_code == 201:
                    post_id = response.json()["id"]
            else:
                response = await client.get("/blog/api/posts", params={"limit": 5})
            status = response.status_code
        except httpx.HTTPError:
            status = None
        self.outcomes.append(
            Outcome(kind, status, started, time.monotonic() - started, post_id, title)
        )

    def between(self, start: float, end: float) -> list[Outcome]:
        """Outcomes of requests started in [start, end)."""
        return [o for o in self.outcomes if start <= o.started < end]


@pytest.fixture(scope="module")
def pg_stack(
    private_postgres: PrivateServer, keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = {**private_postgres.env(private_postgres.create_database()), **keys}
    stack = start_stack(env, tmp_path_factory.mktemp("resilience-logs"))
    yield stack
    stack.stop()


def ensure_running(server: PrivateServer) -> None:
    if not (server.data / "postmaster.pid").exists():
        server.start()


def wait_until(predicate: "callable[[], bool]", timeout: float) -> float:  # type: ignore[valid-type]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if predicate():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout}s")


def assert_writes_durable(gateway: str, outcomes: list[Outcome]) -> int:
    acknowledged = [o for o in outcomes if o.kind == "write" and o.status == 201]
    with httpx.Client(base_url=gateway, timeout=10) as client:
        for outcome in acknowledged:
            post = client.get(f"/blog/api/posts/{outcome.post_id}")
            assert post.status_code == 200, outcome
            assert post.json()["title"] == outcome.title
    return len(acknowledged)


def test_database_outage_gives_fast_503_and_recovers(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    gateway = pg_stack.url("gateway")
    user = register(httpx.Client(base_url=gateway, timeout=10))
    with Load(gateway, user["headers"]) as load:
        time.sleep(2)
        stopped_at = time.monotonic()
        private_postgres.stop()
        try:
            time.sleep(4)
            with httpx.Client(base_url=gateway, timeout=5) as client:
                started = time.monotonic()
                assert client.get("/health").status_code == 200
                assert time.monotonic() - started < 0.5
        finally:
            restarted_at = time.monotonic()
            private_postgres.start()
        recovered = wait_until(
            lambda: httpx.get(f"{pg_stack.url('blog')}/ready").status_code == 200, 10
        )
        time.sleep(3)
    during = load.between(stopped_at + 1, restarted_at)
    assert during, "no traffic during the outage"
    assert {o.status for o in during} <= {503}, sorted({o.status for o in during}, key=str)
    assert max(o.seconds for o in during) < 2
    after = load.between(restarted_at + recovered + 1, restarted_at + 60)
    assert after and all(o.status in (200, 201) for o in after)
    assert all(o.status != 500 for o in load.outcomes)
    assert assert_writes_durable(gateway, load.outcomes) > 10


def test_frozen_database_backends_time_out_and_recover(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    ensure_running(private_postgres)
    gateway = pg_stack.url("gateway")
    database = pg_stack.env["POSTGRES_DB"]
    user = register(httpx.Client(base_url=gateway, timeout=10))
    with Load(gateway, user["headers"], workers=6) as load:
        time.sleep(2)
        frozen = private_postgres.backend_pids(database)
        assert frozen, "no backend connections to freeze"
        frozen_at = time.monotonic()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(3)
            started = time.monotonic()
            assert httpx.get(f"{gateway}/health", timeout=5).status_code == 200
            assert time.monotonic() - started < 0.5
            time.sleep(17)
        finally:
            thawed_at = time.monotonic()
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        recovered = wait_until(
            lambda: httpx.get(f"{gateway}/blog/api/posts", timeout=5).status_code == 200, 10
        )
        time.sleep(2)
    during = load.between(frozen_at, thawed_at - 6)
    assert during
    assert all(o.seconds < 6 for o in during), max(o.seconds for o in during)
    assert {o.status for o in during if o.status not in (200, 201)} <= {503, 504}
    assert recovered < 10
    assert all(o.status != 500 for o in load.outcomes)
    assert_writes_durable(gateway, load.outcomes)


def test_killed_idle_connections_cost_no_failed_request(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    ensure_running(private_postgres)
    gateway = pg_stack.url("gateway")
    with httpx.Client(base_url=gateway, timeout=10) as client:
        for _ in range(20):
            assert client.get("/blog/api/posts").status_code == 200
        database = pg_stack.env["POSTGRES_DB"]
        victims = private_postgres.backend_pids(database)
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGTERM)  # what pg_terminate_backend sends
        time.sleep(0.5)
        statuses = [client.get("/blog/api/posts").status_code for _ in range(30)]
    assert statuses == [200] * 30


def test_a_killed_backend_loses_no_acknowledged_write(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    ensure_running(private_postgres)
    gateway = pg_stack.url("gateway")
    user = register(httpx.Client(base_url=gateway, timeout=10))
    with Load(gateway, user["headers"], workers=6) as load:
        time.sleep(2)
        victim = private_postgres.backend_pids(pg_stack.env["POSTGRES_DB"])[0]
        os.kill(victim, signal.SIGKILL)  # the server restarts every backend
        time.sleep(1)
        wait_until(lambda: httpx.get(f"{gateway}/blog/api/posts").status_code == 200, 15)
        time.sleep(2)
    assert all(o.status != 500 for o in load.outcomes)
    assert assert_writes_durable(gateway, load.outcomes) > 5


def test_pool_exhaustion_is_a_bounded_wait_then_503(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    ensure_running(private_postgres)
    gateway = pg_stack.url("gateway")
    database = pg_stack.env["POSTGRES_DB"]

    async def scenario() -> tuple[list[httpx.Response | Exception], float, int]:
        locker = await private_postgres.connect(database)
        watcher = await private_postgres.connect(database)
        try:
            # Every query on posts now waits: requests hold their connections.
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
                # Distinct pages, so no answer can come from blog-service's cache.
                requests = [client.get("/blog/api/posts", params={"offset": i}) for i in range(40)]
                gathered = asyncio.gather(*requests, return_exceptions=True)
                await asyncio.sleep(1.5)
                peak = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'titanium-blog'"
                )
                responses = await gathered
            elapsed = time.monotonic() - started
            await transaction.rollback()
        finally:
            await locker.close()
            await watcher.close()
        return responses, elapsed, peak

    responses, elapsed, peak = asyncio.run(scenario())
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in responses]
    assert set(statuses) <= {503}, statuses
    assert elapsed < 12
    assert peak <= int(pg_stack.env.get("DB_POOL_SIZE", "10"))
    assert httpx.get(f"{gateway}/blog/api/posts").status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    ensure_running(private_postgres)
    gateway = pg_stack.url("gateway")
    user = register(httpx.Client(base_url=gateway, timeout=10))
    with Load(gateway, user["headers"], workers=8) as load:
        time.sleep(2)
        process = pg_stack.processes["blog"]
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        exited_after = time.monotonic() - signalled
        time.sleep(1)
        pg_stack.processes.pop("blog")
        pg_stack.start_one("blog")
        wait_until(lambda: httpx.get(f"{pg_stack.url('blog')}/ready").status_code == 200, 20)
        time.sleep(1)
    assert exited_after < 10
    # uvicorn re-raises the signal after a clean shutdown: -SIGTERM, not a crash code.
    assert process.returncode in (0, -signal.SIGTERM)
    statuses = {o.status for o in load.outcomes}
    assert statuses <= {200, 201, 502, 503}, statuses
    assert assert_writes_durable(gateway, load.outcomes) > 5


def test_a_stopped_downstream_is_a_fast_json_error(pg_stack: Stack) -> None:
    gateway = pg_stack.url("gateway")
    for service, path, body in [
        ("auth", "/api/login", {"username": "someone", "password": "whatever1"}),
        (
            "users",
            "/api/register",
            {"username": "someone", "email": "s@x.io", "password": "pw123456"},
        ),
    ]:
        pg_stack.stop_one(service)  # type: ignore[arg-type]
        try:
            started = time.monotonic()
            response = httpx.post(f"{gateway}{path}", json=body, timeout=10)
            assert time.monotonic() - started < 2
            assert response.status_code in (502, 503)
            assert response.json()["status"] == "failed"
            assert httpx.get(f"{gateway}/blog/api/posts").status_code == 200
        finally:
            pg_stack.start_one(service)  # type: ignore[arg-type]
            wait_until(
                lambda s=service: httpx.get(f"{pg_stack.url(s)}/ready").status_code == 200, 20
            )  # type: ignore[misc]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_oversized_bodies_are_refused_without_being_read(pg_stack: Stack) -> None:
    gateway = pg_stack.url("gateway")
    gateway_pid = pg_stack.processes["gateway"].pid
    before = _rss_kib(gateway_pid)
    chunk = b"x" * (1024 * 1024)

    def chunked() -> Iterator[bytes]:
        for _ in range(10):
            yield chunk

    async def uploads() -> list[int]:
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:

            async def one(i: int) -> int:
                if i % 2:
                    response = await client.post("/blog/api/posts", content=chunk * 10)
                else:
                    response = await client.post(
                        "/blog/api/posts",
                        content=_aiter(chunked()),
                        headers={"content-type": "application/json"},
                    )
                return response.status_code

            return await asyncio.gather(*(one(i) for i in range(20)))

    assert asyncio.run(uploads()) == [413] * 20
    assert httpx.get(f"{gateway}/health").status_code == 200
    assert _rss_kib(gateway_pid) - before < 50 * 1024


async def _aiter(chunks: Iterator[bytes]):  # type: ignore[no-untyped-def]
    for chunk in chunks:
        yield chunk


def test_sqlite_sixteen_writers_never_see_a_locked_database(
    database_env: "callable[[str], dict[str, str]]",  # type: ignore[valid-type]
    keys: dict[str, str],
    tmp_path: Path,
) -> None:
    stack = start_stack({**database_env("sqlite"), **keys}, tmp_path / "logs")
    try:
        gateway = stack.url("gateway")
        user = register(httpx.Client(base_url=gateway, timeout=10))

        async def writers() -> list[tuple[int, int | None, str]]:
            deadline = time.monotonic() + 10
            results: list[tuple[int, int | None, str]] = []
            async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:

                async def writer(n: int) -> None:
                    for i in range(10_000):
                        if time.monotonic() > deadline:
                            return
                        title = f"sqlite {n}-{i}-{uuid.uuid4().hex[:6]}"
                        response = await client.post(
                            "/blog/api/posts", json={"title": title, "content": "c"},
                            headers=user["headers"],
                        )  # fmt: skip
                        post_id = response.json().get("id") if response.status_code == 201 else None
                        results.append((response.status_code, post_id, title))

                await asyncio.gather(*(writer(n) for n in range(16)))
            return results

        results = asyncio.run(writers())
        statuses = {status for status, _, _ in results}
        assert statuses == {201}, statuses
        assert len(results) > 100
        listed = httpx.get(
            f"{gateway}/blog/api/posts", params={"author": user["username"], "limit": 1}
        )
        assert int(listed.headers["x-total-count"]) == len(results)
        with httpx.Client(base_url=gateway) as client:
            for _, post_id, title in results[:: max(1, len(results) // 50)]:
                assert client.get(f"/blog/api/posts/{post_id}").json()["title"] == title
    finally:
        stack.stop()
