"""TF Serving's REST JSON: predict requests (row `instances` / columnar `inputs`), responses, status and
metadata documents, errors. Rules and messages follow tensorflow_serving/util/json_tensor.cc.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...codecs.arrays import column_matrix, encode_strings, is_b64, to_array
from ...codecs.jsonutil import (
    dumps,
    dumps_with_nonfinite,
    finite,
    json_ready,
    short,
)
from ...core.repository import VersionStatus
from ...core.servable import Servable
from ...core.signature import STRING, Signature, TensorSpec, tf_dtype_name
from ...errors import encodable, invalid_argument


def signature_name(doc: Any) -> str:
    """The request's `signature_name` ('' when absent); the document must be an object."""
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {short(doc)} Is not object")
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {short(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def decode_predict(doc: dict[str, Any], sig: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """Named input arrays from a predict request, and whether it used the row format."""
    instances = doc.get("instances")
    sole = sig.sole_input()
    if (sole is not None and instances.__class__ is list and instances
            and instances[0].__class__ is list and "inputs" not in doc and not sig.records):
        # The common request in one step: rows of plain lists for a model of one input (decode_rows' first case).
        return {sole.name: to_array(instances, sole)}, True
    inputs = doc.get("inputs")
    if "instances" in doc:
        if "inputs" in doc:
            raise invalid_argument(
                f"JSON Value: {short(doc)} Not formatted correctly expecting only one of 'inputs' or "
                "'instances' keys to exist "
            )
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {short(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {short(doc)} No values in 'instances' array")
        return decode_rows(instances, sig), True
    if "inputs" in doc:
        return decode_columns(inputs, sig), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_object(v: Any) -> bool:
    return isinstance(v, dict) and not is_b64(v)


def decode_rows(instances: list[Any], sig: Signature) -> dict[str, np.ndarray]:
    """The row format: one element per instance; objects name the inputs (or a tabular model's features)."""
    if sig.records:
        return record_rows(instances, sig, "'instances' list")
    sole = sig.sole_input()
    if not _is_object(instances[0]):
        if sole is None:
            raise invalid_argument(
                "instances is a plain list, but expecting list of objects as multiple input tensors "
                "required as per tensorinfo_map"
            )
        return {sole.name: to_array(instances, sole)}
    names = set(sig.inputs)
    first_keys = instances[0].keys()
    if sole is not None and sole.columns and first_keys != names:
        return {sole.name: column_matrix(instances, sole, "'instances' list")}
    for i, item in enumerate(instances):
        if not _is_object(item):
            raise invalid_argument(f"Expecting object but got list at item {i} of input list")
        if item.keys() != names:
            raise invalid_argument(
                f"Failed to process element: {i} of 'instances' list. JSON object: {short(item)} keys must "
                f"be equal to: {','.join(sorted(names))}"
            )
    return {name: to_array([item[name] for item in instances], spec) for name, spec in sig.inputs.items()}


def record_rows(rows: list[Any], sig: Signature, where: str) -> dict[str, np.ndarray]:
    """Rows of a record model: objects naming any subset of the inputs -> one object array per input
    (None where a row leaves it out); values stay as given for the processor to check."""
    names = sig.inputs.keys()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise invalid_argument(f"{where}: item {i} must be an object of input fields, got {short(row)}")
        unknown = [k for k in row if k not in names]
        if unknown:
            raise invalid_argument(f"{where}: item {i}: unknown field '{unknown[0]}'; the model takes "
                                   f"{', '.join(names)}")
    out = {}
    for name in names:
        column = np.empty(len(rows), dtype=object)
        column[:] = [row.get(name) for row in rows]
        out[name] = column
    return out


def decode_columns(inputs: Any, sig: Signature) -> dict[str, np.ndarray]:
    """The columnar format: `inputs` is the sole tensor, or an object of named tensors."""
    if sig.records and isinstance(inputs, dict):
        lengths = {len(v) for v in inputs.values() if isinstance(v, list)}
        if len(lengths) != 1 or len(inputs) != sum(isinstance(v, list) for v in inputs.values()):
            raise invalid_argument("'inputs' object: every field must be a list, all of the same length")
        n = lengths.pop()
        return record_rows([{k: v[i] for k, v in inputs.items()} for i in range(n)], sig, "'inputs' object")
    sole = sig.sole_input()
    if not _is_object(inputs):
        if sole is None:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        return {sole.name: to_array(inputs, sole)}
    if sole is not None and sole.columns and sole.name not in inputs:
        return {sole.name: _columns_object(inputs, sole)}
    out = {}
    for name, spec in sig.inputs.items():
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = to_array(inputs[name], spec)
    return out


def _columns_object(inputs: dict[str, Any], spec: TensorSpec) -> np.ndarray:
    """{"f0": [..rows..], "f1": [...]} for a tabular input with named features."""
    columns = spec.columns or ()
    missing = [c for c in columns if c not in inputs]
    if missing:
        raise invalid_argument(f"Missing named input: {missing[0]} in 'inputs' object.")
    unknown = sorted(set(inputs) - set(columns))
    if unknown:
        raise invalid_argument(f"'inputs' object: unknown feature(s) {', '.join(unknown[:10])}")
    column_spec = TensorSpec(spec.name, spec.dtype, (-1,))
    arrays = [to_array(inputs[c], column_spec) for c in columns]
    if len({a.shape for a in arrays}) > 1:
        shapes = ", ".join(f"{c}: {list(a.shape)}" for c, a in zip(columns[:10], arrays, strict=False))
        raise invalid_argument(f"'inputs' object: the features of {spec.name} must be lists of one length, got "
                               f"{shapes}")
    return np.stack(arrays, axis=-1)


def _jsonable(name: str, array: np.ndarray) -> Any:
    if array.dtype == STRING or array.dtype.kind in "SU":
        return encode_strings(array, as_b64=name.endswith("_bytes"))
    return np.ascontiguousarray(array)  # orjson writes C-contiguous arrays only


def encode_predict(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """`{"predictions": ...}` (row format) or `{"outputs": ...}` (columnar), as TF Serving writes them."""
    if len(outputs) == 1:  # the common case in one step: one numeric, contiguous output
        (array,) = outputs.values()
        if array.dtype.kind in "fiub" and array.flags.c_contiguous:
            body = dumps({"predictions": array} if row_format else {"outputs": array})
            if b"null" not in body:  # orjson writes NaN/Inf as null: only then take the slow path
                return body
    outputs = json_ready(outputs)
    safe = all(finite(a) for a in outputs.values())
    items = {name: _jsonable(name, a) for name, a in outputs.items()}
    if row_format:
        if len(items) == 1:
            doc: dict[str, Any] = {"predictions": next(iter(items.values()))}
        else:
            sizes = {len(a) if a.ndim else -1 for a in outputs.values()}
            if len(sizes) != 1 or -1 in sizes:
                raise invalid_argument(
                    "Tensors with different 0th dimensions cannot be returned in the row format "
                    "('instances'); use the columnar format ('inputs')"
                )
            rows = next(iter(sizes))
            doc = {"predictions": [{n: v[i] for n, v in items.items()} for i in range(rows)]}
    else:
        doc = {"outputs": next(iter(items.values())) if len(items) == 1 else items}
    return dumps(doc) if safe else dumps_with_nonfinite(doc)


def encode_status(servables: list[VersionStatus]) -> bytes:
    return dumps({
        "model_version_status": [
            {
                "version": str(s.version),
                "state": s.state.value,
                "status": {
                    "error_code": s.error.code.name if s.error else "OK",
                    "error_message": s.error.message if s.error else "",
                },
            }
            for s in servables
        ]
    })


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    return {
        "dtype": tf_dtype_name(spec.dtype),
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in spec.shape or ()],
                         "unknown_rank": spec.shape is None},
        "name": spec.tensor_name or spec.name,
    }


def signature_def(sig: Signature) -> dict[str, Any]:
    return {
        "inputs": {n: _tensor_info(s) for n, s in sig.inputs.items()},
        "outputs": {n: _tensor_info(s) for n, s in sig.outputs.items()},
        "method_name": sig.method_name,
        "defaults": {},
    }


def encode_metadata(servable: Servable) -> bytes:
    sigs = servable.processor.signatures
    return dumps({
        "model_spec": {"name": servable.model, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": {"signature_def": {n: signature_def(s) for n, s in sigs.items()}}},
    })


def encode_error(message: str) -> bytes:
    """`{"error": message}`, the body of every REST error (TF Serving, KServe V2 and cloud routes alike)."""
    return dumps({"error": encodable(message)})


def encode_connection_error(message: str) -> bytes:
    """`{"error": message}` as the HTTP connection's own errors are written (a body over the limit, a request
    that stalls, too many connections): with a space after the colon, the bytes these answers have always
    had on the wire, which clients compare."""
    return b'{"error": %s}' % dumps(encodable(message))
