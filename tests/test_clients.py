"""What the old system's clients need from the gateway: error texts under `detail`, and CORS.

The old web UI (FastAPI services) reads an error's text from `detail`; Titanium's
bodies say `message`, so every error body carries both. Pages served from another
origin may call the API only when `CORS_ALLOW_ORIGINS` names that origin.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt
import pytest

from support.api import register
from support.ports import free_port
from support.stack import RunningStack
from titanium.config import ServiceName, load_settings
from titanium.errors import ConfigError
from titanium.runner import Stack, wait_until_ready

ALLOWED = "http://old-ui.example:8080"
ELSEWHERE = "https://elsewhere.example"
SQLITE_ONLY = pytest.mark.parametrize("live", ["sqlite"], indirect=True)


def detail_of(response: httpx.Response, status: int) -> str:
    """Assert an error answer in Titanium's shape; return the text old clients show."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "failed"
    assert isinstance(body["detail"], str)
    assert body["detail"] == body["message"]
    return str(body["detail"])


def test_a_taken_username_says_so_under_detail(live: RunningStack) -> None:
    user = register(live.client)
    again = live.client.post(
        "/api/register",
        json={"username": user["username"], "email": "x@example.com", "password": "pw-123456"},
    )
    assert detail_of(again, 409) == "username already taken"


def test_a_too_long_title_says_so_under_detail_as_text(live: RunningStack) -> None:
    user = register(live.client)
    response = live.client.post(
        "/blog/api/posts", json={"title": "t" * 201, "content": "c"}, headers=user["headers"]
    )
    detail = detail_of(response, 422)
    assert detail.startswith("title: ") and "200" in detail
    assert [error["field"] for error in response.json()["errors"]] == ["title"]


def test_an_expired_token_on_a_write_says_so_under_detail(live: RunningStack) -> None:
    user = register(live.client)
    key = live.private_key()
    claims = jwt.decode(user["token"], options={"verify_signature": False})
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, key, algorithm="EdDSA")
    response = live.client.post(
        "/blog/api/posts",
        json={"title": "t", "content": "c"},
        headers={"Authorization": f"Bearer {expired}"},
    )
    assert detail_of(response, 401) == "token expired"


def test_a_throttled_login_says_so_under_detail(live: RunningStack) -> None:
    user = register(live.client)
    for _ in range(live.settings.login_max_failures_per_user):
        wrong = {"username": user["username"], "password": "wrong-pw"}
        assert live.client.post("/api/login", json=wrong).status_code == 401
    right = {"username": user["username"], "password": user["password"]}
    blocked = live.client.post("/api/login", json=right)
    assert detail_of(blocked, 429)
    assert int(blocked.headers["retry-after"]) >= 1


@SQLITE_ONLY
def test_the_gateways_own_errors_carry_detail(live: RunningStack) -> None:
    assert detail_of(live.client.get("/no/such/path"), 404)
    assert detail_of(live.client.post("/openapi.json"), 405)
    too_big = b"x" * (live.settings.max_body_bytes + 1)
    declared = live.client.post("/api/login", content=too_big)
    assert detail_of(declared, 413) == "request body too large"
    chunked = live.client.post("/api/login", content=iter([too_big]))
    assert detail_of(chunked, 413) == "request body too large"
    nul = live.client.get("/blog/api/posts", params={"author": "a\x00b"})
    assert detail_of(nul, 422) == "NUL characters are not allowed in URLs"


