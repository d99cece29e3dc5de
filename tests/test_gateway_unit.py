"""The gateway's relay, in-process: routing, header policy, request ids, downstream failures.

The gateway runs through ASGI in the test process; each downstream is a small
ASGI stand-in served by uvicorn on 127.0.0.1, so what the gateway sends and
receives crosses a real socket and aiohttp. The stand-in echoes what reached it,
and misbehaves on request (slow, short body) to show how failures are mapped.
"""

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from support.inprocess import CLIENT, Served, gateway_over, refused_url, running, served
from titanium.config import ServiceName, Settings
from titanium.services.gateway.app import create_app
from titanium.web.client import Downstream, open_downstream

pytestmark = pytest.mark.anyio

NAMES: dict[ServiceName, str] = {
    "auth": "auth-service",
    "users": "user-service",
    "blog": "blog-service",
}
BIG = 200 * 1024  # over the gateway's 64 KiB buffer limit: streamed both ways
SHORT_TIMEOUT = 0.5
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


class StandIn:
    """A downstream that answers with what it received; some paths misbehave on purpose."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.paths.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        if path == "/health":
            await _answer(send, 200, b'{"status":"ok"}')
        elif path.endswith("/slow"):
            # No answer until the gateway gives up and hangs up (bounded all the same).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receive(), SHORT_TIMEOUT * 10)
            await _answer(send, 200, b"too late")
        elif path.endswith("/short"):
            # Promises 100 bytes, sends 10 and ends: the connection breaks mid-body.
            headers = [(b"content-length", b"100")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"0123456789"})
        elif path.endswith("/big"):
            await _answer(send, 200, b"x" * BIG, content_type=b"application/octet-stream")
        elif path.endswith("/chunked"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one,", b"two,", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif match := re.search(r"/status/(\d{3})$", path):
            status = int(match[1])
            await _answer(send, status, b"" if status == 204 else b'{"from":"upstream"}')
        else:
            echo = {
                "service": self.service,
                "method": scope["method"],
                "path": path,
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query": scope["query_string"].decode("latin-1"),
                "headers": [
                    [n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]
                ],
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
            extra = [
                (b"x-upstream", self.service.encode()),
                (b"x-request-id", b"upstream-chose-this"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-authenticate", b"Basic"),
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
            ]
            await _answer(send, 200, json.dumps(echo).encode(), extra=extra)


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def stand_ins() -> Iterator[dict[ServiceName, tuple[StandIn, Served]]]:
    """One stand-in per downstream, each served on its own port."""
    apps = {key: StandIn(name) for key, name in NAMES.items()}
    with ExitStack() as servers:
        yield {key: (app, servers.enter_context(served(app, "off"))) for key, app in apps.items()}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Gateway settings; the downstream URLs are the stand-ins', though the pools are injected."""
    return Settings(use_postgres=False, database_path=None, data_dir=tmp_path)


def urls(stand_ins: dict[ServiceName, tuple[StandIn, Served]]) -> dict[ServiceName, str]:
    """Each stand-in's URL, by the service it stands in for."""
    return {key: server.url for key, (_, server) in stand_ins.items()}


def pools(stand_ins: dict[ServiceName, tuple[StandIn, Served]]) -> dict[ServiceName, Downstream]:
    """A keep-alive pool per stand-in, as the gateway would open them."""
    return {
        key: open_downstream(NAMES[key], url, timeout_seconds=5)
        for key, url in urls(stand_ins).items()
    }


