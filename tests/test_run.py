"""`titanium run`: one command starts everything, Ctrl-C stops everything."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import free_port
from titanium.runner import port_is_free

CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "JWT_", "USE_"))}


def start_run(cwd: Path, ports: dict[str, int]) -> subprocess.Popen[str]:
    args = [f"--{name}-port={port}" for name, port in ports.items()]
    return subprocess.Popen(
        [sys.executable, "-m", "titanium", "run", *args],
        cwd=cwd,
        env=CLEAN,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_run_starts_all_four_on_sqlite_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gateway", "users", "auth", "blog")}
    process = start_run(tmp_path, ports)
    try:
        lines = []
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if line.startswith("Blog: ") or not line:
                break
        assert f"Blog: http://127.0.0.1:{ports['gateway']}/blog/" in lines[-1], lines
        assert sum("ready" in line for line in lines) == 4
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        assert httpx.get(f"{gateway}/ready").status_code == 200
        assert httpx.get(f"{gateway}/blog/api/categories").json()[0]["slug"] == "tech-stack"
        assert (tmp_path / "var" / "blog.db").exists()
        assert (tmp_path / "var" / "keys" / "jwt-private.pem").stat().st_mode & 0o077 == 0
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert process.returncode == 0
    assert all(port_is_free("127.0.0.1", port) for port in ports.values())


def test_run_fails_clearly_when_a_port_is_taken(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gateway", "users", "auth", "blog")}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["blog"]))
        squatter.listen()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "titanium",
                "run",
                *[f"--{n}-port={p}" for n, p in ports.items()],
            ],
            cwd=tmp_path,
            env=CLEAN,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"titanium: port {ports['blog']} (blog-service) is already in use" in result.stderr
