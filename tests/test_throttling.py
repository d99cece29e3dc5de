"""Login and registration throttling under real concurrency.

user-service and auth-service are served by uvicorn on free ports (support.inprocess)
on a temporary SQLite installation; the tests call them over TCP with many
requests in flight, and set X-Forwarded-For as the gateway would.
"""

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.inprocess import served, sqlite_settings
from titanium.services.auth.app import create_app as create_auth
from titanium.services.users.app import create_app as create_users

PASSWORD = "correct horse"
REFUSED = "too many failed logins, retry later"


@dataclass(frozen=True)
class Urls:
    """Where the served user- and auth-service listen."""

    users: str
    auth: str


Services = Callable[..., Any]


@pytest.fixture
def services(tmp_path: Path, keys: dict[str, str]) -> Iterator[Services]:
    """Factory: user- and auth-service served on a fresh installation (`overrides`: Settings)."""

    @contextmanager
    def start(**overrides: Any) -> Iterator[Urls]:
        settings = sqlite_settings(tmp_path / uuid.uuid4().hex, keys, **overrides)
        with served(create_users(settings)) as users:
            auth_settings = settings.model_copy(update={"user_service_url": users.url})
            with served(create_auth(auth_settings)) as auth:
                yield Urls(users.url, auth.url)

    yield start


def forwarded(address: str) -> dict[str, str]:
    """The header the gateway sets: the last entry is the address it saw."""
    return {"X-Forwarded-For": address}


def new_account(users_url: str) -> str:
    """Register an account (from an address of its own) and return its username."""
    username = f"user_{uuid.uuid4().hex[:10]}"
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    response = httpx.post(
        f"{users_url}/api/register",
        json=body,
        headers=forwarded(f"10.9.{uuid.uuid4().int % 250}.1"),
    )
    assert response.status_code == 201, response.text
    return username


def login(auth_url: str, username: str, password: str, address: str) -> httpx.Response:
    return httpx.post(
        f"{auth_url}/api/login",
        json={"username": username, "password": password},
        headers=forwarded(address),
        timeout=30,
    )


async def _burst_with_the_right_password_inside(
    auth_url: str, username: str, wrong_guesses: int
) -> tuple[list[int], int]:
    limits = httpx.Limits(max_connections=wrong_guesses + 1)
    async with httpx.AsyncClient(base_url=auth_url, timeout=60, limits=limits) as http:

        async def guess(password: str) -> int:
            body = {"username": username, "password": password}
            response = await http.post("/api/login", json=body, headers=forwarded("203.0.113.5"))
            return response.status_code

        guesses = [asyncio.create_task(guess(f"wrong-{i}")) for i in range(wrong_guesses)]
        # Once one guess has answered, at least the budget is in flight or failed;
        # before the fix only that one failure was counted, and the rest had
        # already passed the check.
        await asyncio.wait(guesses, return_when=asyncio.FIRST_COMPLETED)
        right = await guess(PASSWORD)
        return list(await asyncio.gather(*guesses)), right


def test_parallel_guesses_are_evaluated_at_most_the_budget(services: Services) -> None:
    budget = 5
    with services(login_max_failures_per_user=budget) as urls:
        username = new_account(urls.users)
        statuses, right = asyncio.run(
            _burst_with_the_right_password_inside(urls.auth, username, 40)
        )
    assert sorted(set(statuses)) == [401, 429]
    # Only a 401 was an evaluated guess: every 429 was refused before user-service.
    assert statuses.count(401) == budget
    assert right == 429


def test_a_guesser_locks_only_itself_out_not_the_owner_elsewhere(services: Services) -> None:
    with services(login_max_failures_per_user=3) as urls:
        username = new_account(urls.users)
        attacker, owner = "203.0.113.66", "198.51.100.20"
        for _ in range(3):
            assert login(urls.auth, username, "wrong-pw", attacker).status_code == 401
        locked = login(urls.auth, username, PASSWORD, attacker)
        assert locked.status_code == 429
        assert locked.json()["message"] == REFUSED
        assert login(urls.auth, username, PASSWORD, owner).status_code == 200
        # The owner's typos from its own address are forgiven by its success.
        for _ in range(2):
            assert login(urls.auth, username, "typo", owner).status_code == 401
        assert login(urls.auth, username, PASSWORD, owner).status_code == 200
        assert login(urls.auth, username, "typo", owner).status_code == 401


def test_guesses_spread_over_many_addresses_are_capped_per_username(services: Services) -> None:
    ceiling = 6
    overrides = {
        "login_max_failures_per_user": 3,
        "login_max_failures_per_user_all_clients": ceiling,
    }
    with services(**overrides) as urls:
        username = new_account(urls.users)
        for n in range(ceiling):
            assert login(urls.auth, username, "wrong-pw", f"192.0.2.{n}").status_code == 401
        capped = login(urls.auth, username, "wrong-pw", "192.0.2.200")
        assert capped.status_code == 429
        assert 1 <= int(capped.headers["retry-after"]) <= 60
        # Other accounts are untouched by the ceiling of this one.
        other = new_account(urls.users)
        assert login(urls.auth, other, PASSWORD, "192.0.2.201").status_code == 200


def test_registrations_are_limited_per_client(services: Services) -> None:
    with services(registration_max_per_client=3) as urls:

        def register(address: str) -> httpx.Response:
            name = f"reg_{uuid.uuid4().hex[:10]}"
            body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            return httpx.post(
                f"{urls.users}/api/register", json=body, headers=forwarded(address), timeout=30
            )

        # The gateway's entry is the last one; a client's own claims before it change nothing.
        statuses = [register(f"6.6.6.{i}, 203.0.113.9").status_code for i in range(6)]
        assert statuses == [201] * 3 + [429] * 3
        refused = register("203.0.113.9")
        assert refused.json()["message"] == "too many registrations, retry later"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert register("203.0.113.10").status_code == 201


async def _login_during_registration_flood(
    urls: Urls, username: str, flood: int
) -> tuple[int, int]:
    """How many registrations had answered when the login was sent, and when it answered."""
    answered = 0
    first_answer = asyncio.Event()
    limits = httpx.Limits(max_connections=flood + 1)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:

        async def register(n: int) -> None:
            nonlocal answered
            name = f"flood_{uuid.uuid4().hex[:10]}"
            body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            # Every registration from an address of its own: no per-client limit applies.
            headers = forwarded(f"100.64.{n // 250}.{n % 250}")
            response = await http.post(f"{urls.users}/api/register", json=body, headers=headers)
            assert response.status_code == 201, response.text
            answered += 1
            first_answer.set()

        registrations = [asyncio.create_task(register(n)) for n in range(flood)]
        await first_answer.wait()
        before = answered
        body = {"username": username, "password": PASSWORD}
        response = await http.post(
            f"{urls.auth}/api/login", json=body, headers=forwarded("198.51.100.30")
        )
        assert response.status_code == 200, response.text
        after = answered
        await asyncio.gather(*registrations)
    return before, after


def test_a_login_is_not_queued_behind_a_registration_flood(services: Services) -> None:
    flood = 60
    with services() as urls:
        username = new_account(urls.users)
        before, after = asyncio.run(
            asyncio.wait_for(_login_during_registration_flood(urls, username, flood), 120)
        )
    # The flood was queued when the login came...
    assert before <= flood // 2
    # ...and the login's password check waited for the hash in progress, not the queue.
    assert after - before <= 3, (before, after)
