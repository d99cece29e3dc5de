"""HTTP benchmark: the four services as real processes, measured with wrk.

Seeds 100 users (through the API) and 10,000 posts, then for each backend runs
wrk (-t2 -c64, 30 s by default) against the post list and a random post,
through the gateway and directly on blog-service, plus a 90/10 read/write mix
through the gateway. Prints requests/s, p50/p95/p99, errors and each service's
peak RSS, and appends the run to docs/benchmarks.md.

Each URL gets a 3 s warm-up first (not counted). The gateway and direct runs of
a pair alternate in three slices of a third of the duration each, so that the
machine's speed, which drifts on a shared VM by a third within minutes, affects
both sides alike. Requests/s and percentiles are over all requests of all slices
(wrk's full latency histograms are merged).

A run ends with writes alone: authenticated post creations through the gateway
(every 201 counted against the posts table afterwards). `--cache off` runs all of it
with blog-service's response cache off (BLOG_CACHE_ENTRIES=0): the database path
every cache miss takes.

    make bench                      # both backends, 30 s per run
    .venv/bin/python bench/http_bench.py --duration 10 --backend sqlite
    .venv/bin/python bench/http_bench.py --cache off --posts 2000
"""

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # support/: the PostgreSQL server and settings helpers

from support.env import settings_for  # noqa: E402
from support.ports import stack_ports  # noqa: E402
from support.postgres import SharedServer  # noqa: E402
from titanium.config import Settings  # noqa: E402
from titanium.db.engine import Database  # noqa: E402
from titanium.db.migrations import upgrade_schema  # noqa: E402
from titanium.db.tables import posts  # noqa: E402
from titanium.runner import Stack  # noqa: E402
from titanium.security.tokens import generate_key_pair  # noqa: E402
from titanium.services.registry import DATA_SERVICES  # noqa: E402

