"""Settings from the cloud service JSON, the environment and the flags, in that order."""

import json
import os
from dataclasses import fields
from pathlib import Path

import pytest

from serving.cli import build_parser, parse_settings
from serving.settings import (
    GROUPS,
    Settings,
    markdown_table,
    parse_processor_code,
    replace_table,
    setting_type,
    shown_default,
    table_span,
)

README = Path(__file__).resolve().parents[2] / "README.md"
SETTINGS = fields(Settings)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    # A SERVING_* or TF Serving variable of the shell running the tests would change what they see.
    for var in [v for v in os.environ if v.startswith("SERVING_")] + ["MODEL_NAME", "MODEL_BASE_PATH"]:
        monkeypatch.delenv(var, raising=False)


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


def test_readme_flag_table_is_the_one_rendered_from_the_settings():
    text = README.read_text()
    start, end = table_span(text)
    assert text[start:end] == markdown_table(), "README.md is stale: run `python -m serving.settings README.md`"


def test_a_stale_readme_table_is_rewritten_in_place():
    text = README.read_text()
    stale = text.replace("| `--rest_api_port` | 8080 |", "| `--rest_api_port` | 8081 |")
    assert stale != text
    assert replace_table(stale) == replace_table(text)
    assert replace_table(stale).count("| `--rest_api_port` | 8080 |") == 1


def test_every_setting_has_a_group_and_a_help_text():
    for f in SETTINGS:
        assert f.metadata["group"] in GROUPS and f.metadata["help"], f.name


def _sample(f, tmp_path):
    """A flag value differing from the default, and the attribute value it should give."""
    kind = setting_type(f)
    if kind is bool:
        return ("false", False) if f.default else ("true", True)
    if f.name == "service_config":
        path = tmp_path / "service.json"
        path.write_text("{}")
        return str(path), str(path)
    return {int: ("7", 7), float: ("2.5", 2.5), str: ("x", "x")}[kind]


@pytest.mark.parametrize("f", SETTINGS, ids=lambda f: f.name)
def test_every_flag_parses_to_its_type(f, tmp_path):
    text, value = _sample(f, tmp_path)
    assert getattr(parse_settings([f"--{f.name}={text}"]), f.name) == value
    assert getattr(parse_settings([]), f.name) == f.default


@pytest.mark.parametrize("f", SETTINGS, ids=lambda f: f.name)
def test_every_setting_is_read_from_its_serving_variable(f, tmp_path, monkeypatch):
    text, value = _sample(f, tmp_path)
    monkeypatch.setenv(f"SERVING_{f.name.upper()}", text)
    assert getattr(parse_settings([]), f.name) == value


def test_a_serving_variable_wins_over_the_tf_serving_one_and_a_flag_over_both(monkeypatch):
    monkeypatch.setenv("MODEL_NAME", "container")
    monkeypatch.setenv("SERVING_MODEL_NAME", "serving")
    assert parse_settings([]).model_name == "serving"
    assert parse_settings(["--model_name=flag"]).model_name == "flag"


@pytest.mark.parametrize("text", ["1", "true", "True", "YES", "on", " on "])
def test_true_words_are_true_in_flags_and_environment(text, monkeypatch):
    assert parse_settings([f"--fp16={text}"]).fp16 is True
    monkeypatch.setenv("SERVING_FP16", text)
    assert parse_settings([]).fp16 is True


@pytest.mark.parametrize("text", ["0", "false", "False", "NO", "off"])
def test_false_words_are_false_in_flags_and_environment(text, monkeypatch):
    assert parse_settings([f"--enable_batching={text}"]).enable_batching is False
    monkeypatch.setenv("SERVING_ENABLE_BATCHING", text)
    assert parse_settings([]).enable_batching is False


BOOL_ERROR = "expected true or false (also 1/0, yes/no, on/off), got 'maybe'"


