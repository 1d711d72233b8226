"""The CUDA paths on a GPU: `pytest tests/e2e/test_cuda.py tests/unit/processors/test_torchscript.py --device cuda`
on a machine with one. Without `--device cuda` these tests are skipped; with it, a framework that sees no CUDA device
fails them instead. A framework that is not installed, or installed without CUDA (onnxruntime rather
than onnxruntime-gpu, a CPU TensorFlow, an XGBoost built without CUDA), is skipped with that said."""

import threading

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.core.processor import cuda_device_count, processor_class
from serving.errors import Code, ServingError
from tests.helpers import Server, make_xgb, training_data


@pytest.fixture(scope="module", autouse=True)
def _cuda_only(device):
    if device != "cuda":
        pytest.skip("a CUDA test: run with --device cuda on a GPU machine")


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="torch (extra torch) is not installed")
    assert torch.cuda.is_available(), "--device cuda, but torch sees no CUDA device"
    return torch


def mlp(torch, tmp_path, signature=True):
    from tests.unit.processors.test_torchscript import X, Z, make_mlp, reference

    module, d = make_mlp(tmp_path / "mlp", signature=signature)
    return module, d, X, Z, reference(module, X, Z)


def test_the_driver_count_agrees_with_torch(torch):
    assert cuda_device_count() == torch.cuda.device_count() >= 1


def test_torchscript_on_cuda_equals_the_cpu(torch, tmp_path):
    module, d, x, z, (want_scores, want_total) = mlp(torch, tmp_path)
    proc = processor_class("torchscript")()
    proc.load(d, "cuda", {})
    assert proc.device == "cuda" and {p.device.type for p in proc.module.parameters()} == {"cuda"}
    out = proc.predict({"features": x, "offset": z}, "")
    assert out["scores"].dtype == np.float32
    np.testing.assert_allclose(out["scores"], want_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["total"], want_total, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(3)  # a big batch: the pinned copy of many rows
    big_x, big_z = rng.standard_normal((4096, 3)).astype(np.float32), rng.standard_normal(4096).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(big_x), torch.from_numpy(big_z))[0].numpy()
    np.testing.assert_allclose(proc.predict({"features": big_x, "offset": big_z}, "")["scores"], want,
                               rtol=1e-4, atol=1e-5)


