"""Spans exported with the OpenTelemetry SDK over OTLP/HTTP (protobuf).

Imported only when OTEL_EXPORTER_OTLP_ENDPOINT is set: the SDK, the exporter and
protobuf cost memory every process would carry for nothing otherwise.
"""

from aiohttp import ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientHandlerType
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from titanium import __version__
from titanium.web.tracing import Span, TraceParent, Tracer, format_traceparent


def traces_url(endpoint: str) -> str:
    """Where OTLP/HTTP traces go for the base URL OTEL_EXPORTER_OTLP_ENDPOINT names."""
    return endpoint.rstrip("/") + "/v1/traces"


class ExportingTracer(Tracer):
    """One server span per request and one client span per call, batched to an OTLP receiver.

    A share `ratio` of traces is recorded, chosen by trace id (TraceIdRatioBased):
    every service picks the same traces, whatever the caller's sampled flag says
    (a client could otherwise keep its requests out of the traces).
    """

    exporting = True

    def __init__(self, endpoint: str, service: str, ratio: float = 1.0) -> None:
        resource = Resource.create({SERVICE_NAME: service, SERVICE_VERSION: __version__})
        self.provider = TracerProvider(resource=resource, sampler=TraceIdRatioBased(ratio))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(traces_url(endpoint))))
        self.tracer = self.provider.get_tracer("titanium", __version__)

    def start_server(self, parent: TraceParent | None, method: str) -> Span:
        """The request's server span, a child of the caller's span when there is one."""
        context = Context()
        if parent is not None:
            remote = SpanContext(
                int(parent.trace_id, 16),
                int(parent.parent_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED if parent.sampled else 0),
            )
            context = set_span_in_context(NonRecordingSpan(remote))
        exported = self.tracer.start_span(
            method, context, kind=SpanKind.SERVER, attributes={"http.request.method": method}
        )
        ids = exported.get_span_context()
        trace_id, span_id = format(ids.trace_id, "032x"), format(ids.span_id, "016x")
        return Span(trace_id, span_id, ids.trace_flags.sampled, self, exported)

    def end_server(self, span: Span, method: str, route: str | None, status: int) -> None:
        """Name the span after its route template, record the status and send it off."""
        exported = span.exported
        if route is not None:
            exported.update_name(f"{method} {route}")
            exported.set_attribute("http.route", route)
        exported.set_attribute("http.response.status_code", status)
        if status >= 500:
            exported.set_attribute("error.type", str(status))
            exported.set_status(StatusCode.ERROR)
        exported.end()

    async def call(
        self, span: Span, request: ClientRequest, handler: ClientHandlerType, peer: str
    ) -> ClientResponse:
        """The call in a client span of its own, which the callee names as its parent."""
        method = request.method
        attributes: dict[str, str | int] = {"http.request.method": method, "peer.service": peer}
        if request.url.host is not None:
            attributes["server.address"] = request.url.host
        if request.url.port is not None:
            attributes["server.port"] = request.url.port
        child = self.tracer.start_span(
            method,
            set_span_in_context(span.exported),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        ids = child.get_span_context()
        request.headers["traceparent"] = format_traceparent(
            span.trace_id, format(ids.span_id, "016x"), ids.trace_flags.sampled
        )
        try:
            response = await handler(request)
        except BaseException as exc:
            child.set_attribute("error.type", type(exc).__qualname__)
            child.set_status(StatusCode.ERROR)
            child.end()
            raise
        child.set_attribute("http.response.status_code", response.status)
        if response.status >= 400:  # a client span's error, by the conventions
            child.set_attribute("error.type", str(response.status))
            child.set_status(StatusCode.ERROR)
        child.end()
        return response

    def shutdown(self) -> None:
        """Export the spans still batched and stop the exporter's thread."""
        self.provider.shutdown()
