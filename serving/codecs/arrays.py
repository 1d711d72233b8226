"""JSON values -> numpy arrays of a signature's dtype, with TF Serving's type rules and messages.

Numbers go through one vectorised `np.asarray`; only error paths and string tensors walk elements.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..core.signature import STRING, TF_TYPE_WORDS, TensorSpec
from ..errors import invalid_argument, unimplemented
from .jsonutil import short

# Which kinds numpy infers from JSON values each target kind accepts.
ACCEPTS = {"f": "fiu", "i": "iu", "u": "u", "b": "b"}
HALF = np.dtype(np.float16)
JSON_TYPE = {bool: "Bool", int: "Number", float: "Number", str: "String", dict: "Object", list: "Array"}


#: The numeric dtypes JSON numbers convert to, by their kind (float16 is not one: see convert).
NUMERIC_KINDS = {np.dtype(t): np.dtype(t).kind for t in (np.float32, np.float64, np.int8, np.int16, np.int32,
                                                         np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                                                         np.bool_)}


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    """Convert a JSON value (scalar or nested lists) to an array of `spec.dtype`."""
    return convert(value, spec.dtype, spec.name)


def convert(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """A JSON value as an array of `dtype`, with TF Serving's type rules; `name` is for messages."""
    kind = NUMERIC_KINDS.get(dtype)  # one lookup for the common dtypes: dtype comparisons cost more
    if kind is None:
        if dtype == STRING:
            return _string_array(value)
        kind = dtype.kind
        if kind not in ACCEPTS or dtype == HALF:  # TF Serving converts no half precision from JSON
            raise unimplemented(f"Conversion of JSON Value: {short(value)} to type: {TF_TYPE_WORDS.get(dtype)}")
    try:
        array = np.asarray(value)
    except ValueError as e:
        raise invalid_argument(
            f"input '{name}': the lists are ragged (every row must have the same shape): {e}"
        ) from None
    except OverflowError:
        raise invalid_argument(f"input '{name}': an integer does not fit in 64 bits") from None
    if array.dtype.kind not in ACCEPTS[kind]:
        raise _type_error(value, dtype)
    if kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise invalid_argument(f"input '{name}': a value is out of range for {dtype.name}")
    return array.astype(dtype, copy=False)


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _type_error(value: Any, dtype: np.dtype) -> Exception:
    want = TF_TYPE_WORDS.get(dtype, dtype.name)
    ok = {"f": (int, float), "i": (int,), "u": (int,), "b": (bool,)}[dtype.kind]
    try:
        for leaf in _leaves(value):
            if not isinstance(leaf, ok) or (isinstance(leaf, bool) and dtype.kind != "b"):
                kind = JSON_TYPE.get(type(leaf), "Null")
                return invalid_argument(f"JSON Value: {short(leaf)} Type: {kind} is not of expected type: {want}")
    except RecursionError:  # lists nested deeper than the interpreter recurses
        return invalid_argument(f"JSON Value: {short(value)} is nested too deep for a {want} tensor")
    return invalid_argument(f"JSON Value: {short(value)} is not of expected type: {want}")


def _decode_string(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from None
    if isinstance(value, dict):
        raise invalid_argument(f"JSON Value: {short(value)} not formatted correctly for base64 data")
    kind = JSON_TYPE.get(type(value), "Null")
    raise invalid_argument(f"JSON Value: {short(value)} Type: {kind} is not of expected type: string")


def _string_array(value: Any) -> np.ndarray:
    def walk(v: Any) -> Any:
        return [walk(x) for x in v] if isinstance(v, list) else _decode_string(v)

    try:
        nested = walk(value)
    except RecursionError:  # orjson takes 1024 levels; numpy has at most 64 dims
        raise invalid_argument("string input: the lists are nested too deep") from None
    shape = _shape(nested)
    out = np.empty(shape, dtype=object)
    try:
        if shape:
            out[...] = nested
        else:
            out[()] = nested
    except ValueError as e:
        raise invalid_argument(f"string input: the lists are ragged: {e}") from None
    return out


def _shape(nested: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(nested, list):
        shape.append(len(nested))
        if not nested:
            break
        nested = nested[0]
    return tuple(shape)


def encode_strings(array: np.ndarray, as_b64: bool) -> Any:
    """A string tensor for JSON: utf-8 text, or {"b64": ...} objects for `*_bytes` outputs."""

    def one(v: Any) -> Any:
        b = v if isinstance(v, bytes) else str(v).encode()
        if as_b64:
            return {"b64": base64.b64encode(b).decode()}
        return b.decode("utf-8", errors="replace")

    flat = [one(v) for v in array.ravel()]
    return np.array(flat + [None], dtype=object)[:-1].reshape(array.shape).tolist()


def column_matrix(rows: Sequence[dict[str, Any]], spec: TensorSpec, where: str) -> np.ndarray:
    """Rows given as {feature_name: value} objects -> [n, n_features] in the model's column order."""
    columns = spec.columns or ()
    wanted = set(columns)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise invalid_argument(f"{where}: expecting an object at item {i}, got {short(row)}")
        if row.keys() != wanted:
            missing = [c for c in columns if c not in row]
            unknown = sorted(set(row) - wanted)
            parts = []
            if missing:
                parts.append(f"missing feature(s) {', '.join(missing[:10])}")
            if unknown:
                parts.append(f"unknown feature(s) {', '.join(unknown[:10])}")
            raise invalid_argument(f"{where}: item {i}: {'; '.join(parts)}")
    return to_array([[row[c] for c in columns] for row in rows], spec)
