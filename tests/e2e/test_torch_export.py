"""The torch_export processor served over every protocol (TF Serving REST and gRPC Predict, KServe V2 REST and
gRPC, the cloud route's JSON and pytorch_predict bodies), on an ExportedProgram and an AOTInductor package made at
test time (tests/unit/processors/test_torch_export.py): answers equal `torch.export.load(...).module()` and
`aoti_load_package(...)` run here, metadata names the inputs, a wrong shape or a batch past the Dim is a 400."""

import threading

import grpc
import numpy as np
import pytest

from serving._proto.eas import pytorch_predict_pb2
from serving._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tests.helpers import Server, pbtxt

torch = pytest.importorskip("torch", reason="torch (extra torch) is not installed")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient (test extra) is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient (test extra) is not installed")

from tests.e2e.test_grpc import tensor  # noqa: E402
from tests.unit.processors.test_torch_export import MAX_BATCH, X, Z, aoti_package, save_program  # noqa: E402

NAMES = {"ep": ("features", "offset"), "aoti": ("input_0", "input_1")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt2")
    _, ep_dir = save_program(root / "ep")
    _, aoti_dir = aoti_package(tmp_path_factory)
    config = root / "c.pbtxt"
    config.write_text(pbtxt({"name": "ep", "base_path": ep_dir.parent, "platform": "torch_export"},
                            {"name": "aoti", "base_path": aoti_dir.parent, "platform": "pt2"}))
    with torch.inference_mode():
        program = torch.export.load(str(ep_dir / "model.pt2")).module()
        compiled = torch._inductor.aoti_load_package(str(aoti_dir / "model.pt2"))
    with Server(f"--model_config_file={config}", "--max_batch_size=48") as s:
        s.want = {}
        for name, model in (("ep", program), ("aoti", compiled)):
            with torch.inference_mode():
                s.want[name] = [t.numpy() for t in model(torch.from_numpy(X), torch.from_numpy(Z))]
        yield s


def client_of(server):
    client = Server.__new__(Server)
    client.port, client.conn = server.port, None
    return client


pytestmark = pytest.mark.timeout(900)  # the module's server waits for the package's compile


@pytest.mark.parametrize("model", ["ep", "aoti"])
def test_metadata_names_the_inputs_on_tf_serving_and_kserve_routes(server, model):
    first, second = NAMES[model]
    status, body = server.get(f"/v1/models/{model}/metadata")
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert status == 200 and list(sig["inputs"]) == [first, second] and list(sig["outputs"]) == ["output_0",
                                                                                                  "output_1"]
    assert [d["size"] for d in sig["inputs"][first]["tensor_shape"]["dim"]] == ["-1", "3"]
    status, body = server.get(f"/v2/models/{model}")
    assert status == 200 and body["inputs"] == [{"name": first, "datatype": "FP32", "shape": [-1, 3]},
                                                {"name": second, "datatype": "FP32", "shape": [-1]}]
    meta = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}").get_model_metadata(model)
    assert [i.name for i in meta.inputs] == [first, second] and list(meta.inputs[0].shape) == [-1, 3]


@pytest.mark.parametrize("model", ["ep", "aoti"])
def test_tf_rest_batched_answers_equal_the_models_run_here(server, model):
    first, second = NAMES[model]
    want = server.want[model]
    status, body = server.post(f"/v1/models/{model}:predict", {"instances": [
        {first: X[i].tolist(), second: float(Z[i])} for i in range(3)]})
    assert status == 200
    np.testing.assert_allclose([r["output_0"] for r in body["predictions"]], want[0], rtol=1e-5)
    results = []

    def one(i):  # 3-row requests joined into batches of up to 48 rows, run in pieces of MAX_BATCH
        client = client_of(server)
        results.append(client.post(f"/v1/models/{model}:predict", {"inputs": {first: X.tolist(),
                                                                              second: Z.tolist()}}))
        client.conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16
    for status, body in results:
        assert status == 200, body
        np.testing.assert_allclose(body["outputs"]["output_0"], want[0], rtol=1e-5)
        np.testing.assert_allclose(body["outputs"]["output_1"], want[1], rtol=1e-5)


