"""Clients that send slowly or too much cannot take the gateway or a service down.

Each test talks raw HTTP/1.1 over sockets, because an HTTP client library would
not stall mid-body or trickle a request line. Every wait is bounded; the stack
runs with short client timeouts so the tests take seconds.
"""

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.stack import start_stack
from titanium.runner import Stack
from titanium.security.tokens import generate_key_pair

pytestmark = pytest.mark.stack

BODY_TIMEOUT = 2.0
HEADER_TIMEOUT = 2.0
HEADER_LIMIT = 16 * 1024
PASSWORD = "correct horse"
# More than the 100 connections of the gateway's pool to blog-service.
STALLED = 110


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services on SQLite with short client timeouts, and one registered user."""
    root = tmp_path_factory.mktemp("slow-clients")
    private, public = generate_key_pair(root / "keys")
    env = {
        "USE_POSTGRES": "false",
        "DATA_DIR": str(root),
        "JWT_PRIVATE_KEY_FILE": str(private),
        "JWT_PUBLIC_KEY_FILE": str(public),
        "CLIENT_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "CLIENT_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "MAX_HEADER_BYTES": str(HEADER_LIMIT),
    }
    running = start_stack(env, root / "logs")
    try:
        with httpx.Client(base_url=running.url("gateway"), timeout=10) as client:
            user = {"username": "slowpoke", "email": "slow@example.com", "password": PASSWORD}
            assert client.post("/api/register", json=user).status_code == 201
        yield running
    finally:
        running.stop()


def _address(stack: Stack, service: str = "gateway") -> tuple[str, int]:
    return stack.host, stack.ports[service]  # type: ignore[index]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _answer(sock: socket.socket, deadline: float) -> bytes:
    """What the server sends until it closes, or until `deadline` (then b"<open>")."""
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return received + b"<open>"


async def _stall(host: str, port: int, deadline: float) -> bytes:
    """Declare a 200 KB body, send 9 bytes of it, then wait for the server's reaction."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /blog/api/posts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200000\r\n\r\n" + b'{"title":'
        )
        await writer.drain()
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                return await reader.read()
        except TimeoutError:
            return b"<open>"
        except ConnectionResetError:
            return b""
    finally:
        writer.close()


def test_stalled_uploads_do_not_starve_other_requests(stack: Stack) -> None:
    host, port = _address(stack)
    url = stack.url("gateway")

    async def scenario() -> tuple[list[bytes], list[int], float]:
        deadline = time.monotonic() + BODY_TIMEOUT + 5
        stalled = [asyncio.create_task(_stall(host, port, deadline)) for _ in range(STALLED)]
        await asyncio.sleep(0.5)  # every stalled client has sent its head by now
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            for _ in range(3):
                statuses.append((await client.get("/blog/api/posts?limit=1")).status_code)
                login = {"username": "slowpoke", "password": PASSWORD}
                statuses.append((await client.post("/api/login", json=login)).status_code)
        started = time.monotonic()
        answers = await asyncio.gather(*stalled)
        return answers, statuses, time.monotonic() - started

    answers, statuses, _waited = asyncio.run(scenario())
    assert statuses == [200] * 6
    # Each stalled client is answered 408 or dropped once the body timeout is over.
    still_open = [answer for answer in answers if answer.endswith(b"<open>")]
    assert not still_open, f"{len(still_open)} stalled uploads still open"
    assert all(answer == b"" or answer.startswith(b"HTTP/1.1 408") for answer in answers)


@pytest.mark.parametrize("service", ["gateway", "blog"])
def test_oversized_headers_are_refused(stack: Stack, service: str) -> None:
    host, port = _address(stack, service)
    pid = stack.processes[service].pid  # type: ignore[index]
    before = _rss_kib(pid)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        # 20 MB, sent until the server stops reading or closes.
        sent = 0
        try:
            for _ in range(20 * 16):
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        answer = _answer(sock, time.monotonic() + 5)
    assert answer == b"" or answer.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), answer[:80]
    grown = _rss_kib(pid) - before
    assert grown < 10 * 1024, f"{service} RSS grew by {grown} KiB"
    # And the process still serves.
    assert httpx.get(f"{stack.url(service)}/health", timeout=5).status_code == 200  # type: ignore[arg-type]


def test_too_many_headers_are_refused(stack: Stack) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % n for n in range(200))
    with socket.create_connection(_address(stack), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        answer = _answer(sock, time.monotonic() + 5)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]


@pytest.mark.parametrize("service", ["gateway", "auth"])
def test_trickled_headers_are_cut_off(stack: Stack, service: str) -> None:
    with socket.create_connection(_address(stack, service), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        closed = False
        try:
            # One header byte every 0.2 s would last far beyond the header timeout.
            while time.monotonic() - started < HEADER_TIMEOUT + 4:
                sock.sendall(b"X")
                sock.settimeout(0.2)
                try:
                    if sock.recv(65536) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        elapsed = time.monotonic() - started
    assert closed, "still open after trickling headers"
    assert elapsed < HEADER_TIMEOUT + 2


def test_silent_connections_are_cut_off(stack: Stack) -> None:
    with socket.create_connection(_address(stack), timeout=5) as sock:
        answer = _answer(sock, time.monotonic() + HEADER_TIMEOUT + 2)
    assert not answer.endswith(b"<open>"), "an idle new connection stays open"


def test_a_normal_post_with_a_large_body_still_works(stack: Stack) -> None:
    # A body over 64 KiB used to be streamed; read whole first, it must still arrive.
    with httpx.Client(base_url=stack.url("gateway"), timeout=10) as client:
        login = client.post("/api/login", json={"username": "slowpoke", "password": PASSWORD})
        token = login.json()["token"]
        post = {"title": "Large", "content": "x" * 100_000, "category_id": 1}
        created = client.post(
            "/blog/api/posts", json=post, headers={"Authorization": f"Bearer {token}"}
        )
    assert created.status_code == 201, created.text
