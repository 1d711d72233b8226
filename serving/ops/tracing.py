"""W3C trace context and OpenTelemetry spans, optional.

Each inference call keeps what carries its caller's trace context (`Call.carrier`: the HTTP headers, or
the gRPC call context whose metadata holds `traceparent` / `tracestate`). With the `otel` extra installed
(`pip install serving-engine[otel]`) and an OTLP endpoint configured (`--otel_exporter_otlp_endpoint`, or
the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), the `Tracing` observer
exports, for every inference call, a server span (a child of the caller's `traceparent` when there is one)
with two children, its wait in the batch queue and its batch's computation, through opentelemetry-sdk's
BatchSpanProcessor (a thread of its own) and OTLP/HTTP exporter. Spans are made when the call has finished,
with the instants the pipeline measured, so nothing is held open on the hot path. Without the extra or an
endpoint, nothing from opentelemetry is imported and no observer is attached.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.pipeline import Call, Timings
    from ..errors import ServingError
    from ..settings import Settings

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configured_endpoint(flag: str, environ: Mapping[str, str] | None = None) -> str:
    """The OTLP endpoint to export to: the flag, else the standard OpenTelemetry variables; "" for none."""
    env = os.environ if environ is None else environ
    return flag or next((env[v] for v in ENDPOINT_VARIABLES if env.get(v)), "")


def otlp_tracing(flag: str, service_name: str) -> Tracing:
    """A Tracing observer exporting over OTLP/HTTP: to `flag` (a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT) or,
    without it, where the standard variables say. ImportError without the `otel` extra."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=flag.rstrip("/") + "/v1/traces") if flag else OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)


class Tracing:
    """A request pipeline observer that turns each finished call into OpenTelemetry spans."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("serving-engine")
        self.propagator = TraceContextTextMapPropagator()
        self._trace, self._server, self._error = trace, SpanKind.SERVER, (Status, StatusCode.ERROR)
        # perf_counter() instants -> epoch nanoseconds
        self.offset_ns = time.time_ns() - time.perf_counter_ns()

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None:
        start = self._ns(call.received)
        end = start + int(timings.total * 1e9)
        servable = call.servable
        attributes: dict[str, str | int] = {"serving.protocol": call.protocol, "serving.method": call.method,
                                            "serving.model": call.model}
        if servable is not None:
            attributes["serving.version"] = servable.version
        if call.request_id:
            attributes["serving.request_id"] = call.request_id
        span = self.tracer.start_span(f"{call.protocol} {call.method} {call.model}", context=self._parent(call),
                                      kind=self._server, start_time=start, attributes=attributes)
        if call.dispatched and span.is_recording():  # a span the sampler dropped gets no children
            inside = self._trace.set_span_in_context(span)
            dispatched = self._ns(call.dispatched)
            self.tracer.start_span("queue", context=inside, start_time=start).end(end_time=dispatched)
            computed = self._ns(call.computed) if call.computed else end
            self.tracer.start_span("batch", context=inside, start_time=dispatched).end(end_time=computed)
        if error is not None:
            status, code = self._error
            span.set_status(status(code, f"{error.code.name}: {error.message}"))
        span.end(end_time=end)

    def shutdown(self) -> None:
        """Export what is buffered (at the server's stop)."""
        self.provider.shutdown()

    def _ns(self, perf_counter_s: float) -> int:
        return self.offset_ns + int(perf_counter_s * 1e9)

    def _parent(self, call: Call) -> Any:
        carrier = call.carrier
        if carrier is None:
            return None
        if isinstance(carrier, Mapping):  # HTTP headers: lower-case bytes
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in carrier.items()
                       if k in (b"traceparent", b"tracestate")}
        else:  # a grpc.aio.ServicerContext
            headers = {k: v for k, v in carrier.invocation_metadata() or () if k in ("traceparent", "tracestate")}
        return self.propagator.extract(headers) if headers else None


def tracing_from_settings(settings: Settings) -> Tracing | None:
    """The OpenTelemetry observer when an OTLP endpoint is configured (serving/ops/tracing.py), else None."""
    if not configured_endpoint(settings.otel_exporter_otlp_endpoint):
        return None
    try:
        return otlp_tracing(settings.otel_exporter_otlp_endpoint, settings.model_name)
    except ImportError:
        log.error("an OTLP endpoint is set but OpenTelemetry is not installed: pip install serving-engine[otel]; "
                  "no spans are exported")
        return None
