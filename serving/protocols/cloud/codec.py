"""The cloud processor protocol's JSON body for tabular models: a list of rows in, a list of outputs out.

Rows are lists of feature values (`[[1.0, 2.0], ...]`) or objects keyed by feature name
(`[{"f0": 1.0, "f1": 2.0}, ...]`); a TF Serving style object (`{"instances": ...}` / `{"inputs": ...}`)
is accepted too. The answer is one entry per row: the value(s) of the single output, or an object of
the outputs when there are several.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...codecs.arrays import column_matrix, to_array
from ...codecs.jsonutil import dumps, dumps_with_nonfinite, finite, json_ready
from ...core.signature import Signature, tf_dtype_name
from ...errors import invalid_argument
from ..tfserving import codec as tfserving


def decode_json(doc: Any, sig: Signature) -> dict[str, np.ndarray]:
    if isinstance(doc, dict):
        inputs, _ = tfserving.decode_predict(doc, sig)
        return inputs
    if not isinstance(doc, list) or not doc:
        raise invalid_argument("expected a non-empty JSON list of rows, e.g. [[1.0, 2.0], [3.0, 4.0]]")
    if sig.records:
        return tfserving.record_rows(doc, sig, "request")
    sole = sig.sole_input()
    if isinstance(doc[0], dict):
        if sole is not None and sole.columns:
            return {sole.name: column_matrix(doc, sole, "request")}
        return tfserving.decode_rows(doc, sig)
    if sole is None:
        raise invalid_argument(f"the model takes several inputs ({', '.join(sig.inputs)}): send a list of objects")
    return {sole.name: to_array(doc, sole)}


def encode_json(outputs: Mapping[str, np.ndarray], records: bool = False) -> bytes:
    if len(outputs) == 1 and not records:
        (array,) = outputs.values()
        if array.dtype.kind in "fiub" and array.flags.c_contiguous:
            body = dumps(array)
            if b"null" not in body:  # orjson writes NaN/Inf as null: only then take the slow path
                return body
        outputs = json_ready(outputs)
        doc: Any = np.ascontiguousarray(next(iter(outputs.values())))
    else:
        outputs = json_ready(outputs)
        rows = len(next(iter(outputs.values())))
        doc = [{n: a[i] for n, a in outputs.items()} for i in range(rows)]
    return dumps(doc) if all(finite(a) for a in outputs.values()) else dumps_with_nonfinite(doc)


def signature_json(sig: Signature) -> dict[str, Any]:
    """`GET /api/predict/<model>`: the signature as the cloud processor describes it."""
    def tensors(specs: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"name": n, "shape": list(s.shape), "type": tf_dtype_name(s.dtype),
                 **({"values": list(s.allowed)} if s.allowed else {})} for n, s in specs.items()]

    return {"signature_name": sig.name, "inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}
