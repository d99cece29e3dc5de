"""Staying power: database outages, frozen backends, pool exhaustion, shutdown, big bodies.

These tests own a PostgreSQL server of their own (`private_postgres`), so they can
stop it, freeze it and kill its backends without touching anything else.

No test here bounds how long something took (decision 16: timings are measurements,
in bench/). Each asserts what a bound stood for: the answer's status and headers, or
that it came while the fault still held. Timeouts only stop a test that hangs.
"""

import asyncio
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.api import register
from support.postgres import PrivateServer
from support.stack import start_stack
from support.wait import wait_until
from titanium.config import ServiceName
from titanium.runner import Stack

pytestmark = pytest.mark.stack  # every test runs the services as processes


@dataclass
class Outcome:
    """One request of a load run."""

    kind: str
    status: int | None
    started: float
    seconds: float
    post_id: int | None = None
    title: str = ""
    retry_after: str | None = None

    @property
    def ended(self) -> float:
        return self.started + self.seconds


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
        # The client timeout only stops a request that hangs (recorded with status None).
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
        status, post_id, retry_after = None, None, None
        try:
            if kind == "write":
                body = {"title": title, "content": "load"}
                response = await client.post("/blog/api/posts", json=body, headers=self.headers)
                if response.status_code == 201:
                    post_id = response.json()["id"]
            else:
                response = await client.get("/blog/api/posts", params={"limit": 5})
            status = response.status_code
            retry_after = response.headers.get("retry-after")
        except httpx.HTTPError:
            status = None
        self.outcomes.append(
            Outcome(kind, status, started, time.monotonic() - started, post_id, title, retry_after)
        )

    def between(self, start: float, end: float) -> list[Outcome]:
        """Outcomes of requests started in [start, end)."""
        return [o for o in self.outcomes if start <= o.started < end]

    def wait_for(
        self, count: int, *, since: float = 0.0, writes: bool = False, timeout: float = 60
    ) -> None:
        """Wait until `count` requests started at `since` or later have ended.

        `writes`: count acknowledged writes only. A condition instead of a sleep, so
        a slow machine makes the test slower, not emptier.
        """

        def enough() -> bool:
            done = [o for o in list(self.outcomes) if o.started >= since]
            if writes:
                done = [o for o in done if o.kind == "write" and o.status == 201]
            return len(done) >= count

        what = "acknowledged writes" if writes else "requests"
        wait_until(enough, timeout, f"{count} {what} of the load")


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


def assert_refused_for_now(response: httpx.Response) -> None:
    """A 503 made by Titanium (not a proxy's or a client's timeout), telling when to retry."""
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["status"] == "failed"


def assert_writes_durable(gateway: str, outcomes: list[Outcome]) -> int:
    acknowledged = [o for o in outcomes if o.kind == "write" and o.status == 201]
    with httpx.Client(base_url=gateway, timeout=10) as client:
        for outcome in acknowledged:
            post = client.get(f"/blog/api/posts/{outcome.post_id}")
            assert post.status_code == 200, outcome
            assert post.json()["title"] == outcome.title
    return len(acknowledged)


