"""OpenTelemetry spans of inference calls, exported to the SDK's in-memory exporter: a server span that
continues the caller's W3C traceparent, with its queue wait and its batch as children."""

import asyncio

import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from serving.core.batching import BatchingOptions  # noqa: E402
from serving.core.dataplane import DataPlane  # noqa: E402
from serving.core.model_config import ModelSpec  # noqa: E402
from serving.core.pipeline import Call, Pipeline  # noqa: E402
from serving.core.repository import ModelManager  # noqa: E402
from serving.core.servable import Runtime  # noqa: E402
from serving.errors import ServingError  # noqa: E402
from serving.ops.tracing import Tracing, configured_endpoint  # noqa: E402
from tests.helpers import in_loop, make_linear  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def rows(call, servable):
    return servable.signature(None), {"inputs": np.asarray(call.context, np.float32)}


async def traced(tmp_path, *calls):
    make_linear(tmp_path / "lin", 1)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime = Runtime(BatchingOptions())
    manager = ModelManager(runtime=runtime)
    await manager.apply([ModelSpec("lin", str(tmp_path / "lin"), "linear")])
    pipeline = Pipeline(manager, DataPlane(runtime))
    pipeline.observe(Tracing(provider))
    for call in calls:
        try:
            await pipeline.infer(call)
        except ServingError:
            pass
    await asyncio.sleep(0)
    await manager.shutdown()
    runtime.shutdown()
    return exporter.get_finished_spans()


def a_call(model="lin", carrier=None):
    call = Call("tfserving_rest", model, None, None, rows, 1e18, context=[[2.0]], request_id="r-1")
    call.carrier = carrier
    return call


@in_loop
async def test_a_call_is_a_server_span_continuing_the_callers_trace_with_queue_and_batch_children(tmp_path):
    spans = await traced(tmp_path, a_call(carrier={b"traceparent": PARENT.encode(), b"content-type": b"x"}))
    by_name = {s.name: s for s in spans}
    server = by_name["tfserving_rest predict lin"]
    assert server.kind is SpanKind.SERVER and format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert server.attributes["serving.request_id"] == "r-1" and server.attributes["serving.version"] == 1
    for child in ("queue", "batch"):
        assert by_name[child].parent.span_id == server.context.span_id
    assert server.start_time <= by_name["queue"].end_time <= by_name["batch"].end_time <= server.end_time


@in_loop
async def test_without_a_traceparent_a_call_starts_a_trace_and_a_failure_is_an_error_span(tmp_path):
    spans = await traced(tmp_path, a_call(), a_call(model="nope"))
    server = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(server) == 2 and all(s.parent is None for s in server)
    failed = next(s for s in server if s.name.endswith("nope"))
    assert failed.status.status_code is StatusCode.ERROR and failed.status.description.startswith("NOT_FOUND")
    assert not [s for s in spans if s.parent is not None and s.parent.span_id == failed.context.span_id]


def test_the_endpoint_comes_from_the_flag_else_the_standard_variables():
    assert configured_endpoint("http://collector:4318", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}) == (
        "http://collector:4318")
    assert configured_endpoint("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}) == "http://x:4318"
    assert configured_endpoint("", {}) == ""


def test_a_server_exports_the_spans_of_its_calls_to_an_otlp_collector(tmp_path):
    """A real server, a real OTLP/HTTP receiver on loopback, the spans read back with OpenTelemetry's protos."""
    import http.server
    import threading

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.helpers import Server, free_port

    received = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, ExportTraceServiceRequest.FromString(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    collector = http.server.HTTPServer(("127.0.0.1", port), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    make_linear(tmp_path / "lin", 1)
    try:
        with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin",
                    f"--otel_exporter_otlp_endpoint=http://127.0.0.1:{port}") as s:
            assert s.post("/v1/models/lin:predict", {"instances": [[2.0]]}, headers={"traceparent": PARENT})[0] == 200
            s.stop()  # the exporter sends what it buffered
    finally:
        collector.shutdown()
        collector.server_close()
    spans = [span for path, request in received for resource in request.resource_spans
             for scope in resource.scope_spans for span in scope.spans]
    assert received and all(path == "/v1/traces" for path, _ in received)
    server = next(span for span in spans if span.name == "tfserving_rest predict lin")
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == "00f067aa0ba902b7"
    assert {span.name for span in spans if span.parent_span_id == server.span_id} == {"queue", "batch"}