@pytest.fixture
async def gateway(
    settings: Settings, stand_ins: dict[ServiceName, tuple[StandIn, Served]]
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process, its downstreams the stand-ins."""
    async with gateway_over(settings, urls(stand_ins)) as client:
        yield client


def seen_everywhere(stand_ins: dict[ServiceName, tuple[StandIn, Served]]) -> list[str]:
    return [path for stand_in, _ in stand_ins.values() for path in stand_in.paths]


def forwarded(response: httpx.Response) -> dict[str, Any]:
    """What the stand-in received, from its echo."""
    assert response.status_code == 200, response.text
    echo: dict[str, Any] = response.json()
    return echo


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [value for header, value in echo["headers"] if header == name]


@pytest.mark.parametrize(
    ("method", "path", "service"),
    [
        ("POST", "/api/login", "auth-service"),
        ("POST", "/api/register", "user-service"),
        ("POST", "/api/users", "user-service"),
        ("GET", "/api/users/alice", "user-service"),
        ("DELETE", "/api/users/me", "user-service"),
        ("GET", "/blog", "blog-service"),
        ("GET", "/blog/", "blog-service"),
        ("PATCH", "/blog/api/posts/7", "blog-service"),
    ],
)
async def test_public_routes_reach_their_service(
    gateway: httpx.AsyncClient, method: str, path: str, service: str
) -> None:
    echo = forwarded(await gateway.request(method, path, content=b"{}"))
    assert (echo["service"], echo["method"], echo["path"]) == (service, method, path)
    assert echo["body_length"] == 2


async def test_the_raw_path_and_query_are_forwarded_untouched(gateway: httpx.AsyncClient) -> None:
    echo = forwarded(await gateway.get("/blog/api/posts%2Fx?author=a%20b&tag=%2F&tag=&z"))
    assert echo["raw_path"] == "/blog/api/posts%2Fx"
    assert echo["query"] == "author=a%20b&tag=%2F&tag=&z"


@pytest.mark.parametrize(
    "path",
    [
        "/internal/credentials",
        "/internal/users/1",
        "/api",
        "/api/",
        "/api/userss",
        "/api/loginx",
        "/blogs",
        "/health/extra",
    ],
)
async def test_paths_outside_the_routes_are_404_at_the_gateway(
    gateway: httpx.AsyncClient, stand_ins: dict[ServiceName, tuple[StandIn, Served]], path: str
) -> None:
    before = seen_everywhere(stand_ins)
    for method in ("GET", "POST"):
        response = await gateway.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["status"] == "failed"
    assert seen_everywhere(stand_ins) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/users/%2E%2E/%2E%2E/internal/credentials",
        "/api/users/%2e%2e%2F%2e%2e%2Finternal%2Fcredentials",
        "/api/users/..%2F..%2Finternal/users/1",
        "/blog/%2E%2E/internal/users/1",
        "/api/users/%2E/x",
    ],
)
async def test_dot_segments_never_reach_a_service(
    gateway: httpx.AsyncClient, stand_ins: dict[ServiceName, tuple[StandIn, Served]], path: str
) -> None:
    # Routed by prefix, these would become /internal/... in the service's URL
    # library once forwarded; the gateway refuses them before that.
    before = seen_everywhere(stand_ins)
    response = await gateway.post(path, json={"username": "a", "password": "b"})
    assert response.status_code == 404
    assert seen_everywhere(stand_ins) == before


async def test_the_gateway_sets_forwarding_headers_and_drops_hop_by_hop_ones(
    gateway: httpx.AsyncClient,
) -> None:
    sent = {
        "Authorization": "Bearer abc",
        "Cookie": "session=1",
        "X-Custom": "kept",
        # A client's claims about the path are replaced, never passed on.
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "gopher",
        # Hop-by-hop: about the client's connection to the gateway only.
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Keep-Alive": "timeout=300",
        "TE": "trailers",
        "Upgrade": "websocket",
        "Trailer": "X-Checksum",
    }
    echo = forwarded(await gateway.get("/api/users/alice", headers=sent))
    assert header_values(echo, "authorization") == ["Bearer abc"]
    assert header_values(echo, "cookie") == ["session=1"]
    assert header_values(echo, "x-custom") == ["kept"]
    assert header_values(echo, "x-forwarded-for") == [CLIENT[0]]
    assert header_values(echo, "x-forwarded-host") == ["testserver"]
    assert header_values(echo, "x-forwarded-proto") == ["http"]
    names = {name for name, _ in echo["headers"]}
    assert not names & {"proxy-authorization", "keep-alive", "te", "upgrade", "trailer"}
    # The Host is the downstream's own, as aiohttp addresses it, and there is one.
    [host] = header_values(echo, "host")
    assert host.startswith("127.0.0.1:")


async def test_response_headers_are_relayed_once_without_hop_by_hop_or_server_ones(
    gateway: httpx.AsyncClient,
) -> None:
    response = await gateway.get("/api/users/alice")
    assert response.headers["x-upstream"] == "user-service"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert "keep-alive" not in response.headers
    assert "proxy-authenticate" not in response.headers
    # uvicorn under the stand-in wrote Date and Server; the gateway's own server writes its own.
    assert "server" not in response.headers
    assert "date" not in response.headers
    assert response.headers.get_list("content-length") == [str(len(response.content))]
    [request_id] = response.headers.get_list("x-request-id")
    assert request_id != "upstream-chose-this"


@pytest.mark.parametrize(("path", "length"), [("/blog/status/201", 19), ("/blog/big", BIG)])
async def test_head_answers_carry_the_length_a_get_would_have(
    gateway: httpx.AsyncClient, path: str, length: int
) -> None:
    # Also past the buffer limit, where a GET would be streamed without a length.
    head = await gateway.head(path)
    assert head.content == b""
    assert head.headers.get_list("content-length") == [str(length)]


async def test_large_bodies_pass_whole_both_ways(gateway: httpx.AsyncClient) -> None:
    payload = bytes(range(256)) * (BIG // 256)
    echo = forwarded(await gateway.post("/blog/api/posts", content=payload))
    assert echo["body_length"] == len(payload)
    assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()
    big = await gateway.get("/blog/big")
    assert big.status_code == 200
    assert big.content == b"x" * BIG
    chunked = await gateway.get("/blog/chunked")
    assert chunked.content == b"one,two,three"


@pytest.mark.parametrize("status", [201, 204, 401, 418, 500, 503])
async def test_the_service_status_is_relayed_as_it_is(
    gateway: httpx.AsyncClient, status: int
) -> None:
    response = await gateway.get(f"/blog/status/{status}")
    assert response.status_code == status
    # The service's own body, not one made by the gateway.
    assert response.content == (b"" if status == 204 else b'{"from":"upstream"}')


async def test_a_well_formed_request_id_is_kept_and_passed_on(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/api/users/alice", headers={"X-Request-ID": "trace-42.a_b"})
    assert header_values(forwarded(response), "x-request-id") == ["trace-42.a_b"]
    assert response.headers["x-request-id"] == "trace-42.a_b"


@pytest.mark.parametrize(
    "incoming", [None, "", "has space", "semi;colon", "x" * 129, "ünï".encode()]
)
async def test_a_missing_or_malformed_request_id_is_replaced(
    gateway: httpx.AsyncClient, incoming: str | bytes | None
) -> None:
    raw = incoming.encode() if isinstance(incoming, str) else incoming
    headers = [] if raw is None else [(b"x-request-id", raw)]
    response = await gateway.get("/api/users/alice", headers=headers)
    request_id = response.headers["x-request-id"]
    assert GENERATED_ID.match(request_id)
    assert header_values(forwarded(response), "x-request-id") == [request_id]
    again = await gateway.get("/api/users/alice", headers=headers)
    assert again.headers["x-request-id"] != request_id


async def test_errors_made_by_the_gateway_carry_the_request_id(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/internal/credentials", headers={"X-Request-ID": "lost-1"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "lost-1"


async def test_a_broken_answer_is_502(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/api/users/short", headers={"X-Request-ID": "broken-1"})
    assert response.status_code == 502
    assert response.json()["message"] == "user-service failed to answer"
    assert response.headers["x-request-id"] == "broken-1"


async def test_a_slow_service_is_504_after_the_upstream_timeout(
    settings: Settings, stand_ins: dict[ServiceName, tuple[StandIn, Served]]
) -> None:
    async with gateway_over(settings, urls(stand_ins), timeout_seconds=SHORT_TIMEOUT) as gateway:
        started = asyncio.get_running_loop().time()
        response = await gateway.get("/blog/api/slow")
        waited = asyncio.get_running_loop().time() - started
    assert response.status_code == 504
    assert response.json()["message"] == "blog-service did not answer in time"
    assert SHORT_TIMEOUT <= waited < SHORT_TIMEOUT * 3


async def test_a_stopped_service_is_503_and_unready(
    settings: Settings, stand_ins: dict[ServiceName, tuple[StandIn, Served]]
) -> None:
    holder, url = refused_url()
    with holder:
        async with gateway_over(settings, {**urls(stand_ins), "auth": url}) as gateway:
            login = await gateway.post("/api/login", json={})
            ready = await gateway.get("/ready")
            other = await gateway.get("/api/users/alice")
    assert login.status_code == 503
    assert login.json()["message"] == "auth-service is unavailable"
    assert login.headers["retry-after"] == "1"
    assert ready.status_code == 503
    assert ready.json()["message"] == "unreachable: auth-service"
    assert other.status_code == 200  # the other services are still served


async def test_ready_when_every_downstream_answers(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/ready")
    assert response.status_code == 200
    assert response.json()["downstreams"] == {name: "ok" for name in NAMES.values()}


async def test_injected_downstreams_are_used_and_left_open(
    settings: Settings, stand_ins: dict[ServiceName, tuple[StandIn, Served]]
) -> None:
    downstreams = pools(stand_ins)
    app = create_app(settings, downstreams=downstreams)
    try:
        async with running(app) as gateway:
            assert app.state.downstreams == downstreams
            forwarded(await gateway.get("/api/users/alice"))
        assert not any(d.session.closed for d in downstreams.values())
        # The caller's pools serve a second app after the first one stopped.
        async with running(create_app(settings, downstreams=downstreams)) as again:
            forwarded(await again.get("/api/users/alice"))
    finally:
        for downstream in downstreams.values():
            await downstream.close()


async def test_without_injection_the_gateway_opens_and_closes_its_own(
    stand_ins: dict[ServiceName, tuple[StandIn, Served]], tmp_path: Path
) -> None:
    url = {key: server.url for key, (_, server) in stand_ins.items()}
    settings = Settings(
        use_postgres=False,
        database_path=None,
        data_dir=tmp_path,
        auth_service_url=url["auth"],
        user_service_url=url["users"],
        blog_service_url=url["blog"],
    )
    app = create_app(settings)
    async with running(app) as gateway:
        opened: dict[str, Downstream] = dict(app.state.downstreams)
        assert forwarded(await gateway.post("/api/login"))["service"] == "auth-service"
        assert forwarded(await gateway.get("/blog/"))["service"] == "blog-service"
    assert sorted(opened) == ["auth", "blog", "users"]
    assert all(d.session.closed for d in opened.values())
