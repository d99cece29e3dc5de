"""The monitoring files of the repository, for the local Prometheus and the tests.

`k8s/components/monitoring/prometheusrule.yaml` is the one source of the alert
and recording rules: the cluster reads it as a PrometheusRule, and a local
Prometheus or promtool reads its `spec.groups`, written out as a plain rule file.
The local scrape configuration (`prometheus_config`, `write_local`) labels each
target as the cluster's ServiceMonitors do, so the same rules and dashboards apply.
"""

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from titanium.config import ServiceName
from titanium.services.registry import SERVICES, service_name

REPOSITORY = Path(__file__).resolve().parents[3]
COMPONENT = REPOSITORY / "k8s" / "components" / "monitoring"
PROMETHEUS_RULE = COMPONENT / "prometheusrule.yaml"
DASHBOARDS = COMPONENT / "dashboards"


def rule_groups(path: Path = PROMETHEUS_RULE) -> list[dict[str, Any]]:
    """The rule groups of the PrometheusRule at `path` (its `spec.groups`)."""
    document = yaml.safe_load(path.read_text())
    groups: list[dict[str, Any]] = document["spec"]["groups"]
    return groups


def write_rule_file(target: Path, path: Path = PROMETHEUS_RULE) -> Path:
    """Write the PrometheusRule's groups as a Prometheus rule file at `target`."""
    target.write_text(yaml.safe_dump({"groups": rule_groups(path)}, sort_keys=False))
    return target


# Grafana's forms of a template variable: ${name}, ${name:format}, $name, [[name]].
_TEMPLATE_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load_dashboards(directory: Path = DASHBOARDS) -> dict[str, dict[str, Any]]:
    """The Grafana dashboards in `directory`, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a Grafana dashboard, those inside rows included (not the rows)."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") != "row":
            yield panel
        yield from dashboard_panels(panel)


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with its template variables replaced from `values`; ValueError for one it lacks."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise ValueError(f"no local value for ${name} in {expr!r}")
        return values[name]

    return _TEMPLATE_VARIABLE.sub(value, expr)


# The labels a ServiceMonitor gives every series of a service in the cluster, set
# here from the scrape target so the rules and dashboards see the same identity.
LOCAL_NAMESPACE = "titanium-local"
POSTGRES_EXPORTER_JOB = "postgres-exporter"
POSTGRES_EXPORTER_ADDRESS = "127.0.0.1:9187"


def _job(name: str, address: str, namespace: str, interval: str | None) -> dict[str, Any]:
    labels = {"namespace": namespace, "service": name, "pod": f"{name}-local"}
    job: dict[str, Any] = {"job_name": name}
    if interval:
        job |= {"scrape_interval": interval, "scrape_timeout": interval}
    return job | {"static_configs": [{"targets": [address], "labels": labels}]}


def prometheus_config(
    targets: Mapping[str, str],
    rule_file: Path | str | None,
    scrape_interval: str = "15s",
    *,
    evaluation_interval: str | None = None,
    namespace: str = LOCAL_NAMESPACE,
    job_intervals: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Prometheus configuration scraping `targets` (job name -> host:port) with `rule_file`.

    Each job is named after its target and labelled as the cluster labels it:
    `job` and `service` the public name, `namespace`, `pod` `<name>-local`, and
    `instance` the address Prometheus sets itself. `rule_file` None: no rules.
    `job_intervals` gives a job a scrape interval (and timeout) of its own:
    postgres_exporter takes a second to answer while PostgreSQL is down, so a
    one-second scrape of it would time out instead of reading `pg_up 0`.
    """
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "rule_files": [str(rule_file)] if rule_file is not None else [],
        "scrape_configs": [
            _job(name, address, namespace, (job_intervals or {}).get(name))
            for name, address in targets.items()
        ],
    }


def local_targets(
    ports: Mapping[ServiceName, int] | None = None,
    host: str = "127.0.0.1",
    postgres_exporter: str | None = None,
) -> dict[str, str]:
    """The scrape targets of `titanium run` (its default ports unless `ports`), by job name.

    With `postgres_exporter` (host:port), also the postgres_exporter job.
    """
    chosen = ports or {service.id: service.port for service in SERVICES.values()}
    targets = {service_name(service): f"{host}:{port}" for service, port in chosen.items()}
    if postgres_exporter:
        targets[POSTGRES_EXPORTER_JOB] = postgres_exporter
    return targets


def write_local(
    directory: Path,
    ports: Mapping[ServiceName, int] | None = None,
    *,
    postgres_exporter: str | None = None,
    scrape_interval: str = "15s",
    evaluation_interval: str | None = None,
    rules: Path = PROMETHEUS_RULE,
) -> Path:
    """Write `prometheus.yml` and `rules.yml` for a local stack into `directory`.

    Returns the configuration's path; `rules.yml` is the PrometheusRule's groups.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rule_file = write_rule_file(directory.resolve() / "rules.yml", rules)
    config = prometheus_config(
        local_targets(ports, postgres_exporter=postgres_exporter),
        rule_file,
        scrape_interval,
        evaluation_interval=evaluation_interval,
    )
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prometheus_command(config: Path, listen: str = "127.0.0.1:9090") -> list[str]:
    """The command line that runs Prometheus with `config`, its data next to it."""
    return [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={config.parent / 'data'}",
        f"--web.listen-address={listen}",
    ]
