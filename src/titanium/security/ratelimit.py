"""Throttling: attempts per key in a sliding window, counted before they are evaluated.

The state is a table of user-service's database (`throttle_attempts`), so every
replica counts against the same budgets: N replicas do not give a guesser N
times the attempts. Each key's row holds the stamps of its attempts still in
the window (a sliding log: exact, and at most `limit` stamps, since a refused
attempt is not stored). Counting an attempt is one write transaction whose
first statement, an upsert, locks the key's row; a concurrent attempt on any
replica waits for it and then sees its stamp. Stamps are wall-clock
milliseconds, as the replicas share no monotonic clock; NTP-level skew between
them moves a window's edge by that much, nothing more.
"""

import hashlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import sqlalchemy as sa

from titanium.config import Settings
from titanium.db.engine import Database, insert_for
from titanium.db.tables import throttle_attempts
from titanium.errors import RateLimited

# Expired rows are deleted at most this often per process, inside an attempt's
# transaction (a ranged delete on the expires_at index).
SWEEP_EVERY_SECONDS = 60.0


class Budget(NamedTuple):
    """At most `limit` counted attempts per key within `window_seconds`."""

    name: str
    limit: int
    window_seconds: float


@dataclass
class Attempt:
    """One attempt as counted: its stamp in each budget key it was counted against."""

    stamp: int
    keys: list[str] = field(default_factory=list)


def budget_key(budget: Budget, who: str) -> str:
    """The row key of `who` in `budget`: fixed length, and no address or name stored in clear."""
    return hashlib.sha256(f"{budget.name}\0{who}".encode()).hexdigest()


class Throttle:
    """Counts attempts against budgets in the database; RateLimited when one is spent."""

    def __init__(
        self, db: Database, message: str, *, sweep_seconds: float = SWEEP_EVERY_SECONDS
    ) -> None:
        self.db = db
        self.message = message
        self.refused = 0  # attempts answered RateLimited, for /metrics
        self._sweep_seconds = sweep_seconds
        self._swept_at = 0.0

    async def attempt(self, slots: Iterable[tuple[Budget, str]]) -> Attempt:
        """Count one attempt in every budget, or in none (RateLimited) if one is spent."""
        now = time.time_ns() // 1_000_000
        windows = {budget_key(budget, who): budget for budget, who in slots}
        attempt = Attempt(now, sorted(windows))
        try:
            await self.db.run_write(self._count, attempt, windows)
        except RateLimited:
            self.refused += 1
            raise
        return attempt

    def _count(self, conn: sa.Connection, attempt: Attempt, windows: dict[str, Budget]) -> None:
        stored = _lock(conn, attempt.keys)
        changes: list[tuple[str, list[int], float | None]] = []
        retry_after = 0
        for key in attempt.keys:
            budget = windows[key]
            horizon = attempt.stamp - budget.window_seconds * 1000
            recent = sorted(stamp for stamp in stored[key] if stamp > horizon)
            if len(recent) >= budget.limit:
                # Free again once enough of the oldest stamps have left the window.
                oldest_to_go = recent[len(recent) - budget.limit]
                wait = (oldest_to_go - horizon) / 1000
                retry_after = max(retry_after, math.ceil(wait), 1)
            changes.append((key, [*recent, attempt.stamp], budget.window_seconds))
        if retry_after:
            # Raised inside the transaction: the rollback leaves every budget as it was.
            raise RateLimited(self.message, retry_after)
        _store(conn, changes)
        self._sweep(conn)

    async def forgive(self, attempt: Attempt, *, reset: Sequence[tuple[Budget, str]] = ()) -> None:
        """Uncount `attempt` everywhere, and forget every attempt of the `reset` keys."""
        cleared = {budget_key(budget, who) for budget, who in reset}
        await self.db.run_write(_forgive, attempt, cleared)

    def _sweep(self, conn: sa.Connection) -> None:
        now = time.time()
        if now - self._swept_at < self._sweep_seconds:
            return
        self._swept_at = now
        conn.execute(sa.delete(throttle_attempts).where(throttle_attempts.c.expires_at < now))


def _forgive(conn: sa.Connection, attempt: Attempt, cleared: set[str]) -> None:
    stored = _lock(conn, sorted(set(attempt.keys) | cleared))
    changes: list[tuple[str, list[int], float | None]] = []
    for key in attempt.keys:
        if key in cleared:
            continue
        stamps = stored[key]
        if attempt.stamp in stamps:
            stamps.remove(attempt.stamp)
        changes.append((key, stamps, None))
    _store(conn, changes)
    if cleared:
        conn.execute(sa.delete(throttle_attempts).where(throttle_attempts.c.key.in_(cleared)))


def _lock(conn: sa.Connection, keys: list[str]) -> dict[str, list[int]]:
    """Lock the rows of `keys` (made if missing), in the given order, and read their stamps.

    An upsert rather than SELECT ... FOR UPDATE: it locks a row that did not
    exist yet too, and SQLite (whose write transaction locks the whole file)
    has no FOR UPDATE. Callers pass the keys sorted, so two transactions take
    shared keys in one order and cannot deadlock.
    """
    insert = insert_for(conn.dialect.name, throttle_attempts)
    statement = (
        insert.values([{"key": key, "stamps": "", "expires_at": 0.0} for key in keys])
        .on_conflict_do_update(index_elements=["key"], set_={"key": insert.excluded.key})
        .returning(throttle_attempts.c.key, throttle_attempts.c.stamps)
    )
    rows = conn.execute(statement).all()
    return {row.key: [int(stamp) for stamp in row.stamps.split()] for row in rows}


def _store(conn: sa.Connection, changes: list[tuple[str, list[int], float | None]]) -> None:
    """Write each key's stamps; its row expires a window after its last stamp (if given)."""
    for key, stamps, window_seconds in changes:
        values: dict[str, object] = {"stamps": " ".join(map(str, stamps))}
        if window_seconds is not None:
            values["expires_at"] = max(stamps, default=0) / 1000 + window_seconds
        conn.execute(
            sa.update(throttle_attempts).where(throttle_attempts.c.key == key).values(**values)
        )


_LOGIN_REFUSED = "too many failed logins, retry later"


class LoginThrottle:
    """The login policy: every attempt counts as a failure until it has succeeded.

    Three budgets per window: a small one per (account, client address), so one
    guesser locks only itself out of that account; a larger one per client
    address over all accounts; and a much larger one per account over all
    addresses, which caps a guesser spread over many addresses. Locking an owner
    out therefore takes guesses from ceiling / pair-budget addresses at once.
    `account` is the name's comparison key, so look-alike spellings share budgets.
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        window = settings.login_failure_window_seconds
        self._throttle = Throttle(db, _LOGIN_REFUSED)
        self._pair = Budget("login-pair", settings.login_max_failures_per_user, window)
        self._client = Budget("login-client", settings.login_max_failures_per_client, window)
        self._account = Budget(
            "login-account", settings.login_max_failures_per_user_all_clients, window
        )

    async def attempt(self, account: str, client: str) -> Attempt:
        """Count a login attempt before the password is checked; RateLimited if refused."""
        return await self._throttle.attempt(
            [(self._pair, f"{account}\0{client}"), (self._client, client), (self._account, account)]
        )

    async def succeeded(self, attempt: Attempt, account: str, client: str) -> None:
        """A right password: the attempt was no failure, and the pair's earlier typos are forgiven.

        The account's count over all addresses is not reset, so an owner's login
        does not hand a spread-out guesser a fresh ceiling.
        """
        await self._throttle.forgive(attempt, reset=[(self._pair, f"{account}\0{client}")])
