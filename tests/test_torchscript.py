"""The TorchScript processor on an MLP scripted at test time: two inputs, a tuple output."""

import json
import threading

import numpy as np
import pytest

from serving._proto.eas import pytorch_predict_pb2
from serving.core.processor import processor_class
from serving.errors import Code, ServingError
from tests.helpers import Server

torch = pytest.importorskip("torch", reason="torch (extra torch) is not installed")


def make_mlp(base, version=1, signature=False):
    torch.manual_seed(0)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 4)
            self.b = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, z: torch.Tensor):
            h = torch.relu(self.a(x)) + z.unsqueeze(1)
            return self.b(h), h.sum(dim=1)

    module = MLP().eval()
    d = base / str(version)
    d.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(d / "model.pt"))
    if signature:
        (d / "signature.json").write_text(json.dumps({
            "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 3]},
                       {"name": "offset", "dtype": "float32", "shape": [-1]}],
            "outputs": [{"name": "scores", "dtype": "float32", "shape": [-1, 2]},
                        {"name": "total", "dtype": "float32", "shape": [-1]}],
        }))
    return module, d


def reference(module, x, z):
    with torch.no_grad():
        a, b = module(torch.from_numpy(x), torch.from_numpy(z))
    return a.numpy(), b.numpy()


X = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5], [2.0, 0.0, -2.0]], dtype=np.float32)
Z = np.array([0.5, -0.5, 0.0], dtype=np.float32)


def test_positional_names_from_the_schema(tmp_path):
    module, d = make_mlp(tmp_path)
    proc = processor_class("pytorch")()
    proc.load(d, "cpu", {})
    sig = proc.signature("")
    assert list(sig.inputs) == ["input__0", "input__1"] and list(sig.outputs) == ["output__0", "output__1"]
    out = proc.predict({"input__0": X, "input__1": Z}, "")
    want = reference(module, X, Z)
    np.testing.assert_allclose(out["output__0"], want[0], rtol=1e-6)
    np.testing.assert_allclose(out["output__1"], want[1], rtol=1e-6)


def test_cuda_where_there_is_none_fails_the_load_unless_auto(tmp_path):
    _, d = make_mlp(tmp_path)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ServingError) as e:
        processor_class("torchscript")().load(d, "cuda", {})
    assert e.value.code is Code.FAILED_PRECONDITION and "no CUDA device is present" in e.value.message
    proc = processor_class("torchscript")()
    proc.load(d, "auto", {})
    assert proc.device == "cpu"


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


def test_a_failure_on_shapes_the_model_has_run_stays_the_models_own(tmp_path):
    class Picky(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            if bool((x < 0).any()):
                raise ValueError("negative input")
            return x * 2

    d = tmp_path / "1"
    d.mkdir()
    torch.jit.save(torch.jit.script(Picky()), str(d / "model.pt"))
    proc = processor_class("torchscript")()
    proc.load(d, "cpu", {})
    proc.predict({"input__0": np.ones((2, 3), np.float32)}, "")
    with pytest.raises(Exception, match="negative input") as e:  # the engine answers it INTERNAL (500)
        proc.predict({"input__0": -np.ones((1, 3), np.float32)}, "")
    assert not isinstance(e.value, ServingError)


def test_row_shapes_the_model_refused_are_refused_by_validate_before_queueing(tmp_path):
    _, d = make_mlp(tmp_path)
    proc = processor_class("torchscript")()
    proc.load(d, "cpu", {})
    good = {"input__0": X, "input__1": Z}
    bad = {"input__0": np.ones((5, 2), np.float32), "input__1": np.zeros(5, np.float32)}
    proc.validate(bad, proc.signature(""))  # nothing refused yet: the model decides
    proc.predict(good, "")
    with pytest.raises(ServingError) as refused:
        proc.predict(bad, "")
    assert refused.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(ServingError) as e:
        proc.validate({"input__0": np.ones((1, 2), np.float32), "input__1": np.zeros(1, np.float32)},
                      proc.signature(""))
    assert (e.value.code, e.value.message) == (Code.INVALID_ARGUMENT, refused.value.message)
    proc.validate(good, proc.signature(""))


def test_cuda_out_of_memory_is_told_apart_from_a_model_failure():
    from processors.torchscript_processor import out_of_memory

    # torch's own text, raised directly (torch.cuda.OutOfMemoryError) and from inside a TorchScript model
    direct = torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 256.00 TiB. GPU 0 has a total capacity of 139.80 GiB of which "
        "138.9 GiB is free. Of the allocated memory 4.00 MiB is allocated by PyTorch. If reserved but unallocated "
        "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")
    scripted = RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback of "
                            "TorchScript (most recent call last):\n  File \"code/__torch__.py\", line 9\n"
                            f"RuntimeError: {direct}\n")
    assert out_of_memory(direct) == out_of_memory(scripted) == "CUDA out of memory. Tried to allocate 256.00 TiB"
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x2 and 3x4)")) is None
