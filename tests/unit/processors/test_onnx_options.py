"""The ONNX processor's per-model ONNX Runtime options, in process, on an MLP written with onnx.helper at test
time: providers, threads and level read back from the session, the optimized-graph cache, a provider that is
not installed, and the `onnx` options of model_config.pbtxt and the service JSON. The OpenVINO provider itself
runs only in its own venv (`benchmarks/onnx_providers.py` builds it): the test for it is skipped without it.
Served over HTTP: tests/e2e/test_onnx.py."""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from serving.core.model_config import ConfigError, parse_model_config, service_extras
from serving.core.processor import processor_class
from serving.errors import Code, ServingError

onnx = pytest.importorskip("onnx", reason="onnx (test extra) is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (extra onnx) is not installed")

ROOT = Path(__file__).resolve().parents[3]
#: The venv with onnxruntime-openvino that benchmarks/onnx_providers.py builds (it cannot share .venv: both
#: packages install the module onnxruntime).
OV_VENV = Path.home() / ".cache" / "serving-engine" / "ov-venv"


def write_mlp(version_dir, sizes=(3, 4, 2), seed=0, scale=1.0):
    """An MLP `x -> y` (float32, any batch) with ReLU between its dense layers, written as `model.onnx`;
    returns its layers [(W, b), ...] for `forward`."""
    rng = np.random.default_rng(seed)
    layers = [((rng.standard_normal((m, n)) * scale).astype(np.float32), rng.standard_normal(n).astype(np.float32))
              for m, n in zip(sizes, sizes[1:], strict=False)]
    h = onnx.helper
    nodes, inits, last = [], [], "x"
    for i, (w, b) in enumerate(layers):
        inits += [onnx.numpy_helper.from_array(w, f"w{i}"), onnx.numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == len(layers) - 1 else f"h{i}"
        nodes += [h.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]), h.make_node("Add", [f"m{i}", f"b{i}"], [out])]
        if out != "y":
            nodes.append(h.make_node("Relu", [out], [f"r{i}"]))
            last = f"r{i}"
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", sizes[0]])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", sizes[-1]])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime >= 1.18 reads
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(version_dir / "model.onnx"))
    return layers


def forward(layers, x):
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


X = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]], dtype=np.float32)


def loaded(version_dir, options, device="cpu"):
    proc = processor_class("onnx")()
    proc.load(version_dir, device, options)
    return proc


def load_error(version_dir, options, device="cpu"):
    with pytest.raises(ServingError) as e:
        loaded(version_dir, options, device)
    return e.value


# ---- the options a session is made with ----

def test_the_session_runs_the_providers_threads_and_level_the_model_asks_for(tmp_path):
    layers = write_mlp(tmp_path / "1")
    proc = loaded(tmp_path / "1", {"intra_op_threads": 4, "graph_optimization_level": "all",
                                   "onnx": {"providers": ["CPUExecutionProvider"], "graph_optimization_level": "basic",
                                            "intra_op_threads": 2, "inter_op_threads": 3}})
    assert proc.session.get_providers() == ["CPUExecutionProvider"]
    assert list(proc.session.get_provider_options()) == ["CPUExecutionProvider"]
    so = proc.session.get_session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (2, 3)
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    np.testing.assert_allclose(proc.predict({"x": X}, "")["y"], forward(layers, X), rtol=1e-5)


def test_the_server_wide_flags_apply_where_the_model_sets_nothing(tmp_path):
    write_mlp(tmp_path / "1")
    proc = loaded(tmp_path / "1", {"intra_op_threads": 3, "inter_op_threads": 2,
                                   "graph_optimization_level": "extended"})
    so = proc.session.get_session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (3, 2)
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert proc.session.get_providers() == ["CPUExecutionProvider"] and proc.device == "cpu"


def test_without_options_one_intra_op_thread_and_every_optimization(tmp_path):
    write_mlp(tmp_path / "1")
    so = loaded(tmp_path / "1", {}).session.get_session_options()
    assert so.intra_op_num_threads == 1 and so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.parametrize(("provider", "package"), [("CUDAExecutionProvider", "onnxruntime-gpu"),
                                                   ("TensorrtExecutionProvider", "onnxruntime-gpu"),
                                                   ("OpenVINOExecutionProvider", "onnxruntime-openvino")])
def test_a_provider_that_is_not_installed_fails_the_load_naming_its_package(tmp_path, provider, package):
    if provider in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has {provider}")
    write_mlp(tmp_path / "1")
    error = load_error(tmp_path / "1", {"onnx": {"providers": [provider, "CPUExecutionProvider"]}})
    assert error.code is Code.FAILED_PRECONDITION
    assert f"ONNX Runtime execution provider {provider} is not installed" in error.message
    assert f"pip install {package}" in error.message


