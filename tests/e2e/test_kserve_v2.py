"""KServe V2 over REST and gRPC, driven by tritonclient (what Triton users and perf_analyzer speak)."""

import json

import numpy as np
import pytest

from tests.helpers import Server, make_linear, make_xgb, training_data

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient (test extra) is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient (test extra) is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    make_linear(root / "lin", 1, weights=[[1.0, 0.0], [0.0, 2.0]], bias=[0.5, -0.5])
    make_xgb(root / "xgb", 1)
    config = root / "c.pbtxt"
    config.write_text("model_config_list {\n" + "".join(
        f'config {{ name: "{n}" base_path: "{root / n}" model_platform: "{p}" }}\n'
        for n, p in (("lin", "linear"), ("xgb", "xgboost"))) + "}\n")
    with Server(f"--model_config_file={config}") as s:
        s.root = root
        yield s


X = np.array([[1.0, 1.0], [2.0, 3.0]], dtype=np.float32)
WANT = np.array([[1.5, 1.5], [2.5, 5.5]], dtype=np.float32)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_http_infer(server, binary):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("lin")
    meta = client.get_model_metadata("lin")
    assert meta["inputs"] == [{"name": "inputs", "datatype": "FP32", "shape": [-1, 2]}]
    inp = httpclient.InferInput("inputs", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    out = httpclient.InferRequestedOutput("predictions", binary_data=binary)
    result = client.infer("lin", [inp], outputs=[out])
    np.testing.assert_allclose(result.as_numpy("predictions"), WANT)
    client.close()


def test_tritonclient_grpc_infer_and_metadata(server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("xgb", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("xgb")
    assert meta.inputs[0].name == "inputs" and list(meta.inputs[0].shape) == [-1, 4]
    x, _ = training_data()
    inp = grpcclient.InferInput("inputs", [3, 4], "FP32")
    inp.set_data_from_numpy(x[:3])
    result = client.infer("xgb", [inp])
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(server.root / "xgb" / "1" / "model.json"))
    np.testing.assert_allclose(result.as_numpy("predictions"), booster.inplace_predict(x[:3]), rtol=1e-6)
    inp = grpcclient.InferInput("inputs", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    np.testing.assert_allclose(client.infer("lin", [inp]).as_numpy("predictions"), WANT)
    client.close()


def test_v2_errors_over_grpc(server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    bad = grpcclient.InferInput("inputs", [1, 2], "FP64")
    bad.set_data_from_numpy(np.zeros((1, 2), np.float64))
    with pytest.raises(InferenceServerException, match="unexpected datatype FP64 for input 'inputs', expecting FP32"):
        client.infer("lin", [bad])
    inp = grpcclient.InferInput("inputs", [1, 2], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 2), np.float32))
    with pytest.raises(InferenceServerException, match="Servable not found"):
        client.infer("nope", [inp])
    client.close()


def test_v2_rest_routes_and_errors(server):
    assert server.get("/v2/health/live")[0] == 200
    assert server.get("/v2/health/ready")[0] == 200
    status, body = server.get("/v2")
    assert status == 200 and body["name"] == "serving-engine" and "binary_tensor_data" in body["extensions"]
    assert server.get("/v2/models/lin/versions/1/ready")[0] == 200
    assert server.get("/v2/models/nope/ready")[0] == 400
    status, body = server.get("/v2/models/lin/versions/1")
    assert status == 200 and body["versions"] == ["1"] and body["platform"] == "linear"
    request = {"id": "r1", "inputs": [{"name": "inputs", "shape": [2, 2], "datatype": "FP32",
                                       "data": [1.0, 1.0, 2.0, 3.0]}]}
    status, body = server.post("/v2/models/lin/infer", request)
    assert status == 200 and body["id"] == "r1" and body["model_version"] == "1"
    assert body["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [2, 2],
                                "data": [1.5, 1.5, 2.5, 5.5]}]
    for doc, message in [
        ({"inputs": [{"name": "inputs", "shape": [2, 2], "datatype": "FP32", "data": [1.0]}]},
         "unexpected number of elements 1"),
        ({"inputs": [{"name": "inputs", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]},
         "unexpected datatype INT64"),
        ({"inputs": [{"name": "inputs", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
          "outputs": [{"name": "nope"}]}, "unexpected inference output 'nope'"),
        ({"nothing": 1}, "'inputs' list"),
    ]:
        status, body = server.post("/v2/models/lin/infer", doc)
        assert status == 400 and message in body["error"], (doc, body)
    assert server.post("/v2/models/lin/versions/x/infer", request)[0] == 400
    assert server.post("/v2/models/nope/infer", request)[0] == 404
    status, body = server.request("GET", "/v2/models/lin/config")
    assert status == 200 and body["max_batch_size"] > 0 and body["input"][0]["dims"] == [2]


def test_binary_extension_by_hand(server):
    x = np.array([[2.0, 4.0]], dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "inputs", "shape": [1, 2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 8}}],
                         "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}]}).encode()
    status, raw = server.post("/v2/models/lin/infer", header + x.tobytes(),
                              headers={"Inference-Header-Content-Length": str(len(header))})
    assert status == 200
    length = json.loads(raw[: raw.index(b"}]}") + 3])
    out = length["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 8
    blob = raw[-8:]
    assert np.frombuffer(blob, np.float32).tolist() == [2.5, 7.5]


def test_model_config_for_perf_analyzer(server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    config = client.get_model_config("lin").config
    assert config.max_batch_size > 0 and config.input[0].name == "inputs" and list(config.input[0].dims) == [2]
    assert config.input[0].data_type == 11  # TYPE_FP32
    client.close()
