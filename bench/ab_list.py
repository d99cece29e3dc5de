"""The post list of two checkouts side by side: both stacks up at once, wrk alternating.

    .venv/bin/python bench/ab_list.py /path/to/other/checkout [--rounds 5] [--seconds 8]

Each checkout runs its own stack on PostgreSQL (the benchmark's server and data set:
100 users, 10,000 posts), started by its own `bench/http_bench.py` code in a process
of its own. An idle stack costs nothing, so the two are measured in turns, in
alternating order, under the same machine state; `make bench` runs them one after
the other, where the state drifts by more than the few per cent a change costs.
Prints the median req/s of the list through the gateway and direct on blog-service,
and the CPU each of the two processes spends per request through the gateway.
The other checkout needs its own `.venv` (`make install-test` there).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = "/blog/api/posts?limit=20"

HOLD = """
import asyncio, os, sys, tempfile
from pathlib import Path
root = Path(sys.argv[1])
sys.path[:0] = [str(root / "src"), str(root / "tests"), str(root / "bench")]
import http_bench as bench
from support.env import settings_for
from support.ports import stack_ports
from titanium.db.migrations import upgrade_schema
from titanium.runner import Stack
from titanium.security.tokens import generate_key_pair
from titanium.services.registry import DATA_SERVICES

with tempfile.TemporaryDirectory() as work:
    private, public = generate_key_pair(Path(work) / "keys")
    database = bench.POSTGRES.create_database("titanium_bench")
    env = {
        "JWT_PRIVATE_KEY_FILE": str(private), "JWT_PUBLIC_KEY_FILE": str(public),
        "REGISTRATION_MAX_PER_CLIENT": str(bench.USERS), **bench.POSTGRES.env(database),
    }
    settings = settings_for(env)
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(settings, service))
    # Logs to files, as in `make bench`: the request line is part of every request's cost.
    stack = Stack(env={**os.environ, **env}, ports=stack_ports(), log_dir=Path(work) / "logs")
    stack.start()
    try:
        asyncio.run(bench.seed(settings, stack.url("gateway")))
        bench.POSTGRES.execute("VACUUM ANALYZE", database)
        pids = (stack.processes["gateway"].pid, stack.processes["blog"].pid)
        print(stack.url("gateway"), stack.url("blog"), *pids, flush=True)
        sys.stdin.read()  # until the driver closes it
    finally:
        stack.stop()
        bench.POSTGRES.drop_database(database)
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(url: str, seconds: int, pids: dict[str, int]) -> tuple[float, dict[str, float]]:
    """wrk -t2 -c64 on `url` for `seconds`: req/s, and CPU microseconds per request by process.

    CPU per request is the steadier figure on a machine the load generator shares:
    throughput moves with whatever else the two cores do, the work per request does not.
    """
    used = {name: cpu_seconds(pid) for name, pid in pids.items()}
    done = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", "--timeout", "10s", url],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    )  # fmt: skip
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    count = re.search(r"(\d+) requests in", done.stdout)
    if rate is None or count is None:
        sys.exit(f"ab_list: no figure from wrk:\n{done.stdout}{done.stderr}")
    requests = int(count[1])
    cost = {name: (cpu_seconds(pid) - used[name]) / requests * 1e6 for name, pid in pids.items()}
    return float(rate[1]), cost


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("other", type=Path, help="the checkout to compare this one with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8, help="seconds per wrk run")
    args = parser.parse_args()
    checkouts = {"this": ROOT, "other": args.other.resolve()}
    with tempfile.TemporaryDirectory(prefix="titanium-ab-") as work:
        script = Path(work) / "hold.py"
        script.write_text(HOLD)
        holders = {
            name: subprocess.Popen(
                [str(root / ".venv" / "bin" / "python"), str(script), str(root)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for name, root in checkouts.items()
        }
        try:
            urls, pids = {}, {}
            for name, holder in holders.items():
                assert holder.stdout is not None
                gateway, blog, gateway_pid, blog_pid = holder.stdout.readline().split()
                urls[name] = {"gateway": gateway + LIST, "direct": blog + LIST}
                pids[name] = {"gateway": int(gateway_pid), "blog": int(blog_pid)}
            rates: dict[str, dict[str, list[float]]] = {
                name: {"gateway": [], "direct": []} for name in checkouts
            }
            costs: dict[str, dict[str, list[float]]] = {
                name: {"gateway": [], "blog": []} for name in checkouts
            }
            for name in checkouts:  # warm-up, not counted
                run(urls[name]["gateway"], 3, pids[name])
            for round_ in range(args.rounds):
                order = list(checkouts) if round_ % 2 == 0 else list(reversed(checkouts))
                for name in order:
                    for path, url in urls[name].items():
                        rate, cost = run(url, args.seconds, pids[name])
                        rates[name][path].append(rate)
                        if path == "gateway":  # both processes work for this request
                            for process, micros in cost.items():
                                costs[name][process].append(micros)
            print(f"medians of {args.rounds} x {args.seconds} s, wrk -t2 -c64, {LIST}")
            for name, root in checkouts.items():
                served = {path: statistics.median(runs) for path, runs in rates[name].items()}
                cpu = {process: statistics.median(runs) for process, runs in costs[name].items()}
                print(
                    f"{name:<6} {root}: via gateway {served['gateway']:.0f} req/s, direct "
                    f"{served['direct']:.0f} req/s; CPU per request through the gateway: "
                    f"api-gateway {cpu['gateway']:.0f} us, blog-service {cpu['blog']:.0f} us"
                )
        finally:
            for holder in holders.values():
                assert holder.stdin is not None
                holder.stdin.close()
                holder.wait(60)


if __name__ == "__main__":
    main()
