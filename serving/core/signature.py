"""What a loaded model accepts and returns: tensor specs and signatures, framework-neutral.

Shapes use -1 for "any size"; the first dim of a batchable input is the batch dim. Dtypes are numpy
dtypes (`object` for string/bytes tensors); `TF_DTYPE_NAMES` gives the names TF Serving's metadata uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import invalid_argument

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

STRING = np.dtype(object)

try:  # bfloat16 has no numpy dtype of its own; ml_dtypes (a TensorFlow and JAX dependency) provides one
    import ml_dtypes

    BFLOAT16: np.dtype | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - then no model can declare one either
    BFLOAT16 = None

TF_DTYPE_NAMES: dict[np.dtype, str] = {
    np.dtype(np.float32): "DT_FLOAT",
    np.dtype(np.float64): "DT_DOUBLE",
    np.dtype(np.float16): "DT_HALF",
    np.dtype(np.int8): "DT_INT8",
    np.dtype(np.int16): "DT_INT16",
    np.dtype(np.int32): "DT_INT32",
    np.dtype(np.int64): "DT_INT64",
    np.dtype(np.uint8): "DT_UINT8",
    np.dtype(np.uint16): "DT_UINT16",
    np.dtype(np.uint32): "DT_UINT32",
    np.dtype(np.uint64): "DT_UINT64",
    np.dtype(np.bool_): "DT_BOOL",
    STRING: "DT_STRING",
}
if BFLOAT16 is not None:
    TF_DTYPE_NAMES[BFLOAT16] = "DT_BFLOAT16"

# How TF Serving's JSON errors name a dtype ("... is not of expected type: float").
TF_TYPE_WORDS: dict[np.dtype, str] = {
    dt: name[3:].lower() for dt, name in TF_DTYPE_NAMES.items()
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named input or output tensor."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...] | None  # None: any rank (a model without a declared signature)
    # For a 2-D tabular input: the feature (column) names, so rows may come as {"name": value}.
    columns: tuple[str, ...] | None = None
    # The values a categorical input allows (metadata; the processor enforces them).
    allowed: tuple[str, ...] | None = None
    # The graph's own tensor name ("x:0") where it differs from the alias; metadata shows it.
    tensor_name: str | None = None

    def shape_text(self) -> str:
        return "[?]" if self.shape is None else "[" + ",".join(str(d) for d in self.shape) + "]"

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether `shape` has this spec's rank and fixed dims (any shape when the spec declares none)."""
        want = self.shape
        if want is None:
            return True
        if len(shape) != len(want):
            return False
        for dim, got in zip(want, shape):  # noqa: B905 - same length checked above
            if dim != got and dim != -1:
                return False
        return True

    def check(self, array: np.ndarray, where: str) -> None:
        """Raise INVALID_ARGUMENT unless `array` fits this spec's rank and fixed dims."""
        shape = array.shape
        if not self.fits(shape):
            raise invalid_argument(
                f"{where}: input '{self.name}' expects shape {self.shape_text()}, got "
                f"[{','.join(str(d) for d in shape)}]"
                + self._feature_hint(shape)
            )

    def _feature_hint(self, shape: tuple[int, ...]) -> str:
        if self.shape is not None and len(self.shape) == 2 and len(shape) == 2 and self.shape[1] != -1:
            return f" (the model takes {self.shape[1]} features per row, the request has {shape[1]})"
        return ""


@dataclass(frozen=True, slots=True)
class Signature:
    """A named entry point of a model."""

    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    method_name: str = PREDICT_METHOD
    # Output order for positional protocols; inputs keep their mapping order.
    output_order: tuple[str, ...] = field(default=())
    #: Record models (PMML): a row is an object naming any subset of the inputs; absent inputs arrive as
    #: None and values as given (object arrays), checked by the processor's `validate`; the cloud route
    #: answers one object per row.
    records: bool = False
    _sole: TensorSpec | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sole = next(iter(self.inputs.values())) if len(self.inputs) == 1 else None
        object.__setattr__(self, "_sole", sole)

    def sole_input(self) -> TensorSpec | None:
        """The input when there is exactly one (the row format's plain lists go to it)."""
        return self._sole


def tf_dtype_name(dtype: np.dtype) -> str:
    return TF_DTYPE_NAMES.get(np.dtype(dtype), "DT_INVALID")