POSTGRES = SharedServer(
    os.environ.get("TITANIUM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
USERS, POSTS = 100, 10_000
WARM_UP_SECONDS, SLICES = 3, 3
HERE = Path(__file__).parent


async def seed(settings: Settings, gateway: str, count: int = POSTS) -> tuple[str, int]:
    """100 users through the API, `count` posts in bulk; returns a token and the max id."""
    names = [f"bench_{i:03d}_{uuid.uuid4().hex[:6]}" for i in range(USERS)]
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        for name in names:
            response = await client.post(
                "/api/register",
                json={"username": name, "email": f"{name}@example.com", "password": "benchmark-pw"},
            )
            response.raise_for_status()
        login = await client.post(
            "/api/login", json={"username": names[0], "password": "benchmark-pw"}
        )
        token = login.json()["token"]
    start = datetime(2025, 10, 27)
    rows = [
        {
            "title": f"Post {i}",
            "content": ("Titanium 벤치마크 본문입니다. " * 40)[: 500 + i % 500],
            "author": names[i % USERS],
            "created_at": start + timedelta(seconds=i * 37),
            "updated_at": start + timedelta(seconds=i * 37),
            "category_id": 1 + i % 3,
        }
        for i in range(count)
    ]
    db = Database(settings, "blog")
    try:
        async with db.write() as conn:
            await conn.execute(sa.insert(posts), rows)
            max_id = (await conn.execute(sa.select(sa.func.max(posts.c.id)))).scalar_one()
    finally:
        await db.dispose()
    return token, int(max_id)


def wrk(url: str, duration: int, script: str | None, env: dict[str, str]) -> dict[str, Any]:
    # wrk runs one Lua state per thread; the report script is appended through a wrapper.
    wrapper = HERE / f".wrk_{script or 'plain'}"
    wrapper.write_text(
        ((HERE / script).read_text() if script else "")
        + "\n"
        + (HERE / "wrk_report.lua").read_text()
    )
    try:
        done = subprocess.run(
            ["wrk", "-t2", "-c64", f"-d{duration}s", "--timeout", "10s", "-s", str(wrapper), url],
            capture_output=True, text=True, env={**os.environ, **env},
            timeout=duration + 60, check=True,
        )  # fmt: skip
    finally:
        wrapper.unlink()
    line = [text for text in done.stdout.splitlines() if text.startswith("{")][-1]
    result: dict[str, Any] = json.loads(line)
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return result


def percentile(counts: Counter[int], p: float) -> float:
    """Latency (ms) at percentile `p` of a value -> count histogram, ranked as wrk does."""
    # wrk ranks with C round(p/100 * n + 0.5), which is floor(p/100 * n) + 1.
    rank = math.floor(p / 100 * sum(counts.values())) + 1
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value / 1000
    return max(counts) / 1000


def combine(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the slices of a run: all their requests over all their time."""
    requests = sum(s["requests"] for s in slices)
    seconds = sum(s["duration_us"] for s in slices) / 1e6
    latency: Counter[int] = Counter()
    for s in slices:
        for value, count in s["latency"]:
            latency[value] += count
    return {
        "requests": requests,
        "rps": requests / seconds,
        "errors": sum(s["errors"] for s in slices),
        "p50_ms": percentile(latency, 50),
        "p95_ms": percentile(latency, 95),
        "p99_ms": percentile(latency, 99),
        "max_ms": max(latency) / 1000,
    }


def peak_rss_mb(stack: Stack) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for name, process in stack.processes.items():
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks[name] = int(line.split()[1]) / 1024
    return peaks


def count_posts(settings: Settings) -> int:
    """Rows in posts now."""

    async def go() -> int:
        db = Database(settings, "blog")
        try:
            async with db.read() as conn:
                query = sa.select(sa.func.count()).select_from(posts)
                return int((await conn.execute(query)).scalar_one())
        finally:
            await db.dispose()

    return asyncio.run(go())


def run_backend(
    backend: str, duration: int, workdir: Path, *, cache: bool = True, post_count: int = POSTS
) -> dict[str, Any]:
    private, public = generate_key_pair(workdir / "keys")
    env = {
        "JWT_PRIVATE_KEY_FILE": str(private),
        "JWT_PUBLIC_KEY_FILE": str(public),
        "LOG_LEVEL": "WARNING",
        # The seed registers USERS accounts from one client, past the per-client limit.
        "REGISTRATION_MAX_PER_CLIENT": str(USERS),
    }
    if not cache:
        env["BLOG_CACHE_ENTRIES"] = "0"
    database = None
    if backend == "postgresql":
        database = POSTGRES.create_database("titanium_bench")
        env |= POSTGRES.env(database)
    else:
        env["DATA_DIR"] = str(workdir / "sqlite")
    settings = settings_for(env)
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(settings, service))
    stack = Stack(
        env={**os.environ, **env}, ports=stack_ports(), log_dir=workdir / f"logs-{backend}"
    )
    stack.start()
    try:
        token, max_id = asyncio.run(seed(settings, stack.url("gateway"), post_count))
        if database:
            # What autovacuum does a minute after a bulk load: statistics and the
            # visibility map (so the post count is an index-only scan).
            POSTGRES.execute("VACUUM ANALYZE", database)
        gateway, blog = stack.url("gateway"), stack.url("blog")
        post = ("wrk_random_post.lua", {"MAX_ID": str(max_id)})
        groups: list[dict[str, tuple[str, str | None, dict[str, str]]]] = [
            {
                "list via gateway": (f"{gateway}/blog/api/posts?limit=20", None, {}),
                "list direct": (f"{blog}/blog/api/posts?limit=20", None, {}),
            },
            {"post via gateway": (gateway, *post), "post direct": (blog, *post)},
            {"90/10 mix via gateway": (gateway, "wrk_write_mix.lua", {"TOKEN": token})},
            {"writes via gateway": (gateway, "wrk_write.lua", {"TOKEN": token})},
        ]
        results = {}
        for group in groups:
            for url, script, extra in group.values():
                wrk(url, WARM_UP_SECONDS, script, extra)
            slices = SLICES if len(group) > 1 else 1
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in group}
            before = count_posts(settings)
            for _ in range(slices):
                for label, (url, script, extra) in group.items():
                    runs[label].append(wrk(url, max(1, duration // slices), script, extra))
            if "writes via gateway" in group:
                # Every acknowledged (2xx) write is in the table afterwards.
                [writes] = runs["writes via gateway"]
                acknowledged = writes["requests"] - writes["errors"]
                stored = count_posts(settings) - before
                print(f"{backend:<10} writes acknowledged {acknowledged}, stored {stored}")
                if stored < acknowledged:
                    sys.exit(f"bench: {acknowledged - stored} acknowledged posts are missing")
            for label, parts in runs.items():
                r = results[label] = combine(parts)
                print(
                    f"{backend:<10} {label:<24} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.1f}  "
                    f"p95 {r['p95_ms']:6.1f}  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}",
                    flush=True,
                )
        return {"runs": results, "rss_mb": peak_rss_mb(stack)}
    finally:
        stack.stop()
        if database:
            POSTGRES.drop_database(database)


def machine() -> str:
    memory = Path("/proc/meminfo").read_text().split()[1]
    return f"{os.cpu_count()} cores, {int(memory) // 1024 // 1024} GiB RAM, {platform.machine()}"


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    return done.stdout.strip() or "unknown"


def append_report(
    results: dict[str, dict[str, Any]], duration: int, *, cache: str, post_count: int
) -> None:
    lines = [
        f"\n### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — commit {commit()} — {machine()}\n",
        f"`bench/http_bench.py`, wrk -t2 -c64, {duration} s per run after a {WARM_UP_SECONDS} s "
        f"warm-up, gateway/direct pairs interleaved in {SLICES} slices (figures over all "
        f"slices); load generator on the same machine; {USERS} users, {post_count} posts; "
        f"response cache {cache}.\n",
        "| backend | run | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, result in results.items():
        for label, r in result["runs"].items():
            lines.append(
                f"| {backend} | {label} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['errors']} |"
            )
    lines.append("")
    for backend, result in results.items():
        rss = ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(result["rss_mb"].items()))
        lines.append(f"Peak RSS on {backend} (MB): {rss}.  ")
    report = ROOT / "docs" / "benchmarks.md"
    with report.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"appended to {report}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=30, help="seconds per wrk run")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--no-report", action="store_true", help="do not append to docs/benchmarks.md"
    )
    parser.add_argument(
        "--cache", choices=["on", "off"], default="on", help="blog-service's response cache"
    )
    parser.add_argument("--posts", type=int, default=POSTS, help="posts in the data set")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is missing; install it with `apt-get install -y wrk`")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    random.seed(7)
    results = {}
    with tempfile.TemporaryDirectory(prefix="titanium-bench-") as workdir:
        for backend in backends:
            started = time.monotonic()
            results[backend] = run_backend(
                backend,
                args.duration,
                Path(workdir) / backend,
                cache=args.cache == "on",
                post_count=args.posts,
            )
            rss = ", ".join(
                f"{n} {mb:.0f} MB" for n, mb in sorted(results[backend]["rss_mb"].items())
            )
            print(f"{backend:<10} peak RSS: {rss} ({time.monotonic() - started:.0f} s)", flush=True)
    if not args.no_report:
        append_report(results, args.duration, cache=args.cache, post_count=args.posts)


if __name__ == "__main__":
    main()
