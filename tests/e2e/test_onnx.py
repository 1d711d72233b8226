"""The ONNX processor on a model exported from torch at test time, in process and over HTTP, with its per-model
ONNX Runtime options (model_config.pbtxt, the service JSON) and a provider that is not installed."""

import json
import warnings

import numpy as np
import pytest

from serving.core.processor import processor_class
from tests.helpers import Server, run_cli, wait_until

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


# ---- per-model ONNX Runtime options ----

OPTIONS_PBTXT = """model_config_list {{
  config {{ name: "net" base_path: "{net}" model_platform: "onnx"
           onnx {{ providers: "CPUExecutionProvider" graph_optimization_level: "basic" intra_op_threads: 2
                  optimized_model_cache: true }} }}
  config {{ name: "ov" base_path: "{ov}" model_platform: "onnx"
           onnx {{ providers: "OpenVINOExecutionProvider" providers: "CPUExecutionProvider" }} }}
}}"""


def version_state(srv, model):
    """The state of the model's one version once it is listed (else None), with its status."""
    status, body = srv.get(f"/v1/models/{model}")
    return body["model_version_status"][0] if status == 200 else None


def test_a_model_config_with_onnx_options_serves_and_a_missing_provider_fails_only_its_model(tmp_path):
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has OpenVINOExecutionProvider")
    net, _ = export(tmp_path / "net")
    export(tmp_path / "ov")
    (tmp_path / "models.pbtxt").write_text(OPTIONS_PBTXT.format(net=tmp_path / "net", ov=tmp_path / "ov"))
    cache = tmp_path / "cache"
    with torch.no_grad():
        y, _ = net(torch.from_numpy(X), torch.from_numpy(Z))
    with Server(f"--model_config_file={tmp_path / 'models.pbtxt'}", f"--model_cache_dir={cache}",
                wait_ready=False) as srv:
        failed = wait_until(lambda: (v := version_state(srv, "ov")) and v["state"] == "END" and v,
                            what="the ov load to fail")
        assert failed["status"]["error_code"] == "FAILED_PRECONDITION"
        assert failed["status"]["error_message"].startswith(
            "ONNX Runtime execution provider OpenVINOExecutionProvider is not installed (")
        assert "pip install onnxruntime-openvino" in failed["status"]["error_message"]
        wait_until(lambda: (v := version_state(srv, "net")) and v["state"] == "AVAILABLE", what="net to load")
        status, body = srv.post("/v1/models/net:predict", {"inputs": {"x": X.tolist(), "z": Z.tolist()}})
        assert status == 200
        np.testing.assert_allclose(body["outputs"]["y"], y.numpy(), rtol=1e-5)
    [cached] = (cache / "onnx" / "optimized").iterdir()
    assert cached.name.endswith(f".ort{ort.__version__}.basic.cpu.onnx")
    # a restart (here as the cloud service form, same model file, same options) loads the optimized graph
    (tmp_path / "service.json").write_text(json.dumps({
        "name": "svc", "processor": "onnx", "model_path": str(tmp_path / "net" / "1"),
        "onnx": {"providers": ["CPUExecutionProvider"], "graph_optimization_level": "basic", "intra_op_threads": 2,
                 "optimized_model_cache": True}}))
    with Server(f"--service_config={tmp_path / 'service.json'}", f"--model_cache_dir={cache}") as srv:
        status, body = srv.post("/v1/models/svc:predict", {"inputs": {"x": X.tolist(), "z": Z.tolist()}})
        assert status == 200
        np.testing.assert_allclose(body["outputs"]["y"], y.numpy(), rtol=1e-5)
        assert f"the optimized graph {cached} from the cache" in srv.output()
    assert list((cache / "onnx" / "optimized").iterdir()) == [cached]


def test_a_service_config_onnx_option_of_the_wrong_kind_stops_the_start_naming_it(tmp_path):
    export(tmp_path / "net")
    (tmp_path / "service.json").write_text(json.dumps({
        "name": "svc", "processor": "onnx", "model_path": str(tmp_path / "net" / "1"), "onnx": {"threads": 2}}))
    result = run_cli(f"--service_config={tmp_path / 'service.json'}", "--rest_api_port=0")
    assert result.returncode == 1
    assert "unknown onnx option(s) threads (known: providers, graph_optimization_level, " in result.stderr