def test_device_cuda_without_the_cuda_provider_names_onnxruntime_gpu(tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDAExecutionProvider")
    write_mlp(tmp_path / "1")
    error = load_error(tmp_path / "1", {}, device="cuda")
    assert error.code is Code.FAILED_PRECONDITION and "pip install onnxruntime-gpu" in error.message


def test_an_unknown_provider_or_level_is_invalid_argument(tmp_path):
    write_mlp(tmp_path / "1")
    error = load_error(tmp_path / "1", {"onnx": {"providers": ["FastExecutionProvider"]}})
    assert error.code is Code.INVALID_ARGUMENT and "unknown ONNX Runtime execution provider(s) FastExecutionProvider" \
        in error.message
    error = load_error(tmp_path / "1", {"onnx": {"graph_optimization_level": "max"}})
    assert error.code is Code.INVALID_ARGUMENT and error.message == \
        "graph_optimization_level must be one of disabled, basic, extended, all"


def test_tensorrt_options_without_the_tensorrt_provider_are_invalid_argument(tmp_path):
    write_mlp(tmp_path / "1")
    error = load_error(tmp_path / "1", {"onnx": {"providers": ["CPUExecutionProvider"], "trt_fp16_enable": True}})
    assert error.code is Code.INVALID_ARGUMENT
    assert error.message == "trt_fp16_enable asked for without TensorrtExecutionProvider in providers"


# ---- the optimized-graph cache ----

def cache_files(cache):
    return sorted((cache / "onnx" / "optimized").iterdir()) if (cache / "onnx" / "optimized").exists() else []


def test_a_second_load_reads_the_cached_optimized_graph_with_optimization_off(tmp_path):
    layers = write_mlp(tmp_path / "m" / "1")
    options = {"model_cache_dir": str(tmp_path / "cache"), "onnx": {"optimized_model_cache": True}}
    first = loaded(tmp_path / "m" / "1", options)
    [cached] = cache_files(tmp_path / "cache")
    assert first.session_path == tmp_path / "m" / "1" / "model.onnx"
    assert cached.name.endswith(f".ort{ort.__version__}.all.cpu.onnx")
    assert first.session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    second = loaded(tmp_path / "m" / "1", options)
    assert second.session_path == cached
    assert second.session.get_session_options().graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_allclose(second.predict({"x": X}, "")["y"], forward(layers, X), rtol=1e-5)
    # the cached file is what runs: another graph put in its place answers for the model
    other = write_mlp(tmp_path / "other", seed=7)
    os.replace(tmp_path / "other" / "model.onnx", cached)
    third = loaded(tmp_path / "m" / "1", options)
    np.testing.assert_allclose(third.predict({"x": X}, "")["y"], forward(other, X), rtol=1e-5)


def test_the_cache_key_holds_the_model_content_and_the_level(tmp_path):
    cache = tmp_path / "cache"
    write_mlp(tmp_path / "m" / "1")
    loaded(tmp_path / "m" / "1", {"model_cache_dir": str(cache), "onnx": {"optimized_model_cache": True}})
    loaded(tmp_path / "m" / "1", {"model_cache_dir": str(cache),
                                  "onnx": {"optimized_model_cache": True, "graph_optimization_level": "basic"}})
    layers = write_mlp(tmp_path / "m" / "1", seed=3)  # new weights in the same file name
    proc = loaded(tmp_path / "m" / "1", {"model_cache_dir": str(cache), "onnx": {"optimized_model_cache": True}})
    assert len(cache_files(cache)) == 3 and proc.session_path == tmp_path / "m" / "1" / "model.onnx"
    np.testing.assert_allclose(proc.predict({"x": X}, "")["y"], forward(layers, X), rtol=1e-5)


def test_a_broken_cached_graph_is_optimized_again(tmp_path):
    layers = write_mlp(tmp_path / "m" / "1")
    options = {"model_cache_dir": str(tmp_path / "cache"), "onnx": {"optimized_model_cache": True}}
    loaded(tmp_path / "m" / "1", options)
    [cached] = cache_files(tmp_path / "cache")
    cached.write_bytes(b"not a model")
    proc = loaded(tmp_path / "m" / "1", options)
    assert proc.session_path == tmp_path / "m" / "1" / "model.onnx" and cached.stat().st_size > 100
    np.testing.assert_allclose(proc.predict({"x": X}, "")["y"], forward(layers, X), rtol=1e-5)


# ---- the options in model_config.pbtxt and the service JSON ----

PBTXT = """model_config_list {{ config {{
  name: "mlp" base_path: "/models/mlp" model_platform: "onnx"
  {onnx}
}} }}"""


def test_the_pbtxt_onnx_options_reach_the_processor_options():
    [spec] = parse_model_config(PBTXT.format(onnx="""onnx { providers: "OpenVINOExecutionProvider"
        providers: "CPUExecutionProvider" graph_optimization_level: "all" intra_op_threads: 0
        optimized_model_cache: true trt_engine_cache_path: "/cache/trt" }"""))
    assert spec.options == {"onnx": {"providers": ["OpenVINOExecutionProvider", "CPUExecutionProvider"],
                                     "graph_optimization_level": "all", "intra_op_threads": 0,
                                     "optimized_model_cache": True, "trt_engine_cache_path": "/cache/trt"}}
    [plain] = parse_model_config(PBTXT.format(onnx=""))
    assert plain.options == {}


def test_the_service_json_onnx_options_reach_the_processor_options(tmp_path):
    doc = {"name": "mlp", "processor": "onnx", "model_path": "/m",
           "onnx": {"providers": ["CPUExecutionProvider"], "graph_optimization_level": "basic", "intra_op_threads": 2,
                    "optimized_model_cache": True}}
    (tmp_path / "service.json").write_text(json.dumps(doc))
    *_, options = service_extras(str(tmp_path / "service.json"))
    assert options == {"onnx": doc["onnx"]}


@pytest.mark.parametrize(("onnx_doc", "message"), [
    ({"provider": ["CPUExecutionProvider"]}, "unknown onnx option(s) provider (known: providers, "),
    ({"intra_op_threads": "2"}, "onnx intra_op_threads: '2' is not a whole number >= 0"),
    ({"intra_op_threads": -1}, "onnx intra_op_threads: -1 is not a whole number >= 0"),
    ({"optimized_model_cache": 1}, "onnx optimized_model_cache: 1 is not true or false"),
    ({"providers": "CPUExecutionProvider"}, "onnx providers: 'CPUExecutionProvider' is not a list of provider names"),
    (["CPUExecutionProvider"], "\"onnx\" must be an object of ONNX Runtime options"),
])
def test_a_service_json_onnx_option_of_the_wrong_kind_is_a_config_error_naming_it(tmp_path, onnx_doc, message):
    (tmp_path / "service.json").write_text(json.dumps({"name": "mlp", "model_path": "/m", "onnx": onnx_doc}))
    with pytest.raises(ConfigError) as e:
        service_extras(str(tmp_path / "service.json"))
    assert message in str(e.value)


# ---- the OpenVINO provider, in its own venv ----

@pytest.mark.skipif(not (OV_VENV / "bin" / "python").exists(),
                    reason=f"no onnxruntime-openvino venv at {OV_VENV} (python benchmarks/onnx_providers.py builds it)")
def test_the_openvino_provider_runs_the_model_in_its_venv(tmp_path):
    layers = write_mlp(tmp_path / "1")
    np.save(tmp_path / "x.npy", X)
    script = textwrap.dedent(f"""
        import json, numpy as np
        from pathlib import Path
        from processors.onnx_processor import ONNXProcessor
        from serving.errors import ServingError
        p = ONNXProcessor()
        p.load(Path({str(tmp_path / '1')!r}), "cpu", {{"onnx": {{"providers": ["OpenVINOExecutionProvider",
                                                                              "CPUExecutionProvider"]}}}})
        np.save({str(tmp_path / 'y.npy')!r}, p.predict({{"x": np.load({str(tmp_path / 'x.npy')!r})}}, "")["y"])
        try:
            ONNXProcessor().load(Path({str(tmp_path / '1')!r}), "cpu", {{"onnx": {{"providers": [
                "OpenVINOExecutionProvider"], "optimized_model_cache": True}}}})
            refused = ""
        except ServingError as e:
            refused = e.message
        print(json.dumps({{"providers": p.session.get_providers(), "refused": refused}}))
    """)
    run = subprocess.run([str(OV_VENV / "bin" / "python"), "-c", script], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["providers"][0] == "OpenVINOExecutionProvider"
    assert out["refused"].startswith("optimized_model_cache cannot keep a graph that OpenVINOExecutionProvider "
                                     "compiles")
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), forward(layers, X), rtol=1e-4, atol=1e-5)
