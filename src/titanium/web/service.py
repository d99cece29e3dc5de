"""The operational surface every service shares: /health, /ready, /metrics, /stats.

/metrics and /stats are for operators: answered only to a caller that reached the
process directly (Prometheus scraping the pod), a 404 to anything a proxy relayed.
"""

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from titanium import __version__
from titanium.config import ServiceName, Settings
from titanium.errors import NotFound, Unavailable
from titanium.services.registry import service_name
from titanium.web.errors import ERROR_RESPONSES, install_error_handlers
from titanium.web.metrics import Metrics
from titanium.web.middleware import RequestContextMiddleware

# Set by whatever relays a request (an ingress, a load balancer, the gateway itself).
FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")

Check = Callable[[Request], Awaitable[dict[str, Any]]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def service_app(service: ServiceName, lifespan: Lifespan) -> FastAPI:
    """The FastAPI app of a service, its OpenAPI document naming it and every error shape."""
    return FastAPI(
        title=f"Titanium {service_name(service)}",
        version="1",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )


def _refuse_relayed(request: Request) -> None:
    """404, as for a path that does not exist, when a proxy forwarded `request`."""
    if any(name in request.headers for name in FORWARDING_HEADERS):
        raise NotFound("not found")


async def _no_details(_request: Request) -> dict[str, Any]:
    return {}


def install_common(
    app: Starlette,
    *,
    service: ServiceName,
    settings: Settings,
    ready: Check = _no_details,
    stats: Check = _no_details,
) -> None:
    """Add the shared middleware, error mapping and operational routes to `app`.

    `ready` raises Unavailable when a dependency is missing; `stats` adds
    service-specific figures to /stats.
    """
    name = service_name(service)
    metrics = Metrics(name)
    started = time.monotonic()
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes
    )

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": name})

    async def readiness(request: Request) -> Response:
        try:
            details = await ready(request)
        except Unavailable as exc:
            body = {"status": "unavailable", "service": name, "message": exc.message}
            return JSONResponse(body, 503)
        return JSONResponse({"status": "ready", "service": name, **details})

    async def prometheus(request: Request) -> Response:
        _refuse_relayed(request)
        return Response(metrics.render(), media_type=metrics.content_type)

    async def status(request: Request) -> Response:
        _refuse_relayed(request)
        body = {
            "service": name,
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - started, 1),
            "requests_total": metrics.total,
        }
        try:
            body.update(await stats(request))
        except Unavailable as exc:
            body["error"] = exc.message
        return JSONResponse(body)

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/ready", readiness, methods=["GET"])
    app.add_route("/metrics", prometheus, methods=["GET"])
    app.add_route("/stats", status, methods=["GET"])
