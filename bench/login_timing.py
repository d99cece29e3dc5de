"""Login time of a known username against an unknown one (a measurement, not a test).

A failed login must take as long for a name that does not exist as for a wrong
password, or its timing tells which usernames exist. What makes that hold is tested
without a clock (tests/test_security.py: both answers verify one argon2id hash with
the same parameters); this prints the figure itself. Starts the four services on
SQLite, registers one user, then alternates failed logins for that user and for
names that do not exist, through the gateway, and prints the median of each.

    .venv/bin/python bench/login_timing.py               # 30 rounds
    .venv/bin/python bench/login_timing.py --rounds 100 --max-seconds 60
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # support/: free ports for the stack

from support.ports import stack_ports  # noqa: E402
from titanium.runner import Stack  # noqa: E402
from titanium.security.tokens import generate_key_pair  # noqa: E402

WARM_UP = 3  # rounds not counted: the first argon2 runs also allocate its memory


def failed_login_seconds(client: httpx.Client, username: str) -> float:
    started = time.perf_counter()
    answer = client.post("/api/login", json={"username": username, "password": "wrong-pw"})
    seconds = time.perf_counter() - started
    if answer.status_code != 401:
        raise SystemExit(f"login of {username!r} answered {answer.status_code}: {answer.text}")
    return seconds


def measure(gateway: str, rounds: int, max_seconds: float) -> None:
    """Alternate known and unknown usernames, so drift of the machine hits both alike."""
    known: list[float] = []
    unknown: list[float] = []
    with httpx.Client(base_url=gateway, timeout=30) as client:
        username = f"timing_{uuid.uuid4().hex[:8]}"
        client.post(
            "/api/register",
            json={
                "username": username,
                "email": f"{username}@example.com",
                "password": "bench-pw-1",
            },
        ).raise_for_status()
        deadline = time.monotonic() + max_seconds
        for number in range(WARM_UP + rounds):
            if time.monotonic() > deadline:
                print(f"stopped after {max_seconds:.0f} s (--max-seconds)")
                break
            pair = (
                failed_login_seconds(client, username),
                failed_login_seconds(client, f"ghost_{uuid.uuid4().hex[:8]}"),
            )
            if number >= WARM_UP:
                known.append(pair[0])
                unknown.append(pair[1])
    if not known:
        raise SystemExit("no round measured")

    def summary(times: list[float]) -> str:
        deciles = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
        return (
            f"median {statistics.median(times) * 1000:.1f} ms "
            f"(p10 {deciles[0] * 1000:.1f}, p90 {deciles[-1] * 1000:.1f})"
        )

    ratio = statistics.median(unknown) / statistics.median(known)
    print(f"failed logins through the gateway, {len(known)} of each:")
    print(f"  known user, wrong password: {summary(known)}")
    print(f"  unknown user:               {summary(unknown)}")
    print(f"  unknown / known medians:    {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, choices=range(1, 1001), metavar="1-1000")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="titanium-login-timing-") as workdir:
        private, public = generate_key_pair(Path(workdir) / "keys")
        env = {
            **os.environ,
            "DATA_DIR": str(Path(workdir) / "data"),
            "JWT_PRIVATE_KEY_FILE": str(private),
            "JWT_PUBLIC_KEY_FILE": str(public),
            "LOG_LEVEL": "WARNING",
            # Every attempt here fails on purpose; throttling would turn them into 429s.
            "LOGIN_MAX_FAILURES_PER_USER": "100000",
            "LOGIN_MAX_FAILURES_PER_CLIENT": "100000",
            "LOGIN_MAX_FAILURES_PER_USER_ALL_CLIENTS": "100000",
        }
        subprocess.run([sys.executable, "-m", "titanium", "db", "upgrade"], env=env, check=True)
        stack = Stack(env=env, ports=stack_ports())
        stack.start()
        try:
            measure(stack.url("gateway"), args.rounds, args.max_seconds)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
