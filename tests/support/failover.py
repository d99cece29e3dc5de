"""A steady write load through the gateway, events on the HA cluster, and what they cost.

Shared by tests/test_failover.py (which asserts on the figures) and bench/failover.py
(which prints them and appends them to docs/benchmarks.md). `WriteLoad` runs in a thread
of its own (its own event loop): N writers POSTing posts, a few readers, and a poller of
every service's /ready, each outcome recorded with its times. `run_event` does one event
on the cluster while the load runs, waits until the cluster, the writes and every /ready
have recovered, and `EventReport.of` turns the outcomes of that phase into figures.
"""

import asyncio
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from support.patroni import ClusterError, PatroniCluster

READY_POLL_SECONDS = 0.2
ACCEPTED = 201


@dataclass(frozen=True)
class Outcome:
    """One request of the load: when it was sent and answered, and how."""

    kind: str  # "write" or "read"
    sent: float  # time.monotonic()
    done: float
    status: int | None  # None: no answer (timeout, connection refused or reset)
    retry_after: bool = False
    post_id: int | None = None
    title: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == ACCEPTED if self.kind == "write" else self.status == 200

    @property
    def unexpected(self) -> bool:
        """An answer other than 2xx or 503: what a failover must never produce."""
        return self.status is not None and not (200 <= self.status < 300 or self.status == 503)


