"""Migration benchmark: Titanium vs pgloader vs `psql \\copy`, same data, same schema.

Generates 200,000 users and 1,000,000 posts (~1 KB of mixed ASCII and Korean
content each) in SQLite files made by the services' own schema migrations,
cached under var/bench/ (the first run takes a minute or two). Then, each into
its own throwaway database at the schema's head:

- Titanium: `titanium migrate sqlite-to-postgres` (preflight, COPY, index
  rebuild, sequences and checksum verification all included);
- pgloader (Debian's package; `apt-get install -y pgloader`) loading both files
  `WITH data only, truncate, drop indexes, reset sequences`;
- `psql \\copy` from CSV files exported beforehand (export not timed), into the
  tables with their indexes in place: the practical ceiling of a plain load.

Each tool runs as a child process; its wall time and peak RSS (wait4's
ru_maxrss) are measured. Prints rows/s for each and the ratios.

    .venv/bin/python bench/migrate.py
    .venv/bin/python bench/migrate.py --users 20000 --posts 100000   # quick look
"""

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # support/: the PostgreSQL server and settings helpers

from support.env import settings_for  # noqa: E402
from support.postgres import SharedServer  # noqa: E402
from titanium.config import Settings  # noqa: E402
from titanium.db.migrations import upgrade_schema  # noqa: E402
from titanium.services.registry import DATA_SERVICES  # noqa: E402

POSTGRES = SharedServer(
    os.environ.get("TITANIUM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
CACHE = ROOT / "var" / "bench"
# Every child gets at most this long; a stuck tool must not hang the benchmark.
TOOL_TIMEOUT = 1800.0
HASH = "$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hzYWx0YmVuY2g$" + "Q" * 43
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "the",
         "database", "migrates"]  # fmt: skip
KOREAN = "데이터베이스 마이그레이션 한국어 문장 클라우드 쿠버네티스 서비스 블로그 게시물"


def _settings(database: str) -> Settings:
    return settings_for(POSTGRES.env(database))


def _paragraphs(rng: random.Random, count: int) -> list[str]:
    # A pool of ~1 KB texts (counted in UTF-8 bytes), half English, half Korean.
    pool = []
    for _ in range(count):
        parts, size = [], 0
        while size < 1000:
            if rng.random() < 0.5:
                part = " ".join(rng.choice(WORDS) for _ in range(10)) + ". "
            else:
                part = "".join(rng.choice(KOREAN) for _ in range(18)) + ". "
            parts.append(part)
            size += len(part.encode())
        pool.append("".join(parts))
    return pool


def generate(users: int, posts: int) -> tuple[Path, Path]:
    """The source files, generated once per size and cached."""
    directory = CACHE / f"sqlite-{users}-{posts}"
    done = directory / "complete"
    if done.exists():
        return directory / "users.db", directory / "blog.db"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    settings = Settings(use_postgres=False, data_dir=directory)
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(settings, service))
    rng = random.Random(20251027)
    pool = _paragraphs(rng, 400)
    start = datetime(2024, 1, 1)
    print(f"generating {users:,} users and {posts:,} posts in {directory} ...", flush=True)
    with sqlite3.connect(directory / "users.db") as conn:
        conn.execute("PRAGMA synchronous=OFF")
        conn.executemany(
            "INSERT INTO users (id, username, email, password_hash, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                (n, f"user{n:07d}", f"user{n}@example.com", HASH,
                 str(start + timedelta(seconds=n * 37, microseconds=n % 999_983)))
                for n in range(1, users + 1)
            ),
        )  # fmt: skip
    conn.close()
    with sqlite3.connect(directory / "blog.db") as conn:
        conn.execute("PRAGMA synchronous=OFF")
        conn.executemany(
            "INSERT INTO posts (id, title, content, author, created_at, updated_at, category_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (n, f"글 {n}: {WORDS[n % len(WORDS)]} 제목", f"#{n}\n{pool[n % len(pool)]}",
                 f"user{1 + n % users:07d}",
                 str(start + timedelta(seconds=n * 7, microseconds=(n * 13) % 1_000_000)),
                 str(start + timedelta(seconds=n * 7 + 60)), 1 + n % 3)
                for n in range(1, posts + 1)
            ),
        )  # fmt: skip
    conn.close()
    done.write_text("ok\n")
    return directory / "users.db", directory / "blog.db"


