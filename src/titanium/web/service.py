"""The operational surface every service shares: /health, /ready, /metrics, /stats.

/metrics and /stats are for operators: answered only to a caller that reached the
process directly (Prometheus scraping the pod), a 404 to anything a proxy relayed.
"""

import contextlib
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
from titanium.errors import NotFound, NotReady, Unavailable
from titanium.services.registry import service_name
from titanium.web.errors import ERROR_RESPONSES, install_error_handlers
from titanium.web.metrics import Collect, Metrics
from titanium.web.middleware import RequestContextMiddleware
from titanium.web.routing import add_route
from titanium.web.tracing import open_tracer

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
    collect: Collect | None = None,
) -> Metrics:
    """Add the shared middleware, error mapping and operational routes to `app`.

    `ready` raises Unavailable when a dependency is missing (NotReady to say
    why); `stats` adds service-specific figures to /stats; `collect` adds
    service-specific families to /metrics. The metrics are also `app.state.metrics`.
    """
    name = service_name(service)
    metrics = Metrics(name)
    if collect is not None:
        metrics.collect_also(collect)
    app.state.metrics = metrics
    started = time.monotonic()
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        tracer=open_tracer(settings, name),
        json_fields=settings.log_format == "json",
    )

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": name})

    async def check(request: Request) -> dict[str, Any]:
        """Run the readiness check and record its outcome in the metrics."""
        try:
            details = await ready(request)
        except Unavailable as exc:
            metrics.set_readiness(exc.reason if isinstance(exc, NotReady) else "database")
            raise
        metrics.set_readiness(None)
        return details

    async def readiness(request: Request) -> Response:
        try:
            details = await check(request)
        except Unavailable as exc:
            body = {"status": "unavailable", "service": name, "message": exc.message}
            return JSONResponse(body, 503)
        return JSONResponse({"status": "ready", "service": name, **details})

    async def prometheus(request: Request) -> Response:
        _refuse_relayed(request)
        # Checked at every scrape too, so the gauge is current where no kubelet probes.
        with contextlib.suppress(Unavailable):
            await check(request)
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

    add_route(app, "/health", health, ["GET"])
    add_route(app, "/ready", readiness, ["GET"])
    add_route(app, "/metrics", prometheus, ["GET"])
    add_route(app, "/stats", status, ["GET"])
    return metrics
