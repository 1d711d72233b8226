"""XGBoost processor: a Booster from model.json / model.ubj / *.bst / *.model, `inplace_predict` on float32.

Output `predictions`: what `inplace_predict` gives for the model's objective: the probability of the
positive class for binary classifiers, class probabilities [-1, k] for multi-class, the value for
regressors.

On the CPU a float32 C-contiguous batch goes to xgboost's C API (`XGBoosterPredictFromDense`, the call
`inplace_predict` makes) with its JSON arguments made once at load: `inplace_predict`'s Python around that call
(the per-call imports, type probes, argument JSON and output wrapping) is half its cost on the served model
(104 against 54 µs for one row, the C call alone 49: benchmarks/results/xgb_predict-2026-12-07-1115.md).
Anything else (another dtype, a CUDA booster) takes `inplace_predict`.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from serving.core.processor import Processor, cuda_device_count, find_model_file, resolve_device
from serving.redact import load_failed

from .tabular import INPUT, OUTPUT, tabular_signature, threads

MODEL_FILES = ("model.json", "model.ubj", "*.bst", "*.model", "*.ubj", "*.json")

#: `inplace_predict`'s arguments with its defaults: values (not margins), every tree, NaN as missing.
_PREDICT_ARGS = json.dumps({"type": 0, "training": False, "iteration_begin": 0, "iteration_end": 0,
                            "missing": float("nan"), "strict_shape": False, "cache_id": 0}).encode()
_F4 = np.dtype(np.float32)


class DensePredict:
    """`Booster.inplace_predict(batch)` for a float32 C-contiguous 2-D numpy batch, as one C call.

    Thread-safe as `inplace_predict` is: the output buffer is xgboost's, per thread, and is copied before the
    next call on the same thread. The answer is the same array (`tests/unit/processors/test_xgboost_direct.py`).
    """

    def __init__(self, booster: xgb.Booster) -> None:
        self.booster = booster
        self.lib = xgb.core._LIB
        self.call = self.lib.XGBoosterPredictFromDense
        self.handle = booster.handle
        self.null = ctypes.c_void_p()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != _F4 or x.ndim != 2 or not x.flags.c_contiguous:
            return np.asarray(self.booster.inplace_predict(x, validate_features=False), dtype=np.float32)
        rows, cols = x.shape
        interface = (b'{"data": [%d, true], "strides": null, "descr": [["", "<f4"]], "typestr": "<f4", '
                     b'"shape": [%d, %d], "version": 3}' % (x.ctypes.data, rows, cols))
        shape = ctypes.POINTER(ctypes.c_uint64)()
        dims = ctypes.c_uint64()
        preds = ctypes.POINTER(ctypes.c_float)()
        if self.call(self.handle, interface, _PREDICT_ARGS, self.null, ctypes.byref(shape), ctypes.byref(dims),
                     ctypes.byref(preds)):
            raise xgb.core.XGBoostError(self.lib.XGBGetLastError().decode())
        n = dims.value
        out_shape = tuple(shape[i] for i in range(n))
        size = 1
        for d in out_shape:
            size *= d
        out = np.empty(out_shape, dtype=np.float32)
        if size:
            ctypes.memmove(out.ctypes.data, preds, size * 4)
        return out


class XGBoostProcessor(Processor):
    name = "xgboost"
    devices = ("cpu", "cuda")

    def __init__(self) -> None:
        super().__init__()
        self.booster: xgb.Booster | None = None
        self.dense: DensePredict | None = None
        self.objective = ""

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        path = find_model_file(version_dir, MODEL_FILES, "XGBoost")
        try:
            booster = xgb.Booster(model_file=str(path))
        except xgb.core.XGBoostError as e:
            raise load_failed("XGBoost model", path, e) from e
        cuda = bool(xgb.build_info().get("USE_CUDA"))
        device = resolve_device(device, cuda_device_count() if cuda else 0, "xgboost")
        params: dict[str, Any] = {"nthread": threads(dict(options))}
        if device.startswith("cuda"):
            params["device"] = device
        booster.set_param(params)
        config = json.loads(booster.save_config())
        self.objective = config["learner"]["objective"]["name"]
        n_classes = int(config["learner"]["learner_model_param"].get("num_class", "0") or 0)
        if not self.objective.endswith("softprob"):
            n_classes = 0  # one value per row (binary probability, class index or regression value)
        self.booster, self.device = booster, device
        self.dense = DensePredict(booster) if device == "cpu" else None
        self.signatures = tabular_signature(booster.num_features(), booster.feature_names, n_classes)

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        assert self.booster is not None, "predict before load"
        if self.dense is not None:
            return {OUTPUT: self.dense(inputs[INPUT])}
        out = self.booster.inplace_predict(inputs[INPUT], validate_features=False)
        return {OUTPUT: np.asarray(out, dtype=np.float32)}

    def unload(self) -> None:
        self.booster = None
        self.dense = None
