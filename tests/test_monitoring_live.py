"""The monitoring files against a real Prometheus scraping the real stack.

One Prometheus (Debian's, tests/support/prometheus.py) scrapes the four services
on PostgreSQL and a postgres_exporter every second, labelled as in the cluster
(`titanium.ops.monitoring.prometheus_config`), with the rules of
k8s/components/monitoring/prometheusrule.yaml. After some traffic, every
dashboard query and every alert's measured expression has data, so none names
a metric or label the services do not export; faults fire the alerts meant for
them and restoring resolves them; and junk traffic adds no series.
"""

import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.api import new_post, register
from support.postgres import PrivateServer
from support.prometheus import (
    EXPORTER_INTERVAL,
    SCRAPE_INTERVAL,
    PostgresExporter,
    Prometheus,
    signals,
)
from support.stack import start_stack
from support.wait import wait_until
from titanium.ops.monitoring import (
    DASHBOARDS,
    LOCAL_NAMESPACE,
    POSTGRES_EXPORTER_JOB,
    PROMETHEUS_RULE,
    dashboard_panels,
    load_dashboards,
    local_targets,
    rule_groups,
    substitute,
    write_rule_file,
)
from titanium.runner import Stack, wait_until_ready
from titanium.services.registry import SERVICES, service_name

pytestmark = pytest.mark.stack  # the services run as processes

JOBS = [service.name for service in SERVICES.values()]
SERVICE_JOBS = f'job=~"{"|".join(JOBS)}"'


@dataclass
class Monitored:
    """The stack, the exporter and the Prometheus scraping both."""

    stack: Stack
    server: PrivateServer
    exporter: PostgresExporter
    prometheus: Prometheus


@pytest.fixture(scope="module")
def monitored(
    private_postgres: PrivateServer, keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitored]:
    if not (private_postgres.data / "postmaster.pid").exists():
        private_postgres.start()
    env = {**private_postgres.env(private_postgres.create_database()), **keys}
    directory = tmp_path_factory.mktemp("monitoring")
    stack = start_stack(env, directory / "logs")
    try:
        dsn = f"{private_postgres.dsn()}?sslmode=disable"
        with PostgresExporter(directory / "exporter", dsn).start() as exporter:
            rule_file = write_rule_file(directory / "rules.yml")
            targets = local_targets(stack.ports, postgres_exporter=exporter.address)
            with Prometheus(directory / "prometheus", targets, rule_file).start() as prometheus:
                wait_until(
                    lambda: (
                        set(prometheus.targets_up().values()) == {"up"}
                        and len(prometheus.targets_up()) == len(targets)
                    ),
                    30,
                    "every target scraped",
                )
                yield Monitored(stack, private_postgres, exporter, prometheus)
    finally:
        stack.stop()


def drive_traffic(stack: Stack) -> None:
    """A little of everything the metrics count: accounts, logins, posts, reads, misses."""
    with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
        user = register(client)
        wrong = {"username": user["username"], "password": "wrong password"}
        assert client.post("/api/login", json=wrong).status_code == 401
        post = new_post(client, user["headers"], category_name="News")
        for _ in range(3):
            assert client.get(f"/blog/api/posts/{post['id']}").status_code == 200
            assert client.get("/blog/api/posts", params={"limit": 5}).status_code == 200
        assert client.get("/blog/api/categories").status_code == 200
        assert client.get(f"/api/users/{user['username']}").status_code == 200
        assert client.get("/blog/api/posts/999999999").status_code == 404
        assert client.get("/no-such-page").status_code == 404
        assert client.get("/blog/").status_code == 200


