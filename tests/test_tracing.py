"""Logs and traces: JSON log lines, W3C trace context across services, OTLP span export.

The pure parts (traceparent parsing, the JSON formatter) are tested directly; the
rest with the services in-process (the gateway through ASGI, the services it
calls served by uvicorn), a real OTLP/HTTP receiver on 127.0.0.1 for the spans,
and once as processes to see `titanium serve` write JSON lines.
"""

import itertools
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from support.env import CLEAN
from support.inprocess import Served, gateway_over, served, sqlite_settings
from support.stack import start_stack
from support.wait import wait_until
from titanium.config import ServiceName, Settings
from titanium.logs import JsonFormatter
from titanium.services.auth.app import create_app as create_auth
from titanium.services.blog.app import create_app as create_blog
from titanium.services.gateway.app import create_app as create_gateway
from titanium.services.users.app import create_app as create_users
from titanium.web.context import request_id_var, span_var
from titanium.web.tracing import (
    Span,
    TraceParent,
    Tracer,
    format_traceparent,
    incoming_parent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
# Each is refused by the W3C rules for version 00: a new trace starts.
INVALID = [
    "",
    f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper-case hex
    f"01-{TRACE_ID}-{PARENT_ID}-01",  # a version we cannot vouch for
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # the forbidden version
    f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has nothing after the flags
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # a digit short
    f"00-{TRACE_ID}-{PARENT_ID}-1",
    f"00-{TRACE_ID}-{PARENT_ID}-0g",
    f"00_{TRACE_ID}_{PARENT_ID}_01",
    f"00-{TRACE_ID}-{PARENT_ID}-01\n",
    f" 00-{TRACE_ID}-{PARENT_ID}-01",
]


# Pure functions.


def test_a_valid_traceparent_is_parsed() -> None:
    assert parse_traceparent(TRACEPARENT) == TraceParent(TRACE_ID, PARENT_ID, sampled=True)
    assert parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-00") == TraceParent(
        TRACE_ID, PARENT_ID, sampled=False
    )
    # Flags other than `sampled` (a later level's) are no reason to refuse the trace.
    assert parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-03") == TraceParent(
        TRACE_ID, PARENT_ID, sampled=True
    )


@pytest.mark.parametrize("value", INVALID)
def test_an_invalid_traceparent_is_refused(value: str) -> None:
    assert parse_traceparent(value) is None


def test_format_traceparent_is_what_parse_reads() -> None:
    assert format_traceparent(TRACE_ID, PARENT_ID, True) == TRACEPARENT
    assert format_traceparent(TRACE_ID, PARENT_ID, False).endswith("-00")
    for sampled in (True, False):
        value = format_traceparent(TRACE_ID, PARENT_ID, sampled)
        assert parse_traceparent(value) == TraceParent(TRACE_ID, PARENT_ID, sampled)


def test_incoming_parent_takes_one_header_and_refuses_two() -> None:
    one = [(b"host", b"x"), (b"traceparent", TRACEPARENT.encode())]
    assert incoming_parent(one) == TraceParent(TRACE_ID, PARENT_ID, True)
    assert incoming_parent([(b"host", b"x")]) is None
    other = f"00-{'1' * 32}-{PARENT_ID}-01".encode()
    assert incoming_parent([*one, (b"traceparent", other)]) is None


def test_new_ids_are_lower_case_hex_of_the_right_length() -> None:
    assert HEX32.fullmatch(new_trace_id())
    assert HEX16.fullmatch(new_span_id())
    assert new_trace_id() != new_trace_id()


def test_the_tracer_continues_a_trace_or_starts_one() -> None:
    tracer = Tracer()
    span = tracer.start_server(TraceParent(TRACE_ID, PARENT_ID, True), "GET")
    assert (span.trace_id, span.sampled) == (TRACE_ID, True)
    assert span.span_id != PARENT_ID and HEX16.fullmatch(span.span_id)
    assert span.traceparent() == f"00-{TRACE_ID}-{span.span_id}-01"
    fresh = tracer.start_server(None, "GET")
    assert HEX32.fullmatch(fresh.trace_id) and fresh.trace_id != TRACE_ID
    assert not fresh.sampled  # nothing recorded it


def record(message: str, **extra: Any) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "titanium.request", "levelno": 20, "levelname": "INFO", "msg": message, **extra}
    )


