"""A cache of blog-service's serialised reads that is never stale after a write.

A write through this process empties it at once, so a client reads its own
writes. Writes by anyone else are noticed per backend, here and nowhere else:

- PostgreSQL: only while this process LISTENs on `titanium_blog`. Triggers (blog
  revision 0003) announce every change to posts and categories, whoever makes
  it, and each announcement empties the cache. Without a live listener the cache
  answers nothing, so correctness never depends on it. Another replica's write is
  seen when the notification arrives (milliseconds); a LISTEN connection that dies
  silently is noticed by the health query within about 4 s.
- SQLite: before every lookup and every store, `PRAGMA data_version` on a
  connection of the cache's own tells whether any other connection, in this or
  another process (a second replica, `sqlite3` by hand), committed since the
  last look (about 6 microseconds). If that connection fails, nothing is served
  from the cache.
"""

import asyncio
import contextlib
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from titanium.config import Settings
from titanium.db.engine import connect_postgres

log = logging.getLogger(__name__)
CHANNEL = "titanium_blog"
HEALTH_INTERVAL_SECONDS = 2.0


@dataclass(frozen=True)
class Cached:
    """A response body and the headers that go with it."""

    body: bytes
    headers: dict[str, str]


# What one entry costs besides its body (key tuple, Cached, headers dict, the
# OrderedDict's node): about 490 bytes measured with tracemalloc, rounded up.
ENTRY_OVERHEAD_BYTES = 512
# An entry larger than this share of the byte budget is served but not kept: a few
# huge posts would otherwise push out every list page and small post.
LARGEST_ENTRY_SHARE = 8


class ResponseCache:
    """LRU of responses bounded by entries and bytes, emptied on every change; off while not live.

    The byte bound is what keeps memory in budget (posts go up to 500,000
    characters); the entry bound stays as the operator's knob, and caps the
    per-entry overhead when bodies are tiny.
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int = Settings.model_fields["blog_cache_bytes"].default,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.generation = 0
        self.live = False
        self.size_bytes = 0
        # For /metrics: plain counts, read at scrape time.
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[Hashable, Cached] = OrderedDict()
        # Asked before each use: empties the cache if the data changed, and says
        # whether it can be trusted at all right now.
        self.check: Callable[[], bool] = lambda: True

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def cost(value: Cached) -> int:
        """The bytes `value` is counted for against the budget."""
        return len(value.body) + ENTRY_OVERHEAD_BYTES

    def usable(self) -> bool:
        """True while the cache may answer: on, and its watch on other writers healthy."""
        return self.live and self.check()

    def get(self, key: Hashable) -> Cached | None:
        """The cached response, or None."""
        if not self.usable():
            self.misses += 1
            return None
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        return found

    def put(self, key: Hashable, generation: int, value: Cached) -> None:
        """Store a response read while the cache was at `generation`."""
        # A change that landed while the response was being read makes it suspect.
        if not self.usable() or generation != self.generation or self.max_entries == 0:
            return
        if self.cost(value) > self.max_bytes // LARGEST_ENTRY_SHARE:
            return
        replaced = self._entries.pop(key, None)
        if replaced is not None:
            self.size_bytes -= self.cost(replaced)
        self._entries[key] = value
        self.size_bytes += self.cost(value)
        while len(self._entries) > self.max_entries or self.size_bytes > self.max_bytes:
            _key, oldest = self._entries.popitem(last=False)
            self.size_bytes -= self.cost(oldest)
            self.evictions += 1

    def invalidate(self) -> None:
        """Forget everything (the data changed)."""
        self.generation += 1
        self._entries.clear()
        self.size_bytes = 0

    def set_live(self, live: bool) -> None:
        """Turn the cache on or off; both directions start empty."""
        self.invalidate()
        self.live = live


class ServerDemoted(Exception):
    """The server the listener is connected to no longer accepts writes."""


class ChangeListener:
    """Holds the LISTEN connection; the cache is live only while it is healthy."""

    def __init__(self, settings: Settings, cache: ResponseCache) -> None:
        self.settings = settings
        self.cache = cache
        self.connection: asyncpg.Connection | None = None  # while listening
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop listening; the cache goes off."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.cache.set_live(False)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except (
                OSError,
                TimeoutError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                ServerDemoted,
            ) as exc:
                log.warning("cache listener lost (%r); cache off until it is back", exc)
            self.cache.set_live(False)
            await asyncio.sleep(1)

    async def _listen(self) -> None:
        conn = self.connection = await connect_postgres(self.settings, "titanium-blog-listener")
        try:
            # A closed connection turns the cache off at once; one that silently
            # hangs is caught by the health query below, within two intervals.
            conn.add_termination_listener(lambda _conn: self.cache.set_live(False))
            await conn.add_listener(CHANNEL, self._changed)
            self.cache.set_live(True)
            while True:
                await asyncio.sleep(HEALTH_INTERVAL_SECONDS)
                # A frozen or partitioned server sends no notifications either:
                # only a connection that answers keeps the cache on. Nor does a
                # primary demoted under our feet (NOTIFY is not replicated): the
                # writes happen elsewhere now, so listen there.
                # (`transaction_read_only` is on in a standby, and wherever
                # default_transaction_read_only was turned on.)
                state = await conn.fetchval(
                    "SHOW transaction_read_only", timeout=HEALTH_INTERVAL_SECONDS
                )
                if state == "on":
                    raise ServerDemoted("the listener's server no longer accepts writes")
        finally:
            self.cache.set_live(False)
            self.connection = None
            # terminate(), not close(): a frozen server would never answer a goodbye.
            conn.terminate()

    def _changed(self, *_args: object) -> None:
        self.cache.invalidate()


class DataVersionWatch:
    """SQLite: empties the cache when the file changed since the last look."""

    def __init__(self, path: Path, cache: ResponseCache) -> None:
        self.path = path
        self.cache = cache
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    def start(self) -> None:
        """Open the watching connection and turn the cache on (off if that fails)."""
        try:
            # Read-only and never waiting for a lock: this runs on the event loop.
            self._conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=0,
                isolation_level=None,
            )  # fmt: skip
        except sqlite3.Error as exc:
            log.warning("cache off: cannot watch %s (%s)", self.path, exc)
            return
        self.cache.check = self.fresh
        self.cache.set_live(True)
        self.fresh()  # the starting version

    async def stop(self) -> None:
        """Turn the cache off and close the connection."""
        self.cache.set_live(False)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def fresh(self) -> bool:
        """Empty the cache if anyone committed since the last call; False if unknowable."""
        if self._conn is None:
            return False
        try:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("cache skipped: %s", exc)
            self.cache.invalidate()
            return False
        if version != self._version:
            self._version = version
            self.cache.invalidate()
        return True
