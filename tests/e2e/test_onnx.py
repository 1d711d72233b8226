"""The ONNX processor on a model exported from torch at test time, in process and over HTTP."""

import warnings

import numpy as np
import pytest

from serving.core.processor import processor_class
from tests.helpers import Server

torch = pytest.importorskip("torch", reason="torch (extra torch) is not installed")
pytest.importorskip("onnx", reason="onnx (test extra) is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime (extra onnx) is not installed")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l = torch.nn.Linear(3, 2)

    def forward(self, x, z):
        return self.l(x) + z.unsqueeze(1), x.sum(dim=1)


def export(base, version=1):
    net = Net().eval()
    d = base / str(version)
    d.mkdir(parents=True, exist_ok=True)
    batch = {0: "batch"}
    with warnings.catch_warnings():  # torch 2.13 deprecates the TorchScript-based exporter it still ships
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(2, 3), torch.zeros(2)), str(d / "model.onnx"), input_names=["x", "z"],
                          output_names=["y", "s"], dynamic_axes={"x": batch, "z": batch, "y": batch, "s": batch},
                          dynamo=False)
    return net, d


X = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]], dtype=np.float32)
Z = np.array([0.5, -0.5], dtype=np.float32)


def test_graph_signature_and_values(tmp_path):
    net, d = export(tmp_path)
    proc = processor_class("onnx")()
    proc.load(d, "cpu", {"graph_optimization_level": "basic"})
    sig = proc.signature("")
    assert sig.inputs["x"].shape == (-1, 3) and sig.inputs["z"].shape == (-1,)
    assert list(sig.outputs) == ["y", "s"]
    out = proc.predict({"x": X, "z": Z}, "")
    with torch.no_grad():
        y, s = net(torch.from_numpy(X), torch.from_numpy(Z))
    np.testing.assert_allclose(out["y"], y.numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["s"], s.numpy(), rtol=1e-5)


def test_onnx_over_http(tmp_path):
    net, _ = export(tmp_path / "net")
    with torch.no_grad():
        y, s = net(torch.from_numpy(X), torch.from_numpy(Z))
    with Server(f"--model_base_path={tmp_path / 'net'}", "--model_name=net") as srv:
        status, body = srv.post("/v1/models/net:predict", {"inputs": {"x": X.tolist(), "z": Z.tolist()}})
        assert status == 200
        np.testing.assert_allclose(body["outputs"]["y"], y.numpy(), rtol=1e-5)
        status, body = srv.post("/v1/models/net:predict", {"instances": [{"x": X[0].tolist(), "z": float(Z[0])}]})
        assert status == 200 and body["predictions"][0]["s"] == pytest.approx(float(s[0]), rel=1e-5)
        status, body = srv.post("/v1/models/net:predict", {"inputs": {"x": [[1.0, 2.0]], "z": [0.0]}})
        assert status == 400 and "expects shape [-1,3]" in body["error"]
