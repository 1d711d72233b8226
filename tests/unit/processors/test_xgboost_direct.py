"""The XGBoost processor's direct C call gives what `Booster.inplace_predict` gives, or goes through it."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import xgboost as xgb

from processors.xgboost_processor import DensePredict, XGBoostProcessor

RNG = np.random.default_rng(7)
X = RNG.random((400, 6), dtype=np.float32)


def trained(objective: str, **params: object) -> xgb.Booster:
    labels = {
        "binary:logistic": (X[:, 0] > 0.5).astype(int),
        "multi:softprob": (X[:, 0] * 3).astype(int),
        "multi:softmax": (X[:, 0] * 3).astype(int),
        "reg:squarederror": X[:, 1] * 2 + X[:, 2],
    }[objective]
    booster = xgb.train({"objective": objective, "nthread": 1, "max_depth": 3, **params},
                        xgb.DMatrix(X, labels), 5)
    booster.set_param({"nthread": 1})
    return booster


@pytest.mark.parametrize("objective,params", [
    ("binary:logistic", {}),
    ("multi:softprob", {"num_class": 3}),
    ("multi:softmax", {"num_class": 3}),
    ("reg:squarederror", {}),
])
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_the_direct_call_answers_as_inplace_predict(objective: str, params: dict[str, object], rows: int) -> None:
    booster = trained(objective, **params)
    batch = X[:rows].copy()
    batch[0, 2] = np.nan  # missing, as inplace_predict's default reads it
    expected = booster.inplace_predict(batch, validate_features=False)
    got = DensePredict(booster)(batch)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_the_answer_is_a_copy_that_the_next_call_does_not_overwrite() -> None:
    booster = trained("binary:logistic")
    direct = DensePredict(booster)
    first = direct(X[:3].copy())
    kept = first.copy()
    direct(X[100:103].copy())  # xgboost reuses its per-thread output buffer
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("batch", [
    X[:4].astype(np.float64),  # another dtype
    X[:8:2],  # not contiguous
    np.asfortranarray(X[:4]),
], ids=["float64", "strided", "fortran"])
def test_other_arrays_go_through_inplace_predict(batch: np.ndarray) -> None:
    booster = trained("reg:squarederror")
    got = DensePredict(booster)(batch)
    np.testing.assert_array_equal(got, booster.inplace_predict(np.ascontiguousarray(batch, dtype=np.float32),
                                                                validate_features=False))
    assert got.dtype == np.float32


def test_an_error_of_the_c_call_is_an_xgboost_error() -> None:
    booster = trained("reg:squarederror")
    with pytest.raises(xgb.core.XGBoostError) as direct_error:
        DensePredict(booster)(np.zeros((2, 9), dtype=np.float32))  # 9 features for a model of 6
    with pytest.raises(xgb.core.XGBoostError) as library_error:
        booster.inplace_predict(np.zeros((2, 9), dtype=np.float32), validate_features=False)
    assert str(direct_error.value) == str(library_error.value)


def test_threads_predicting_at_once_each_get_their_own_answers() -> None:
    booster = trained("multi:softprob", num_class=3)
    direct = DensePredict(booster)
    batches = [X[i * 20:(i + 1) * 20].copy() for i in range(8)]
    expected = [booster.inplace_predict(b, validate_features=False) for b in batches]
    wrong: list[int] = []

    def work(i: int) -> None:
        for _ in range(200):
            if not np.array_equal(direct(batches[i]), expected[i]):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_the_processor_uses_the_direct_call_on_the_cpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    booster = trained("binary:logistic")
    booster.save_model(str(tmp_path / "model.json"))
    processor = XGBoostProcessor()
    processor.load(tmp_path, "cpu", {})
    assert isinstance(processor.dense, DensePredict)
    out = processor.predict({"inputs": X[:4].copy()}, "serving_default")
    np.testing.assert_array_equal(out["predictions"], booster.inplace_predict(X[:4], validate_features=False))
