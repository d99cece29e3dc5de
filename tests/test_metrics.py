"""What each service exports on /metrics, in-process, against the catalogue in docs/monitoring.md.

The live proof (a real Prometheus scraping a stack, rules and dashboards) is in
test_monitoring_live.py; these are the fast checks of the exposition itself.
"""

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.inprocess import Served, refused_url, running, sqlite_settings
from titanium.config import ServiceName, Settings
from titanium.db.engine import FairGate
from titanium.errors import Unavailable
from titanium.services.auth.app import create_app as create_auth
from titanium.services.blog.app import create_app as create_blog
from titanium.services.gateway.app import create_app as create_gateway
from titanium.services.registry import SERVICES
from titanium.services.users.app import create_app as create_users
from titanium.web.client import Downstream, open_downstream

pytestmark = pytest.mark.anyio

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "monitoring.md"
PASSWORD = "correct horse"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def documented() -> dict[ServiceName, set[str]]:
    """Metric names per service, from the tables of docs/monitoring.md.

    A table belongs to the services its introducing paragraph names ("Every
    service", "user-service and blog-service:", ...).
    """
    names: dict[ServiceName, set[str]] = {service: set() for service in SERVICES}
    owners: list[ServiceName] = []
    previous = ""
    for line in CATALOGUE.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0].splitlines():
        starts_paragraph, previous = not previous, line
        if line.startswith("| `"):
            name = line.split("`")[1]
            if not name.endswith("*"):  # process_*: prometheus-client's own set
                for service in owners:
                    names[service].add(name)
        elif line and starts_paragraph and not line.startswith("|"):
            owners = (
                list(SERVICES)
                if line.startswith("Every service")
                else [
                    s.id
                    for s in SERVICES.values()
                    if line.startswith(s.name) or f" {s.name}" in line
                ]
            )
    return names


