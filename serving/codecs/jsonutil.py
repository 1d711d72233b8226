"""JSON in and out with orjson, plus the NaN/Infinity tokens TF Serving reads and writes."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from ..errors import invalid_argument
from ..signature import BFLOAT16

OPTS = orjson.OPT_SERIALIZE_NUMPY


def loads(body: bytes) -> Any:
    """Parse a request body; NaN / Infinity / -Infinity tokens are accepted as TF Serving does."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        first_error = e
    try:  # slow path, only for bodies orjson refuses: the stdlib knows the NaN/Infinity tokens
        return json.loads(body)
    except (ValueError, RecursionError):
        raise invalid_argument(f"JSON Parse error: {first_error}") from None


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=OPTS)


def json_ready(outputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Outputs orjson can write: bfloat16 (a numpy 'V' dtype) widened to float32, exactly; others as they are."""
    if all(a.dtype.kind != "V" for a in outputs.values()):
        return outputs
    return {n: a.astype(np.float32) if a.dtype == BFLOAT16 else a for n, a in outputs.items()}


def finite(array: np.ndarray) -> bool:
    """No NaN / Inf in a float array: one reduction (an overflowing sum only sends it to the slow path)."""
    return array.dtype.kind != "f" or math.isfinite(array.sum())


def nonfinite_safe(array: np.ndarray) -> Any:
    """Python lists for an array holding NaN/Inf, floats in shortest round-trip form (slow path)."""
    flat = [float(str(v)) for v in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape).tolist()


def dumps_with_nonfinite(obj: Any) -> bytes:
    """Like `dumps`, but writes NaN / Infinity / -Infinity tokens (stdlib json; slow path)."""
    def convert(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return nonfinite_safe(x) if x.dtype.kind == "f" else x.tolist()
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, list):
            return [convert(v) for v in x]
        if isinstance(x, np.generic):
            return x.item()
        return x

    return json.dumps(convert(obj), separators=(",", ":")).encode()


def short(value: Any, limit: int = 200) -> str:
    """A JSON rendering of `value` for error messages, cut at `limit` characters."""
    try:
        text = json.dumps(value, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
