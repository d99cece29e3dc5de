"""Throttling: attempts per key in a sliding window, counted before they are evaluated.

In memory, per process: with N replicas an attacker gets N times the budget.
That is the documented trade-off for having no shared store.
"""

import math
import time
from collections import deque
from collections.abc import Hashable, Iterable

from titanium.config import Settings
from titanium.errors import RateLimited

# Above this many tracked keys, stale ones are dropped so memory stays bounded.
_PRUNE_ABOVE = 10_000


class WindowLimiter:
    """Refuses a key after `limit` counted attempts within `window_seconds`."""

    def __init__(self, limit: int, window_seconds: float, message: str) -> None:
        self.limit = limit
        self.window = window_seconds
        self.message = message
        self._attempts: dict[Hashable, deque[float]] = {}
        self.refused = 0  # attempts answered RateLimited, for /metrics

    def acquire(self, key: Hashable) -> float:
        """Count one attempt of `key` now and return its stamp; RateLimited if over budget.

        Nothing awaits between the check and the count, so concurrent requests on
        one event loop cannot all pass the check before any of them is counted.
        """
        recent = self._recent(key)
        now = time.monotonic()
        if recent is not None and len(recent) >= self.limit:
            retry_after = math.ceil(recent[0] + self.window - now)
            self.refused += 1
            raise RateLimited(self.message, max(retry_after, 1))
        if recent is None:
            if len(self._attempts) > _PRUNE_ABOVE:
                self._prune()
            recent = self._attempts[key] = deque()
        recent.append(now)
        return now

    def release(self, key: Hashable, stamp: float) -> None:
        """Uncount the attempt stamped `stamp` (it did not turn out to be a failure)."""
        recent = self._attempts.get(key)
        if recent is not None and stamp in recent:
            recent.remove(stamp)

    def reset(self, key: Hashable) -> None:
        """Forget every attempt of `key`."""
        self._attempts.pop(key, None)

    def _recent(self, key: Hashable) -> deque[float] | None:
        recent = self._attempts.get(key)
        if recent is None:
            return None
        horizon = time.monotonic() - self.window
        while recent and recent[0] <= horizon:
            recent.popleft()
        return recent

    def _prune(self) -> None:
        for key in list(self._attempts):
            if not self._recent(key):
                del self._attempts[key]


class Attempt:
    """One attempt counted against several limits at once, or against none if one refuses."""

    def __init__(self, slots: Iterable[tuple[WindowLimiter, Hashable]]) -> None:
        self._taken: list[tuple[WindowLimiter, Hashable, float]] = []
        try:
            for limiter, key in slots:
                self._taken.append((limiter, key, limiter.acquire(key)))
        except RateLimited:
            # A refused attempt reaches nobody, so it must not use up the other budgets.
            self.forgive()
            raise

    def forgive(self) -> None:
        """Uncount the attempt everywhere."""
        for limiter, key, stamp in self._taken:
            limiter.release(key, stamp)
        self._taken.clear()


_LOGIN_REFUSED = "too many failed logins, retry later"


class LoginThrottle:
    """The login policy: every attempt counts as a failure until it has succeeded.

    Three budgets per window: a small one per (username, client address), so one
    guesser locks only itself out of that account; a larger one per client
    address over all usernames; and a much larger one per username over all
    addresses, which caps a guesser spread over many addresses. Locking an owner
    out therefore takes guesses from ceiling / pair-budget addresses at once.
    """

    def __init__(self, settings: Settings) -> None:
        window = settings.login_failure_window_seconds
        self._pair = WindowLimiter(settings.login_max_failures_per_user, window, _LOGIN_REFUSED)
        self._client = WindowLimiter(settings.login_max_failures_per_client, window, _LOGIN_REFUSED)
        self._user = WindowLimiter(
            settings.login_max_failures_per_user_all_clients, window, _LOGIN_REFUSED
        )

    def attempt(self, username: str, client: str) -> Attempt:
        """Count a login attempt before the credentials are checked; RateLimited if refused."""
        user = username.lower()
        return Attempt([(self._pair, (user, client)), (self._client, client), (self._user, user)])

    def succeeded(self, attempt: Attempt, username: str, client: str) -> None:
        """A right password: the attempt was no failure, and the pair's earlier typos are forgiven.

        The username's count over all addresses is not reset, so an owner's login
        does not hand a spread-out guesser a fresh ceiling.
        """
        attempt.forgive()
        self._pair.reset((username.lower(), client))
