"""The TorchScript processor served over HTTP, on an MLP scripted at test time (tests/unit/processors/
test_torchscript.py): batched answers equal unbatched ones, the PyTorch body, bad requests as 400s."""

import threading

import numpy as np
import pytest

from serving._proto.eas import pytorch_predict_pb2
from tests.helpers import Server

torch = pytest.importorskip("torch", reason="torch (extra torch) is not installed")

from tests.unit.processors.test_torchscript import X, Z, make_mlp, reference  # noqa: E402


def test_served_with_signature_json_batched_equals_unbatched(tmp_path):
    module, _ = make_mlp(tmp_path / "mlp", signature=True)
    want_scores, want_total = reference(module, X, Z)
    with Server(f"--model_base_path={tmp_path / 'mlp'}", "--model_name=mlp", "--max_batch_size=8") as s:
        status, body = s.get("/v1/models/mlp/metadata")
        sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert [d["size"] for d in sig["inputs"]["features"]["tensor_shape"]["dim"]] == ["-1", "3"]
        rows = [{"features": X[i].tolist(), "offset": float(Z[i])} for i in range(3)]
        status, body = s.post("/v1/models/mlp:predict", {"instances": rows})
        assert status == 200
        np.testing.assert_allclose([r["scores"] for r in body["predictions"]], want_scores, rtol=1e-5)
        np.testing.assert_allclose([r["total"] for r in body["predictions"]], want_total, rtol=1e-5)
        results = []

        def one(i):
            client = Server.__new__(Server)
            client.port, client.conn = s.port, None
            results.append((i, client.post("/v1/models/mlp:predict", {"inputs": {
                "features": [X[i].tolist()], "offset": [float(Z[i])]}})))
            client.conn.close()

        threads = [threading.Thread(target=one, args=(i % 3,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, (status, body) in results:
            assert status == 200
            np.testing.assert_allclose(body["outputs"]["scores"], want_scores[i:i + 1], rtol=1e-5)
        for doc, message in [
            ({"inputs": {"features": [[1.0, 2.0]], "offset": [0.0]}}, "expects shape [-1,3], got [1,2]"),
            ({"inputs": {"features": [[1.0, 2.0, 3.0]]}}, "Missing named input: offset"),
            ({"inputs": {"features": [["a", 2.0, 3.0]], "offset": [0.0]}}, "is not of expected type: float"),
        ]:
            status, body = s.post("/v1/models/mlp:predict", doc)
            assert status == 400 and message in body["error"], body


def test_pytorch_predict_body_over_http(tmp_path):
    module, _ = make_mlp(tmp_path / "mlp")
    with Server(f"--model_base_path={tmp_path / 'mlp'}", "--model_name=mlp") as s:
        request = pytorch_predict_pb2.PredictRequest(output_filter=[1])
        for array in (X, Z):
            item = request.inputs.add(dtype=pytorch_predict_pb2.DT_FLOAT)
            item.array_shape.dim.extend(array.shape)
            item.float_val.extend(array.ravel().tolist())
        status, body = s.post("/api/predict/mlp", request.SerializeToString())
        assert status == 200
        response = pytorch_predict_pb2.PredictResponse.FromString(body)
        np.testing.assert_allclose(response.outputs[0].float_val, reference(module, X, Z)[1], rtol=1e-5)


GOOD = {"inputs": {"input__0": X.tolist(), "input__1": Z.tolist()}}
TWO_FEATURES = {"inputs": {"input__0": [[1.0, 2.0]], "input__1": [0.0]}}


def assert_one_line_without_traceback(message):
    assert "\n" not in message and "Traceback" not in message and "__torch__" not in message, message


def test_wrong_feature_count_without_signature_json_is_a_400_naming_the_learned_shape(tmp_path):
    module, _ = make_mlp(tmp_path / "mlp")
    want_scores, _ = reference(module, X, Z)
    with Server(f"--model_base_path={tmp_path / 'mlp'}", "--model_name=mlp") as s:
        assert s.post("/v1/models/mlp:predict", GOOD)[0] == 200  # the model learns rows of [3] and []
        for _ in range(2):  # the model refuses the first; validate() refuses the second before queueing
            status, body = s.post("/v1/models/mlp:predict", TWO_FEATURES)
            assert status == 400
            assert body["error"].startswith(
                "input 'input__0' expects rows of shape [3], got [2] (learned from the batches the model has run; "
                "TorchScript: mat1 and mat2 shapes cannot be multiplied"), body
            assert_one_line_without_traceback(body["error"])
        status, body = s.post("/v1/models/mlp:predict", GOOD)
        assert status == 200
        np.testing.assert_allclose(body["outputs"]["output__0"], want_scores, rtol=1e-5)


def test_a_bad_first_request_is_a_400_with_torchscripts_own_line(tmp_path):
    make_mlp(tmp_path / "mlp")
    with Server(f"--model_base_path={tmp_path / 'mlp'}", "--model_name=mlp") as s:
        status, body = s.post("/v1/models/mlp:predict", TWO_FEATURES)
        assert status == 400
        assert body["error"] == ("the model cannot take input__0 rows of shape [2], input__1 rows of shape []: "
                                 "mat1 and mat2 shapes cannot be multiplied (1x2 and 3x4)"), body
        assert s.post("/v1/models/mlp:predict", GOOD)[0] == 200


def test_bad_requests_never_fail_the_batches_of_good_ones(tmp_path):
    make_mlp(tmp_path / "mlp")
    with Server(f"--model_base_path={tmp_path / 'mlp'}", "--model_name=mlp", "--max_batch_size=8") as s:
        results = []

        def one(doc):
            client = Server.__new__(Server)
            client.port, client.conn = s.port, None
            results.append((doc is GOOD, client.post("/v1/models/mlp:predict", doc)[0]))
            client.conn.close()

        threads = [threading.Thread(target=one, args=(GOOD if i % 2 else TWO_FEATURES,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [(False, 400)] * 8 + [(True, 200)] * 8
