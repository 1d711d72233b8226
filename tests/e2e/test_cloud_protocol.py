"""The cloud processor protocol: protobuf bodies (tf_predict, pytorch_predict with snappy), the
signature route, and token auth on HTTP and gRPC."""

import email.utils
import json
import time

import cramjam
import grpc
import pytest

from serving._proto.eas import pytorch_predict_pb2, tf_predict_pb2
from serving._proto.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from serving.core.signature import Signature, TensorSpec
from serving.protocols.cloud.proto import decode_pytorch, encode_pytorch
from serving.transport.auth import sign
from tests.helpers import Server, make_linear

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("cloud")
    make_linear(root / "lin", 1)  # y = 0.5x + 2
    with Server(f"--model_base_path={root / 'lin'}", "--model_name=lin", env={"SERVING_TOKEN": TOKEN}) as s:
        yield s


def tf_request(values, signature_name="", output_filter=()):
    """A cloud tf_predict PredictRequest of one float column."""
    request = tf_predict_pb2.PredictRequest(signature_name=signature_name, output_filter=list(output_filter))
    array = request.inputs["inputs"]
    array.dtype = tf_predict_pb2.DT_FLOAT
    array.array_shape.dim.extend([len(values), 1])
    array.float_val.extend(values)
    return request.SerializeToString()


def auth(**extra):
    return {"Authorization": TOKEN, **extra}


def test_tf_predict_protobuf_body_gets_a_protobuf_answer(server):
    status, body = server.post("/api/predict/lin", tf_request([2.0, 4.0]),
                               headers=auth(**{"Content-Type": "application/octet-stream"}))
    assert status == 200
    response = tf_predict_pb2.PredictResponse.FromString(body)
    out = response.outputs["predictions"]
    assert list(out.float_val) == [3.0, 4.0] and list(out.array_shape.dim) == [2]
    assert out.dtype == tf_predict_pb2.DT_FLOAT


def test_protobuf_body_errors(server):
    status, body = server.post("/api/predict/lin", tf_request([1.0], output_filter=["nope"]), headers=auth())
    assert status == 400 and "output_filter names unknown output(s) nope" in body["error"]
    status, body = server.post("/api/predict/lin", b"\xff\xfe not protobuf", headers=auth())
    assert status == 400 and "neither JSON nor a valid tf_predict PredictRequest" in body["error"]
    status, body = server.post("/api/predict/lin", tf_request([1.0], signature_name="other"), headers=auth())
    assert status == 400 and 'Serving signature key "other" not found.' in body["error"]
    assert server.post("/api/predict/lin", [[2.0]], headers=auth()) == (200, [3.0])


def test_signature_route(server):
    status, body = server.request("GET", "/api/predict/lin", headers=auth())
    assert status == 200
    assert body == {"signature_name": "serving_default",
                    "inputs": [{"name": "inputs", "shape": [-1, 1], "type": "DT_FLOAT"}],
                    "outputs": [{"name": "predictions", "shape": [-1], "type": "DT_FLOAT"}]}


def test_token_is_required_on_predict_routes_not_on_health(server):
    assert server.post("/api/predict/lin", [[2.0]]) == (401, {"error": "missing Authorization token"})
    assert server.post("/api/predict/lin", [[2.0]], headers={"Authorization": "wrong"}) == (
        401, {"error": "invalid Authorization token"})
    assert server.post("/v1/models/lin:predict", {"instances": [[2.0]]})[0] == 401
    assert server.post("/v1/models/lin:predict", {"instances": [[2.0]]}, headers=auth()) == (
        200, {"predictions": [3.0]})
    v2 = {"inputs": [{"name": "inputs", "shape": [1, 1], "datatype": "FP32", "data": [2.0]}]}
    assert server.post("/v2/models/lin/infer", v2)[0] == 401
    assert server.post("/v2/models/lin/infer", v2, headers=auth())[0] == 200
    assert server.get("/healthz")[0] == 200 and server.get("/readyz")[0] == 200
    assert server.get("/v2/health/ready")[0] == 200


def test_signed_authorization(server):
    body = json.dumps([[2.0]]).encode()
    date = email.utils.formatdate(usegmt=True)
    headers = sign(TOKEN, "POST", "/api/predict/lin", body, "application/json", date)
    assert server.post("/api/predict/lin", body, headers=headers) == (200, [3.0])
    tampered = json.dumps([[9.0]]).encode()
    status, got = server.post("/api/predict/lin", tampered, headers=headers)
    assert (status, got["error"]) == (401, "Content-MD5 does not match the request body")
    wrong = sign("other-token", "POST", "/api/predict/lin", body, "application/json", date)
    assert server.post("/api/predict/lin", body, headers=wrong) == (401, {"error": "invalid Authorization signature"})


def test_grpc_requires_the_token_in_metadata(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "lin"
        with pytest.raises(grpc.RpcError) as e:
            stub.GetModelStatus(request)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = stub.GetModelStatus(request, metadata=[("authorization", TOKEN)])
        assert response.model_version_status[0].version == 1
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_pytorch_body_positional_and_snappy():
    import numpy as np

    f32 = np.dtype(np.float32)
    inputs = {"input__0": TensorSpec("input__0", f32, (-1, 2)), "input__1": TensorSpec("input__1", f32, (-1,))}
    outputs = {n: TensorSpec(n, f32, (-1,)) for n in ("output__0", "output__1")}
    sig = Signature("serving_default", inputs, outputs, output_order=("output__0", "output__1"))
    request = pytorch_predict_pb2.PredictRequest(output_filter=[1])
    a = request.inputs.add(dtype=pytorch_predict_pb2.DT_FLOAT)
    a.array_shape.dim.extend([1, 2])
    a.float_val.extend([1.0, 2.0])
    b = request.map_inputs["input__1"]
    b.dtype = pytorch_predict_pb2.DT_FLOAT
    b.array_shape.dim.extend([1])
    b.float_val.append(3.0)
    for body in (request.SerializeToString(), bytes(cramjam.snappy.compress_raw(request.SerializeToString()))):
        inputs, outputs = decode_pytorch(body, sig)
        assert inputs["input__0"].tolist() == [[1.0, 2.0]] and inputs["input__1"].tolist() == [3.0]
        assert outputs == ["output__1"]
    answer = pytorch_predict_pb2.PredictResponse.FromString(
        encode_pytorch({"output__1": np.array([7.0], np.float32)}, ["output__1"]))
    assert list(answer.outputs[0].float_val) == [7.0]


def test_token_file_and_the_signed_date_window_configure_the_server(tmp_path):
    make_linear(tmp_path / "lin", 1)
    (tmp_path / "token").write_text(TOKEN + "\n")
    body = json.dumps([[2.0]]).encode()
    old = email.utils.formatdate(time.time() - 120, usegmt=True)  # two minutes ago
    with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin", f"--token_file={tmp_path / 'token'}",
                "--token_max_skew_seconds=60") as s:
        assert s.post("/api/predict/lin", [[2.0]], headers=auth()) == (200, [3.0])
        assert s.post("/api/predict/lin", [[2.0]])[0] == 401
        headers = sign(TOKEN, "POST", "/api/predict/lin", body, "application/json", old)
        assert s.post("/api/predict/lin", body, headers=headers) == (
            401, {"error": "Date header is outside the allowed clock skew of 60 seconds"})
