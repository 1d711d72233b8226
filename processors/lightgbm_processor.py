"""LightGBM processor: a Booster from the text model (model.txt / *.txt / model.lgb).

Output `predictions`: the positive-class probability for binary models, class probabilities [-1, k]
for multi-class, the value for regressors (what `Booster.predict` gives).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from serving.core.processor import Processor, find_model_file
from serving.errors import Code, ServingError
from serving.redact import load_failed

from .tabular import INPUT, OUTPUT, tabular_signature, threads

MODEL_FILES = ("model.txt", "model.lgb", "*.txt")


class LightGBMProcessor(Processor):
    name = "lightgbm"

    def __init__(self) -> None:
        super().__init__()
        self.booster: lgb.Booster | None = None
        self.num_threads = 1

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        if device != "cpu":
            raise ServingError(Code.FAILED_PRECONDITION, f"processor lightgbm serves on the cpu only, not {device}")
        path = find_model_file(version_dir, MODEL_FILES, "LightGBM")
        try:
            booster = lgb.Booster(model_file=str(path))
        except lgb.basic.LightGBMError as e:
            raise load_failed("LightGBM model", path, e) from e
        self.num_threads = threads(dict(options))
        n_classes = booster.num_model_per_iteration()
        self.booster = booster
        self.signatures = tabular_signature(booster.num_feature(), booster.feature_name(), n_classes)

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        assert self.booster is not None, "predict before load"
        out = self.booster.predict(inputs[INPUT], num_threads=self.num_threads, validate_features=False)
        return {OUTPUT: np.asarray(out, dtype=np.float32)}

    def unload(self) -> None:
        self.booster = None