def test_an_invalid_boolean_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        parse_settings(["--enable_batching=maybe"])
    assert e.value.code == 2
    assert f"argument --enable_batching: {BOOL_ERROR}" in capsys.readouterr().err


def test_an_invalid_boolean_in_the_environment_stops_with_the_variable_named(capsys, monkeypatch):
    monkeypatch.setenv("SERVING_ENABLE_BATCHING", "maybe")
    with pytest.raises(SystemExit) as e:
        parse_settings([])
    assert e.value.code == 1
    assert capsys.readouterr().err == f"serving: environment SERVING_ENABLE_BATCHING: {BOOL_ERROR}\n"


def test_an_invalid_number_in_the_environment_stops_with_the_variable_named(capsys, monkeypatch):
    monkeypatch.setenv("SERVING_MAX_BATCH_SIZE", "lots")
    with pytest.raises(SystemExit) as e:
        parse_settings([])
    assert e.value.code == 1
    assert capsys.readouterr().err == "serving: environment SERVING_MAX_BATCH_SIZE: expected int, got 'lots'\n"


@pytest.mark.parametrize(
    "rpc, message",
    [
        ({"batching": "maybe"}, f"metadata.rpc.batching: {BOOL_ERROR}"),
        ({"max_batch_size": "big"}, "metadata.rpc.max_batch_size: expected a number, got 'big'"),
    ],
)
def test_an_invalid_service_config_value_stops_with_the_key_named(tmp_path, capsys, rpc, message):
    path = tmp_path / "service.json"
    path.write_text(json.dumps({"metadata": {"rpc": rpc}}))
    with pytest.raises(SystemExit) as e:
        parse_settings([f"--service_config={path}"])
    assert e.value.code == 1
    assert capsys.readouterr().err == f"serving: service config {path}: {message}\n"


@pytest.mark.parametrize("text, value", [("false", False), ("0", False), ("true", True), (True, True)])
def test_service_config_booleans_take_the_same_words(tmp_path, text, value):
    path = tmp_path / "service.json"
    path.write_text(json.dumps({"metadata": {"rpc": {"batching": text}}}))
    assert parse_settings([f"--service_config={path}"]).enable_batching is value


def test_help_lists_every_setting_under_its_group_with_default_and_variable(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag
    lines = build_parser().format_help().splitlines()
    headings = [lines.index(f"{group}:") for group in GROUPS]
    assert headings == sorted(headings)
    for f in SETTINGS:
        (at,) = [i for i, line in enumerate(lines) if line.lstrip().startswith(f"--{f.name} ")]
        group = list(GROUPS)[[h < at for h in headings].count(True) - 1]
        assert group == f.metadata["group"], f.name
        default = shown_default(f) or "none"
        # A long flag has its help on the next line.
        env = f"SERVING_{f.name.upper()}" + (f" or {f.metadata['env']}" if f.metadata["env"] else "")
        assert f"(default: {default}; env {env})" in " ".join(lines[at:at + 2]), f.name


def test_new_settings_have_their_documented_defaults():
    s = Settings()
    assert (s.rest_api_max_header_bytes, s.token_file, s.token_max_skew_seconds) == (65536, "", 900.0)
    assert isinstance(parse_settings(["--token_max_skew_seconds=0"]).token_max_skew_seconds, float)


def test_framework_flags_become_model_options(tmp_path):
    from serving.core.model_config import ModelSpec, with_runtime

    s = parse_settings(["--tensorflow_intra_op_parallelism=2", "--gpu_memory_limit_mb=512", "--fp16",
                        "--device=auto"])
    (spec,) = with_runtime([ModelSpec("m", str(tmp_path))], s)
    assert spec.device == "auto"
    assert spec.options == {"intra_op_threads": 2, "gpu_memory_limit_mb": 512, "fp16": True}
    (plain,) = with_runtime([ModelSpec("m", str(tmp_path))], parse_settings([]))
    assert plain.options == {} and plain.device == "cpu"