def export_csv(users_db: Path, blog_db: Path) -> dict[str, Path]:
    """CSV copies of the three tables for psql (cached; not part of any timing)."""
    directory = users_db.parent
    files = {t: directory / f"{t}.csv" for t in ("users", "categories", "posts")}
    if (directory / "csv-complete").exists():
        return files
    for table, path in files.items():
        source = users_db if table == "users" else blog_db
        with sqlite3.connect(source) as conn, path.open("w", newline="", encoding="utf-8") as out:
            cursor = conn.execute(f"SELECT * FROM {table} ORDER BY id")
            writer = csv.writer(out)
            writer.writerow([column[0] for column in cursor.description])
            while rows := cursor.fetchmany(5000):
                writer.writerows(rows)
        conn.close()
    (directory / "csv-complete").write_text("ok\n")
    return files


def fresh_database(label: str) -> str:
    """A new database at the schema's head (the same for every tool)."""
    name = POSTGRES.create_database(f"titanium_bench_{label}")
    for service in DATA_SERVICES:
        asyncio.run(upgrade_schema(_settings(name), service))
    return name


def _high_water_kb(pid: int) -> int:
    # VmHWM: the process's own peak resident set since its exec. wait4's
    # ru_maxrss would also count the pages this (large) benchmark process had
    # when it forked the child.
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a tool; return wall seconds, peak RSS (sampled every 20 ms) and exit code."""
    started = time.monotonic()
    peak_kb = 0
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        deadline = started + TOOL_TIMEOUT
        while process.poll() is None:
            peak_kb = max(peak_kb, _high_water_kb(process.pid))
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                break
            time.sleep(0.02)
    return {
        "seconds": time.monotonic() - started,
        "peak_rss_mb": peak_kb / 1024,
        "exit_code": process.returncode,
    }


def counts(database: str) -> dict[str, int]:
    """Rows per table after a load."""

    async def go() -> dict[str, int]:
        conn = await POSTGRES.connect(database)
        try:
            return {
                t: int(await conn.fetchval(f"SELECT count(*) FROM {t}"))
                for t in ("users", "categories", "posts")
            }
        finally:
            await conn.close()

    return asyncio.run(go())


def bench_titanium(users_db: Path, blog_db: Path, logs: Path) -> dict[str, Any]:
    database = fresh_database("titanium")
    report = logs / "titanium-report.json"
    settings = _settings(database)
    env = {
        "POSTGRES_HOST": settings.postgres_host,
        "POSTGRES_PORT": str(settings.postgres_port),
        "POSTGRES_DB": database,
        "POSTGRES_USER": settings.postgres_user or "postgres",
        "POSTGRES_PASSWORD": settings.postgres_password.get_secret_value()
        if settings.postgres_password
        else "",
    }
    command = [
        sys.executable, "-m", "titanium", "migrate", "sqlite-to-postgres",
        "--users-db", str(users_db), "--blog-db", str(blog_db), "--report", str(report),
    ]  # fmt: skip
    result = run_child(command, logs / "titanium.log", env)
    result["database"] = database
    if report.exists():
        detail = json.loads(report.read_text())
        result["phases"] = detail["phases_seconds"]
        result["verified"] = all(t["checksum_match"] for t in detail["tables"])
    return result


def bench_pgloader(users_db: Path, blog_db: Path, logs: Path, options: str = "") -> dict[str, Any]:
    pgloader = shutil.which("pgloader")
    if pgloader is None:
        return {"skipped": "pgloader is not installed (apt-get install -y pgloader)"}
    database = fresh_database("pgloader")
    settings = _settings(database)
    secret = settings.postgres_password.get_secret_value() if settings.postgres_password else ""
    target = (
        f"postgresql://{settings.postgres_user}:{secret}@"
        f"{settings.postgres_host}:{settings.postgres_port}/{database}"
    )
    total: dict[str, Any] = {"seconds": 0.0, "peak_rss_mb": 0.0, "exit_code": 0}
    for source, tables in ((users_db, "'users'"), (blog_db, "'categories', 'posts'")):
        label = "tuned" if options else "defaults"
        script = logs / f"pgloader-{label}-{source.stem}.load"
        script.write_text(
            f"LOAD DATABASE\n  FROM sqlite://{source}\n  INTO {target}\n"
            f"  WITH data only, truncate, drop indexes, reset sequences{options}\n"
            f"  INCLUDING ONLY TABLE NAMES LIKE {tables};\n"
        )
        run = run_child([pgloader, str(script)], logs / f"pgloader-{label}-{source.stem}.log")
        total["seconds"] += run["seconds"]
        total["peak_rss_mb"] = max(total["peak_rss_mb"], run["peak_rss_mb"])
        total["exit_code"] = total["exit_code"] or run["exit_code"]
    total["database"] = database
    return total


def bench_psql(users_db: Path, blog_db: Path, logs: Path) -> dict[str, Any]:
    psql = shutil.which("psql")
    if psql is None:
        return {"skipped": "psql is not installed"}
    files = export_csv(users_db, blog_db)
    database = fresh_database("psql")
    settings = _settings(database)
    # The schema migration seeds three categories; the CSV brings them again.
    POSTGRES.execute("TRUNCATE categories CASCADE", database)
    commands = []
    for table, path in files.items():
        commands += ["-c", f"\\copy {table} FROM '{path}' WITH (FORMAT csv, HEADER true)"]
    env = (
        {"PGPASSWORD": settings.postgres_password.get_secret_value()}
        if settings.postgres_password
        else {}
    )
    command = [
        psql, "-v", "ON_ERROR_STOP=1", "-h", settings.postgres_host,
        "-p", str(settings.postgres_port), "-U", settings.postgres_user or "postgres",
        "-d", database, *commands,
    ]  # fmt: skip
    result = run_child(command, logs / "psql.log", env)
    result["database"] = database
    return result


def main() -> None:
    """Run the three loads and print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="Keep the target databases.")
    args = parser.parse_args()
    users_db, blog_db = generate(args.users, args.posts)
    logs = CACHE / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    logs.mkdir(parents=True)
    export_csv(users_db, blog_db)
    expected = {"users": args.users, "categories": 3, "posts": args.posts}
    rows = args.users + args.posts
    results: dict[str, dict[str, Any]] = {}
    for name, bench in (
        ("titanium", bench_titanium),
        # With its defaults pgloader's SBCL heap (1 GB) runs out on these posts
        # and it dies; fewer prefetched rows let it finish.
        ("pgloader", bench_pgloader),
        ("pgloader*", partial(bench_pgloader, options=", prefetch rows = 10000")),
        ("psql \\copy", bench_psql),
    ):
        print(f"running {name} ...", flush=True)
        results[name] = bench(users_db, blog_db, logs)
        database = results[name].get("database")
        if database:
            results[name]["rows_ok"] = counts(database) == expected
            if not args.keep:
                POSTGRES.drop_database(database)
    base = results["titanium"].get("seconds")
    load = os.getloadavg()[0]
    print(f"\n{rows:,} rows ({args.users:,} users + {args.posts:,} posts), "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}")  # fmt: skip
    print(f"{'tool':<12}{'seconds':>9}{'rows/s':>11}{'peak RSS':>11}{'exit':>6}{'rows ok':>9}"
          f"{'time vs Titanium':>18}")  # fmt: skip
    for name, result in results.items():
        if "skipped" in result:
            print(f"{name:<12} skipped: {result['skipped']}")
            continue
        ratio = result["seconds"] / base if base else float("nan")
        print(
            f"{name:<12}{result['seconds']:>9.1f}{rows / result['seconds']:>11,.0f}"
            f"{result['peak_rss_mb']:>8.0f} MB{result['exit_code']:>6}"
            f"{'yes' if result.get('rows_ok') else 'NO':>9}{ratio:>17.2f}x"
        )
    if "phases" in results["titanium"]:
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in results["titanium"]["phases"].items())
        print(f"titanium phases: {phases}; verified: {results['titanium'].get('verified')}")
    print("pgloader* = WITH prefetch rows = 10000 (the default, 100000, exhausts its heap)")
    (logs / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"logs and results.json in {logs}")


if __name__ == "__main__":
    main()
