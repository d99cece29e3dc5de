"""api-gateway: the one public entry point; routes public paths to the services.

Only the paths in ROUTES are forwarded, so internal routes (user-service's
credential check) are never reachable from outside. Each downstream has its
own keep-alive pool; the request id is created here and passed on.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send
from yarl import URL

from titanium.config import ServiceName, Settings
from titanium.errors import (
    BadGateway,
    NotFound,
    NotReady,
    TitaniumError,
    Unavailable,
    UpstreamTimeout,
)
from titanium.services.registry import SERVICES
from titanium.web.client import Downstream, service_pools
from titanium.web.context import request_id_var
from titanium.web.errors import error_response, response_for
from titanium.web.metrics import UpstreamMeter
from titanium.web.routing import Route
from titanium.web.service import install_common

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Public path -> downstream. Anything else is a 404 at the gateway.
ROUTES: list[tuple[str, str]] = [
    ("/api/login", "auth"),
    ("/api/register", "users"),
    ("/api/users", "users"),
    ("/api/users/{rest:path}", "users"),
    ("/blog", "blog"),
    ("/blog/{rest:path}", "blog"),
]
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
# Set by the gateway itself; a client's values are replaced, never trusted.
OWN_HEADERS = {"x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
OWN_HEADERS.add("x-titanium-internal")  # INTERNAL_TOKEN, added by the pool (web/client.py)
# The pool sends the gateway's own span (web/client.py `traced`); tracestate is not kept.
OWN_HEADERS |= {"traceparent", "tracestate"}
# The gateway's own server writes these; relaying the service's would send them twice.
SET_BY_GATEWAY = {"x-request-id", "date", "server"}
NOT_RELAYED = HOP_BY_HOP | SET_BY_GATEWAY
# Response bodies up to this size are passed whole (cheaper); larger or unknown ones stream.
BUFFER_LIMIT = 64 * 1024


def _request_headers(scope: Scope) -> dict[str, str]:
    # Raw scope headers, not `request.headers`/`request.url`: this runs on every
    # proxied request, and the profiler showed the convenience objects' cost.
    headers: dict[str, str] = {}
    host = None
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        if name == "host":
            host = raw_value.decode("latin-1")
        elif name not in HOP_BY_HOP and name not in OWN_HEADERS:
            headers[name] = raw_value.decode("latin-1")
    client = scope.get("client")
    headers["X-Request-ID"] = request_id_var.get()
    headers["X-Forwarded-For"] = client[0] if client else "unknown"
    headers["X-Forwarded-Proto"] = scope.get("scheme", "http")
    if host is not None:
        headers["X-Forwarded-Host"] = host
    return headers


def _response_headers(
    upstream: aiohttp.ClientResponse, downstream: Downstream
) -> list[tuple[bytes, bytes]]:
    headers = []
    for raw_name, value in upstream.raw_headers:
        name = raw_name.lower()
        if name.decode("latin-1") in NOT_RELAYED:
            continue
        if name == b"location":
            value = _public_location(value, downstream)
        headers.append((name, value))
    return headers


def _public_location(location: bytes, downstream: Downstream) -> bytes:
    """A redirect to the downstream's own address, as the same path on the gateway.

    A service builds absolute redirects (Starlette's trailing-slash 307) from the
    Host it was called with, which is the downstream's internal host:port; public
    paths and service paths are the same, so the path alone is the public target.
    Any scheme or port on the downstream's host is internal, so the host decides.
    """
    try:
        target = URL(location.decode("latin-1"), encoded=True)
    except ValueError:
        return location
    base = URL(downstream.base_url)
    if target.host is None or target.host != base.host:
        return location  # a path already, or another site's
    path = target.raw_path_qs + (f"#{target.raw_fragment}" if target.raw_fragment else "")
    return (path if path.startswith("/") else "/" + path).encode("latin-1")


def _has_dot_segment(path: str) -> bool:
    # A client library would collapse "/api/users/../../internal/x" into an
    # internal path after our routing decision; refuse such paths outright.
    return any(segment in (".", "..") for segment in path.split("/"))


async def _request_body(request: Request, timeout_seconds: float) -> bytes | None:
    """The whole body, read before an upstream connection is taken, or a 408.

    Streamed on as it arrived, a client that declared a large body and stalled
    held one of the downstream pool's connections until the upstream timeout: a
    hundred of them and every request to that service got a 502. Read here, a body
    costs at most MAX_BODY_BYTES of memory (the size limit answers 413 while it is
    read) and a slow client only its own connection, for `timeout_seconds` in all:
    a total, not a per-read, deadline, so a body sent a byte at a time is cut too.
    """
    headers = request.headers
    if "content-length" not in headers and "transfer-encoding" not in headers:
        return None
    try:
        async with asyncio.timeout(timeout_seconds):
            return await request.body()
    except TimeoutError:
        # Closed after the answer: the rest of the body may still be on its way.
        raise HTTPException(
            408, "request body not received in time", {"Connection": "close"}
        ) from None


async def _call(
    downstream: Downstream,
    meter: UpstreamMeter,
    scope: Scope,
    receive: Receive,
    body_timeout_seconds: float,
) -> aiohttp.ClientResponse:
    """Send the request on to `downstream`; its response is open until released.

    `meter.in_flight` counts the call from here until the caller releases the
    response (it holds a pooled connection all that time).
    """
    if _has_dot_segment(scope["path"]):
        raise NotFound("not found")
    if sum(name == b"authorization" for name, _ in scope["headers"]) > 1:
        # The relay would keep one, a service might read another: refuse the ambiguity.
        raise HTTPException(400, "more than one Authorization header")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    body = await _request_body(Request(scope, receive), body_timeout_seconds)
    started = time.perf_counter()
    meter.in_flight += 1
    try:
        upstream = await downstream.session.request(
            scope["method"],
            downstream.url(target),
            headers=_request_headers(scope),
            data=body,
            allow_redirects=False,
        )
    except BaseException as exc:
        meter.in_flight -= 1
        outcome, error = _failure(exc, downstream.name)
        meter.finished(outcome, started)
        if error is None:
            raise
        raise error from exc
    meter.finished(STATUS_CLASSES.get(upstream.status // 100, "error"), started)
    return upstream


STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def _failure(exc: BaseException, name: str) -> tuple[str, TitaniumError | None]:
    """The `outcome` label of a call to downstream `name` that raised `exc`, and its error.

    None for anything that is not the downstream's failure (the client went away:
    the call was cancelled), which goes on as it is.
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "unavailable", Unavailable(f"{name} is unavailable")
    if isinstance(exc, aiohttp.ClientError):
        # aiohttp's socket timeouts are ClientErrors too: a 502, counted as a timeout.
        outcome = "timeout" if isinstance(exc, TimeoutError) else "error"
        return outcome, BadGateway(f"{name} failed to answer")
    if isinstance(exc, TimeoutError):
        return "timeout", UpstreamTimeout(f"{name} did not answer in time")
    return "error", None