def test_database_outage_gives_503_with_retry_after_and_recovers(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    gateway = pg_stack.url("gateway")
    user = register(httpx.Client(base_url=gateway, timeout=10))
    with Load(gateway, user["headers"]) as load:
        load.wait_for(10, writes=True)
        private_postgres.stop()
        down_at = time.monotonic()
        try:
            with httpx.Client(base_url=gateway, timeout=10) as client:
                # Liveness needs no database, or an outage would restart every pod.
                for health in (f"{gateway}/health", f"{pg_stack.url('blog')}/health"):
                    assert client.get(health).json()["status"] == "ok"
                # Refused at once with a hint, not held until the database returns: the
                # database comes back only after these answers.
                assert_refused_for_now(client.get("/blog/api/posts", params={"offset": 7919}))
                assert_refused_for_now(
                    client.post(
                        "/blog/api/posts",
                        json={"title": "during the outage", "content": "c"},
                        headers=user["headers"],
                    )
                )
            load.wait_for(40, since=down_at)
        finally:
            restarted_at = time.monotonic()
            private_postgres.start()
        wait_until(
            lambda: httpx.get(f"{pg_stack.url('blog')}/ready").status_code == 200,
            30,
            "blog-service ready after the database restarted",
            ignoring=(httpx.HTTPError,),
        )
        ready_at = time.monotonic()
        load.wait_for(40, since=ready_at)
    # Sent and answered while the database was down.
    during = [o for o in load.outcomes if o.started >= down_at and o.ended < restarted_at]
    assert during, "no traffic during the outage"
    assert all(o.status == 503 and o.retry_after == "1" for o in during), sorted(
        {(o.status, o.retry_after) for o in during}, key=str
    )
    after = load.between(ready_at, float("inf"))
    assert after and all(o.status in (200, 201) for o in after), sorted(
        {o.status for o in after}, key=str
    )
    assert all(o.status != 500 for o in load.outcomes)
    assert assert_writes_durable(gateway, load.outcomes) >= 10


# Longer than any wait Titanium allows itself on the database (statement timeout 3 s,
# pool wait 2 s), so a request that waits for the thaw instead stands out.
FREEZE_SECONDS = 20


def test_frozen_database_backends_time_out_and_recover(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    ensure_running(private_postgres)
    gateway = pg_stack.url("gateway")
    database = pg_stack.env["POSTGRES_DB"]
    user = register(httpx.Client(base_url=gateway, timeout=10))
    with Load(gateway, user["headers"], workers=6) as load:
        load.wait_for(5, writes=True)
        frozen = private_postgres.backend_pids(database)
        assert frozen, "no backend connections to freeze"
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            for health in (f"{gateway}/health", f"{pg_stack.url('blog')}/health"):
                assert httpx.get(health, timeout=10).json()["status"] == "ok"
            time.sleep(max(0.0, frozen_at + FREEZE_SECONDS - time.monotonic()))
        finally:
            thawed_at = time.monotonic()
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        wait_until(
            lambda: httpx.get(f"{gateway}/blog/api/posts", timeout=5).status_code == 200,
            30,
            "the post list answers after the thaw",
            ignoring=(httpx.HTTPError,),
        )
    # Requests in flight during the freeze's first half had at least half of it to get
    # their answer: each one came while the backends were still frozen, from a timeout
    # of Titanium's own, not from the thaw.
    exposed = [
        o
        for o in load.outcomes
        if o.ended > frozen_at and o.started < frozen_at + FREEZE_SECONDS / 2
    ]
    assert exposed, "no traffic during the freeze"
    waited_for_thaw = [o for o in exposed if o.ended >= thawed_at]
    assert not waited_for_thaw, waited_for_thaw[:5]
    assert {o.status for o in exposed} <= {200, 201, 503, 504}, sorted(
        {o.status for o in exposed}, key=str
    )
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
        wait_until(
            lambda: httpx.get(f"{gateway}/blog/api/posts").status_code == 200,
            15,
            ignoring=(httpx.HTTPError,),
        )
        time.sleep(2)
    assert all(o.status != 500 for o in load.outcomes)
    assert assert_writes_durable(gateway, load.outcomes) > 5


def test_pool_exhaustion_is_a_bounded_wait_then_503(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    ensure_running(private_postgres)
    gateway = pg_stack.url("gateway")
    database = pg_stack.env["POSTGRES_DB"]

    async def scenario() -> tuple[list[httpx.Response | BaseException], int]:
        locker = await private_postgres.connect(database)
        watcher = await private_postgres.connect(database)
        try:
            # Every query on posts now waits: requests hold their connections. The lock
            # is held until every answer is in, so only waits Titanium bounds itself (pool
            # wait, statement timeout) can end them; the client's timeout stops a hang.
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
            async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
                # Distinct pages, so no answer can come from blog-service's cache.
                requests = [client.get("/blog/api/posts", params={"offset": i}) for i in range(40)]
                gathered = asyncio.gather(*requests, return_exceptions=True)
                await asyncio.sleep(1.5)
                peak = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'titanium-blog'"
                )
                responses = await gathered
            await transaction.rollback()
        finally:
            await locker.close()
            await watcher.close()
        return responses, peak

    responses, peak = asyncio.run(scenario())
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in responses]
    assert statuses == [503] * 40, statuses
    answers = [r for r in responses if isinstance(r, httpx.Response)]
    for answer in answers:
        assert_refused_for_now(answer)
    # Requests beyond the pool's width were turned away when their wait ran out (2 s),
    # before any connection came free (3 s statement timeout): with an unbounded wait
    # they would be served those connections and end "unavailable" too.
    messages = Counter(answer.json()["message"] for answer in answers)
    assert messages["the database is busy, retry shortly"] > 0, messages
    assert peak <= int(pg_stack.env.get("DB_POOL_SIZE", "10"))
    assert httpx.get(f"{gateway}/blog/api/posts").status_code == 200


def unread_requests(port: int) -> int:
    """Connections to 127.0.0.1:`port` holding bytes its server process has not read yet."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _remote, state, queues = line.split()[1:5]
        local_port, unread = int(local.split(":")[1], 16), int(queues.split(":")[1], 16)
        if state == "01" and local_port == port and unread > 0:  # 01: ESTABLISHED
            count += 1
    return count


def accepts_connections(host: str, port: int) -> bool:
    """True while something listens on host:port."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def test_graceful_shutdown_finishes_in_flight_requests(
    pg_stack: Stack, private_postgres: PrivateServer
) -> None:
    ensure_running(private_postgres)
    gateway = pg_stack.url("gateway")
    user = register(httpx.Client(base_url=gateway, timeout=10))
    users, blog = pg_stack.processes["users"], pg_stack.processes["blog"]
    titles = [f"in flight {i} {uuid.uuid4().hex[:6]}" for i in range(4)]

    def write(title: str) -> httpx.Response:
        body = {"title": title, "content": "sent before the SIGTERM"}
        return httpx.post(
            f"{gateway}/blog/api/posts", json=body, headers=user["headers"], timeout=30
        )

    # blog-service asks user-service about the account before every write (decision 13):
    # with user-service stopped, the writes wait inside blog-service, in flight, until it
    # continues (blog-service gives up after UPSTREAM_TIMEOUT_SECONDS, 10 s).
    os.kill(users.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(len(titles)) as senders:
            writes = [senders.submit(write, title) for title in titles]
            try:
                wait_until(
                    lambda: unread_requests(pg_stack.ports["users"]) >= len(titles),
                    10,
                    "every write waiting inside blog-service for user-service",
                )
                blog.send_signal(signal.SIGTERM)
                # uvicorn closes its listening socket first: the shutdown has begun, and
                # the process stays, waiting for the writes it has in flight.
                wait_until(
                    lambda: not accepts_connections(pg_stack.host, pg_stack.ports["blog"]),
                    10,
                    "blog-service stops listening after SIGTERM",
                )
                assert blog.poll() is None, "blog-service exited with writes in flight"
            finally:
                os.kill(users.pid, signal.SIGCONT)  # the writes go on from here
            answers = [future.result() for future in writes]
        assert [a.status_code for a in answers] == [201] * len(titles), [a.text for a in answers]
        # The wait is only there to stop a hung test: exiting is the property.
        blog.wait(timeout=30)
        # uvicorn re-raises the signal after a clean shutdown: -SIGTERM, not a crash code.
        assert blog.returncode in (0, -signal.SIGTERM)
        # Gone, it is a clean refusal at the gateway.
        assert_refused_for_now(httpx.get(f"{gateway}/blog/api/posts", timeout=10))
    finally:
        # Whatever failed above, the module's stack goes on with a fresh blog-service.
        pg_stack.stop_one("blog")
        pg_stack.start_one("blog")
        wait_until(
            lambda: httpx.get(f"{pg_stack.url('blog')}/ready").status_code == 200,
            30,
            "blog-service ready after its restart",
            ignoring=(httpx.HTTPError,),
        )
    with httpx.Client(base_url=gateway, timeout=10) as client:
        for answer in answers:
            stored = client.get(f"/blog/api/posts/{answer.json()['id']}")
            assert stored.status_code == 200
            assert stored.json()["title"] == answer.json()["title"]
    assert sorted(a.json()["title"] for a in answers) == sorted(titles)


def test_a_stopped_downstream_is_a_json_503(pg_stack: Stack) -> None:
    gateway = pg_stack.url("gateway")
    downstreams: list[tuple[ServiceName, str, str, dict[str, str]]] = [
        ("auth", "auth-service", "/api/login", {"username": "someone", "password": "whatever1"}),
        (
            "users",
            "user-service",
            "/api/register",
            {"username": "someone", "email": "s@x.io", "password": "pw123456"},
        ),
    ]
    for service, name, path, body in downstreams:
        pg_stack.stop_one(service)
        try:
            # Connection refused is answered at once; the timeout only stops a hang.
            response = httpx.post(f"{gateway}{path}", json=body, timeout=10)
            assert_refused_for_now(response)
            assert response.json()["message"] == f"{name} is unavailable"
            assert httpx.get(f"{gateway}/blog/api/posts").status_code == 200
        finally:
            pg_stack.start_one(service)

            def ready(url: str = pg_stack.url(service)) -> bool:
                return httpx.get(f"{url}/ready").status_code == 200

            wait_until(
                ready,
                30,
                f"{service} ready after its restart",
                ignoring=(httpx.HTTPError,),
            )


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


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


WRITERS, WRITES_EACH = 16, 25


def test_sqlite_sixteen_writers_never_see_a_locked_database(
    database_env: Callable[[str], dict[str, str]],
    keys: dict[str, str],
    tmp_path: Path,
) -> None:
    stack = start_stack({**database_env("sqlite"), **keys}, tmp_path / "logs")
    try:
        gateway = stack.url("gateway")
        user = register(httpx.Client(base_url=gateway, timeout=10))

        async def writers() -> list[tuple[int, int | None, str]]:
            # A count of writes, not a duration: the contention is the same on a slow
            # machine. The deadline only stops a run that hangs.
            deadline = time.monotonic() + 120
            results: list[tuple[int, int | None, str]] = []
            async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:

                async def writer(n: int) -> None:
                    for i in range(WRITES_EACH):
                        if time.monotonic() > deadline:
                            return
                        title = f"sqlite {n}-{i}-{uuid.uuid4().hex[:6]}"
                        response = await client.post(
                            "/blog/api/posts", json={"title": title, "content": "c"},
                            headers=user["headers"],
                        )  # fmt: skip
                        post_id = response.json().get("id") if response.status_code == 201 else None
                        results.append((response.status_code, post_id, title))

                await asyncio.gather(*(writer(n) for n in range(WRITERS)))
            return results

        results = asyncio.run(writers())
        statuses = {status for status, _, _ in results}
        assert statuses == {201}, statuses
        assert len(results) == WRITERS * WRITES_EACH, "the writers did not finish in 120 s"
        listed = httpx.get(
            f"{gateway}/blog/api/posts", params={"author": user["username"], "limit": 1}
        )
        assert int(listed.headers["x-total-count"]) == len(results)
        with httpx.Client(base_url=gateway) as client:
            for _, post_id, title in results[:: max(1, len(results) // 50)]:
                assert client.get(f"/blog/api/posts/{post_id}").json()["title"] == title
    finally:
        stack.stop()
