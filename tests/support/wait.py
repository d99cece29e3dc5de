"""Polling: the one way the tests wait for something to become true."""

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str = "condition",
    *,
    interval: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll `predicate` until it is true; fail (AssertionError) if it is not within `timeout`.

    The timeout only stops a test whose condition never comes true; it bounds no
    duration the test asserts. Exceptions of the `ignoring` types (a service still
    starting: `httpx.HTTPError`) count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except ignoring:
            pass
        time.sleep(interval)
    raise AssertionError(f"{what}: not true within {timeout}s")
