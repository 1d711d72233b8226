"""The XGBoost and LightGBM processors load real model files made here and answer as the frameworks do."""

import numpy as np
import pytest

from serving.core.processor import (
    REGISTRY,
    ProcessorEntry,
    detect_platform,
    processor_class,
    resolve_device,
)
from serving.errors import Code, ServingError
from tests.helpers import make_lgbm, make_linear, make_xgb, training_data

xgb = pytest.importorskip("xgboost", reason="xgboost-cpu is not installed")
lgb = pytest.importorskip("lightgbm", reason="lightgbm is not installed")


def load(name, version_dir):
    proc = processor_class(name)()
    proc.load(version_dir, "cpu", {})
    return proc


@pytest.mark.parametrize("filename", ["model.json", "model.ubj", "model.bst", "xgb.model"])
def test_xgboost_formats_predict_like_the_booster(tmp_path, filename):
    path = make_xgb(tmp_path, 1, filename=filename)
    proc = load("xgboost", path.parent)
    x, _ = training_data()
    want = xgb.Booster(model_file=str(path)).predict(xgb.DMatrix(x))
    got = proc.predict({"inputs": x}, "serving_default")["predictions"]
    assert got.dtype == np.float32 and got.shape == (len(x),)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    sig = proc.signature("")
    assert sig.inputs["inputs"].shape == (-1, 4) and sig.outputs["predictions"].shape == (-1,)


def test_xgboost_multiclass_gives_class_probabilities(tmp_path):
    path = make_xgb(tmp_path, 1, objective="multi:softprob", num_class=3)
    proc = load("xgboost", path.parent)
    x, _ = training_data()
    got = proc.predict({"inputs": x[:5]}, "")["predictions"]
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    assert proc.signature("").outputs["predictions"].shape == (-1, 3)


def test_xgboost_feature_names_become_columns(tmp_path):
    path = make_xgb(tmp_path, 1, names=["a", "b", "c", "d"])
    assert load("xgboost", path.parent).signature("").inputs["inputs"].columns == ("a", "b", "c", "d")


def test_lightgbm_predicts_like_the_booster(tmp_path):
    path = make_lgbm(tmp_path, 1, names=["a", "b", "c", "d"])
    proc = load("lightgbm", path.parent)
    x, _ = training_data()
    want = lgb.Booster(model_file=str(path)).predict(x)
    got = proc.predict({"inputs": x}, "")["predictions"]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert proc.signature("").inputs["inputs"].columns == ("a", "b", "c", "d")


def test_corrupt_model_files_fail_the_load_with_the_path(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.json").write_text("{broken")
    with pytest.raises(ServingError) as e:
        load("xgboost", tmp_path / "1")
    assert e.value.code is Code.FAILED_PRECONDITION and "model.json" in e.value.message
    (tmp_path / "1" / "model.txt").write_text("not a lightgbm model")
    with pytest.raises(ServingError, match="cannot load LightGBM model"):
        load("lightgbm", tmp_path / "1")


def test_platform_is_detected_from_files(tmp_path):
    assert detect_platform(make_xgb(tmp_path / "x", 1).parent) == "xgboost"
    assert detect_platform(make_lgbm(tmp_path / "l", 1).parent) == "lightgbm"
    assert detect_platform(make_linear(tmp_path / "n", 1)) == "linear"
    (tmp_path / "e" / "1").mkdir(parents=True)
    assert detect_platform(tmp_path / "e" / "1") is None


def test_missing_framework_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(
        REGISTRY, "fakeframework",
        ProcessorEntry("processors.does_not_exist:P", "fakeextra", "processors"),
    )
    with pytest.raises(ServingError) as e:
        processor_class("fakeframework")
    assert e.value.code is Code.FAILED_PRECONDITION
    assert "pip install serving-engine[fakeextra]" in e.value.message


def test_unknown_processor_lists_known_ones():
    with pytest.raises(ServingError, match="unknown processor 'nope' .*lightgbm.*xgboost"):
        processor_class("nope")


def test_third_party_processors_register_through_entry_points(monkeypatch):
    from serving.core import processor

    monkeypatch.setattr(processor, "_entry_points", lambda: {"mylinear": "processors.linear:LinearProcessor"})
    from processors.linear import LinearProcessor

    assert processor_class("mylinear") is LinearProcessor
    monkeypatch.setattr(processor, "_entry_points", lambda: {"bad": "serving.errors:Code"})
    with pytest.raises(ServingError, match="is not a Processor subclass"):
        processor_class("bad")


def test_device_resolution_counts_the_devices():
    assert resolve_device("auto", 0, "p") == "cpu" and resolve_device("auto", 2, "p") == "cuda"
    assert resolve_device("CUDA:1", 2, "p") == "cuda:1" and resolve_device("cpu", 0, "p") == "cpu"
    for requested, count, said in [
        ("cuda", 0, "no CUDA device is present"),
        ("cuda:2", 2, "2 CUDA device(s) are present (cuda:0 to cuda:1)"),
        ("cuda:x", 1, "1 CUDA device(s) are present"),
    ]:
        with pytest.raises(ServingError) as e:
            resolve_device(requested, count, "p")
        assert e.value.code is Code.FAILED_PRECONDITION and said in e.value.message, (requested, e.value.message)
    with pytest.raises(ServingError) as e:
        resolve_device("tpu", 1, "p")
    assert e.value.code is Code.INVALID_ARGUMENT
