"""Request ids, the access log and the server's log format against the real server over HTTP and gRPC:
which requests the default log writes (failures, slow ones, a sample) and `--access_log=all` (every one),
inference details, gRPC lines, --log_format=json, secrets never written. In process through HttpConnection on
a fake transport: tests/unit/ops/test_access_log.py."""

from __future__ import annotations

import http.client
import json
import re
from email.utils import formatdate
from pathlib import Path

import grpc
import pytest

from serving._proto.tensorflow.core.framework import tensor_pb2
from serving._proto.tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from serving.transport.auth import sign
from tests.helpers import Server, make_linear, wait_until

GENERATED_ID = re.compile(r"[0-9a-f]{20}\Z")
TOKEN = "tok-7f3a9c1e5b"


def access_lines(server: Server, **match: object) -> list[dict]:
    """The server's access log lines (its standard output) whose fields have the given values."""
    out = []
    for text in server.output().splitlines():
        if text.startswith('{"time"') and '"route"' in text:
            line = json.loads(text)
            if all(line.get(k) == v for k, v in match.items()):
                out.append(line)
    return out


def one_line(server: Server, **match: object) -> dict:
    [line] = wait_until(lambda: access_lines(server, **match), what=f"an access log line {match}")
    return line


def predict_request(model: str, rows: list[float]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    t = tensor_pb2.TensorProto(dtype=1)
    t.tensor_shape.dim.add().size = len(rows)
    t.tensor_shape.dim.add().size = 1
    t.float_val.extend(rows)
    request.inputs["inputs"].CopyFrom(t)
    return request


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server logging every request (`--access_log=all`), so that each test finds the line it looks for."""
    root = tmp_path_factory.mktemp("accesslog")
    make_linear(root / "lin", 1)  # y = 0.5x + 2, input "inputs"
    with Server(f"--model_base_path={root / 'lin'}", "--model_name=lin", "--model_platform=linear",
                "--log_format=json", f"--model_load_roots={root}", "--access_log=all") as s:
        s.root = root
        yield s


def test_access_log_all_writes_a_line_for_every_request(server):
    for i in range(20):
        assert server.post("/v1/models/lin:predict", {"instances": [[1.0]]},
                           headers={"X-Request-Id": f"every-{i}"})[0] == 200
    wait_until(lambda: access_lines(server, request_id="every-19"), what="the last line")
    assert [line["request_id"] for line in access_lines(server, route="POST /v1/models/lin:predict")
            if line["request_id"].startswith("every-")] == [f"every-{i}" for i in range(20)]


def predict(server: Server, model: str, request_id: str, instances: object = ((1.0,),)) -> int:
    """The status of a TF Serving REST predict for `model`, sent with `request_id`."""
    return server.post(f"/v1/models/{model}:predict", {"instances": instances},
                       headers={"X-Request-Id": request_id})[0]


def two_models(root: Path, delay_ms: int) -> Path:
    """A config serving `lin` (y = 0.5x + 2) and `slow`, the same model answering after `delay_ms`."""
    make_linear(root / "lin", 1)
    make_linear(root / "slow", 1, delay_ms=delay_ms)
    config = root / "models.pbtxt"
    config.write_text("model_config_list { " + " ".join(
        f'config {{ name: "{name}" base_path: "{root / name}" model_platform: "linear" }}'
        for name in ("lin", "slow")) + " }")
    return config


def test_by_default_failures_and_slow_requests_are_logged_and_fast_successes_mostly_not(tmp_path):
    with Server(f"--model_config_file={two_models(tmp_path, delay_ms=300)}", "--access_log_slow_ms=200") as s:
        assert [predict(s, "lin", f"fast-{i}") for i in range(100)] == [200] * 100
        assert predict(s, "lin", "bad", "x") == 400
        assert predict(s, "slow", "slow") == 200
        slow = one_line(s, request_id="slow")  # lines are written in order: the fast ones' too, by now
        assert (one_line(s, request_id="bad")["status"], slow["status"]) == (400, 200) and slow["total_ms"] >= 300
        fast = [line for line in access_lines(s) if line["request_id"].startswith("fast-")]
        assert len(fast) <= 10, fast  # the 1% sample: one expected


def test_with_sample_rate_zero_no_fast_success_is_logged(tmp_path):
    make_linear(tmp_path / "lin", 1)
    with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin", "--model_platform=linear",
                "--access_log_sample_rate=0") as s:
        assert [predict(s, "lin", f"fast-{i}") for i in range(50)] == [200] * 50
        assert predict(s, "nope", "last") == 404
        one_line(s, request_id="last")  # written after the fast ones'
        assert [line["request_id"] for line in access_lines(s)] == ["last"]


def test_http_inference_lines_carry_model_version_signature_rows_status_and_timings(server):
    status, body = server.post("/v1/models/lin:predict", {"instances": [[1.0], [2.0], [3.0]]},
                               headers={"X-Request-Id": "e2e-predict"})
    assert (status, body) == (200, {"predictions": [2.5, 3.0, 3.5]})
    line = one_line(server, request_id="e2e-predict")
    assert {k: line[k] for k in ("protocol", "route", "model", "version", "signature", "status", "rows")} == {
        "protocol": "tfserving_rest", "route": "POST /v1/models/lin:predict", "model": "lin", "version": 1,
        "signature": "serving_default", "status": 200, "rows": 3}
    assert 0 <= line["queue_ms"] and 0 <= line["compute_ms"] and line["compute_ms"] <= line["total_ms"]
    assert line["bytes_in"] == len(json.dumps({"instances": [[1.0], [2.0], [3.0]]}))
    status, _ = server.post("/v1/models/nope:predict", {"instances": [[1.0]]}, headers={"X-Request-Id": "e2e-404"})
    assert status == 404
    line = one_line(server, request_id="e2e-404")
    assert (line["model"], line["status"], line["rows"]) == ("nope", 404, None)


def test_kserve_body_id_is_echoed_in_the_body_and_the_request_id_is_the_header(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v2/models/lin/infer", json.dumps(
        {"id": "body-id", "inputs": [{"name": "inputs", "shape": [2, 1], "datatype": "FP32", "data": [1, 2]}]}))
    response = conn.getresponse()
    body = json.loads(response.read())
    rid = response.getheader("X-Request-Id")
    conn.close()
    assert (response.status, body["id"]) == (200, "body-id")
    assert GENERATED_ID.match(rid), rid
    line = one_line(server, request_id=rid)
    assert (line["protocol"], line["rows"], line["status"]) == ("kserve_rest", 2, 200)


def test_health_probes_are_not_logged_by_default(server):
    server.get("/healthz")
    server.get("/v2/health/ready")
    server.post("/v1/models/lin:predict", {"instances": [[1.0]]}, headers={"X-Request-Id": "after-health"})
    one_line(server, request_id="after-health")
    assert access_lines(server, route="GET /healthz") == access_lines(server, route="GET /v2/health/ready") == []


def test_grpc_calls_answer_their_request_id_and_are_logged_with_their_code(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        _, call = stub.Predict.with_call(predict_request("lin", [1.0, 2.0]), metadata=[("x-request-id", "g-1")])
        assert ("x-request-id", "g-1") in call.trailing_metadata()
        _, call = stub.Predict.with_call(predict_request("lin", [3.0]))  # no id sent, a success: none sent back
        assert "x-request-id" not in dict(call.trailing_metadata() or ())
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(predict_request("nope", [1.0]))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        rid = dict(e.value.trailing_metadata())["x-request-id"]
    assert GENERATED_ID.match(rid), rid
    line = one_line(server, request_id="g-1")
    assert {k: line[k] for k in ("protocol", "route", "model", "version", "signature", "status", "rows")} == {
        "protocol": "tfserving_grpc", "route": "/tensorflow.serving.PredictionService/Predict", "model": "lin",
        "version": 1, "signature": "serving_default", "status": "OK", "rows": 2}
    assert line["remote"].startswith("ipv4:127.0.0.1:") and line["bytes_in"] > 0 and line["bytes_out"] > 0
    line = one_line(server, request_id=rid)
    assert (line["status"], line["model"]) == ("NOT_FOUND", "nope")


def test_log_format_json_writes_objects_and_the_request_id_of_a_log_line_about_a_request(server):
    startup = [json.loads(t) for t in server.output().splitlines() if "listening on" in t]
    assert startup and set(startup[0]) == {"time", "level", "logger", "message"}
    config = model_management_pb2.ReloadConfigRequest()
    model = config.config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = "gone", str(server.root / "missing"), "linear"
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            config, metadata=[("x-request-id", "reload-1")])
    warning = wait_until(lambda: [json.loads(t) for t in server.output().splitlines()
                                  if "ReloadConfigRequest not applied" in t], what="the reload warning")
    assert {k: warning[0][k] for k in ("level", "logger", "request_id")} == {
        "level": "WARNING", "logger": "serving.protocols.tfserving.rpc", "request_id": "reload-1"}


def test_no_token_bearer_value_or_signature_is_ever_logged_even_with_access_log_all(tmp_path):
    make_linear(tmp_path / "lin", 1)
    body = json.dumps([[1.0]]).encode()
    date = formatdate(usegmt=True)
    signed = sign(TOKEN, "POST", "/api/predict/lin", body, "application/json", date)
    forged = sign("not-the-token", "POST", "/api/predict/lin", body, "application/json", date)
    bearer = "Bearer secret-token"  # not a form the server takes: refused, and its value not written either
    with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin", "--model_platform=linear",
                f"--token={TOKEN}", "--access_log=all", "--log_level=DEBUG") as s:
        statuses = [s.post("/api/predict/lin", body, headers=h)[0] for h in (
            {"Authorization": TOKEN}, signed, {"Authorization": TOKEN + "x"}, forged, {}, {"Authorization": bearer})]
        assert statuses == [200, 200, 401, 401, 401, 401]
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(predict_request("lin", [1.0]), metadata=[("authorization", TOKEN)])
            for refused in (TOKEN + "x", bearer):
                with pytest.raises(grpc.RpcError):
                    stub.Predict(predict_request("lin", [1.0]), metadata=[("authorization", refused)])
        wait_until(lambda: len(access_lines(s, route="POST /api/predict/lin")) == 6, what="six access lines")
        assert [line["status"] for line in access_lines(s, route="POST /api/predict/lin")] == statuses
        grpc_route = "/tensorflow.serving.PredictionService/Predict"
        wait_until(lambda: len(access_lines(s, route=grpc_route)) == 3, what="three gRPC access lines")
        assert [line["status"] for line in access_lines(s, route=grpc_route)] == [
            "OK", "UNAUTHENTICATED", "UNAUTHENTICATED"]
        assert s.stop() == 0
        output = s.output()
    secrets = [TOKEN, signed["Authorization"], signed["Authorization"][4:], forged["Authorization"][4:],
               "secret-token"]
    assert [secret for secret in secrets if secret in output] == []  # in no access log line, nor anywhere
