"""What the tree-model processors (XGBoost, LightGBM) share: one float32 matrix in, one output out."""

from __future__ import annotations

import numpy as np

from serving.core.signature import DEFAULT_SIGNATURE, Signature, TensorSpec

INPUT = "inputs"
OUTPUT = "predictions"
F32 = np.dtype(np.float32)


def tabular_signature(n_features: int, columns: list[str] | None, n_outputs: int) -> dict[str, Signature]:
    """The signature of a tabular model: `inputs` [-1, n_features] -> `predictions` [-1] or [-1, k]."""
    inputs = {INPUT: TensorSpec(INPUT, F32, (-1, n_features), tuple(columns) if columns else None)}
    out_shape = (-1,) if n_outputs <= 1 else (-1, n_outputs)
    outputs = {OUTPUT: TensorSpec(OUTPUT, F32, out_shape)}
    return {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, outputs, output_order=(OUTPUT,))}


def threads(options: dict, default: int = 1) -> int:
    """Threads per predict call: the engine runs batches in parallel, so one each by default."""
    return int(options.get("num_threads", options.get("nthread", default)))
