"""The runner starts a stack only on ports that belong to it.

A CI run once had two services handed the same port: one bound it, the other
exited, and the first one's /ready passed for both, so logins went to blog-service.
"""

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support.ports import EPHEMERAL_RANGE, free_ports, stack_ports
from titanium.runner import Stack, StackError, wait_until_ready


class AnswersAsBlog(BaseHTTPRequestHandler):
    """Any GET is a 200 /ready of blog-service."""

    def do_GET(self) -> None:
        body = json.dumps({"status": "ready", "service": "blog-service"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def blog_impostor() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), AnswersAsBlog)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ready"
    server.shutdown()
    server.server_close()


@pytest.fixture
def idle_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_free_ports_are_distinct_and_out_of_the_way_of_outgoing_connections() -> None:
    ports = free_ports(200)
    assert len(set(ports)) == 200
    assert len(set(stack_ports().values())) == 4
    if EPHEMERAL_RANGE.exists():
        first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
        assert max(ports) < first_ephemeral


def test_a_stack_refuses_two_services_on_one_port() -> None:
    port = free_ports(1)[0]
    stack = Stack(env={}, ports={"gateway": port, "users": port + 1, "auth": port, "blog": 0})
    with pytest.raises(StackError, match="same port"):
        stack.start()
    assert stack.processes == {}


def test_ready_must_come_from_the_service_started(
    blog_impostor: str, idle_process: subprocess.Popen[bytes]
) -> None:
    with pytest.raises(StackError, match="answered by blog-service, not by this service"):
        wait_until_ready(blog_impostor, idle_process, 5, "auth-service")
    wait_until_ready(blog_impostor, idle_process, 5, "blog-service")
    wait_until_ready(blog_impostor, idle_process, 5)  # a bare /health wait names no service