def samples(exposition: str) -> Samples:
    """Every sample of an exposition, by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def families(exposition: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(exposition)}


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


async def new_account(url: str) -> str:
    username = f"m_{uuid.uuid4().hex[:10]}"
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.post("/api/users", json=body)).status_code == 201
    return username


def test_the_catalogue_names_every_service() -> None:
    names = documented()
    assert all("http_requests_total" in names[s] for s in SERVICES)
    assert "titanium_db_pool_in_use" in names["users"] & names["blog"]
    assert "titanium_cache_live" in names["blog"] - names["users"]
    assert "titanium_upstream_in_flight" in names["gateway"] - names["blog"]


async def test_every_documented_metric_is_exported(
    installation: Settings, users_pool: Downstream, user_service: Served
) -> None:
    names = documented()
    holder, refused = refused_url()
    with holder:
        down = open_downstream("blog-service", refused, timeout_seconds=1)
        auth_app = create_auth(installation, downstreams={"users": users_pool})
        blog_app = create_blog(installation, downstreams={"users": users_pool})
        gateway_app = create_gateway(
            installation, downstreams={"users": users_pool, "auth": users_pool, "blog": down}
        )
        try:
            async with (
                running(create_users(installation)) as users,
                running(auth_app) as auth,
                running(blog_app) as blog,
                running(gateway_app) as gateway,
            ):
                await users.get("/api/users/me")
                await auth.post("/api/login", json={"username": "nobody", "password": "x"})
                await blog.get("/blog/api/posts")
                await gateway.get("/api/users/me")  # 401 from user-service: outcome 4xx
                await gateway.get("/blog/api/posts")  # refused: outcome unavailable
                clients: dict[ServiceName, httpx.AsyncClient] = {
                    "users": users,
                    "auth": auth,
                    "blog": blog,
                    "gateway": gateway,
                }
                for service, client in clients.items():
                    exported = families((await client.get("/metrics")).text)
                    # The parser names counters without their `_total`.
                    missing = {
                        n for n in names[service] if n.removesuffix("_total") not in exported
                    }
                    assert not missing, f"{service} does not export {sorted(missing)}"
                    assert {"process_resident_memory_bytes", "process_open_fds"} <= exported
                found = samples((await gateway.get("/metrics")).text)
        finally:
            await down.close()
    upstream = "titanium_upstream_requests_total"
    assert value(found, upstream, downstream="user-service", outcome="4xx") == 1
    assert value(found, upstream, downstream="blog-service", outcome="unavailable") == 1
    assert value(found, "titanium_upstream_in_flight", downstream="blog-service") == 0
    assert value(found, "titanium_upstream_connection_limit", downstream="blog-service") == 100


async def test_labels_stay_bounded_whatever_clients_send(installation: Settings) -> None:
    async with running(create_users(installation)) as users:
        await users.get("/metrics")
        before = samples((await users.get("/metrics")).text)
        for index in range(50):
            await users.request(f"X{index}", f"/random/{uuid.uuid4().hex}")
            await users.get(f"/nothing-{index}")
        after = samples((await users.get("/metrics")).text)
    new = {
        key
        for key in after.keys() - before.keys()
        if key[0].startswith("http_request") and ("route", "/metrics") not in key[1]
    }
    routes = {dict(labels)["route"] for _name, labels in new}
    methods = {dict(labels).get("method") for _name, labels in new}
    assert routes == {"unmatched"}, routes
    assert methods == {"GET", "other"}, methods
    others = [
        v
        for (name, labels), v in after.items()
        if name == "http_requests_total" and ("method", "other") in labels
    ]
    assert sum(others) == 50


async def test_a_route_with_a_parameter_is_labelled_by_its_template(installation: Settings) -> None:
    names = [f"ghost_{uuid.uuid4().hex[:8]}" for _ in range(5)]
    async with running(create_users(installation)) as users:
        for name in names:
            assert (await users.get(f"/api/users/{name}")).status_code == 404
        exposition = (await users.get("/metrics")).text
    found = samples(exposition)
    labels = {"method": "GET", "route": "/api/users/{username}", "status": "404"}
    assert value(found, "http_requests_total", **labels) == 5
    assert not any(name in exposition for name in names)


async def test_readiness_gauges_say_why(tmp_path: Path, keys: dict[str, str]) -> None:
    empty = sqlite_settings(tmp_path, keys, schema=False)
    async with running(create_users(empty)) as users:
        assert (await users.get("/ready")).status_code == 503
        found = samples((await users.get("/metrics")).text)
    assert value(found, "titanium_ready") == 0
    assert value(found, "titanium_not_ready", reason="schema") == 1
    assert value(found, "titanium_not_ready", reason="database") == 0
    holder, refused = refused_url()
    with holder:
        pool = open_downstream("user-service", refused, timeout_seconds=1)
        try:
            async with running(create_auth(empty, downstreams={"users": pool})) as auth:
                # /metrics refreshes readiness itself: no /ready call needed.
                found = samples((await auth.get("/metrics")).text)
        finally:
            await pool.close()
    assert value(found, "titanium_ready") == 0
    assert value(found, "titanium_not_ready", reason="downstream") == 1


async def test_ready_gauge_is_one_on_a_healthy_service(installation: Settings) -> None:
    async with running(create_users(installation)) as users:
        found = samples((await users.get("/metrics")).text)
    assert value(found, "titanium_ready") == 1
    assert all(value(found, "titanium_not_ready", reason=r) == 0 for r in ("database", "schema"))


async def test_login_decisions_and_cache_lookups_are_counted(
    installation: Settings, users_pool: Downstream, user_service: Served
) -> None:
    # The budget is user-service's (it throttles the credential check): its default.
    budget = installation.login_max_failures_per_user
    username = await new_account(user_service.url)
    async with running(create_auth(installation, downstreams={"users": users_pool})) as auth:
        assert (
            await auth.post("/api/login", json={"username": username, "password": PASSWORD})
        ).status_code == 200
        for _ in range(budget):
            wrong = {"username": username, "password": "wrong"}
            assert (await auth.post("/api/login", json=wrong)).status_code == 401
        assert (await auth.post("/api/login", json=wrong)).status_code == 429
        found = samples((await auth.get("/metrics")).text)
    login = "titanium_login_attempts_total"
    assert value(found, login, outcome="success") == 1
    assert value(found, login, outcome="failure") == budget
    assert value(found, login, outcome="throttled") == 1

    async with running(create_blog(installation, downstreams={"users": users_pool})) as blog:
        for _ in range(3):
            assert (await blog.get("/blog/api/posts")).status_code == 200
        found = samples((await blog.get("/metrics")).text)
    assert value(found, "titanium_cache_live") == 1
    assert value(found, "titanium_cache_requests_total", result="miss") == 1
    assert value(found, "titanium_cache_requests_total", result="hit") == 2
    assert value(found, "titanium_cache_entries") == 1
    assert value(found, "titanium_db_pool_acquired_total", pool="read") >= 1
    assert value(found, "titanium_db_pool_size", pool="write") == 1  # SQLite: one writer


async def test_the_pool_gate_counts_waiters_wait_and_timeouts() -> None:
    gate = FairGate(1, timeout_seconds=0.2)
    async with gate.enter():
        assert (gate.in_use, gate.waiting) == (1, 0)
        second = asyncio.create_task(_hold(gate, 0.0))
        await asyncio.sleep(0.05)
        assert gate.waiting == 1
    await second
    assert (gate.in_use, gate.waiting, gate.acquired, gate.timeouts) == (0, 0, 2, 0)
    assert gate.wait_seconds >= 0.04
    async with gate.enter():
        with pytest.raises(Unavailable):
            await _hold(gate, 0.0)
    assert (gate.timeouts, gate.waiting, gate.in_use) == (1, 0, 0)


async def _hold(gate: FairGate, seconds: float) -> None:
    async with gate.enter():
        await asyncio.sleep(seconds)


async def test_operational_routes_are_labelled_too(installation: Settings) -> None:
    async with running(create_users(installation)) as users:
        for path in ("/health", "/ready", "/stats"):
            assert (await users.get(path)).status_code == 200
        found = samples((await users.get("/metrics")).text)
    for path in ("/health", "/ready", "/stats"):
        assert value(found, "http_requests_total", method="GET", route=path, status="200") == 1
    assert not any(name.endswith("_created") for name, _labels in found)