@pytest.fixture(scope="module")
def warmed(monitored: Monitored) -> Monitored:
    """The stack after traffic, once the rules have evaluated two samples of it.

    A rate needs two samples in its window: of the traffic (every service is
    scraped each second) and of the slower postgres_exporter, and the recording
    rules need one evaluation after both.
    """
    drive_traffic(monitored.stack)
    prometheus = monitored.prometheus
    wait_until(
        lambda: bool(prometheus.query('rate(http_requests_total{job="auth-service"}[1m]) > 0')),
        30,
        "login traffic seen by Prometheus",
    )
    # pg_up is there only when a scrape of the exporter succeeded.
    exporter = f'count_over_time(pg_up{{job="{POSTGRES_EXPORTER_JOB}"}}[1m]) >= 2'
    wait_until(lambda: bool(prometheus.query(exporter)), 30, "two scrapes of the exporter")
    since = time.time()
    wait_until(
        lambda: any(
            float(s["value"][1]) > since
            for s in prometheus.query("timestamp(titanium:http_requests:rate5m)")
        ),
        30,
        "the recording rules evaluated since",
    )
    return monitored


def test_targets_carry_the_cluster_labels(warmed: Monitored) -> None:
    series = warmed.prometheus.query("up")
    labels = {s["metric"]["job"]: s["metric"] for s in series}
    assert sorted(labels) == sorted([*JOBS, POSTGRES_EXPORTER_JOB])
    for job in JOBS:
        assert labels[job]["namespace"] == LOCAL_NAMESPACE
        assert labels[job]["service"] == job
        assert labels[job]["pod"] == f"{job}-local"
        assert labels[job]["instance"].startswith("127.0.0.1:")
    assert all(s["value"][1] == "1" for s in series), series
    # The services' own metrics carry no label the target sets (it would become exported_*).
    clashing = warmed.prometheus.query('{__name__=~".+", exported_service!=""}')
    assert clashing == [], clashing[:3]


