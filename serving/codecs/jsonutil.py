"""JSON in and out with orjson, plus the NaN/Infinity tokens TF Serving reads and writes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import orjson

from ..core.signature import BFLOAT16
from ..errors import invalid_argument

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
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise invalid_argument(f"JSON Parse error: {first_error}") from None
    # The stdlib also lets lone surrogates through (orjson and TF Serving's rapidjson refuse them): text
    # that no encoder can write again, so refuse it here as rapidjson does, before anything reads it.
    if SURROGATE_IN_BODY.search(body) is not None and _has_lone_surrogate(doc):
        raise invalid_argument("JSON Parse error: The surrogate pair in string is invalid.")
    return doc


# A \uD800-\uDFFF escape or a UTF-8-encoded surrogate (json.loads decodes with 'surrogatepass').
SURROGATE_IN_BODY = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # the stdlib joins valid pairs: what is left is lone


def _has_lone_surrogate(doc: Any) -> bool:
    """Whether any key or string in `doc` holds a lone surrogate; iterative, for any nesting."""
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if LONE_SURROGATE.search(value):
                return True
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
    return False


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
    """A JSON rendering of `value` for error messages (ASCII, escapes as json.dumps writes them), cut at
    `limit` characters. Rendered piece by piece and stopped at the limit: a huge body costs no more than
    a small one, and nesting of any depth (orjson parses 1024 levels) cannot exhaust the stack."""
    pieces, size = [], 0
    for piece in _pieces(value):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            break
    text = "".join(pieces)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scalar(value: Any) -> str:
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):  # an int past Python's digit limit, or a str() that fails
        return f"<{type(value).__name__}>"


def _pieces(value: Any) -> Iterator[str]:
    """`value` as compact JSON text in pieces, depth first with a stack of open containers (no recursion)."""
    open_items: list[tuple[Iterator[Any], str]] = []  # (the rest of a list or dict's items, its closer)
    first = True
    while True:
        if isinstance(value, list | tuple):
            yield "["
            open_items.append((iter(value), "]"))
            first = True
        elif isinstance(value, dict):
            yield "{"
            open_items.append((iter(value.items()), "}"))
            first = True
        else:
            yield _scalar(value)
            first = False
        while True:  # the next value to render, closing the containers that are done
            if not open_items:
                return
            items, closer = open_items[-1]
            item: Any = next(items, _END)
            if item is _END:
                open_items.pop()
                yield closer
                first = False
                continue
            if not first:
                yield ","
            if closer == "}":
                key, item = item
                yield _scalar(key if isinstance(key, str) else str(key)) + ":"
            value = item
            break


_END = object()
