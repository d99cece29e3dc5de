"""The login and registration throttles hold across replicas: their counts live in the database.

Two whole stacks (two gateways, auth- and user-services as separate processes) on one
database stand for two replicas of each service behind a balancer; one account's
guesses alternate between them, or arrive at both at once.
"""

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from support.database import BACKENDS
from support.env import settings_for
from support.stack import start_stack
from titanium.db.engine import Database
from titanium.db.migrations import upgrade_schema
from titanium.errors import RateLimited
from titanium.runner import Stack
from titanium.security.ratelimit import Budget, Throttle

PASSWORD = "correct horse battery"
BUDGET = 4
REGISTRATIONS = 3


@pytest.fixture(params=BACKENDS)
def replicas(
    request: pytest.FixtureRequest,
    database_env: Callable[[str], dict[str, str]],
    keys: dict[str, str],
    tmp_path: Path,
) -> Iterator[list[httpx.Client]]:
    """Clients on the gateways of two stacks that share one fresh database."""
    env = {
        **database_env(request.param),
        **keys,
        "LOGIN_MAX_FAILURES_PER_USER": str(BUDGET),
        "REGISTRATION_MAX_PER_CLIENT": str(REGISTRATIONS),
    }
    stacks: list[Stack] = []
    try:
        for name in ("a", "b"):
            stacks.append(start_stack(env, tmp_path / name))
        clients = [httpx.Client(base_url=s.url("gateway"), timeout=30) for s in stacks]
        yield clients
        for client in clients:
            client.close()
    finally:
        for stack in stacks:
            stack.stop()


def _register(client: httpx.Client) -> httpx.Response:
    name = f"user_{uuid.uuid4().hex[:10]}"
    body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
    return client.post("/api/register", json=body)


def _login(client: httpx.Client, username: str, password: str) -> int:
    response = client.post("/api/login", json={"username": username, "password": password})
    return response.status_code


def test_guesses_alternated_between_replicas_share_one_budget(
    replicas: list[httpx.Client],
) -> None:
    first, second = replicas
    registered = _register(first)
    assert registered.status_code == 201, registered.text
    username = registered.json()["username"]
    statuses = [_login(replicas[n % 2], username, f"wrong-{n}") for n in range(BUDGET + 2)]
    # Per process, each replica would have allowed BUDGET guesses: 2 * BUDGET in all.
    assert statuses == [401] * BUDGET + [429, 429]
    assert _login(first, username, PASSWORD) == 429
    assert _login(second, username, PASSWORD) == 429


async def _burst(gateways: list[str], username: str, guesses: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:

        async def guess(n: int) -> int:
            body = {"username": username, "password": f"wrong-{n}"}
            response = await http.post(f"{gateways[n % 2]}/api/login", json=body)
            return response.status_code

        return list(await asyncio.gather(*(guess(n) for n in range(guesses))))


def test_parallel_guesses_at_both_replicas_are_evaluated_at_most_the_budget(
    replicas: list[httpx.Client],
) -> None:
    registered = _register(replicas[0])
    assert registered.status_code == 201, registered.text
    gateways = [str(client.base_url) for client in replicas]
    statuses = asyncio.run(_burst(gateways, registered.json()["username"], 24))
    assert sorted(set(statuses)) == [401, 429]
    # Only a 401 was an evaluated guess; both replicas counted into the same rows.
    assert statuses.count(401) == BUDGET


def test_registrations_alternated_between_replicas_share_one_limit(
    replicas: list[httpx.Client],
) -> None:
    statuses = [_register(replicas[n % 2]).status_code for n in range(REGISTRATIONS + 2)]
    assert statuses == [201] * REGISTRATIONS + [429, 429]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_throttle_forgives_expires_and_sweeps(
    backend: str, database_env: Callable[[str], dict[str, str]]
) -> None:
    settings = settings_for(database_env(backend))

    async def go() -> None:
        await upgrade_schema(settings, "users")
        db = Database(settings, "users")
        try:
            # Swept at every attempt, so the test sees the sweep without waiting a minute.
            throttle = Throttle(db, "slow down", sweep_seconds=0)
            budget = Budget("test", 2, 0.5)
            await throttle.attempt([(budget, "k")])
            forgiven = await throttle.attempt([(budget, "k")])
            with pytest.raises(RateLimited) as refused:
                await throttle.attempt([(budget, "k")])
            assert refused.value.retry_after == 1
            assert throttle.refused == 1
            await throttle.forgive(forgiven)
            await throttle.attempt([(budget, "k")])
            # A refusal by one budget counts in none: "other" is not charged for it.
            wide = Budget("wide", 1, 60)
            with pytest.raises(RateLimited):
                await throttle.attempt([(wide, "other"), (budget, "k")])
            await throttle.attempt([(wide, "other")])
            await asyncio.sleep(0.6)
            await throttle.attempt([(budget, "k")])
            await throttle.attempt([(budget, "k")])
            # Rows hold hashes, never the address or name they count.
            async with db.read() as conn:
                rows = (await conn.exec_driver_sql("SELECT key FROM throttle_attempts")).all()
            assert len(rows) == 2
            assert all(re.fullmatch("[0-9a-f]{64}", row.key) for row in rows)
            # Once a key's window has passed, the next attempt's sweep deletes its row.
            await asyncio.sleep(0.6)
            await throttle.attempt([(budget, "fresh")])
            async with db.read() as conn:
                left = (await conn.exec_driver_sql("SELECT count(*) FROM throttle_attempts")).one()
            assert left[0] == 2  # "fresh", and "other" whose window is a minute
        finally:
            await db.dispose()

    asyncio.run(go())


@pytest.fixture
def behind_a_proxy(
    database_env: Callable[[str], dict[str, str]], keys: dict[str, str], tmp_path: Path
) -> Iterator[httpx.Client]:
    """A stack whose gateway trusts 127.0.0.1, where the tests stand in for an Ingress."""
    env = {
        **database_env("sqlite"),
        **keys,
        "TRUSTED_PROXIES": "127.0.0.1",
        "LOGIN_MAX_FAILURES_PER_CLIENT": "2",
    }
    stack = start_stack(env, tmp_path)
    try:
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            yield client
    finally:
        stack.stop()


def test_clients_behind_a_trusted_proxy_have_budgets_of_their_own(
    behind_a_proxy: httpx.Client,
) -> None:
    registered = _register(behind_a_proxy)
    assert registered.status_code == 201, registered.text
    right = {"username": registered.json()["username"], "password": PASSWORD}

    def login(forwarded_for: str, body: dict[str, str]) -> int:
        headers = {"X-Forwarded-For": forwarded_for}
        return behind_a_proxy.post("/api/login", json=body, headers=headers).status_code

    # The proxy appends the address it saw; what a client put before it is its own claim.
    guesser = [f"10.{n}.0.1, 203.0.113.7" for n in range(4)]
    statuses = [
        login(chain, {"username": f"ghost{n}", "password": "x"}) for n, chain in enumerate(guesser)
    ]
    assert statuses == [401, 401, 429, 429]
    assert login("203.0.113.7", right) == 429
    # Another client of the same proxy is not the guesser (untrusted, all would share one).
    assert login("198.51.100.23", right) == 200
