"""Proof of the monitoring component (k8s/components/monitoring/) without a cluster.

solid-cloud is rendered from a clean clone (as tests/test_k8s.py does); its
ServiceMonitors and PrometheusRule are validated strictly against the Prometheus
Operator's CRD schemas (tests/fixtures/crds/); the rules pass `promtool check
rules` and the unit tests of tests/fixtures/promtool/, which must fire and not
fire every alert; every alert is documented in docs/runbooks.md; the dashboards
are provisionable and query only what the services and the exporter export.
"""

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.checkout import Checkout, load_all
from support.crds import VALIDATORS, crd_errors
from titanium.ops.monitoring import (
    COMPONENT,
    DASHBOARDS,
    PROMETHEUS_RULE,
    dashboard_panels,
    load_dashboards,
    rule_groups,
    write_rule_file,
)

pytestmark = pytest.mark.infra  # kubectl kustomize, promtool

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
PROMTOOL_TEST = FIXTURES / "promtool" / "titanium_test.yaml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
CONTRACT = REPO / "docs" / "monitoring.md"
RUNBOOK_URL = "https://github.com/titanium-platform/titanium/blob/main/docs/runbooks.md#"
SERVICES = {"api-gateway", "auth-service", "user-service", "blog-service"}
EXPORTER = "postgres-exporter"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# The alerts a live test waits for: their `for` must stay short.
LIVE_ALERTS = {"TitaniumServiceDown", "TitaniumDatabaseUnavailable", "TitaniumPostgresDown"}
# Series the services do not export themselves, by prefix: prometheus-client's
# process collector, Prometheus' own `up`, postgres-exporter, and (cluster-only)
# the kubelet and kube-state-metrics.
FOREIGN_PREFIXES = ("process_", "pg_", "kubelet_", "kube_")
CLUSTER_ONLY_PREFIXES = ("kubelet_", "kube_")
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan", "sum", "min", "max", "avg", "count", "group", "stddev",
    "stdvar", "topk", "bottomk", "quantile", "count_values",
}  # fmt: skip


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: apt-get install prometheus", pytrace=False)
    return found


# --- rendering ------------------------------------------------------------------


@pytest.fixture(scope="session")
def solid_cloud_objects(checkout: Checkout) -> list[dict[str, Any]]:
    result = checkout.render("k8s/overlays/solid-cloud")
    if result.returncode != 0:
        pytest.fail(f"rendering overlays/solid-cloud failed:\n{result.stderr}", pytrace=False)
    return load_all(result.stdout)


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- strict CRD schemas ---------------------------------------------------------


def test_the_crd_fixtures_cover_the_monitoring_kinds() -> None:
    assert {kind for _, kind in VALIDATORS} == MONITORING_KINDS


def test_monitoring_objects_validate_strictly_against_the_crds(
    solid_cloud_objects: list[dict[str, Any]],
) -> None:
    found = [o for o in solid_cloud_objects if o["kind"] in MONITORING_KINDS]
    assert {o["kind"] for o in found} == {"ServiceMonitor", "PrometheusRule"}
    errors = [error for obj in found for error in crd_errors(obj)]
    assert not errors, "\n".join(errors)


