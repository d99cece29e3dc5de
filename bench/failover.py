"""Failover benchmark: the four services on a Patroni cluster under a steady write load.

Starts etcd and three PostgreSQL nodes under Patroni (synchronous mode, strict;
tests/support/patroni.py), the services against all three (multi-host POSTGRES_HOST),
and 20 writers creating posts through the gateway (plus two readers and a /ready poller).
Then, one after the other, each event waits until the cluster, the writes and every
/ready have recovered: `kill -9` of the primary's postmaster, a planned switchover, and
`kill -9` of the synchronous standby's postmaster. For each event it prints the
write-unavailability window (first failed write to the first 201 of a write sent after
it), the longest time without a 201, answers other than 2xx/503, acknowledged writes
lost (every 201 is read back at the end), failed reads and when every /ready was green
again; then appends the run to docs/benchmarks.md.

    make bench-failover
    .venv/bin/python bench/failover.py --writers 20 --no-report
"""

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # support/: the cluster, the load, the stack

from http_bench import commit, machine  # noqa: E402  # the same header as the HTTP runs
from support.api import register  # noqa: E402
from support.failover import (  # noqa: E402
    EVENTS,
    EventReport,
    WriteLoad,
    attribute_losses,
    read_back,
    run_event,
    stored_ids,
)
from support.patroni import PatroniCluster  # noqa: E402
from support.stack import start_stack  # noqa: E402
from titanium.security.tokens import generate_key_pair  # noqa: E402

TARGETS = "failover ≤ 15 s, switchover ≤ 5 s, replica loss 0 s, 0 lost, 0 non-2xx/503"


def run(
    writers: int, warm_up: float, settle: float, workdir: Path
) -> tuple[list[EventReport], dict[str, float]]:
    """The three events under one load; returns their reports and run-wide figures."""
    private, public = generate_key_pair(workdir / "keys")
    keys = {"JWT_PRIVATE_KEY_FILE": str(private), "JWT_PUBLIC_KEY_FILE": str(public)}
    with PatroniCluster() as cluster:
        assert cluster.started_in is not None
        print(f"cluster healthy in {cluster.started_in:.1f} s: {cluster.env()['POSTGRES_HOST']}")
        env = cluster.env() | keys | {"LOG_LEVEL": "WARNING"}
        stack = start_stack(env, workdir / "logs")
        try:
            pids = {name: p.pid for name, p in stack.processes.items()}
            gateway = stack.url("gateway")
            with httpx.Client(base_url=gateway, timeout=30) as client:
                headers = register(client)["headers"]
            services = {str(name): stack.url(name) for name in stack.processes}
            load = WriteLoad(gateway, services, headers, writers=writers)
            phases: list[tuple[str, float, float]] = []
            with load:
                time.sleep(warm_up)
                for event in EVENTS:
                    print(f"{event} (leader {cluster.primary().name}) ...", flush=True)
                    start, end = run_event(cluster, load, event, recover_timeout=120, settle=settle)
                    phases.append((event, start, end))
                    print(EventReport.of(event, load, start, end).line(), flush=True)
            acknowledged = load.acknowledged()
            lost = read_back(gateway, acknowledged)
            ids = [o.post_id for o in acknowledged if o.post_id is not None]
            missing = len(set(ids) - stored_ids(cluster, ids))
            reports = [EventReport.of(e, load, s, t) for e, s, t in phases]
            attribute_losses(
                [(r, s, t) for r, (_, s, t) in zip(reports, phases, strict=True)], lost
            )
            restarted = sum(
                pids.get(name) != p.pid or p.poll() is not None
                for name, p in stack.processes.items()
            )
            totals = {
                "cluster_start_s": cluster.started_in,
                "acknowledged": len(acknowledged),
                "lost": len(lost),
                "missing_in_database": missing,
                "restarted": restarted,
                "requests": len(load.outcomes),
            }
        finally:
            stack.stop()
    return reports, totals


def print_table(reports: list[EventReport], totals: dict[str, float]) -> list[str]:
    lines = [
        "| event | write window s | longest without a 201 s | failed writes | non-2xx/503 "
        "| no answer | 503 without Retry-After | acknowledged lost | failed reads "
        "| all /ready green after s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.event} | {r.window_s:.1f} | {r.stall_s:.1f} | {r.failed_writes}/{r.writes} "
            f"| {r.unexpected} | {r.no_answer} | {r.missing_retry_after} | {r.lost} "
            f"| {r.failed_reads}/{r.reads} | {r.ready_s:.1f} |"
        )
    lines.append("")
    lines.append(
        f"{totals['acknowledged']:.0f} posts acknowledged, {totals['lost']:.0f} not read back, "
        f"{totals['missing_in_database']:.0f} missing in the leader's database; "
        f"{totals['restarted']:.0f} services restarted; cluster healthy "
        f"{totals['cluster_start_s']:.1f} s after start.  "
    )
    print("\n".join(lines))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--warm-up", type=float, default=5.0, help="seconds of load first")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after recovery")
    parser.add_argument(
        "--no-report", action="store_true", help="do not append to docs/benchmarks.md"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="titanium-bench-failover-") as workdir:
        reports, totals = run(args.writers, args.warm_up, args.settle, Path(workdir))
    lines = print_table(reports, totals)
    if not args.no_report:
        header = [
            f"\n### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — failover — commit {commit()} — "
            f"{machine()}\n",
            f"`bench/failover.py`: etcd + 3 PostgreSQL nodes under Patroni (synchronous mode, "
            f"strict), {args.writers} writers creating posts through the gateway, 2 readers; "
            f"targets: {TARGETS}. Write window: first failed write to the first 201 of a "
            f"write sent after it.\n",
        ]
        report = ROOT / "docs" / "benchmarks.md"
        with report.open("a") as handle:
            handle.write("\n".join(header + lines) + "\n")
        print(f"appended to {report}")


if __name__ == "__main__":
    main()