class Forward:
    """ASGI endpoint that relays each request to one downstream and its answer back.

    Raw ASGI rather than a Request -> Response function: every public request runs
    through here, and a bare ASGI proxy measured about a quarter less CPU per request
    than the Starlette one (the request/response objects and their header handling).
    Errors raised here still get the one exception mapping (`titanium.web.errors`).
    """

    def __init__(self, downstream: str, body_timeout_seconds: float) -> None:
        self.downstream = downstream
        self.body_timeout_seconds = body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        downstream: Downstream = state.downstreams[self.downstream]
        connector = downstream.session.connector
        meter = state.metrics.upstream(downstream.name, connector.limit if connector else 0)
        upstream = await _call(downstream, meter, scope, receive, self.body_timeout_seconds)
        try:
            headers = _response_headers(upstream, downstream)
            length = upstream.content_length
            head = scope["method"] == "HEAD"
            start = {"type": "http.response.start", "status": upstream.status, "headers": headers}
            if not head and (length is None or length > BUFFER_LIMIT):
                await send(start)
                async for chunk in upstream.content.iter_chunked(BUFFER_LIMIT):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            try:
                content = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise BadGateway(f"{downstream.name} failed to answer") from exc
            # A HEAD answer has no body, but its length is the one a GET would have.
            own_length = length if head and length is not None else len(content)
            headers.append((b"content-length", str(own_length).encode()))
            await send(start)
            await send({"type": "http.response.body", "body": content})
        finally:
            upstream.release()
            meter.in_flight -= 1