def test_a_misspelled_field_is_rejected(solid_cloud_objects: list[dict[str, Any]]) -> None:
    # Guards the test above: the operator would silently drop these fields.
    monitor = copy.deepcopy(of_kind(solid_cloud_objects, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["pth"] = monitor["spec"]["endpoints"][0].pop("path")
    assert any("'pth' was unexpected" in e for e in crd_errors(monitor)), crd_errors(monitor)
    monitor = copy.deepcopy(of_kind(solid_cloud_objects, "ServiceMonitor")[0])
    monitor["spec"]["selectr"] = monitor["spec"].pop("selector")
    assert crd_errors(monitor)
    (rule,) = copy.deepcopy(of_kind(solid_cloud_objects, "PrometheusRule"))
    first = rule["spec"]["groups"][1]["rules"][0]
    first["anotations"] = first.pop("annotations")
    assert any("'anotations' was unexpected" in e for e in crd_errors(rule)), crd_errors(rule)
    rule["metadata"]["lables"] = {}
    assert any("'lables'" in e for e in crd_errors(rule))
    # And a wrong type is an error too, not just an unknown name.
    (rule,) = copy.deepcopy(of_kind(solid_cloud_objects, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"] = {"record": "x"}
    assert crd_errors(rule)


# --- ServiceMonitors ----------------------------------------------------------------


def test_every_service_is_scraped_on_its_named_http_port(
    solid_cloud_objects: list[dict[str, Any]],
) -> None:
    services = of_kind(solid_cloud_objects, "Service")
    monitors = of_kind(solid_cloud_objects, "ServiceMonitor")
    assert {s["metadata"]["name"] for s in services} == SERVICES | {EXPORTER}
    for service in services:
        name = service["metadata"]["name"]
        chosen = [
            m for m in monitors if selects(m["spec"]["selector"], service["metadata"]["labels"])
        ]
        assert len(chosen) == 1, f"{name}: {len(chosen)} ServiceMonitors"
        (monitor,) = chosen
        # Only the Service's own namespace: the default without a namespaceSelector.
        assert "namespaceSelector" not in monitor["spec"], name
        assert monitor["metadata"]["labels"].get("release") == "kube-prometheus-stack", name
        # `job` is the Service's name: no jobLabel override.
        assert "jobLabel" not in monitor["spec"], name
        ports = {p.get("name") for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] == "http" and "http" in ports, f"{name}: {endpoint}"
            assert endpoint["path"] == "/metrics", name
            assert not endpoint.get("relabelings") and not endpoint.get("metricRelabelings")


# --- rules --------------------------------------------------------------------------


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recorded() -> set[str]:
    return {
        rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule
    }


def test_one_prometheusrule_and_it_is_the_committed_file(
    solid_cloud_objects: list[dict[str, Any]],
) -> None:
    (rendered,) = of_kind(solid_cloud_objects, "PrometheusRule")
    assert rendered["metadata"]["name"] == "titanium"
    assert rendered["metadata"]["labels"].get("release") == "kube-prometheus-stack"
    assert rendered["spec"]["groups"] == rule_groups()
    # The component's own kustomization lists it: nothing else defines rules.
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text(encoding="utf-8"))
    assert PROMETHEUS_RULE.name in component["resources"]


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    rules = write_rule_file(tmp_path / "titanium.rules.yml")
    result = subprocess.run(
        [promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def run_promtool_tests(
    tmp_path: Path, rules: Path = PROMETHEUS_RULE
) -> subprocess.CompletedProcess[str]:
    shutil.copy(PROMTOOL_TEST, tmp_path / PROMTOOL_TEST.name)
    write_rule_file(tmp_path / "titanium.rules.yml", rules)
    return subprocess.run(
        [promtool(), "test", "rules", PROMTOOL_TEST.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    result = run_promtool_tests(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    # Guards the test above: the cases sit on the thresholds, not far from them.
    document = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))
    for group in document["spec"]["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "TitaniumHighErrorRatio":
                rule["expr"] = rule["expr"].replace("> 0.05", "> 0.10")
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(document, sort_keys=False))
    result = run_promtool_tests(tmp_path, changed)
    assert result.returncode != 0
    assert "TitaniumHighErrorRatio" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    document = yaml.safe_load(PROMTOOL_TEST.read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in document["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names, "no alerts"
    assert not names - firing, f"alerts no test fires: {sorted(names - firing)}"
    assert not names - quiet, f"alerts no test shows quiet: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, f"tests of unknown alerts: {(firing | quiet) - names}"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings."""
    anchors = set()
    for heading in re.findall(r"(?m)^#{1,6}\s+(.+?)\s*$", markdown):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_is_documented_in_a_runbook() -> None:
    anchors = github_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    for rule in alerts():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, name
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_URL), f"{name}: {url}"
        assert url.removeprefix(RUNBOOK_URL) in anchors, f"{name}: no section #{url} in runbooks"
        assert url.removeprefix(RUNBOOK_URL) == name.lower(), f"{name}: {url}"


def test_the_alerts_a_live_test_waits_for_keep_for_1m() -> None:
    waits = {rule["alert"]: rule.get("for") for rule in alerts() if rule["alert"] in LIVE_ALERTS}
    assert waits == dict.fromkeys(LIVE_ALERTS, "1m")


def contract_metrics() -> set[str]:
    """The metric names docs/monitoring.md promises (first column of its tables)."""
    text = CONTRACT.read_text(encoding="utf-8")
    return set(re.findall(r"(?m)^\| `([a-z_:]+)` \|", text))


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers that are not PromQL's own)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_matchers)
    names = set()
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", without_ranges):
        word, call = match[1], match[2]
        if call or word in PROMQL_WORDS:
            continue
        # The label lists of by (...) / on (...) are words inside parentheses after those keywords.
        before = without_ranges[: match.start()].rstrip()
        if re.search(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*$", before):
            continue
        names.add(word)
    return names


def known_metric(name: str) -> bool:
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return (
        name in contract_metrics()
        or base in contract_metrics()
        or name == "up"
        or name in recorded()
        or name.startswith(FOREIGN_PREFIXES)
    )


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) of every `metric{...}` in the expression."""
    return re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr)


def test_rules_use_only_exported_metrics_selected_by_job() -> None:
    assert {"http_requests_total", "titanium_ready", "titanium_db_pool_size"} <= contract_metrics()
    assert metric_names('sum by (job, le) (rate(a_total{x="y"}[5m])) / on (pod) b') == {
        "a_total",
        "b",
    }
    for group in rule_groups():
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            unknown = {m for m in metric_names(rule["expr"]) if not known_metric(m)}
            assert not unknown, f"{name}: not exported by anything here: {unknown}"
            for metric, matchers in selectors(rule["expr"]):
                # The services export no `service` label: the target gives it.
                assert not re.search(r"\bservice\s*=", matchers), f"{name}: {matchers}"
                if not metric.startswith(CLUSTER_ONLY_PREFIXES) and metric not in recorded():
                    assert re.search(r"\bjob\s*=", matchers), f"{name}: {metric} without job"


def test_recording_rules_are_named_titanium_and_used() -> None:
    used = "\n".join(rule["expr"] for group in rule_groups() for rule in group["rules"])
    used += "\n".join(path.read_text(encoding="utf-8") for path in DASHBOARDS.glob("*.json"))
    for name in recorded():
        assert name.startswith("titanium:"), name
        assert name in used, f"recording rule {name} is used by no alert or dashboard"


# --- dashboards ---------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    found = load_dashboards()
    assert found, "no dashboards"
    return found


def test_dashboards_have_datasource_and_namespace_variables() -> None:
    for name, board in dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        datasource = variables.get("datasource")
        assert datasource and datasource["type"] == "datasource", name
        assert datasource["query"] == "prometheus", name
        namespace = variables.get("namespace")
        assert namespace and namespace["type"] == "query", name
        assert namespace["datasource"]["uid"] == "${datasource}", name
        assert board.get("uid") and board.get("title"), name


def test_every_panel_queries_the_chosen_namespace_through_the_variable() -> None:
    uids = set()
    for name, board in dashboards().items():
        uids.add(board["uid"])
        text = json.dumps(board)
        assert "titanium-prod" not in text and "titanium-local" not in text, name
        for panel in dashboard_panels(board):
            where = f"{name}: {panel.get('title')}"
            assert panel["datasource"]["uid"] == "${datasource}", where
            targets = panel.get("targets", [])
            assert targets, f"{where}: no query"
            for target in targets:
                expr = target.get("expr", "")
                assert expr.strip(), f"{where}: empty expr"
                assert target["datasource"]["uid"] == "${datasource}", where
                for metric, matchers in selectors(expr):
                    assert 'namespace="$namespace"' in matchers, f"{where}: {metric} ignores it"
    assert len(uids) == len(dashboards()), "dashboard uids must differ"


def test_panels_use_known_metrics_and_say_when_they_are_cluster_only() -> None:
    for name, board in dashboards().items():
        for panel in dashboard_panels(board):
            where = f"{name}: {panel.get('title')}"
            metrics = {m for t in panel["targets"] for m in metric_names(t["expr"])}
            unknown = {m for m in metrics if not known_metric(m)}
            assert not unknown, f"{where}: {unknown}"
            cluster_only = any(m.startswith(CLUSTER_ONLY_PREFIXES) for m in metrics)
            assert cluster_only == ("cluster-only" in panel.get("description", "")), where


def test_dashboards_are_provisioned_for_the_grafana_sidecar(
    solid_cloud_objects: list[dict[str, Any]],
) -> None:
    maps = [
        c
        for c in of_kind(solid_cloud_objects, "ConfigMap")
        if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    provided = {key: json.loads(value) for c in maps for key, value in c["data"].items()}
    assert provided == dashboards()
    for config_map in maps:
        # No content hash: nothing refers to them, and old copies would stay behind.
        assert config_map["metadata"]["name"].startswith("titanium-dashboard-"), config_map
        assert len(config_map["data"]) == 1