def test_fp16_runs_half_and_answers_float32(torch, tmp_path):
    _, d, x, z, (want_scores, _) = mlp(torch, tmp_path)
    proc = processor_class("torchscript")()
    proc.load(d, "cuda", {"fp16": True})
    assert {p.dtype for p in proc.module.parameters()} == {torch.float16}
    out = proc.predict({"features": x, "offset": z}, "")
    assert out["scores"].dtype == np.float32  # the signature's type, not half
    np.testing.assert_allclose(out["scores"], want_scores, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(out["scores"], want_scores)  # it did run in half precision


def test_a_cuda_index_past_the_last_fails_the_load(torch, tmp_path):
    _, d, *_ = mlp(torch, tmp_path)
    n = torch.cuda.device_count()
    with pytest.raises(ServingError) as e:
        processor_class("torchscript")().load(d, f"cuda:{n}", {})
    assert e.value.code is Code.FAILED_PRECONDITION and f"{n} CUDA device(s) are present" in e.value.message
    proc = processor_class("torchscript")()
    proc.load(d, "auto", {})
    assert proc.device == "cuda"


def oom_model(torch, base):
    """A model that allocates n*n floats, n its input's first value: its own OOM on demand."""

    class Alloc(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = int(x[0, 0].item())
            return torch.ones(n, n, device=x.device).sum().reshape(1).expand(x.shape[0]) + x[:, 1]

    d = base / "1"
    d.mkdir(parents=True)
    torch.jit.save(torch.jit.script(Alloc()), str(d / "model.pt"))
    return base


def test_out_of_gpu_memory_is_429_and_the_server_serves_on(torch, tmp_path):
    base = oom_model(torch, tmp_path / "alloc")
    with Server(f"--model_base_path={base}", "--model_name=alloc", "--device=cuda", "--max_batch_size=4") as s:
        status, body = s.post("/v1/models/alloc:predict", {"instances": [[1000.0, 1.0]]})
        assert status == 200 and body["predictions"] == [1000001.0], body
        # (2**23)**2 floats: 256 TiB, more than any GPU has
        status, body = s.post("/v1/models/alloc:predict", {"instances": [[float(2 ** 23), 0.0]]})
        assert status == 429 and "out of GPU memory" in body["error"], body
        for _ in range(3):
            status, body = s.post("/v1/models/alloc:predict", {"instances": [[10.0, 2.0]]})
            assert status == 200 and body["predictions"] == [102.0], body


def test_served_on_cuda_batched_with_gpu_memory_metrics(torch, tmp_path):
    _, _, x, z, (want_scores, _) = mlp(torch, tmp_path)
    with Server(f"--model_base_path={tmp_path / 'mlp'}", "--model_name=mlp", "--device=cuda",
                "--max_batch_size=8", "--batch_timeout_micros=2000") as s:
        results = []

        def one(i):
            client = Server.__new__(Server)
            client.port, client.conn = s.port, None
            results.append((i, client.post("/v1/models/mlp:predict", {"inputs": {
                "features": [x[i].tolist()], "offset": [float(z[i])]}})))
            client.conn.close()

        threads = [threading.Thread(target=one, args=(i % 3,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 24
        for i, (status, body) in results:
            assert status == 200, body
            np.testing.assert_allclose(body["outputs"]["scores"], want_scores[i:i + 1], rtol=1e-5, atol=1e-6)
        status, text = s.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        gpu = {(m.labels["framework"], m.labels["device"], m.labels["kind"]): m.value
               for m in families["serving_gpu_memory_bytes"].samples}
        assert gpu[("torch", "cuda:0", "allocated")] > 0  # the module's weights at least
        assert gpu[("torch", "cuda:0", "reserved")] >= gpu[("torch", "cuda:0", "allocated")]


def test_torch_export_program_on_cuda_equals_the_cpu_and_fp16_answers_float32(torch, tmp_path):
    from tests.unit.processors.test_torch_export import X, Z, save_program

    _, d = save_program(tmp_path / "ep")
    cpu = processor_class("torch_export")()
    cpu.load(d, "cpu", {})
    want = cpu.predict({"features": X, "offset": Z}, "")
    proc = processor_class("torch_export")()
    proc.load(d, "cuda", {})
    assert proc.device == "cuda"
    out = proc.predict({"features": X, "offset": Z}, "")
    assert out["output_0"].dtype == np.float32
    np.testing.assert_allclose(out["output_0"], want["output_0"], rtol=1e-5, atol=1e-6)
    half = processor_class("torch_export")()
    half.load(d, "cuda", {"fp16": True})
    out = half.predict({"features": X, "offset": Z}, "")
    assert out["output_0"].dtype == np.float32  # the signature's type, not half
    np.testing.assert_allclose(out["output_0"], want["output_0"], rtol=2e-2, atol=2e-2)
    assert not np.array_equal(out["output_0"], want["output_0"])  # it did run in half precision


@pytest.mark.timeout(900)
def test_torch_export_aoti_package_compiled_for_cuda_serves_as_aoti_load_package(torch, tmp_path):
    import warnings

    from tests.unit.processors.test_torch_export import MAX_BATCH, TwoInOut, X, Z, compiler_or_skip

    compiler_or_skip()
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = (torch.from_numpy(X).cuda(), torch.from_numpy(Z).cuda())
    ep = torch.export.export(TwoInOut().eval().cuda(), example, dynamic_shapes=[{0: batch}] * 2)
    d = tmp_path / "aoti" / "1"
    d.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch._inductor.aoti_compile_and_package(ep, package_path=str(d / "model.pt2"))
    with torch.inference_mode():
        want = [t.cpu().numpy() for t in torch._inductor.aoti_load_package(str(d / "model.pt2"))(*example)]
    with pytest.raises(ServingError, match="was compiled for cuda, not cpu"):
        processor_class("torch_export")().load(d, "cpu", {})
    with Server(f"--model_base_path={d.parent}", "--model_name=aoti", "--device=auto") as s:
        status, body = s.post("/v1/models/aoti:predict", {"inputs": {"input_0": X.tolist(), "input_1": Z.tolist()}})
        assert status == 200, body
        np.testing.assert_allclose(body["outputs"]["output_0"], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(body["outputs"]["output_1"], want[1], rtol=1e-5, atol=1e-6)


def test_xgboost_on_cuda_equals_the_cpu(tmp_path):
    xgb = pytest.importorskip("xgboost", reason="xgboost (extra xgboost) is not installed")
    if not xgb.build_info().get("USE_CUDA"):
        pytest.skip("this XGBoost was built without CUDA")
    assert cuda_device_count() >= 1, "--device cuda, but the driver sees no CUDA device"
    make_xgb(tmp_path, 1)
    x, _ = training_data()
    cpu, gpu = processor_class("xgboost")(), processor_class("xgboost")()
    cpu.load(tmp_path / "1", "cpu", {})
    gpu.load(tmp_path / "1", "auto", {})
    assert gpu.device == "cuda"
    np.testing.assert_allclose(gpu.predict({"inputs": x}, "")["outputs"], cpu.predict({"inputs": x}, "")["outputs"],
                               rtol=1e-6)


def test_onnx_on_cuda_with_io_binding_equals_the_cpu(tmp_path):
    pytest.importorskip("torch", reason="torch (extra torch) exports the model")
    pytest.importorskip("onnx", reason="onnx (test extra) is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (extra onnx) is not installed")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu has)")
    from tests.e2e.test_onnx import X, Z, export

    export(tmp_path)
    cpu, gpu = processor_class("onnx")(), processor_class("onnx")()
    cpu.load(tmp_path / "1", "cpu", {})
    gpu.load(tmp_path / "1", "cuda", {})
    assert gpu.session.get_providers()[0] == "CUDAExecutionProvider"
    want, got = cpu.predict({"x": X, "z": Z}, ""), gpu.predict({"x": X, "z": Z}, "")
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_tensorflow_placed_on_the_gpu(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="tensorflow (extra tensorflow) is not installed")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("this TensorFlow sees no GPU (a CPU build)")
    from tests.tf_models import half_plus_two

    half_plus_two(tmp_path / "hpt" / "1")
    with Server(f"--model_base_path={tmp_path / 'hpt'}", "--model_name=hpt", "--device=cuda",
                "--gpu_memory_limit_mb=1024") as s:
        status, body = s.post("/v1/models/hpt:predict", {"instances": [1.0, 2.0, 5.0]})
        assert status == 200 and body["predictions"] == [2.5, 3.0, 4.5], body
        status, text = s.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        current = [m.value for m in families["serving_gpu_memory_bytes"].samples
                   if m.labels["framework"] == "tensorflow" and m.labels["kind"] == "current"]
        assert current and current[0] > 0  # the variables live in GPU memory
