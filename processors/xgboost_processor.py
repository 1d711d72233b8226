"""XGBoost processor: a Booster from model.json / model.ubj / *.bst / *.model, `inplace_predict` on float32.

Output `predictions`: what `inplace_predict` gives for the model's objective: the probability of the
positive class for binary classifiers, class probabilities [-1, k] for multi-class, the value for
regressors.
"""

from __future__ import annotations

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


class XGBoostProcessor(Processor):
    name = "xgboost"
    devices = ("cpu", "cuda")

    def __init__(self) -> None:
        super().__init__()
        self.booster: xgb.Booster | None = None
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
        self.signatures = tabular_signature(booster.num_features(), booster.feature_names, n_classes)

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        assert self.booster is not None, "predict before load"
        out = self.booster.inplace_predict(inputs[INPUT], validate_features=False)
        return {OUTPUT: np.asarray(out, dtype=np.float32)}

    def unload(self) -> None:
        self.booster = None
