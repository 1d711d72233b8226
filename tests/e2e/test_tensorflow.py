"""The TensorFlow SavedModel processor: TF Serving's hand-checkable answers over REST and gRPC."""

import base64
import json

import grpc
import numpy as np
import pytest

from serving._proto.tensorflow.core.example import example_pb2
from serving._proto.tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tests.helpers import Server
from tests.tf_models import bf16_model, half_plus_two, text_model

pytest.importorskip("tensorflow", reason="tensorflow-cpu (extra tensorflow) is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf")
    half_plus_two(root / "half" / "1", a=0.5, b=2.0)
    half_plus_two(root / "half" / "2", a=0.5, b=3.0)
    text_model(root / "text" / "1")
    bf16_model(root / "bf16" / "1")
    config = root / "c.pbtxt"
    config.write_text(
        'model_config_list {\n'
        f'  config {{ name: "half" base_path: "{root / "half"}" model_platform: "tensorflow" '
        'model_version_policy { all {} } }\n'
        f'  config {{ name: "text" base_path: "{root / "text"}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "bf16" base_path: "{root / "bf16"}" model_platform: "tensorflow" }}\n'
        '}\n')
    with Server(f"--model_config_file={config}") as s:
        yield s


def test_tf_serving_answers_for_half_plus_two(server):
    assert server.post("/v1/models/half/versions/1:predict", {"instances": [2.0, 3.0, 4.0]}) == (
        200, {"predictions": [3.0, 3.5, 4.0]})
    assert server.post("/v1/models/half/versions/1:regress", {
        "signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}) == (200, {"results": [3.0]})
    assert server.post("/v1/models/half/versions/1:classify", {
        "signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == (200, {"results": [[["", 3.0]]]})
    assert server.post("/v1/models/half:predict", {"instances": [2.0]}) == (200, {"predictions": [4.0]})  # v2


def test_metadata_as_tf_serving_writes_it(server):
    status, body = server.get("/v1/models/half/versions/1/metadata")
    assert status == 200
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "classify_x_to_y", "regress_x_to_y"}
    x = sigs["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and x["name"] == "x:0"
    assert x["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert sigs["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"
    assert sigs["regress_x_to_y"]["outputs"]["outputs"]["dtype"] == "DT_FLOAT"


def test_errors(server):
    status, body = server.post("/v1/models/half:classify", {"examples": [{"x": 2.0}]})
    assert status == 400 and "Expected classification signature method_name" in body["error"]
    status, body = server.post("/v1/models/half:predict", {"signature_name": "nope", "instances": [1.0]})
    assert status == 400 and 'Serving signature key "nope" not found.' in body["error"]
    status, body = server.post("/v1/models/half:predict", {"instances": [[1.0, 2.0]]})
    assert status == 400 and "expects shape [-1]" in body["error"]
    status, body = server.post("/v1/models/half:predict", {"instances": ["a"]})
    assert status == 400 and "is not of expected type: float" in body["error"]
    status, body = server.post("/v1/models/half:regress", {"signature_name": "regress_x_to_y", "instances": [1]})
    assert status == 400 and "key 'examples' is expected" in body["error"]


def test_string_inputs_and_b64_outputs(server):
    status, body = server.post("/v1/models/text:predict", {"instances": [
        {"words": "hello", "scale": 2.0}, {"words": {"b64": base64.b64encode(b"ab").decode()}, "scale": 1.0}]})
    assert status == 200
    assert [p["length"] for p in body["predictions"]] == [10.0, 2.0]
    assert body["predictions"][1]["echo_bytes"] == {"b64": base64.b64encode(b"ab").decode()}


def test_grpc_classify_and_regress(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(2.0)
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "half"
        request.model_spec.version.value = 1
        request.model_spec.signature_name = "regress_x_to_y"
        request.input.example_list.examples.append(example)
        response = stub.Regress(request)
        assert [r.value for r in response.result.regressions] == [3.0]
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "half"
        request.model_spec.version.value = 1
        request.model_spec.signature_name = "classify_x_to_y"
        request.input.example_list.examples.append(example)
        response = stub.Classify(request)
        assert [(c.label, c.score) for c in response.result.classifications[0].classes] == [("", 3.0)]


def test_batched_answers_equal_unbatched(server):
    import threading

    results = []

    def one(x):
        client = Server.__new__(Server)
        client.port, client.conn = server.port, None
        results.append((x, client.post("/v1/models/half/versions/1:predict", {"instances": [x, x + 1]})))
        client.conn.close()

    threads = [threading.Thread(target=one, args=(float(i),)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, (status, body) in results:
        assert status == 200 and np.allclose(body["predictions"], [0.5 * x + 2, 0.5 * (x + 1) + 2])


def test_bfloat16_model_serves_binary_protocols_and_refuses_json_input_as_tf_serving(server):
    import ml_dtypes

    status, body = server.get("/v1/models/bf16/metadata")
    assert status == 200
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["x"]["dtype"] == "DT_BFLOAT16" and sig["outputs"]["y"]["dtype"] == "DT_BFLOAT16"
    status, body = server.post("/v1/models/bf16:predict", {"instances": [1.5]})
    assert status == 501 and "to type: bfloat16" in body["error"]
    x = np.array([1.5, -2.0, 3.0], dtype=ml_dtypes.bfloat16)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for content in (False, True):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "bf16"
            tensor = request.inputs["x"]
            tensor.dtype = 14  # DT_BFLOAT16
            tensor.tensor_shape.dim.add().size = 3
            if content:
                tensor.tensor_content = x.tobytes()
            else:
                tensor.half_val.extend(x.view(np.uint16).tolist())  # the 16-bit patterns, as TensorFlow writes them
            response = stub.Predict(request)
            y = response.outputs["y"]
            assert y.dtype == 14
            y_values = np.array(y.half_val, np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
            assert y_values.tolist() == [4.0, -3.0, 7.0]
            assert list(response.outputs["y32"].float_val) == [4.0, -3.0, 7.0]
    # KServe V2 with the binary tensor extension: BF16 in; the JSON answer writes bfloat16 as exact float32 numbers.
    header = json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "BF16",
                                       "parameters": {"binary_data_size": 6}}]}).encode()
    status, doc = server.request("POST", "/v2/models/bf16/infer", header + x.tobytes(),
                                 {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["y"]["datatype"] == "BF16" and outputs["y"]["data"] == [4.0, -3.0, 7.0]


def test_grpc_multi_inference_as_tf_serving_answers_it(server):
    def request(*tasks, x=2.0):
        req = inference_pb2.MultiInferenceRequest()
        for signature, method, model in tasks:
            task = req.tasks.add(method_name=f"tensorflow/serving/{method}")
            task.model_spec.name = model
            task.model_spec.version.value = 1
            task.model_spec.signature_name = signature
        if x is not None:
            req.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
        return req

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.MultiInference(request(("regress_x_to_y", "regress", "half"),
                                               ("classify_x_to_y", "classify", "half")))
        regression, classification = response.results
        assert [r.value for r in regression.regression_result.regressions] == [3.0]
        assert regression.model_spec.signature_name == "regress_x_to_y" and regression.model_spec.version.value == 1
        classes = classification.classification_result.classifications[0].classes
        assert [(c.label, c.score) for c in classes] == [("", 3.0)]
        for tasks, x, code, text in [
            ((("regress_x_to_y", "regress", "half"), ("regress_x_to_y", "regress", "half")), 2.0,
             grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x_to_y"),
            ((("regress_x_to_y", "regress", "half"), ("regress_x_to_y", "regress", "text")), 2.0,
             grpc.StatusCode.INVALID_ARGUMENT, "must access the same model name"),
            ((("serving_default", "predict", "half"),), 2.0, grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature"),
            ((("regress_x_to_y", "regress", "half"),), None, grpc.StatusCode.INVALID_ARGUMENT, "Input is empty"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                stub.MultiInference(request(*tasks, x=x))
            assert e.value.code() == code and text in e.value.details()
