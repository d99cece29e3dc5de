"""`titanium run`: one command starts everything, Ctrl-C stops everything.

And nothing outlives it: the services die with the runner however it ends.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest

from support.env import CLEAN
from support.ports import stack_ports
from support.wait import wait_until
from titanium.config import ServiceName
from titanium.runner import dies_with_parent, port_is_free

pytestmark = pytest.mark.stack  # `titanium run` starts the four services


def start_run(cwd: Path, ports: Mapping[ServiceName, int]) -> subprocess.Popen[str]:
    args = [f"--{name}-port={port}" for name, port in ports.items()]
    return subprocess.Popen(
        [sys.executable, "-m", "titanium", "run", *args],
        cwd=cwd,
        env=CLEAN,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def read_until_ready(process: subprocess.Popen[str]) -> list[str]:
    """The runner's output up to its "Blog: URL" line (or its end)."""
    lines = []
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if line.startswith("Blog: ") or not line:
            break
    return lines


def test_run_starts_all_four_on_sqlite_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    ports = stack_ports()
    process = start_run(tmp_path, ports)
    try:
        lines = read_until_ready(process)
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
    ports = stack_ports()
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


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from the state field on (field 3), None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses; it ends at the last ")".
    return text.rsplit(")", 1)[1].split()


def children_of(parent: int) -> dict[int, str]:
    """pid -> start time of each process whose parent is `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[1] == str(parent):
            found[int(entry.name)] = stat[19]
    return found


def running(pid: int, started: str) -> bool:
    """True while that process (not a later one with its pid) exists and is no zombie."""
    stat = _stat(pid)
    return stat is not None and stat[19] == started and stat[0] not in ("Z", "X")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_services_die_with_a_killed_runner(tmp_path: Path) -> None:
    ports = stack_ports()
    process = start_run(tmp_path, ports)
    services: dict[int, str] = {}
    try:
        assert read_until_ready(process)[-1].startswith("Blog: ")
        services = children_of(process.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in services]
        assert sorted(c[c.index(b"serve") + 1] for c in commands) == [
            b"auth",
            b"blog",
            b"gateway",
            b"users",
        ]
        # SIGKILL: no handler runs, so only the kernel can stop the services.
        process.kill()
        process.wait(timeout=10)
        wait_until(
            lambda: (
                not any(running(pid, started) for pid, started in services.items())
                and all(port_is_free("127.0.0.1", port) for port in ports.values())
            ),
            15,
            "the services gone and their ports free",
            interval=0.2,
        )
        assert not [pid for pid, started in services.items() if running(pid, started)]
        assert all(port_is_free("127.0.0.1", port) for port in ports.values())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid, started in services.items():
            if running(pid, started):
                os.kill(pid, signal.SIGKILL)
        if process.stdout is not None:
            process.stdout.close()


def test_services_started_off_the_main_thread_are_not_tied_to_that_thread() -> None:
    # PR_SET_PDEATHSIG follows the forking thread: armed there, a service would be
    # stopped as soon as a short-lived starter thread returned.
    answers: list[bool] = []
    starter = threading.Thread(target=lambda: answers.append(dies_with_parent()))
    starter.start()
    starter.join(timeout=10)
    assert answers == [False]
    assert dies_with_parent() is (sys.platform == "linux")
