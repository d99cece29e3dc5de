"""W3C trace context for every request, and OpenTelemetry spans when they are exported.

Every request runs in a span: it continues the trace of a valid incoming
`traceparent` header or starts a new one, and every call to another service
names it (or, when spans are exported, the call's own client span) as the
parent. Without OTEL_EXPORTER_OTLP_ENDPOINT a span is only a pair of ids for the
logs and the outgoing header: the OpenTelemetry SDK is not even imported
(titanium.web.otel holds everything that needs it).
"""

import random
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientHandlerType

from titanium.config import Settings

TRACEPARENT = "traceparent"
# Version 00 exactly: lower-case hex only, and nothing after the flags. A later
# version, or any other spelling, is not one we can vouch for: a new trace starts.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
_SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A caller's valid `traceparent`: its trace, its span and whether it records."""

    trace_id: str
    parent_id: str
    sampled: bool


def parse_traceparent(value: str) -> TraceParent | None:
    """The W3C `traceparent` in `value`, or None when it is not a valid version-00 one."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_id, parent_id, flags = match.groups()
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_SPAN_ID:
        return None
    return TraceParent(trace_id, parent_id, bool(int(flags, 16) & _SAMPLED))


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> str:
    """The `traceparent` value naming `span_id` of `trace_id` as the parent."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def incoming_parent(headers: list[tuple[bytes, bytes]]) -> TraceParent | None:
    """The caller's trace in raw ASGI headers: None for none, an invalid one, or two."""
    found = None
    for name, value in headers:
        if name == b"traceparent":
            if found is not None:
                return None  # which one the caller meant is anyone's guess
            found = value
    return None if found is None else parse_traceparent(found.decode("latin-1"))


# Ids need to be unique, not secret (the OpenTelemetry SDK draws them the same
# way): `random` costs a third of `secrets` on every request.
def new_trace_id() -> str:
    """32 random hex digits, never all zero (the spec's invalid id)."""
    while (trace_id := f"{random.getrandbits(128):032x}") == _ZERO_TRACE_ID:
        pass
    return trace_id


def new_span_id() -> str:
    """16 random hex digits, never all zero."""
    while (span_id := f"{random.getrandbits(64):016x}") == _ZERO_SPAN_ID:
        pass
    return span_id


# Not frozen: a frozen dataclass sets each field through object.__setattr__,
# and one Span is made per request.
@dataclass(slots=True)
class Span:
    """The span of the request being handled: what logs and outgoing calls name.

    `exported` is the OpenTelemetry SDK's span when spans are exported, else None.
    """

    trace_id: str
    span_id: str
    sampled: bool
    tracer: "Tracer"
    exported: Any = None

    def traceparent(self) -> str:
        """The header value for a call made from this span."""
        return format_traceparent(self.trace_id, self.span_id, self.sampled)


class Tracer:
    """Spans as ids only: traces are continued and passed on, nothing is recorded.

    A new trace says it is not sampled (nothing recorded it); an incoming trace's
    flag is passed on as it came.
    """

    exporting = False

    def start_server(self, parent: TraceParent | None, method: str) -> Span:
        """The span of a request that has just arrived, `parent` its caller's trace."""
        if parent is None:
            return Span(new_trace_id(), new_span_id(), False, self)
        return Span(parent.trace_id, new_span_id(), parent.sampled, self)

    def end_server(self, span: Span, method: str, route: str | None, status: int) -> None:
        """Record the answered request; `route` is None when no route matched."""

    async def call(
        self, span: Span, request: ClientRequest, handler: ClientHandlerType, peer: str
    ) -> ClientResponse:
        """Make the outgoing `request` of `span` to the service `peer`, naming the trace."""
        request.headers[TRACEPARENT] = span.traceparent()
        return await handler(request)

    def shutdown(self) -> None:
        """Send what is still buffered and stop; blocks (run it off the event loop)."""


def open_tracer(settings: Settings, service: str) -> Tracer:
    """The tracer of the service named `service` (its public name)."""
    if settings.otel_exporter_otlp_endpoint is None:
        return Tracer()
    from titanium.web.otel import ExportingTracer

    return ExportingTracer(
        settings.otel_exporter_otlp_endpoint, service, settings.otel_traces_sampler_arg
    )
