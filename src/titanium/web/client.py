"""Service-to-service HTTP: one pooled aiohttp session per downstream."""

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType
from yarl import URL

from titanium.config import ServiceName, Settings
from titanium.services.registry import service_name, service_url
from titanium.web.clients import internal_headers
from titanium.web.context import request_id_var, span_var


@dataclass
class Downstream:
    """A service this process calls, with its own keep-alive connection pool."""

    name: str
    base_url: str
    session: aiohttp.ClientSession

    def url(self, raw_path: str) -> URL:
        """Absolute URL of an already-encoded path (and query) on this downstream."""
        return URL(self.base_url.rstrip("/") + raw_path, encoded=True)

    async def alive(self, timeout_seconds: float = 2.0) -> bool:
        """True when the downstream's /health answers 200 within the timeout."""
        try:
            async with self.session.get(
                self.url("/health"), timeout=aiohttp.ClientTimeout(total=timeout_seconds)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        """Close the pool."""
        await self.session.close()


def open_downstream(
    name: str,
    base_url: str,
    *,
    timeout_seconds: float,
    limit: int = 100,
    headers: Mapping[str, str] | None = None,
) -> Downstream:
    """Create the pool for one downstream; call inside the running event loop.

    `headers` go with every request on the pool, and so does the W3C `traceparent`
    of the request being handled (see `traced`).
    """
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=30, ttl_dns_cache=10)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_seconds, connect=min(timeout_seconds, 2.0)),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        headers=headers,
        middlewares=(traced(name),),
    )
    return Downstream(name, base_url, session)


def traced(peer: str) -> ClientMiddlewareType:
    """aiohttp middleware: each call made while handling a request continues its trace.

    The call sends `traceparent` with the request's trace id and, as the parent,
    the current span (the call's own client span when spans are exported). Calls
    outside a request (none today) send none. Whatever `traceparent` the request
    already had (a client's, relayed by the gateway) is replaced.
    """

    async def trace(
        request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        span = span_var.get()
        if span is None:
            return await handler(request)
        return await span.tracer.call(span, request, handler, peer)

    return trace


def open_service(settings: Settings, service: ServiceName) -> Downstream:
    """The pool for calling one of Titanium's services, at the URL its setting names.

    Every request on it carries the internal token, so the callee knows it is one
    of its own: the one place service-to-service calls are authenticated.
    """
    return open_downstream(
        service_name(service),
        service_url(settings, service),
        timeout_seconds=settings.upstream_timeout_seconds,
        headers=internal_headers(settings.internal_token),
    )


@asynccontextmanager
async def service_pools(
    settings: Settings,
    services: Iterable[ServiceName],
    injected: Mapping[ServiceName, Downstream] | None = None,
) -> AsyncIterator[dict[ServiceName, Downstream]]:
    """The pools for calling `services` for as long as the block runs.

    Pools in `injected` (the tests' in-process services) are used as they are and
    stay open: they belong to the caller. The others are opened here and closed
    at the end.
    """
    given = injected or {}
    opened = {name: open_service(settings, name) for name in services if name not in given}
    try:
        yield {**{name: given[name] for name in services if name in given}, **opened}
    finally:
        for pool in opened.values():
            await pool.close()


def forward_headers() -> dict[str, str]:
    """Headers every internal call carries beside the pool's own: the current request id."""
    return {"X-Request-ID": request_id_var.get()}