class ForwardPublicRoutes:
    """Middleware: requests for the public routes go straight to their `Forward`.

    Starlette's router, exception middleware and their send wrappers were about a
    tenth of the gateway's time per request (py-spy). The router's own Route objects
    decide what matches, so anything they would refuse (a 404, a 405) still goes on
    to the router, and errors get the same JSON bodies as on every other route.
    """

    def __init__(self, app: ASGIApp, routes: list[Route]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    scope["route"] = route  # the request log and metrics label
                    try:
                        await route.app(scope, receive, send)
                    except (TitaniumError, HTTPException) as exc:
                        await response_for(exc)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def is_public(path: str) -> bool:
    """True when the gateway routes `path` (an OpenAPI path template) to a service."""
    return any(
        path == route or path.startswith(route.removesuffix("{rest:path}"))
        if route.endswith("{rest:path}")
        else path == route
        for route, _service in ROUTES
    )


async def public_openapi(downstreams: dict[str, Downstream]) -> dict[str, Any]:
    """The public API: the services' OpenAPI documents, cut to the paths routed here."""
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Titanium API (through api-gateway)", "version": "1"},
        "paths": {},
        "components": {"schemas": {}, "securitySchemes": {}},
    }
    for downstream in downstreams.values():
        async with downstream.session.get(downstream.url("/openapi.json")) as response:
            if response.status != 200:
                raise Unavailable(f"{downstream.name} has no OpenAPI document")
            part = await response.json()
        for path, operations in part.get("paths", {}).items():
            if is_public(path):
                document["paths"][path] = operations
        for section in ("schemas", "securitySchemes"):
            document["components"][section].update(part.get("components", {}).get(section, {}))
    return document


# What the public operations behind ROUTES use. PUT is routed but no service has
# a PUT operation, so pages are not told they may send one.
CORS_METHODS = ["GET", "HEAD", "POST", "PATCH", "DELETE"]
# Authorization carries the token and a JSON Content-Type is not a "simple" one,
# so both need the preflight's consent; X-Request-ID, because the gateway keeps
# a well-formed incoming one and a page may want its request found in the logs.
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "X-Request-ID"]
# Pages can read only these beyond the safelisted few: the post list's total,
# when to retry after a 429 or 503, and the id to quote in a bug report.
CORS_EXPOSED_HEADERS = ["X-Total-Count", "Retry-After", "X-Request-ID"]


class CrossOrigin(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in Titanium's error body."""

    def preflight_response(self, request_headers: Headers) -> Response:
        """The preflight answer; a refusal keeps Starlette's status, text and headers."""
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        headers = {
            name: value
            for name, value in answer.headers.items()
            if name not in ("content-type", "content-length")
        }
        return error_response(answer.status_code, bytes(answer.body).decode(), headers)


def install_cors(app: Starlette, origins: tuple[str, ...]) -> None:
    """Let pages on `origins` call the API from a browser; without origins, no CORS at all."""
    if not origins:
        return
    # Added last, so outermost: around ForwardPublicRoutes (preflights of public
    # routes must not be forwarded to a service) and around the request-context
    # middleware, so that its 413 and 422 reach the page readable too.
    app.add_middleware(
        CrossOrigin,
        allow_origins=origins,
        allow_methods=CORS_METHODS,
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
        # Tokens are bearer headers a page's script sets, not cookies: there is no
        # ambient credential to send, and not allowing them keeps it that way
        # should a cookie ever appear on this domain.
        allow_credentials=False,
    )


def create_app(
    settings: Settings, *, downstreams: Mapping[ServiceName, Downstream] | None = None
) -> Starlette:
    """Build the gateway (given `downstreams` stay the caller's); config errors surface here."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        callees = [service.id for service in SERVICES.values() if service.url_setting]
        async with service_pools(settings, callees, downstreams) as pools:
            app.state.downstreams = pools
            app.state.openapi = None
            yield

    async def home(_request: Request) -> Response:
        return RedirectResponse("/blog/")

    async def openapi(request: Request) -> Response:
        # Built on first request (the services are up by then) and kept.
        if request.app.state.openapi is None:
            try:
                request.app.state.openapi = await public_openapi(request.app.state.downstreams)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise Unavailable("a service did not give its OpenAPI document") from exc
        return JSONResponse(request.app.state.openapi)

    routes = [
        Route("/", home, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    public = [
        Route(path, Forward(key, settings.client_body_timeout_seconds), methods=METHODS)
        for path, key in ROUTES
    ]
    app = Starlette(routes=routes + public, lifespan=lifespan)
    # Added before install_common's middleware, so it runs inside it (request id, log).
    app.add_middleware(ForwardPublicRoutes, routes=public)

    async def ready(request: Request) -> dict[str, Any]:
        # Liveness of each downstream, not readiness: a database outage should
        # not take the gateway out of service, or reads of other services stop too.
        downstreams: dict[str, Downstream] = request.app.state.downstreams
        results = await asyncio.gather(*(d.alive() for d in downstreams.values()))
        state = {
            d.name: "ok" if alive else "unreachable"
            for d, alive in zip(downstreams.values(), results, strict=True)
        }
        down = [name for name, value in state.items() if value != "ok"]
        if down:
            raise NotReady(f"unreachable: {', '.join(down)}", reason="downstream")
        return {"downstreams": state}

    install_common(app, service="gateway", settings=settings, ready=ready)
    install_cors(app, settings.cors_allow_origins)
    return app
