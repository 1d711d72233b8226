"""OpenTelemetry spans of inference calls, exported to the SDK's in-memory exporter: a server span that
continues the caller's W3C traceparent, with its queue wait and its batch as children. A real server exporting
to an OTLP collector: tests/e2e/test_tracing.py."""

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
