"""One ASGI middleware for request id and trace, the request log line, metrics and the body limit.

Pure ASGI (not BaseHTTPMiddleware) so streaming bodies pass through untouched
and the per-request cost stays small.
"""

import asyncio
import logging
import time

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from titanium.logs import printable
from titanium.web.context import REQUEST_ID_HEADER, new_request_id, request_id_var, span_var
from titanium.web.errors import error_response
from titanium.web.metrics import Metrics
from titanium.web.tracing import Tracer, incoming_parent

log = logging.getLogger("titanium.request")
# nginx's code for "client closed the request": no answer was sent, and it is no
# server error (a 4xx to the metrics, so error-rate alerts do not count it).
CLIENT_CLOSED = 499


class RequestContextMiddleware:
    """Sets the request id and span, enforces the body limit, logs and measures each request.

    The span continues the caller's W3C trace (a valid `traceparent`, from the
    public too: a client continuing its own trace is how W3C means it) or starts
    one. `tracer` records it when spans are exported, and is shut down (flushed)
    when the app's lifespan ends.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        tracer: Tracer | None = None,
        json_fields: bool = False,
    ) -> None:
        self.app = app
        self.json_fields = json_fields
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.tracer = tracer or Tracer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._shutting_down(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = new_request_id(headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1"))
        token = request_id_var.set(request_id)
        span = self.tracer.start_server(incoming_parent(scope["headers"]), scope["method"])
        span_token = span_var.set(span)
        started = time.perf_counter()
        self.metrics.in_flight += 1
        status = 500
        outcome = ""
        header_value = request_id.encode()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", header_value)]
            await send(message)

        try:
            declared = headers.get(b"content-length")
            if _has_nul(scope):
                # PostgreSQL cannot store U+0000, so a path or query parameter holding
                # one could only fail deeper down; refuse it here for every route.
                refusal = error_response(422, "NUL characters are not allowed in URLs")
                await refusal(scope, receive, send_with_id)
            elif (
                declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes
            ):
                # Answer before the app reads a byte. The server discards the rest of
                # the body as it arrives (no buffering), so the client, which is still
                # sending, gets to read this 413 instead of a reset connection.
                refusal = error_response(413, "request body too large")
                await refusal(scope, receive, send_with_id)
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        except ClientDisconnect:
            # Gone before its body was read: there is no one to answer, and the
            # request log line below is all there is to say about it.
            status = CLIENT_CLOSED
            outcome = " client disconnected"
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.in_flight -= 1
            self.metrics.observe(method, template, status, elapsed)
            path = printable(scope["path"])
            duration_ms = round(elapsed * 1000, 1)
            log.info(
                "%s %s %d %.1fms rid=%s trace=%s%s",
                method,
                path,
                status,
                duration_ms,
                request_id,
                span.trace_id,
                outcome,
                # The fields of a JSON line (titanium.logs). Built only for JSON: the
                # line format ignores them, and the dict is a tenth of the log call.
                extra={
                    "method": method,
                    "path": path,
                    "route": template,
                    "status": status,
                    "duration_ms": duration_ms,
                    "request_id": request_id,
                    "trace_id": span.trace_id,
                }
                if self.json_fields
                else None,
            )
            self.tracer.end_server(
                span, method, None if template == "unmatched" else template, status
            )
            span_var.reset(span_token)
            request_id_var.reset(token)

    def _shutting_down(self, send: Send) -> Send:
        tracer = self.tracer

        async def send_after_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # The exporter posts what is still batched: blocking I/O, off the loop.
                await asyncio.to_thread(tracer.shutdown)
            await send(message)

        return send_after_flush

    def _limited(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # HTTPException, because FastAPI turns other errors raised while
                    # reading the body into a 400.
                    raise HTTPException(413, "request body too large")
            return message

        return receive_limited


def _has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope["path"] or b"%00" in query or b"\x00" in query
