"""A real Prometheus (Debian's /usr/bin/prometheus) and postgres_exporter, started by a test.

`Prometheus` runs on a free port with a throwaway TSDB under the test's directory,
scraping and evaluating every second, with the configuration
`titanium.ops.monitoring.prometheus_config` writes; `query` and `alerts` go
through its HTTP API. `PostgresExporter` is prometheus-postgres-exporter pointed
at one PostgreSQL server. Both are stopped with SIGTERM, then SIGKILL.
"""

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from support.ports import free_port
from support.wait import wait_until
from titanium.ops.monitoring import POSTGRES_EXPORTER_JOB, prometheus_config

PROMETHEUS = "/usr/bin/prometheus"
POSTGRES_EXPORTER = "/usr/bin/prometheus-postgres-exporter"
SCRAPE_INTERVAL = 1.0  # seconds; also the rule evaluation interval
# postgres_exporter answers after a second while PostgreSQL is down (its connection
# retry): scraped every second it would time out, and `pg_up 0` never be read.
EXPORTER_INTERVAL = 3.0


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Process:
    """A server process of a test: started with a log file, stopped SIGTERM-then-SIGKILL."""

    name = "process"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log = directory / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self, command: list[str], env: Mapping[str, str] | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )

    def _wait_answering(self, url: str, timeout: float) -> None:
        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}:\n{_log_tail(self.log)}"
                )
            return httpx.get(url, timeout=2).status_code == 200

        wait_until(answers, timeout, f"{self.name} answers {url}", ignoring=(httpx.HTTPError,))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class Prometheus(_Process):
    """Prometheus scraping `targets` (job name -> host:port) every second, with `rule_file`."""

    name = "prometheus"

    def __init__(
        self, directory: Path, targets: Mapping[str, str], rule_file: Path | None = None
    ) -> None:
        super().__init__(directory)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / "prometheus.yml"
        interval = f"{SCRAPE_INTERVAL:g}s"
        config = prometheus_config(
            targets,
            rule_file,
            interval,
            evaluation_interval=interval,
            job_intervals={POSTGRES_EXPORTER_JOB: f"{EXPORTER_INTERVAL:g}s"},
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def start(self, timeout: float = 30.0) -> Self:
        """Start it and wait for /-/ready."""
        self._spawn(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ]
        )
        self._wait_answering(f"{self.url}/-/ready", timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it and delete its TSDB (the configuration and the log stay)."""
        super().stop(timeout)
        self.client.close()
        shutil.rmtree(self.directory / "data", ignore_errors=True)

    def _api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        response = self.client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            query = (params or {}).get("query", "")
            raise AssertionError(f"{path} {query!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The series of an instant query now (`metric`, `value`); a scalar is one series."""
        data = self._api("query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """The active alerts (pending and firing): `labels`, `state`, `activeAt`."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return alerts

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        """The firing alerts named `alertname` whose labels include `labels`."""
        return [
            alert
            for alert in self.alerts()
            if alert["state"] == "firing"
            and alert["labels"].get("alertname") == alertname
            and all(alert["labels"].get(k) == v for k, v in labels.items())
        ]

    def targets_up(self) -> dict[str, str]:
        """Health of each active target by job: `up`, `down` or `unknown`."""
        targets = self._api("targets")["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (alerting and recording), with its health and last error."""
        groups = self._api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]


class PostgresExporter(_Process):
    """prometheus-postgres-exporter on a free port, connected to the server at `dsn`."""

    name = "postgres-exporter"

    def __init__(self, directory: Path, dsn: str) -> None:
        super().__init__(directory)
        self.dsn = dsn
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        """Start it and wait until /metrics answers."""
        env = {**os.environ, "DATA_SOURCE_NAME": self.dsn}
        self._spawn([POSTGRES_EXPORTER, f"--web.listen-address={self.address}"], env)
        self._wait_answering(f"http://{self.address}/metrics", timeout)
        return self


# PromQL, read as far as the tests need: where an alert's threshold is, and
# the dashboards' template variables.
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_MODIFIER = re.compile(r"^\s*(?:bool\b|(?:on|ignoring|group_left|group_right)\s*\([^)]*\))\s*")


def _top_level(expr: str) -> list[tuple[int, str]]:
    """Binary operators outside any (), [], {} or string: (offset, operator)."""
    found: list[tuple[int, str]] = []
    depth, i, quote = 0, 0, ""
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            word = re.match(r"(and|or|unless)\b", expr[i:])
            if word and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] == "_")):
                found.append((i, word.group(1)))
                i += len(word.group(1))
                continue
            for operator in _COMPARISONS:
                if expr.startswith(operator, i) and not expr.startswith("=~", i):
                    found.append((i, operator))
                    i += len(operator)
                    break
            else:
                i += 1
            continue
        i += 1
    return found


def _unwrap(expr: str) -> str:
    """`expr` without a leading binary modifier and without parentheses around all of it."""
    expr = _MODIFIER.sub("", expr.strip())
    while expr.startswith("(") and expr.endswith(")") and _balanced(expr[1:-1]):
        expr = expr[1:-1].strip()
    return expr


def _balanced(expr: str) -> bool:
    """No parenthesis of `expr` closes one it did not open (strings aside: rare in rules)."""
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _bare_groups(expr: str) -> list[str]:
    """The contents of the top-level parentheses that group an operand.

    Not those of a call, an aggregation's `by`/`without` or a matching modifier.
    """
    groups: list[str] = []
    depth, start, quote = 0, 0, ""
    for i, char in enumerate(expr):
        if quote:
            quote = "" if char == quote and expr[i - 1] != "\\" else quote
        elif char in "\"'`":
            quote = char
        elif char == "(":
            if depth == 0:
                start = i
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                before = re.search(r"([\w:]*)\s*$", expr[:start])
                if not (before and before.group(1)):
                    groups.append(expr[start + 1 : i])
    return groups


def signals(expr: str) -> list[str]:
    """What an alert measures: its expression's operands without their thresholds.

    `a > 0.05 and b > 1` gives `a` and `b`; `a unless b` gives `a` (the right side
    of `unless` is a condition that may well be empty); `or` gives both sides;
    `absent(a)` gives `a`; `(a == 0) * (b == 1)` gives `a` and `b`.
    """
    expr = _unwrap(expr)
    operators = _top_level(expr)
    for names in (("or",), ("and", "unless")):
        cuts = [(at, op) for at, op in operators if op in names]
        if cuts:
            parts, start, kept = [], 0, True
            for at, op in cuts:
                if kept:
                    parts.append(expr[start:at])
                kept = op != "unless"
                start = at + len(op)
            if kept:
                parts.append(expr[start:])
            return [signal for part in parts for signal in signals(part)]
    comparisons = [at for at, op in operators if op in _COMPARISONS]
    if comparisons:
        return signals(expr[: comparisons[-1]])
    # `(a == 0) * on (job) group_left (reason) (b == 1)`: the filtered operands.
    filtered = [group for group in _bare_groups(expr) if _top_level(group)]
    if filtered:
        return [signal for group in filtered for signal in signals(group)]
    # absent(x) has a series exactly when x has none: x is what it watches.
    absent = re.fullmatch(r"absent(_over_time)?\s*\((.*)\)", expr, re.DOTALL)
    if absent and _balanced(absent.group(2)):
        inner = absent.group(2)
        return signals(f"last_over_time({inner})" if absent.group(1) else inner)
    return [expr]
