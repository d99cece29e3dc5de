"""Login throttling: failed attempts per key in a sliding window.

In memory, per auth-service process: with N replicas an attacker gets N times
the budget. That is the documented trade-off for having no shared store.
"""

import math
import time
from collections import deque

from titanium.errors import RateLimited

# Above this many tracked keys, stale ones are dropped so memory stays bounded.
_PRUNE_ABOVE = 10_000


class FailureLimiter:
    """Refuses a key after `max_failures` failures within `window_seconds`."""

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}

    def check(self, key: str) -> None:
        """Raise RateLimited while `key` is over its budget."""
        recent = self._recent(key)
        if recent is not None and len(recent) >= self.max_failures:
            retry_after = math.ceil(recent[0] + self.window - time.monotonic())
            raise RateLimited("too many failed logins, retry later", max(retry_after, 1))

    def record_failure(self, key: str) -> None:
        """Count one failed attempt for `key`."""
        if len(self._failures) > _PRUNE_ABOVE:
            self._prune()
        recent = self._recent(key)
        if recent is None:
            recent = self._failures[key] = deque()
        recent.append(time.monotonic())

    def reset(self, key: str) -> None:
        """Forget the failures of `key` (after a successful login)."""
        self._failures.pop(key, None)

    def _recent(self, key: str) -> deque[float] | None:
        recent = self._failures.get(key)
        if recent is None:
            return None
        horizon = time.monotonic() - self.window
        while recent and recent[0] <= horizon:
            recent.popleft()
        return recent

    def _prune(self) -> None:
        for key in list(self._failures):
            recent = self._recent(key)
            if not recent:
                del self._failures[key]
