"""Start the four services as separate processes, wait until ready, stop them cleanly.

Used by `titanium run` and by the tests, so both start the stack the same way.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from titanium.config import ServiceName
from titanium.errors import TitaniumError
from titanium.services.registry import SERVICES, service_name

# Each service's URL reaches the others through its setting's variable.
URL_VARIABLES: dict[ServiceName, str] = {
    s.id: s.url_setting.upper() for s in SERVICES.values() if s.url_setting
}

# Run in the child before the service: ask Linux to send SIGTERM (the graceful
# stop) when the parent dies, SIGKILL and OOM included, then become the service;
# exec keeps the pid, the parent and this setting. A separate interpreter
# (-I -S: stdlib only, ~15 ms) instead of a preexec_fn, because Python code
# between fork and exec can deadlock when the parent has threads (the tests'
# load generators do). argv: the runner's pid, then the service's command.
DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG): " + os.strerror(ctypes.get_errno()))
# The runner may have died before prctl: then no signal would ever come.
if os.getppid() != int(sys.argv[1]):
    sys.exit("the runner exited before the service started")
# As subprocess's restore_signals left them: this interpreter ignored both.
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
os.execv(sys.argv[2], sys.argv[2:])
"""


class StackError(TitaniumError):
    """The stack could not be started."""


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float, service: str | None = None
) -> None:
    """Poll `url` until it answers 200; fail early if the process exits.

    With `service`, the answer must also name that service: a port another
    process already holds would otherwise pass for this one while it fails to bind.
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
                if response.status == 200:
                    answered = json.loads(response.read()).get("service") if service else None
                    if answered != service:
                        raise StackError(f"{url} is answered by {answered}, not by this service")
                    return
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise StackError(f"not ready after {timeout:.0f}s ({last_error})")


def dies_with_parent() -> bool:
    """True when a service started now will get SIGTERM if the starting thread ends."""
    # PR_SET_PDEATHSIG fires when the thread that forked the child ends, not the
    # process. The main thread ends only with the process (`titanium run`, the
    # tests and the benchmarks all start stacks from it); a service started from
    # any other thread would be stopped when that thread returns, so it is not armed.
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


@dataclass
class Stack:
    """The four services on one host, each its own `titanium serve` process."""

    env: Mapping[str, str]
    ports: Mapping[ServiceName, int] = field(
        default_factory=lambda: {s.id: s.port for s in SERVICES.values()}
    )
    host: str = "127.0.0.1"
    log_dir: Path | None = None
    processes: dict[ServiceName, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)
    # The services' shared INTERNAL_TOKEN when `env` has none: made per stack and
    # never written anywhere, since every process of the stack starts and stops with it.
    _throwaway_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def internal_token(self) -> str:
        """The INTERNAL_TOKEN the services of this stack share."""
        return self.env.get("INTERNAL_TOKEN") or self._throwaway_token

    def url(self, service: ServiceName) -> str:
        """Base URL of a service of this stack."""
        return f"http://{self.host}:{self.ports[service]}"

    def child_env(self) -> dict[str, str]:
        """The environment every service process gets."""
        env = {**self.env, "INTERNAL_TOKEN": self.internal_token}
        for service, variable in URL_VARIABLES.items():
            env[variable] = self.url(service)
        return env

    def start(self, timeout: float = 30.0) -> None:
        """Start every service and wait until each answers /ready."""
        if len(set(self.ports.values())) < len(self.ports):
            raise StackError(f"two services were given the same port: {dict(self.ports)}")
        for service in SERVICES:
            if not port_is_free(self.host, self.ports[service]):
                raise StackError(
                    f"port {self.ports[service]} ({service_name(service)}) is already in use"
                )
        try:
            for service in SERVICES:
                self.start_one(service)
                try:
                    wait_until_ready(
                        f"{self.url(service)}/ready",
                        self.processes[service],
                        timeout,
                        service_name(service),
                    )
                except StackError as exc:
                    raise StackError(f"{service_name(service)}: {exc.message}") from None
        except BaseException:
            self.stop()
            raise

    def start_one(self, service: ServiceName) -> None:
        """Start (or restart) one service process without waiting for it."""
        command = [
            sys.executable, "-m", "titanium", "serve", service,
            "--host", self.host, "--port", str(self.ports[service]),
        ]  # fmt: skip
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{service}.log").open("ab")
            self._logs.append(output)
        if dies_with_parent():
            command = [
                sys.executable,
                "-I",
                "-S",
                "-c",
                DIE_WITH_PARENT,
                str(os.getpid()),
                *command,
            ]
        # A session of its own: Ctrl-C reaches the runner, which stops the
        # services in order instead of all of them racing to exit.
        self.processes[service] = subprocess.Popen(
            command,
            env=self.child_env(),
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
        )

    def stop_one(self, service: ServiceName, timeout: float = 10.0) -> int | None:
        """SIGTERM one service (graceful: in-flight requests finish), SIGKILL after timeout."""
        process = self.processes.pop(service, None)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every service, the gateway first."""
        for service in reversed(SERVICES):
            self.stop_one(service, timeout)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def exited(self) -> list[ServiceName]:
        """Services whose process has ended."""
        return [name for name, process in self.processes.items() if process.poll() is not None]