@pytest.mark.parametrize("model", ["ep", "aoti"])
def test_kserve_v2_rest_and_grpc_answer_as_the_model(server, model):
    first, second = NAMES[model]
    want = server.want[model]
    for module, address in ((httpclient, f"127.0.0.1:{server.port}"), (grpcclient, f"127.0.0.1:{server.grpc_port}")):
        client = module.InferenceServerClient(address)
        inputs = [module.InferInput(first, list(X.shape), "FP32"), module.InferInput(second, list(Z.shape), "FP32")]
        inputs[0].set_data_from_numpy(X)
        inputs[1].set_data_from_numpy(Z)
        result = client.infer(model, inputs)
        np.testing.assert_allclose(result.as_numpy("output_0"), want[0], rtol=1e-5)
        np.testing.assert_allclose(result.as_numpy("output_1"), want[1], rtol=1e-5)
        client.close()


@pytest.mark.parametrize("model", ["ep", "aoti"])
def test_tf_serving_grpc_predict_answers_as_the_model(server, model):
    first, second = NAMES[model]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs[first].CopyFrom(tensor(X))
        request.inputs[second].CopyFrom(tensor(Z))
        response = stub.Predict(request, timeout=30)
        np.testing.assert_allclose(np.array(response.outputs["output_0"].float_val).reshape(3, 2),
                                   server.want[model][0], rtol=1e-5)
        request.inputs[first].CopyFrom(tensor(np.zeros((1, 2), np.float32)))
        request.inputs[second].CopyFrom(tensor(np.zeros(1, np.float32)))
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request, timeout=30)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"input '{first}' expects shape [-1,3], got [1,2]" in e.value.details()


@pytest.mark.parametrize("model", ["ep", "aoti"])
def test_the_cloud_route_takes_json_rows_and_pytorch_predict_bodies(server, model):
    first, second = NAMES[model]
    want = server.want[model]
    status, body = server.post(f"/api/predict/{model}", [{first: X[i].tolist(), second: float(Z[i])}
                                                         for i in range(3)])
    assert status == 200
    np.testing.assert_allclose([r["output_1"] for r in body], want[1], rtol=1e-5)
    request = pytorch_predict_pb2.PredictRequest(output_filter=[1])
    for array in (X, Z):
        item = request.inputs.add(dtype=pytorch_predict_pb2.DT_FLOAT)
        item.array_shape.dim.extend(array.shape)
        item.float_val.extend(array.ravel().tolist())
    status, body = server.post(f"/api/predict/{model}", request.SerializeToString())
    assert status == 200
    response = pytorch_predict_pb2.PredictResponse.FromString(body)
    np.testing.assert_allclose(response.outputs[0].float_val, want[1], rtol=1e-5)


@pytest.mark.parametrize("model", ["ep", "aoti"])
def test_a_wrong_shape_or_a_batch_past_the_dim_is_a_400_and_the_model_serves_on(server, model):
    first, second = NAMES[model]
    rows = MAX_BATCH + 1
    for doc, message in [
        ({"inputs": {first: [[1.0, 2.0]], second: [0.0]}}, f"input '{first}' expects shape [-1,3], got [1,2]"),
        ({"inputs": {first: [[1.0, 2.0, 3.0]] * rows, second: [0.0] * rows}},
         f"input '{first}' dimension 0 is {rows}, outside the range the model was exported with (1 to {MAX_BATCH}, "
         "torch.export.Dim)"),
        ({"inputs": {first: [[1.0, 2.0, 3.0]]}}, f"Missing named input: {second}"),
    ]:
        status, body = server.post(f"/v1/models/{model}:predict", doc)
        assert status == 400 and message in body["error"], body
    status, body = server.post(f"/v2/models/{model}/infer", {"inputs": [
        {"name": first, "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]},
        {"name": second, "datatype": "FP32", "shape": [1], "data": [0.0]}]})
    assert status == 400 and f"input '{first}' expects shape [-1,3], got [1,4]" in body["error"], body
    status, body = server.post(f"/v1/models/{model}:predict", {"inputs": {first: X.tolist(), second: Z.tolist()}})
    assert status == 200
    np.testing.assert_allclose(body["outputs"]["output_0"], server.want[model][0], rtol=1e-5)
