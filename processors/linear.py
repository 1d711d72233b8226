"""A pure-numpy linear model, `y = x @ weights + bias`: the hand-checkable processor the engine's tests use.

Version directory: `linear.json` = {"weights": [[...]] (n_features x n_outputs) or [...] (n_features),
"bias": [...] or number, optional "delay_ms": sleep per predict call (to exercise deadlines and drains),
optional "load_delay_ms": sleep in the load (to exercise slow and cancelled loads), optional "reject_nan":
true (predict raises on NaN input, to exercise processor failures)}.
A `linear.json` that is not valid JSON fails the load (the deliberately broken model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from serving.core.processor import Processor, find_model_file
from serving.redact import load_failed

from .tabular import INPUT, OUTPUT, tabular_signature


class LinearProcessor(Processor):
    name = "linear"

    def __init__(self) -> None:
        super().__init__()
        self.weights = np.zeros((0, 1), np.float32)
        self.bias = np.zeros(1, np.float32)
        self.delay_s = 0.0
        self.reject_nan = False
        self.squeeze = False

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        path = find_model_file(version_dir, ("linear.json",), "linear")
        try:
            spec = json.loads(path.read_text())
            weights = np.asarray(spec["weights"], dtype=np.float32)
            bias = np.asarray(spec.get("bias", 0.0), dtype=np.float32)
        except (ValueError, KeyError, TypeError) as e:
            raise load_failed("linear model", path, e) from e
        self.squeeze = weights.ndim == 1
        self.weights = weights.reshape(weights.shape[0], -1)
        self.bias = np.broadcast_to(bias, (self.weights.shape[1],)).astype(np.float32)
        self.delay_s = float(spec.get("delay_ms", 0)) / 1000
        time.sleep(float(spec.get("load_delay_ms", 0)) / 1000)
        self.reject_nan = bool(spec.get("reject_nan", False))
        n_out = 1 if self.squeeze else self.weights.shape[1]
        self.signatures = tabular_signature(self.weights.shape[0], spec.get("features"), n_out if n_out > 1 else 0)

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        x = inputs[INPUT]
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.reject_nan and np.isnan(x).any():
            raise ValueError("linear model refuses NaN input")
        y = x @ self.weights + self.bias
        return {OUTPUT: y[:, 0] if self.squeeze or y.shape[1] == 1 else y}
