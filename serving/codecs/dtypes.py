"""KServe V2's (Triton's) tensor datatype names and the numpy dtypes they stand for: the protocol's codec
and the status page's example requests read the same table."""

from __future__ import annotations

import numpy as np

from ..core.signature import BFLOAT16, STRING

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64), "BYTES": STRING,
}
if BFLOAT16 is not None:
    DATATYPES["BF16"] = BFLOAT16
NAMES = {dt: name for name, dt in DATATYPES.items()}