def test_a_json_line_has_the_fields_of_the_request_line() -> None:
    fields = {"method": "GET", "path": "/a\\x0d\\x0ab", "route": "unmatched", "status": 404}
    line = JsonFormatter("blog-service").format(
        record("GET /a 404", **fields, duration_ms=1.5, request_id="r1", trace_id=TRACE_ID)
    )
    entry = json.loads(line)
    assert entry == {
        "time": entry["time"],
        "level": "INFO",
        "service": "blog-service",
        "logger": "titanium.request",
        "message": "GET /a 404",
        "request_id": "r1",
        "trace_id": TRACE_ID,
        **fields,
        "duration_ms": 1.5,
    }
    assert entry["time"].endswith("Z")
    stamp = datetime.fromisoformat(entry["time"])
    assert stamp.utcoffset() is not None and abs(datetime.now(UTC) - stamp).total_seconds() < 60


def test_a_json_line_outside_a_request_has_no_ids_and_inside_one_the_current_ones() -> None:
    formatter = JsonFormatter("api-gateway")
    outside = json.loads(formatter.format(record("started")))
    assert "request_id" not in outside and "trace_id" not in outside
    span = Span(TRACE_ID, PARENT_ID, True, Tracer())
    request_token, span_token = request_id_var.set("r2"), span_var.set(span)
    try:
        inside = json.loads(formatter.format(record("a warning")))
    finally:
        span_var.reset(span_token)
        request_id_var.reset(request_token)
    assert (inside["request_id"], inside["trace_id"]) == ("r2", TRACE_ID)


def test_a_json_line_is_one_line_whatever_the_message_holds() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("line one\nline two\u2028three\x1b[2J", exc_info=sys.exc_info())
    line = JsonFormatter("auth-service").format(failed)
    assert "\n" not in line and "\u2028" not in line and "\x1b" not in line
    entry = json.loads(line)
    assert entry["message"] == "line one\nline two\u2028three\x1b[2J"
    assert "ValueError: boom" in entry["exception"]


# The services in-process.


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Settings:
    """One SQLite installation (both schemas at head) for the services of this module."""
    # JSON logs, as in the cluster: the request line then carries its fields (route, trace_id).
    return sqlite_settings(tmp_path_factory.mktemp("tracing"), keys, log_format="json")


@pytest.fixture(scope="module")
def services(installation: Settings) -> Iterator[dict[ServiceName, Served]]:
    """The three services, each served on its own port; auth-service calls user-service."""
    with ExitStack() as stack:
        users = stack.enter_context(served(create_users(installation)))
        blog = stack.enter_context(served(create_blog(installation)))
        calling_users = installation.model_copy(update={"user_service_url": users.url})
        auth = stack.enter_context(served(create_auth(calling_users)))
        yield {"users": users, "blog": blog, "auth": auth}