def test_the_local_configuration_is_one_promtool_accepts(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    printed = subprocess.run(
        [sys.executable, "-m", "titanium", "monitoring", "prometheus", str(directory),
         "--postgres-exporter", "127.0.0.1:9187"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert printed.startswith(f"prometheus --config.file={directory / 'prometheus.yml'} ")
    checked = subprocess.run(
        ["promtool", "check", "config", str(directory / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((directory / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0] for job in config["scrape_configs"]}
    assert jobs[POSTGRES_EXPORTER_JOB]["targets"] == ["127.0.0.1:9187"]
    for service in SERVICES.values():
        assert jobs[service.name]["targets"] == [f"127.0.0.1:{service.port}"]
        assert jobs[service.name]["labels"] == {
            "namespace": LOCAL_NAMESPACE, "service": service.name, "pod": f"{service.name}-local"
        }  # fmt: skip


# kubelet_* and kube_* come from the cluster's kubelet and kube-state-metrics.
KUBE_METRIC = re.compile(r"\bkube(?:let)?_\w+")
RATE_INTERVAL = "1m"
# Built-in Grafana variables, and the values the template variables take locally.
VARIABLES = {
    "namespace": LOCAL_NAMESPACE,
    "__rate_interval": RATE_INTERVAL,
    "__interval": RATE_INTERVAL,
    "__range": "5m",
    "__range_s": "300",
    "__interval_ms": "60000",
}


def template_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Local values of a dashboard's template variables: `.+` for `All`, else the current one."""
    values = dict(VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if name in values or variable.get("type") == "datasource":
            values.setdefault(name, "")
            continue
        current = variable.get("current", {}).get("value")
        if isinstance(current, list):
            current = current[0] if current else None
        if variable.get("includeAll") or current in (None, "", "$__all"):
            values[name] = ".+"
        else:
            values[name] = str(current)
    return values


def dashboard_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard file, panel title, description, expr) of every panel target."""
    queries = []
    for name, dashboard in load_dashboards().items():
        values = template_values(dashboard)
        for panel in dashboard_panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append(
                        (
                            name,
                            panel.get("title", "?"),
                            panel.get("description", ""),
                            substitute(target["expr"], values),
                        )
                    )
    return queries


# Panels on the kubelet's and kube-state-metrics' series (their description says
# "cluster-only"): the migration Job and the database's volume and restarts.
CLUSTER_ONLY_PANELS = [
    ("titanium-database.json", "PostgreSQL restarts"),
    ("titanium-database.json", "Volume free"),
    ("titanium-migration.json", "Job pod restarts"),
    ("titanium-migration.json", "Job succeeded / failed / active"),
    ("titanium-migration.json", "Last run"),
]


def without_data(prometheus: Prometheus, exprs: list[str], within: float = 10) -> list[str]:
    """The queries of `exprs` that still return no series after `within` seconds.

    Asked again until then: a series that needs one more scrape or evaluation is
    late, not missing.
    """
    empty = [expr for expr in exprs if not prometheus.query(expr)]
    deadline = time.monotonic() + within
    while empty and time.monotonic() < deadline:
        time.sleep(SCRAPE_INTERVAL)
        empty = [expr for expr in empty if not prometheus.query(expr)]
    return empty


def test_every_dashboard_query_has_data(warmed: Monitored) -> None:
    queries = dashboard_queries()
    assert queries, f"no dashboard queries under {DASHBOARDS}"
    skipped = sorted({(name, title) for name, title, note, _ in queries if "cluster-only" in note})
    assert skipped == CLUSTER_ONLY_PANELS
    on_kube = sorted(
        {(name, title) for name, title, _, expr in queries if KUBE_METRIC.search(expr)}
    )
    assert on_kube == CLUSTER_ONLY_PANELS
    labelled = {
        expr: f"{name} / {title}: {expr}"
        for name, title, note, expr in queries
        if "cluster-only" not in note
    }
    empty = without_data(warmed.prometheus, list(labelled))
    assert empty == [], "dashboard queries without data:\n" + "\n".join(labelled[e] for e in empty)


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


CLUSTER_ONLY_ALERTS = ["TitaniumPostgresVolumeAlmostFull", "TitaniumPostgresVolumeFillingUp"]


def test_every_alert_measures_something_the_stack_exports(warmed: Monitored) -> None:
    rules = alerts()
    assert rules, f"no alerts in {PROMETHEUS_RULE}"
    loaded = warmed.prometheus.rules()
    assert len(loaded) == sum(len(g["rules"]) for g in rule_groups())
    broken = [f"{r['name']}: {r.get('lastError')}" for r in loaded if r["health"] == "err"]
    assert broken == []
    on_kube = sorted(r["alert"] for r in rules if KUBE_METRIC.search(r["expr"]))
    assert on_kube == CLUSTER_ONLY_ALERTS
    measured = {
        signal: rule["alert"]
        for rule in rules
        if rule["alert"] not in CLUSTER_ONLY_ALERTS
        for signal in signals(rule["expr"])
    }
    empty = without_data(warmed.prometheus, list(measured))
    assert empty == [], "alert expressions without data:\n" + "\n".join(
        f"{measured[e]}: {e}" for e in empty
    )


JUNK_REQUESTS = 2_000
# Methods a client may send; the custom ones must all count as `other`.
JUNK_METHODS = ["GET", "POST", "DELETE", "PROPFIND", "BREW"]
JUNK_PREFIXES = ["/", "/api/", "/api/users/x/", "/blog/", "/blog/api/", "/blog/api/posts/x"]


def service_series(prometheus: Prometheus) -> set[frozenset[tuple[str, str]]]:
    """Every series the four services export, as its label set.

    Scraped series only: a recording rule's series follow from them (one
    evaluation later, once a rate has its two samples).
    """
    selector = f'{{{SERVICE_JOBS},__name__!~".+:.+"}}'
    return {frozenset(s["metric"].items()) for s in prometheus.query(selector)}


def junk(client: httpx.Client, count: int, seed: int) -> None:
    """`count` requests to random paths that exist nowhere, with random methods."""
    rng = random.Random(seed)
    for i in range(count):
        method = rng.choice(JUNK_METHODS) if i >= len(JUNK_METHODS) else JUNK_METHODS[i]
        if method not in ("GET", "POST", "DELETE") and rng.random() < 0.5:
            method = "X" + uuid.UUID(int=rng.getrandbits(128)).hex[:8].upper()
        path = rng.choice(JUNK_PREFIXES) + uuid.UUID(int=rng.getrandbits(128)).hex
        client.request(method, path)


def scrapes_after(prometheus: Prometheus, count: int = 2) -> None:
    """Wait until every service target has been scraped `count` times from now on."""
    since = time.time() + SCRAPE_INTERVAL * (count - 1)

    def scraped() -> bool:
        stamps = prometheus.query(f"timestamp(up{{{SERVICE_JOBS}}})")
        return len(stamps) == len(JOBS) and all(float(s["value"][1]) > since for s in stamps)

    wait_until(scraped, 10 + SCRAPE_INTERVAL * count, f"{count} scrapes of every service")


def test_junk_paths_and_methods_add_no_series(warmed: Monitored) -> None:
    stack, prometheus = warmed.stack, warmed.prometheus
    clients = [httpx.Client(base_url=stack.url(name), timeout=30) for name in ("gateway", "blog")]
    try:
        # Each kind of junk once, so the series it may make (route `unmatched`, method
        # `other`, status 404/405) exist before counting.
        for client in clients:
            for method in [*JUNK_METHODS, "XWARMUP"]:
                for prefix in JUNK_PREFIXES:
                    client.request(method, prefix + uuid.uuid4().hex)
        scrapes_after(prometheus)
        before = service_series(prometheus)
        with ThreadPoolExecutor(len(clients)) as pool:
            list(pool.map(junk, clients, [JUNK_REQUESTS] * len(clients), range(len(clients))))
        scrapes_after(prometheus)
        after = service_series(prometheus)
    finally:
        for client in clients:
            client.close()
    new = sorted(str(dict(sorted(labels))) for labels in after - before)
    assert new == [], f"{len(new)} new series, e.g.:\n" + "\n".join(new[:10])
    counted = prometheus.query('sum(http_requests_total{job="blog-service"})')
    assert counted and float(counted[0]["value"][1]) >= JUNK_REQUESTS


# The alerts each fault must fire (docs/runbooks.md), with the labels that say where.
SERVICE_DOWN = "TitaniumServiceDown"
DATABASE_UNAVAILABLE = "TitaniumDatabaseUnavailable"
POSTGRES_DOWN = "TitaniumPostgresDown"
# Beyond an alert's `for`: two scrapes (the exporter's are the slower) and two
# evaluations, and a few seconds.
SLACK = 2 * EXPORTER_INTERVAL + 2 * SCRAPE_INTERVAL + 5


def hold_for(name: str) -> float:
    """An alert's `for`, in seconds."""
    (rule,) = [rule for rule in alerts() if rule["alert"] == name]
    text = str(rule.get("for", "0s"))
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", text)
    assert parts, f"{name}: `for` {text!r}"
    return sum(int(number) * units[unit] for number, unit in parts)


def wait_for_alerts(
    prometheus: Prometheus, expected: dict[str, dict[str, str]], *, firing: bool, timeout: float
) -> None:
    """Wait until every alert of `expected` is firing (or none is); fail naming the states."""

    def reached() -> bool:
        states = [bool(prometheus.firing(name, **labels)) for name, labels in expected.items()]
        return all(states) if firing else not any(states)

    try:
        wait_until(reached, timeout, "alerts", interval=0.5)
    except AssertionError:
        active = [
            (a["labels"].get("alertname"), a["labels"].get("job"), a["state"])
            for a in prometheus.alerts()
        ]
        want = "firing" if firing else "resolved"
        raise AssertionError(
            f"{list(expected)} not all {want} within {timeout:.0f}s; active: {active}"
        ) from None


def test_faults_fire_their_alerts_and_recovery_resolves_them(warmed: Monitored) -> None:
    stack, server, prometheus = warmed.stack, warmed.server, warmed.prometheus
    expected = {
        SERVICE_DOWN: {"job": "blog-service"},
        DATABASE_UNAVAILABLE: {"job": "user-service"},
        POSTGRES_DOWN: {},
    }
    assert [n for n, labels in expected.items() if prometheus.firing(n, **labels)] == []
    timeout = max(hold_for(name) for name in expected) + SLACK
    # Both faults at once: each alert's `for` runs while the other's does.
    stack.stop_one("blog")
    server.stop()
    try:
        wait_for_alerts(prometheus, expected, firing=True, timeout=timeout)
    finally:
        server.start()
        stack.start_one("blog")
        wait_until_ready(
            f"{stack.url('blog')}/ready", stack.processes["blog"], 30, service_name("blog")
        )
    wait_for_alerts(prometheus, expected, firing=False, timeout=30)
