"""Start the four services as separate processes, wait until ready, stop them cleanly.

Used by `titanium run` and by the tests, so both start the stack the same way.
"""

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from titanium.config import ServiceName
from titanium.errors import TitaniumError
from titanium.services.registry import DISPLAY_NAMES, PORTS

# Data services first, the gateway last: when it answers, everything behind it does.
START_ORDER: tuple[ServiceName, ...] = ("users", "auth", "blog", "gateway")
URL_VARIABLES: dict[ServiceName, str] = {
    "users": "USER_SERVICE_URL",
    "auth": "AUTH_SERVICE_URL",
    "blog": "BLOG_SERVICE_URL",
}


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


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll `url` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise StackError(f"not ready after {timeout:.0f}s ({last_error})")


@dataclass
class Stack:
    """The four services on one host, each its own `titanium serve` process."""

    env: Mapping[str, str]
    ports: Mapping[ServiceName, int] = field(default_factory=lambda: dict(PORTS))
    host: str = "127.0.0.1"
    log_dir: Path | None = None
    processes: dict[ServiceName, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def url(self, service: ServiceName) -> str:
        """Base URL of a service of this stack."""
        return f"http://{self.host}:{self.ports[service]}"

    def child_env(self) -> dict[str, str]:
        """The environment every service process gets."""
        env = dict(self.env)
        for service, variable in URL_VARIABLES.items():
            env[variable] = self.url(service)
        return env

    def start(self, timeout: float = 30.0) -> None:
        """Start every service and wait until each answers /ready."""
        for service in START_ORDER:
            if not port_is_free(self.host, self.ports[service]):
                raise StackError(
                    f"port {self.ports[service]} ({DISPLAY_NAMES[service]}) is already in use"
                )
        try:
            for service in START_ORDER:
                self.start_one(service)
                try:
                    wait_until_ready(f"{self.url(service)}/ready", self.processes[service], timeout)
                except StackError as exc:
                    raise StackError(f"{DISPLAY_NAMES[service]}: {exc.message}") from None
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
        for service in reversed(START_ORDER):
            self.stop_one(service, timeout)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def exited(self) -> list[ServiceName]:
        """Services whose process has ended."""
        return [name for name, process in self.processes.items() if process.poll() is not None]
