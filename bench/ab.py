"""Two checkouts side by side: both stacks up at once, wrk alternating between them.

    .venv/bin/python bench/ab.py /path/to/other/checkout [--backend sqlite] [--cache off]
        [--posts 2000] [--targets list,post,write] [--rounds 5] [--seconds 8]

Each checkout runs its own stack (100 users, `--posts` posts, on a fresh PostgreSQL
database or SQLite directory of its own), started by its own `bench/http_bench.py`
code in a process of its own. An idle stack costs nothing, so the two are measured
in turns, in alternating order, under the same machine state; `make bench` runs
them one after the other, where the state drifts by more than the few per cent a
change costs. Targets: `list` (the post list through the gateway and direct on
blog-service), `post` (a random post, the same two ways), `write` (authenticated
post creations through the gateway, always run last). Prints, per target, the medians of req/s and
p99, and the CPU each of the two processes spends per request through the gateway.
The other checkout needs its own `.venv` (`make install-test` there).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import http_bench

ROOT = Path(__file__).resolve().parent.parent

HOLD = """
import asyncio, json, os, sys, tempfile
from pathlib import Path
root, options = Path(sys.argv[1]), json.loads(sys.argv[2])
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
    env = {
        "JWT_PRIVATE_KEY_FILE": str(private), "JWT_PUBLIC_KEY_FILE": str(public),
        "REGISTRATION_MAX_PER_CLIENT": str(bench.USERS),
    }
    if options["cache"] == "off":
        env["BLOG_CACHE_ENTRIES"] = "0"
    database = None
    if options["backend"] == "postgresql":
        database = bench.POSTGRES.create_database("titanium_bench")
        env |= bench.POSTGRES.env(database)
    else:
        env["DATA_DIR"] = str(Path(work) / "sqlite")
    settings = settings_for(env)
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(settings, service))
    # Logs to files, as in `make bench`: the request line is part of every request's cost.
    stack = Stack(env={**os.environ, **env}, ports=stack_ports(), log_dir=Path(work) / "logs")
    stack.start()
    try:
        token, max_id = asyncio.run(bench.seed(settings, stack.url("gateway"), options["posts"]))
        if database:
            bench.POSTGRES.execute("VACUUM ANALYZE", database)
        pids = {"gateway": stack.processes["gateway"].pid, "blog": stack.processes["blog"].pid}
        urls = {"gateway": stack.url("gateway"), "blog": stack.url("blog")}
        found = {"urls": urls, "pids": pids, "token": token, "max_id": max_id}
        print(json.dumps(found), flush=True)
        sys.stdin.read()  # until the driver closes it
    finally:
        stack.stop()
        if database:
            bench.POSTGRES.drop_database(database)
"""

LIST = "/blog/api/posts?limit=20"
TARGETS = ("list", "post", "write")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runs_of(
    stack: dict[str, Any], target: str
) -> dict[str, tuple[str, str | None, dict[str, str]]]:
    """The wrk runs of a target on one stack: label -> (url, script, script env)."""
    gateway, blog = stack["urls"]["gateway"], stack["urls"]["blog"]
    if target == "list":
        return {
            "list via gateway": (gateway + LIST, None, {}),
            "list direct": (blog + LIST, None, {}),
        }
    if target == "post":
        post = ("wrk_random_post.lua", {"MAX_ID": str(stack["max_id"])})
        return {"post via gateway": (gateway, *post), "post direct": (blog, *post)}
    return {"writes via gateway": (gateway, "wrk_write.lua", {"TOKEN": stack["token"]})}


def measure(
    run: tuple[str, str | None, dict[str, str]], seconds: int, pids: dict[str, int]
) -> dict[str, Any]:
    """One wrk run (http_bench's: -t2 -c64), with CPU microseconds per request by process.

    CPU per request is the steadier figure on a machine the load generator shares:
    throughput moves with whatever else the two cores do, the work per request does not.
    """
    used = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = http_bench.combine([http_bench.wrk(run[0], seconds, run[1], run[2])])
    requests = max(result["requests"], 1)
    result["cpu_us"] = {
        name: (cpu_seconds(pid) - used[name]) / requests * 1e6 for name, pid in pids.items()
    }
    return result


def median_cpu(found: list[dict[str, Any]], process: str) -> float:
    """The median CPU microseconds per request of `process` over runs."""
    return float(statistics.median(r["cpu_us"][process] for r in found))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("other", type=Path, help="the checkout to compare this one with")
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--cache", choices=["on", "off"], default="on")
    parser.add_argument("--posts", type=int, default=http_bench.POSTS)
    parser.add_argument("--targets", default="list", help="comma-separated: list, post, write")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8, help="seconds per wrk run")
    args = parser.parse_args()
    given = set(args.targets.split(","))
    if not given <= set(TARGETS):
        sys.exit(f"ab: unknown target in {args.targets!r} ({', '.join(TARGETS)})")
    # Writes last: the posts they add make every later list count more rows.
    targets = [target for target in TARGETS if target in given]
    options = json.dumps({"backend": args.backend, "cache": args.cache, "posts": args.posts})
    checkouts = {"this": ROOT, "other": args.other.resolve()}
    with tempfile.TemporaryDirectory(prefix="titanium-ab-") as work:
        script = Path(work) / "hold.py"
        script.write_text(HOLD)
        holders = {
            name: subprocess.Popen(
                [str(root / ".venv" / "bin" / "python"), str(script), str(root), options],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for name, root in checkouts.items()
        }
        try:
            stacks = {}
            for name, holder in holders.items():
                assert holder.stdout is not None
                stacks[name] = json.loads(holder.stdout.readline())
            print(
                f"medians of {args.rounds} x {args.seconds} s, wrk -t2 -c64, {args.backend}, "
                f"cache {args.cache}, {args.posts} posts",
                flush=True,
            )
            for target in targets:
                results: dict[str, dict[str, list[dict[str, Any]]]] = {
                    name: {} for name in checkouts
                }
                for stack in stacks.values():  # warm-up, not counted
                    for run in runs_of(stack, target).values():
                        measure(run, 3, stack["pids"])
                for round_ in range(args.rounds):
                    order = list(checkouts) if round_ % 2 == 0 else list(reversed(checkouts))
                    for name in order:
                        for label, run in runs_of(stacks[name], target).items():
                            found = measure(run, args.seconds, stacks[name]["pids"])
                            results[name].setdefault(label, []).append(found)
                for name, root in checkouts.items():
                    for label, runs in results[name].items():
                        rps = statistics.median(r["rps"] for r in runs)
                        p99 = statistics.median(r["p99_ms"] for r in runs)
                        errors = sum(r["errors"] for r in runs)
                        cpu = " ".join(
                            f"{process} {median_cpu(runs, process):.0f}"
                            for process in ("gateway", "blog")
                        )
                        print(
                            f"{name:<6} {label:<20} {rps:7.0f} req/s  p99 {p99:6.1f} ms  "
                            f"errors {errors}  CPU us/request: {cpu}   ({root})",
                            flush=True,
                        )
        finally:
            for holder in holders.values():
                assert holder.stdin is not None
                holder.stdin.close()
                holder.wait(60)


if __name__ == "__main__":
    main()
