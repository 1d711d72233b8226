"""A real server exports the OpenTelemetry spans of its calls to an OTLP/HTTP collector on loopback. The
spans themselves, in process: tests/unit/ops/test_tracing.py."""

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from tests.helpers import make_linear  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


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