@pytest.fixture
async def gateway(
    installation: Settings, services: dict[ServiceName, Served]
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process, its downstreams the served services."""
    async with gateway_over(installation, {k: s.url for k, s in services.items()}) as client:
        yield client


@pytest.fixture
def request_lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The request log records of every service in this process, as they are logged."""
    caplog.set_level(logging.INFO, logger="titanium.request")
    return caplog


def lines_of(logged: pytest.LogCaptureFixture, trace_id: str) -> list[dict[str, Any]]:
    """The request lines of `trace_id` as JSON lines, each parsed."""
    formatter = JsonFormatter("any")
    records = [r for r in logged.records if r.name == "titanium.request"]
    entries = [json.loads(formatter.format(r)) for r in records]
    return [entry for entry in entries if entry.get("trace_id") == trace_id]


def routes_logged(logged: pytest.LogCaptureFixture, trace_id: str, count: int) -> list[str]:
    """The routes of `trace_id`'s request lines, once all `count` are in (served ones lag)."""
    wait_until(lambda: len(lines_of(logged, trace_id)) >= count, 5, "the request lines")
    return sorted(entry["route"] for entry in lines_of(logged, trace_id))


async def test_a_traceparent_reaches_the_downstream_and_both_request_lines(
    gateway: httpx.AsyncClient, request_lines: pytest.LogCaptureFixture
) -> None:
    response = await gateway.get("/blog/api/posts?limit=1", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200, response.text
    assert routes_logged(request_lines, TRACE_ID, 2) == ["/blog/api/posts", "/blog/{rest:path}"]
    for entry in lines_of(request_lines, TRACE_ID):
        assert entry["method"] == "GET"
        assert entry["path"] == "/blog/api/posts"
        assert entry["status"] == 200
        assert isinstance(entry["duration_ms"], float)
        assert entry["request_id"] == response.headers["x-request-id"]
    gateway_line = next(
        r.getMessage()
        for r in request_lines.records
        if r.__dict__.get("route") == "/blog/{rest:path}"
    )
    assert re.fullmatch(rf"GET /blog/api/posts 200 \S+ms rid=\S+ trace={TRACE_ID}", gateway_line)


async def test_auth_service_passes_the_trace_on_to_user_service(
    gateway: httpx.AsyncClient, request_lines: pytest.LogCaptureFixture
) -> None:
    body = {"username": "nobody_traced", "password": "not the password"}
    response = await gateway.post("/api/login", json=body, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 401, response.text
    # The gateway's and auth-service's lines, and user-service's credential check.
    assert routes_logged(request_lines, TRACE_ID, 3) == [
        "/api/login",
        "/api/login",
        "/internal/credentials",
    ]


@pytest.mark.parametrize("value", [INVALID[1], INVALID[4], INVALID[6]])
async def test_an_invalid_traceparent_starts_a_new_trace(
    gateway: httpx.AsyncClient, request_lines: pytest.LogCaptureFixture, value: str
) -> None:
    response = await gateway.get("/blog/api/posts?limit=1", headers={"traceparent": value})
    assert response.status_code == 200, response.text
    rid = response.headers["x-request-id"]

    def traces() -> set[str]:
        return {
            str(r.__dict__["trace_id"])
            for r in request_lines.records
            if r.name == "titanium.request" and r.__dict__.get("request_id") == rid
        }

    def logged() -> int:
        return len([r for r in request_lines.records if rid in r.getMessage()])

    wait_until(lambda: logged() == 2, 5, "both request lines")
    [trace_id] = traces()  # one trace, the gateway's, continued by blog-service
    assert HEX32.fullmatch(trace_id) and trace_id not in value


async def test_the_downstream_gets_the_gateways_span_as_parent_and_no_client_tracestate(
    installation: Settings,
) -> None:
    seen: list[dict[str, str]] = []

    async def echo(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        return JSONResponse({})

    recorder = Starlette(routes=[Route("/blog/{rest:path}", echo)])
    with served(recorder, lifespan="off") as blog:
        urls: dict[ServiceName, str] = {"blog": blog.url, "users": blog.url, "auth": blog.url}
        async with gateway_over(installation, urls) as client:
            sent = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00", "tracestate": "vendor=x"}
            assert (await client.get("/blog/x", headers=sent)).status_code == 200
            assert (await client.get("/blog/x")).status_code == 200
    continued, started = (parse_traceparent(headers["traceparent"]) for headers in seen)
    assert continued is not None and started is not None
    assert continued.trace_id == TRACE_ID and not continued.sampled  # the caller's flag, kept
    assert continued.parent_id != PARENT_ID  # the gateway's own span
    assert "tracestate" not in seen[0]
    assert started.trace_id != TRACE_ID


# What exporting spans loads (FastAPI itself imports the OpenTelemetry API, a no-op without an SDK).
EXPORT_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter", "google.protobuf", "requests")


def test_without_an_endpoint_the_sdk_is_never_imported(
    installation: Settings, keys: dict[str, str]
) -> None:
    # A process of its own: this one has imported the SDK for its receiver.
    program = (
        "import sys\n"
        "from titanium.config import Settings\n"
        "from titanium.services.registry import SERVICES, app_factory\n"
        "settings = Settings()\n"
        "apps = [app_factory(service)(settings) for service in SERVICES]\n"
        f"loaded = [m for m in sys.modules if m.startswith({EXPORT_MODULES!r})]\n"
        "assert not loaded, loaded\n"
    )
    env = {
        **CLEAN,
        **keys,
        "DATA_DIR": str(installation.data_dir),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
    }
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# Spans exported over OTLP/HTTP to a receiver on 127.0.0.1.


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP traces receiver: every span posted to /v1/traces, with its service."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.spans: list[tuple[str, ProtoSpan]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
            self.send_error(404)
            return
        export = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in export.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.server.spans.append((attributes["service.name"], span))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the spans, not the access log."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def attributes_of(span: ProtoSpan) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in span.attributes:
        kind = attribute.value.WhichOneof("value")
        values[attribute.key] = getattr(attribute.value, kind) if kind else None
    return values


def test_spans_of_one_request_are_exported_with_their_parent_links(
    installation: Settings, receiver: Receiver
) -> None:
    exporting = installation.model_copy(update={"otel_exporter_otlp_endpoint": receiver.url})
    with ExitStack() as stack:
        users = stack.enter_context(served(create_users(exporting)))
        auth_settings = exporting.model_copy(update={"user_service_url": users.url})
        auth = stack.enter_context(served(create_auth(auth_settings)))
        gateway_settings = exporting.model_copy(
            update={"auth_service_url": auth.url, "user_service_url": users.url}
        )
        gateway = stack.enter_context(served(create_gateway(gateway_settings)))
        body = {"username": "nobody_exported", "password": "not the password"}
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            response = client.post("/api/login", json=body, headers={"traceparent": TRACEPARENT})
        assert response.status_code == 401, response.text
    # Every server has stopped, so every tracer has flushed at its shutdown: no waiting.
    spans = {
        (service, span.kind): span
        for service, span in receiver.spans
        if span.trace_id.hex() == TRACE_ID
    }
    server, client_kind = ProtoSpan.SPAN_KIND_SERVER, ProtoSpan.SPAN_KIND_CLIENT
    assert sorted(spans) == sorted(
        [
            ("api-gateway", server),
            ("api-gateway", client_kind),
            ("auth-service", server),
            ("auth-service", client_kind),
            ("user-service", server),
        ]
    ), sorted((s, k, span.name) for s, k, span in [(*key, v) for key, v in spans.items()])
    chain = [
        spans["api-gateway", server],
        spans["api-gateway", client_kind],
        spans["auth-service", server],
        spans["auth-service", client_kind],
        spans["user-service", server],
    ]
    assert chain[0].parent_span_id.hex() == PARENT_ID
    for parent, child in itertools.pairwise(chain):
        assert child.parent_span_id == parent.span_id, (parent.name, child.name)
    assert chain[0].name == "POST /api/login"
    assert attributes_of(chain[0]) == {
        "http.request.method": "POST",
        "http.route": "/api/login",
        "http.response.status_code": 401,
    }
    assert chain[1].name == "POST"
    assert attributes_of(chain[1])["peer.service"] == "auth-service"
    assert attributes_of(chain[1])["http.response.status_code"] == 401
    assert chain[4].name == "POST /internal/credentials"


# As processes: `titanium serve` with LOG_FORMAT=json.


@pytest.mark.stack
def test_titanium_serve_writes_json_lines_naming_the_service_and_the_trace(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    env = {
        "USE_POSTGRES": "false",
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_FORMAT": "json",
        **keys,
    }
    stack = start_stack(env, tmp_path / "logs")
    try:
        with httpx.Client(base_url=stack.url("gateway"), timeout=10) as client:
            response = client.get("/blog/api/posts", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200, response.text
    finally:
        stack.stop()
    for service, name, route in (
        ("gateway", "api-gateway", "/blog/{rest:path}"),
        ("blog", "blog-service", "/blog/api/posts"),
    ):
        lines = (tmp_path / "logs" / f"{service}.log").read_text().splitlines()
        entries = [json.loads(line) for line in lines]  # every line, uvicorn's too
        assert {entry["service"] for entry in entries} == {name}
        [request] = [entry for entry in entries if entry.get("trace_id") == TRACE_ID]
        assert request["route"] == route
        assert request["status"] == 200
        assert request["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_a_sampling_ratio_exports_whole_traces_chosen_by_trace_id(
    ratio: float, receiver: Receiver
) -> None:
    from titanium.web.otel import ExportingTracer

    # Two services of one deployment: they must agree on every trace, whatever flag came in.
    gateway = ExportingTracer(receiver.url, "api-gateway", ratio)
    blog = ExportingTracer(receiver.url, "blog-service", ratio)
    recorded = []
    try:
        for _ in range(200):
            root = gateway.start_server(TraceParent(new_trace_id(), new_span_id(), True), "GET")
            child = blog.start_server(TraceParent(root.trace_id, root.span_id, True), "GET")
            assert root.exported.is_recording() == child.exported.is_recording() == child.sampled
            recorded.append(root.exported.is_recording())
            for tracer, span in ((blog, child), (gateway, root)):
                tracer.end_server(span, "GET", "/x", 200)
    finally:
        for tracer in (gateway, blog):
            tracer.shutdown()
    share = sum(recorded) / len(recorded)
    assert share == ratio if ratio in (0.0, 1.0) else 0.3 < share < 0.7
    assert len(receiver.spans) == 2 * sum(recorded)