class Peer:
    """A TCP listener standing in for a broken downstream: it hangs up, or never answers."""

    def __init__(self, hang_up: bool) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.socket.settimeout(0.1)
        self.port: int = self.socket.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._hang_up, daemon=True) if hang_up else None

    def _hang_up(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            connection.close()

    def __enter__(self) -> "Peer":
        if self.thread is not None:
            self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(5)
        self.socket.close()


@contextmanager
def lone_gateway(
    downstreams: dict[ServiceName, int], log_dir: Path, **env: str
) -> Iterator[httpx.Client]:
    """A gateway process of its own, in front of the given downstream ports."""
    stack = Stack(
        env={**os.environ, **env}, ports={**downstreams, "gateway": free_port()}, log_dir=log_dir
    )
    stack.start_one("gateway")
    try:
        # /health, not /ready: a gateway in front of broken downstreams is never ready.
        wait_until_ready(f"{stack.url('gateway')}/health", stack.processes["gateway"], 30)
        with httpx.Client(base_url=stack.url("gateway"), timeout=10) as client:
            yield client
    finally:
        stack.stop()


def test_downstream_failures_at_the_gateway_carry_detail(tmp_path: Path) -> None:
    with Peer(hang_up=True) as hangs_up, Peer(hang_up=False) as silent:
        downstreams: dict[ServiceName, int] = {
            "users": free_port(),
            "auth": hangs_up.port,
            "blog": silent.port,
        }
        with lone_gateway(downstreams, tmp_path, UPSTREAM_TIMEOUT_SECONDS="1") as gateway:
            account = {"username": "someone", "email": "s@example.com", "password": "pw-123456"}
            unreachable = gateway.post("/api/register", json=account)
            assert detail_of(unreachable, 503) == "user-service is unavailable"
            broken = gateway.post("/api/login", json={"username": "a", "password": "b"})
            assert detail_of(broken, 502) == "auth-service failed to answer"
            slow = gateway.get("/blog/api/posts")
            assert detail_of(slow, 504) == "blog-service did not answer in time"


@pytest.fixture
def cors_gateway(live: RunningStack, tmp_path: Path) -> Iterator[httpx.Client]:
    """A second gateway in front of the live services, allowing two origins."""
    ports = live.stack.ports
    downstreams: dict[ServiceName, int] = {s: ports[s] for s in ("users", "auth", "blog")}
    origins = f"{ALLOWED}, https://another-ui.example"
    with lone_gateway(downstreams, tmp_path, CORS_ALLOW_ORIGINS=origins) as client:
        yield client


def preflight(client: httpx.Client, path: str, origin: str, method: str) -> httpx.Response:
    """What a browser asks before a cross-origin call with a token and a JSON body."""
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def _listed(response: httpx.Response, header: str) -> set[str]:
    return {item.strip().lower() for item in response.headers.get(header, "").split(",")}


# Public routes (answered by Forward), the gateway's own route, and an unknown path.
PREFLIGHTS = [
    ("/blog/api/posts", "POST"),
    ("/blog/api/posts/1", "PATCH"),
    ("/blog/api/posts/1", "DELETE"),
    ("/api/login", "POST"),
    ("/api/users/me", "GET"),
    ("/openapi.json", "GET"),
    ("/no/such/path", "GET"),
]


@SQLITE_ONLY
def test_cors_preflight_from_an_allowed_origin_is_answered_on_every_route(
    cors_gateway: httpx.Client,
) -> None:
    for path, method in PREFLIGHTS:
        answer = preflight(cors_gateway, path, ALLOWED, method)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert method.lower() in _listed(answer, "access-control-allow-methods")
        assert {"authorization", "content-type"} <= _listed(answer, "access-control-allow-headers")
        assert "access-control-allow-credentials" not in answer.headers
    assert "put" not in _listed(answer, "access-control-allow-methods")


@SQLITE_ONLY
def test_cors_answers_to_an_allowed_origin_are_readable_errors_included(
    cors_gateway: httpx.Client,
) -> None:
    origin = {"Origin": ALLOWED}
    listed = cors_gateway.get("/blog/api/posts", headers=origin)
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == ALLOWED
    assert "x-total-count" in _listed(listed, "access-control-expose-headers")
    login = cors_gateway.post("/api/login", json={"username": "x", "password": "y"}, headers=origin)
    assert detail_of(login, 401)
    assert login.headers["access-control-allow-origin"] == ALLOWED
    # Answered by the gateway's own middleware, before any route: CORS wraps it too.
    too_big = b"x" * (load_settings().max_body_bytes + 1)
    refused = cors_gateway.post("/api/login", content=too_big, headers=origin)
    assert detail_of(refused, 413)
    assert refused.headers["access-control-allow-origin"] == ALLOWED


@SQLITE_ONLY
def test_cors_other_origins_get_no_allowance(cors_gateway: httpx.Client) -> None:
    refused = preflight(cors_gateway, "/blog/api/posts", ELSEWHERE, "POST")
    assert detail_of(refused, 400) == "Disallowed CORS origin"
    assert "access-control-allow-origin" not in refused.headers
    simple = cors_gateway.get("/blog/api/posts", headers={"Origin": ELSEWHERE})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers
    put = preflight(cors_gateway, "/blog/api/posts/1", ALLOWED, "PUT")
    assert detail_of(put, 400) == "Disallowed CORS method"


@SQLITE_ONLY
def test_without_the_setting_no_cors_header_is_sent(live: RunningStack) -> None:
    assert live.settings.cors_allow_origins == ()
    answers = [preflight(live.client, path, ALLOWED, method) for path, method in PREFLIGHTS]
    answers.append(live.client.get("/blog/api/posts", headers={"Origin": ALLOWED}))
    for answer in answers:
        assert not [name for name in answer.headers if name.lower().startswith("access-control-")]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("*", "'*' is refused"),
        ("https://blog.example/", "write https://blog.example"),
        ("https://Blog.example", "write https://blog.example"),
        ("https://blog.example:443", "write https://blog.example"),
        ("blog.example", "expected scheme://host[:port]"),
        ("ftp://blog.example", "expected scheme://host[:port]"),
        ("https://blog.example, null", "'null' is not an origin"),
    ],
)
def test_a_malformed_cors_origin_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert error.value.message.startswith("CORS_ALLOW_ORIGINS: ")
    assert says in error.value.message
    assert "\n" not in error.value.message


def test_cors_origins_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", " https://a.example,http://localhost:5173 ,")
    assert load_settings().cors_allow_origins == ("https://a.example", "http://localhost:5173")
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "")
    assert load_settings().cors_allow_origins == ()


def test_the_gateway_refuses_to_start_with_a_malformed_origin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "titanium", "serve", "gateway", "--port", "1"],
        env={**os.environ, "CORS_ALLOW_ORIGINS": "https://blog.example/"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "titanium: configuration error: CORS_ALLOW_ORIGINS: 'https://blog.example/' "
        "is not an origin as browsers send it; write https://blog.example"
    ]
