"""Settings from the cloud service JSON, the environment and the flags, in that order."""

import json

import pytest

from serving.cli import parse_settings
from serving.processor import parse_processor_code
from serving.settings import Settings


@pytest.mark.parametrize(
    "code, expected",
    [
        ("xgboost", ("xgboost", "cpu")),
        ("lightgbm", ("lightgbm", "cpu")),
        ("pmml", ("pmml", "cpu")),
        ("tensorflow_cpu_2.x", ("tensorflow", "cpu")),
        ("tensorflow_gpu_2.x", ("tensorflow", "cuda")),
        ("pytorch_cpu_1.10", ("torchscript", "cpu")),
        ("pytorch_gpu_1.10", ("torchscript", "cuda")),
        ("onnx", ("onnx", "cpu")),
        ("onnx_gpu", ("onnx", "cuda")),
        ("linear", ("linear", "cpu")),
    ],
)
def test_processor_codes(code, expected):
    assert parse_processor_code(code) == expected


@pytest.mark.parametrize("nested", [True, False])
def test_service_config_nested_or_dotted(tmp_path, nested, monkeypatch):
    rpc = {"batching": True, "keepalive": 2500, "max_batch_size": 32, "max_batch_timeout": 5, "max_queue_size": 128,
           "worker_threads": 3, "io_threads": 8, "rate_limit": 100}
    metadata = {"instance": 1, "rpc": rpc} if nested else {"instance": 1, **{f"rpc.{k}": v for k, v in rpc.items()}}
    doc = {"name": "svc", "processor": "xgboost", "model_path": str(tmp_path), "token": "secret",
           "warm_up_data_path": str(tmp_path / "w.bin"), "metadata": metadata}
    path = tmp_path / "service.json"
    path.write_text(json.dumps(doc))
    for var in ("MODEL_NAME", "MODEL_BASE_PATH"):
        monkeypatch.delenv(var, raising=False)
    s = parse_settings([f"--service_config={path}"])
    assert (s.model_name, s.model_base_path, s.model_platform, s.device) == ("svc", str(tmp_path), "xgboost", "cpu")
    assert (s.token, s.warm_up_data_path) == ("secret", str(tmp_path / "w.bin"))
    assert (s.enable_batching, s.keepalive_ms, s.max_batch_size, s.batch_timeout_micros) == (True, 2500, 32, 5000)
    assert (s.max_queue_size, s.worker_threads, s.io_threads, s.rate_limit) == (128, 3, 8, 100.0)
    # Environment over the JSON, flags over both.
    monkeypatch.setenv("SERVING_MAX_BATCH_SIZE", "48")
    s = parse_settings([f"--service_config={path}", "--keepalive_ms=100"])
    assert (s.max_batch_size, s.keepalive_ms) == (48, 100)


def test_tf_serving_environment_form(monkeypatch):
    monkeypatch.setenv("MODEL_NAME", "half")
    monkeypatch.setenv("MODEL_BASE_PATH", "/models")
    s = Settings()
    s.apply_env()
    assert (s.model_name, s.model_base_path) == ("half", "/models/half")


def test_bad_service_config_exits(tmp_path):
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        parse_settings([f"--service_config={tmp_path / 's.json'}"])
    assert e.value.code == 1


def test_boolean_flags():
    assert parse_settings(["--enable_batching=false"]).enable_batching is False
    assert parse_settings(["--allow_version_labels_for_unavailable_models"]).allow_version_labels_for_unavailable_models


def test_framework_flags_become_model_options(tmp_path):
    from serving.app import with_runtime
    from serving.model_config import ModelSpec

    s = parse_settings(["--tensorflow_intra_op_parallelism=2", "--gpu_memory_limit_mb=512", "--fp16",
                        "--device=auto"])
    (spec,) = with_runtime([ModelSpec("m", str(tmp_path))], s)
    assert spec.device == "auto"
    assert spec.options == {"intra_op_threads": 2, "gpu_memory_limit_mb": 512, "fp16": True}
    (plain,) = with_runtime([ModelSpec("m", str(tmp_path))], parse_settings([]))
    assert plain.options == {} and plain.device == "cpu"
