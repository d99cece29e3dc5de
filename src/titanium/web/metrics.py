"""Prometheus metrics of one service, in a registry of its own (catalogue: docs/monitoring.md).

No metric carries a `service` label: the scrape target says which service and
pod it is (a ServiceMonitor in the cluster, `make prometheus` locally), as for
any exporter. Every label value is from a fixed set, whatever clients send, so
a scan of random URLs or methods adds no series.

State that components keep anyway (pool slots, cache size, counters of refusals)
is read at scrape time by a collector, so the request path pays nothing for it.
"""

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as Metric  # re-exported: collectors' type

from titanium import __version__

# The `_created` series prometheus-client adds beside every counter and histogram
# double the series and say nothing `process_start_time_seconds` does not.
disable_created_metrics()  # type: ignore[no-untyped-call]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Why a service can be unready; `titanium_not_ready` exports each as 0 or 1.
NOT_READY_REASONS = ("database", "schema", "downstream")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

Collect = Callable[[], Iterable[Metric]]


class _Collector:
    """Adapts a function returning metric families to prometheus-client's collector."""

    def __init__(self, collect: Collect) -> None:
        self.collect = collect


class GateStats(Protocol):
    """What a connection-pool gate counts (`titanium.db.engine.FairGate`)."""

    size: int
    in_use: int
    waiting: int
    wait_seconds: float
    acquired: int
    timeouts: int


class UpstreamMeter:
    """The gateway's measures of one downstream."""

    def __init__(self, metrics: "Metrics", downstream: str, limit: int) -> None:
        self._requests = metrics.upstream_requests
        self._downstream = downstream
        self._outcomes: dict[str, Any] = {}
        self.latency = metrics.upstream_latency.labels(downstream)
        self.in_flight = 0  # calls holding a connection now, read at scrape time
        metrics.upstream_limit.labels(downstream).set(limit)

    def finished(self, outcome: str, started: float) -> None:
        """Count one call that ended in `outcome` and its time since `started` (perf_counter)."""
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self._requests.labels(self._downstream, outcome)
        child.inc()
        self.latency.observe(time.perf_counter() - started)


class Metrics:
    """The registry of one service: RED per route, readiness, process and component state."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests handled", ["method", "route", "status"],
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "http_request_duration_seconds", "Time to handle an HTTP request",
            ["method", "route"], registry=registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.ready = Gauge("titanium_ready", "1 when /ready answers 200", registry=registry)
        self.not_ready = Gauge(
            "titanium_not_ready", "1 for the reason the service is not ready", ["reason"],
            registry=registry,
        )  # fmt: skip
        Gauge("titanium_build_info", "Titanium version", ["version"], registry=registry).labels(
            __version__
        ).set(1)
        self.upstream_requests = Counter(
            "titanium_upstream_requests", "Requests forwarded to a downstream, by how they ended",
            ["downstream", "outcome"], registry=registry,
        )  # fmt: skip
        self.upstream_latency = Histogram(
            "titanium_upstream_request_duration_seconds",
            "Time to a downstream's response head", ["downstream"], registry=registry,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.upstream_limit = Gauge(
            "titanium_upstream_connection_limit", "Connection limit of a downstream's pool",
            ["downstream"], registry=registry,
        )  # fmt: skip
        ProcessCollector(registry=registry)
        # Requests being handled: a plain number the middleware adds to and takes
        # from (a Gauge takes a lock each time), exported at scrape time.
        self.in_flight = 0
        self.collect_also(self._in_flight)
        self.set_readiness(None)
        self.total = 0
        # `labels()` resolves its arguments on every call; a route, method and
        # status seen once is looked up here instead (a few dozen entries at most).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._upstreams: dict[str, UpstreamMeter] = {}

    def _in_flight(self) -> list[Metric]:
        upstream = GaugeMetricFamily(
            "titanium_upstream_in_flight",
            "Connections to a downstream in use",
            labels=["downstream"],
        )
        for name, meter in self._upstreams.items():
            upstream.add_metric([name], meter.in_flight)
        return [
            gauge("http_requests_in_flight", "HTTP requests being handled", self.in_flight),
            upstream,
        ]

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        self.total += 1
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            label = method if method in METHODS else "other"
            children = (
                self.requests.labels(label, route, str(status)),
                self.latency.labels(label, route),
            )
            self._children[key] = children
        counter, histogram = children
        counter.inc()
        histogram.observe(seconds)

    def set_readiness(self, reason: str | None) -> None:
        """Record a readiness check: `reason` None when ready, else one of NOT_READY_REASONS."""
        self.ready.set(reason is None)
        for known in NOT_READY_REASONS:
            self.not_ready.labels(known).set(known == reason)

    def upstream(self, downstream: str, limit: int) -> UpstreamMeter:
        """The meter of one downstream (made on first use)."""
        meter = self._upstreams.get(downstream)
        if meter is None:
            meter = self._upstreams[downstream] = UpstreamMeter(self, downstream, limit)
        return meter

    def collect_also(self, collect: Collect) -> None:
        """Add the families `collect` returns to every scrape."""
        self.registry.register(_Collector(collect))

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


def pool_families(gates: Mapping[str, GateStats]) -> list[Metric]:
    """The database pool gauges and counters, one series per pool."""
    size = GaugeMetricFamily(
        "titanium_db_pool_size", "Connections the pool may hold", labels=["pool"]
    )
    in_use = GaugeMetricFamily(
        "titanium_db_pool_in_use", "Connections checked out", labels=["pool"]
    )
    waiting = GaugeMetricFamily(
        "titanium_db_pool_waiting", "Requests queued for a connection", labels=["pool"]
    )
    wait = CounterMetricFamily(
        "titanium_db_pool_wait_seconds", "Time spent queued for a connection", labels=["pool"]
    )
    acquired = CounterMetricFamily(
        "titanium_db_pool_acquired", "Connections handed out", labels=["pool"]
    )
    timeouts = CounterMetricFamily(
        "titanium_db_pool_timeouts", "Requests that waited the whole pool timeout", labels=["pool"]
    )
    for pool, gate in gates.items():
        size.add_metric([pool], gate.size)
        in_use.add_metric([pool], gate.in_use)
        waiting.add_metric([pool], gate.waiting)
        wait.add_metric([pool], gate.wait_seconds)
        acquired.add_metric([pool], gate.acquired)
        timeouts.add_metric([pool], gate.timeouts)
    return [size, in_use, waiting, wait, acquired, timeouts]


def counter_family(name: str, documentation: str, label: str, counts: Mapping[str, int]) -> Metric:
    """A counter with one series per `counts` key (name without `_total`)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in counts.items():
        family.add_metric([value], count)
    return family


def gauge_family(name: str, documentation: str, label: str, values: Mapping[str, float]) -> Metric:
    """A gauge with one series per `values` key."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value, number in values.items():
        family.add_metric([value], number)
    return family


def gauge(name: str, documentation: str, value: float) -> Metric:
    """A gauge of one series."""
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, value: float) -> Metric:
    """A counter of one series (name without `_total`)."""
    return CounterMetricFamily(name, documentation, value=value)