@dataclass
class WriteLoad:
    """Writers and readers through the gateway, and a /ready poller on every service."""

    gateway: str
    services: Mapping[str, str]  # name -> base URL, for /ready
    headers: Mapping[str, str]  # a logged-in user's Authorization header
    writers: int = 20
    readers: int = 2
    request_timeout: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)
    ready: list[tuple[float, str, int | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="write-load", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the load did not stop within {timeout}s")
        if self._error is not None:
            raise RuntimeError("the load generator failed") from self._error

    def __enter__(self) -> "WriteLoad":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def acknowledged(self) -> list[Outcome]:
        """Every write answered 201, with the post's id."""
        return [o for o in list(self.outcomes) if o.kind == "write" and o.ok]

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self._error = exc

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.writers + self.readers + 8)
        async with httpx.AsyncClient(
            base_url=self.gateway, timeout=self.request_timeout, limits=limits
        ) as client:
            tasks = [asyncio.create_task(self._writer(client, i)) for i in range(self.writers)]
            tasks += [asyncio.create_task(self._reader(client)) for _ in range(self.readers)]
            tasks.append(asyncio.create_task(self._ready_poller()))
            await asyncio.to_thread(self._stop.wait)  # set by stop()
            await asyncio.gather(*tasks)

    async def _request(self, client: httpx.AsyncClient, kind: str, **request: Any) -> Outcome:
        sent = time.monotonic()
        try:
            answer = await client.request(**request)
        except httpx.HTTPError:
            return Outcome(kind, sent, time.monotonic(), None)
        done = time.monotonic()
        post_id, title = None, None
        if kind == "write" and answer.status_code == ACCEPTED:
            body = answer.json()
            post_id, title = int(body["id"]), str(body["title"])
        return Outcome(
            kind, sent, done, answer.status_code, "retry-after" in answer.headers, post_id, title
        )

    async def _writer(self, client: httpx.AsyncClient, number: int) -> None:
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            title = f"ha {number}-{sequence} {uuid.uuid4().hex[:8]}"
            outcome = await self._request(
                client,
                "write",
                method="POST",
                url="/blog/api/posts",
                json={"title": title, "content": "written during a failover"},
                headers=dict(self.headers),
            )
            self.outcomes.append(outcome)
            if not outcome.ok:
                await asyncio.sleep(0.05)  # a client backing off a little, not a busy loop

    async def _reader(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            done = self.acknowledged()
            url = f"/blog/api/posts/{random.choice(done).post_id}" if done else "/blog/api/posts"
            self.outcomes.append(await self._request(client, "read", method="GET", url=url))
            await asyncio.sleep(0.02)

    async def _ready_poller(self) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            while not self._stop.is_set():
                for name, url in self.services.items():
                    try:
                        status: int | None = (await client.get(f"{url}/ready")).status_code
                    except httpx.HTTPError:
                        status = None
                    self.ready.append((time.monotonic(), name, status))
                await asyncio.sleep(READY_POLL_SECONDS)


@dataclass
class EventReport:
    """What one event cost the load (seconds are from the event)."""

    event: str
    writes: int = 0
    failed_writes: int = 0
    window_s: float = 0.0  # first failed write to the first 201 of a write sent after it
    last_failure_s: float = 0.0  # when the last failed write of the phase was answered
    stall_s: float = 0.0  # longest time without a 201 (failed or blocked writes alike)
    unexpected: int = 0  # answers other than 2xx/503
    no_answer: int = 0  # timeouts and refused or reset connections
    missing_retry_after: int = 0  # 503s without Retry-After
    reads: int = 0
    failed_reads: int = 0
    ready_s: float = 0.0  # when the last not-200 /ready of the phase was seen
    lost: int = 0  # acknowledged writes of the phase not read back afterwards
    recovered: bool = True  # writes succeeded again within the phase
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, event: str, load: WriteLoad, start: float, end: float) -> "EventReport":
        """The figures of the outcomes answered in [start, end)."""
        phase = [o for o in list(load.outcomes) if start <= o.done < end]
        writes = sorted((o for o in phase if o.kind == "write"), key=lambda o: o.done)
        reads = [o for o in phase if o.kind == "read"]
        failed = [o for o in writes if not o.ok]
        report = cls(event, writes=len(writes), failed_writes=len(failed), reads=len(reads))
        report.failed_reads = sum(not o.ok for o in reads)
        report.unexpected = sum(o.unexpected for o in phase)
        report.no_answer = sum(o.status is None for o in phase)
        report.missing_retry_after = sum(o.status == 503 and not o.retry_after for o in phase)
        if failed:
            first = failed[0].done
            report.last_failure_s = failed[-1].done - start
            after = [o.done for o in writes if o.ok and o.sent >= first]
            report.recovered = bool(after)
            report.window_s = (after[0] if after else end) - first
        ok_times = [start] + [o.done for o in writes if o.ok] + [end]
        report.stall_s = max(b - a for a, b in itertools.pairwise(ok_times))
        red = [t for t, _, status in list(load.ready) if start <= t < end and status != 200]
        report.ready_s = (max(red) - start + READY_POLL_SECONDS) if red else 0.0
        report.detail = {
            "statuses": _count(o.status for o in phase),
        }
        return report

    def line(self) -> str:
        return (
            f"{self.event:<22} window {self.window_s:5.1f} s  stall {self.stall_s:5.1f} s  "
            f"failed writes {self.failed_writes}/{self.writes}  non-2xx/503 {self.unexpected}  "
            f"no answer {self.no_answer}  lost {self.lost}  failed reads "
            f"{self.failed_reads}/{self.reads}  /ready green after {self.ready_s:.1f} s  "
            f"statuses {self.detail.get('statuses')}"
        )


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        key = "none" if value is None else str(value)
        counts[key] = counts.get(key, 0) + 1
    return counts


EVENTS: dict[str, Callable[[PatroniCluster], object]] = {
    "kill -9 primary": PatroniCluster.kill_primary_postmaster,
    "switchover": PatroniCluster.switchover,
    "kill -9 replica": PatroniCluster.kill_replica,
}


def recovered_since(load: WriteLoad, since: float) -> bool:
    """True when a write sent after the last failure since `since` got a 201, and every
    service answered /ready 200 in its latest poll after that."""
    outcomes = [o for o in list(load.outcomes) if o.kind == "write" and o.done >= since]
    failures = [o.done for o in outcomes if not o.ok]
    last_failure = max(failures, default=since)
    if not any(o.ok and o.sent >= last_failure for o in outcomes):
        return False
    latest: dict[str, tuple[float, int | None]] = {}
    for t, name, status in list(load.ready):
        latest[name] = (t, status)
    return len(latest) == len(load.services) and all(
        t > last_failure and status == 200 for t, status in latest.values()
    )


def run_event(
    cluster: PatroniCluster,
    load: WriteLoad,
    event: str,
    *,
    recover_timeout: float = 60,
    settle: float = 2.0,
) -> tuple[float, float]:
    """Do `event` under the running load; wait until the cluster is healthy again, writes
    succeed and every /ready is 200, then `settle` seconds more. Returns the phase
    (start, end) for `EventReport.of`. Raises ClusterError when recovery takes longer
    than `recover_timeout` (the phase is then still reportable up to now)."""
    start = time.monotonic()
    EVENTS[event](cluster)
    deadline = start + recover_timeout
    try:
        cluster.wait_healthy(timeout=max(1.0, deadline - time.monotonic()))
        while not recovered_since(load, start):
            if time.monotonic() > deadline:
                raise ClusterError(f"{event}: writes or /ready not recovered in {recover_timeout}s")
            time.sleep(0.1)
    finally:
        time.sleep(settle)
    return start, time.monotonic()


def read_back(
    gateway: str, acknowledged: list[Outcome], *, attempts: int = 5, concurrency: int = 16
) -> list[Outcome]:
    """GET every acknowledged post through the gateway; returns those not read back intact
    (a 503 is retried: the question is whether the post exists, not whether it is up)."""

    async def main() -> list[Outcome]:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:

            async def check(outcome: Outcome) -> Outcome | None:
                async with gate:
                    for attempt in range(attempts):
                        try:
                            answer = await client.get(f"/blog/api/posts/{outcome.post_id}")
                        except httpx.HTTPError:
                            answer = None
                        if answer is not None and answer.status_code == 200:
                            return None if answer.json().get("title") == outcome.title else outcome
                        if answer is not None and answer.status_code == 404:
                            return outcome
                        await asyncio.sleep(0.5 * (attempt + 1))
                return outcome

            found = await asyncio.gather(*(check(o) for o in acknowledged))
        return [o for o in found if o is not None]

    return asyncio.run(main())


def stored_ids(cluster: PatroniCluster, ids: list[int]) -> set[int]:
    """Which of these post ids the current leader's database has (beside the API's view)."""
    rows = cluster.run(cluster.primary(), "SELECT id FROM posts WHERE id = ANY($1::int[])", ids)
    return {int(row["id"]) for row in rows}


def attribute_losses(reports: list[tuple[EventReport, float, float]], lost: list[Outcome]) -> None:
    """Count each lost post against the phase its 201 came in."""
    for report, start, end in reports:
        report.lost = sum(start <= o.done < end for o in lost)
