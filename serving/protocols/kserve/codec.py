"""KServe V2 (Open Inference Protocol): REST JSON with the binary tensor data extension, and the gRPC
ModelInfer tensors (typed `contents` or `raw_input_contents`). Rules and texts follow Triton, whose
clients (tritonclient, perf_analyzer) are the ones this must satisfy."""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...codecs.arrays import convert
from ...codecs.dtypes import DATATYPES, NAMES
from ...codecs.jsonutil import dumps, dumps_with_nonfinite, loads
from ...core.model_config import version_number
from ...core.signature import STRING, Signature, TensorSpec
from ...errors import ServingError, invalid_argument

CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
            "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
HEADER_LENGTH = b"inference-header-content-length"
_LITTLE = sys.byteorder == "little"  # raw tensor contents are little-endian


def unknown_output(call: Any, name: object) -> ServingError:
    """Triton's words for a wanted output the model does not have (`call`: a serving.core.pipeline.Call)."""
    return invalid_argument(f"unexpected inference output '{name}' for model '{call.model}'")


def requested_outputs(doc: Mapping[str, Any]) -> list[Any]:
    """The output names a REST infer request asks for (empty: all); a name that is not a string stays as
    it is, for unknown_output to name."""
    requested = doc.get("outputs")
    if not isinstance(requested, list):
        return []
    return [r.get("name") if isinstance(r, dict) else None for r in requested]


def parse_version(text: str | None) -> int | None:
    """A V2 model version ('' or None: the latest) as this engine's integer version."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise invalid_argument(f"model version must be an integer, got '{text}'")
    return version_number(text)


def datatype_of(dtype: np.dtype) -> str:
    return NAMES.get(STRING if dtype.kind in "OSU" else np.dtype(dtype), "BYTES")


def model_metadata(servable: Any, available_versions: Sequence[int]) -> dict[str, Any]:
    """The V2 model metadata document (REST body; the gRPC answer has the same fields)."""
    sig = servable.signature(None)
    return {"name": servable.model, "versions": [str(v) for v in sorted(available_versions)],
            "platform": servable.platform,
            "inputs": tensor_metadata(sig.inputs), "outputs": tensor_metadata(sig.outputs)}


def tensor_metadata(specs: Mapping[str, TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": n, "datatype": datatype_of(s.dtype), "shape": list(s.shape) if s.shape is not None else [-1]}
            for n, s in specs.items()]


def _dtype(name: str, datatype: str, spec: TensorSpec | None) -> np.dtype:
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"input '{name}': unknown datatype '{datatype}'")
    if spec is not None and spec.dtype != dtype:
        raise invalid_argument(
            f"unexpected datatype {datatype} for input '{name}', expecting {datatype_of(spec.dtype)}"
        )
    return dtype


def _shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list):
        raise invalid_argument(f"input '{name}': shape must be a list of non-negative integers")
    for d in shape:
        if type(d) is not int or d < 0:
            raise invalid_argument(f"input '{name}': shape must be a list of non-negative integers")
    return tuple(shape)


def _from_raw(name: str, raw: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == STRING:
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise invalid_argument(f"input '{name}': truncated BYTES element")
            (n,) = struct.unpack_from("<I", raw, pos)
            items.append(raw[pos + 4:pos + 4 + n])
            pos += 4 + n
        array = np.empty(len(items), dtype=object)
        array[:] = items
    else:
        if len(raw) % dtype.itemsize:
            raise invalid_argument(f"input '{name}': {len(raw)} bytes is not a whole number of {dtype.name}")
        array = np.frombuffer(raw, dtype=dtype if _LITTLE and dtype.isnative else dtype.newbyteorder("<"))
    if array.size != math.prod(shape):
        raise _count_error(name, array.size, shape)
    return array.reshape(shape)


def raw_bytes(array: np.ndarray) -> bytes:
    dtype = array.dtype
    if _LITTLE and dtype.isnative and dtype.kind not in "OSU":
        return array.tobytes()  # C order, whatever the array's strides
    if dtype.kind in "OSU":
        out = bytearray()
        for v in array.ravel():
            b = v if isinstance(v, bytes) else str(v).encode()
            out += struct.pack("<I", len(b)) + b
        return bytes(out)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


# ---- REST ----

def decode_rest(body: bytes, header_length: int | None, sig_for: Any) -> tuple[
        Signature, dict[str, np.ndarray], dict[str, Any]]:
    """An infer request (JSON, or JSON + binary tensors) -> (signature, inputs, request document)."""
    if header_length is not None:
        if header_length > len(body) or header_length < 0:
            raise invalid_argument("Inference-Header-Content-Length is larger than the body")
        doc, binary = loads(body[:header_length]), memoryview(body)[header_length:]
    else:
        doc, binary = loads(body), memoryview(b"")
    items = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not isinstance(doc.get("id", ""), str):
        raise _document_error(doc)
    params = doc.get("parameters")
    sig: Signature = sig_for(params.get("signature_name") if isinstance(params, dict) else None)
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        name = item.get("name") if isinstance(item, dict) else None
        if (not isinstance(name, str) or (spec := sig.inputs.get(name)) is None
                or not isinstance(datatype := item.get("datatype"), str)):
            raise _input_error(item, sig)
        dtype = _dtype(name, datatype, spec)
        shape = _shape(name, item.get("shape"))
        item_params = item.get("parameters")
        size = item_params.get("binary_data_size") if isinstance(item_params, dict) else None
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise _binary_size_error(name, size)
            inputs[name] = _from_raw(name, bytes(binary[offset:offset + size]), dtype, shape)
            offset += size
            continue
        if "data" not in item:
            raise invalid_argument(f"input '{name}' has neither 'data' nor binary data")
        array = convert(item["data"], dtype, name)
        if array.size != math.prod(shape):
            raise _count_error(name, array.size, shape)
        inputs[name] = array.reshape(shape)  # flat or nested data alike
    return sig, inputs, doc


# Why a request is refused, worked out again once a combined check in decode_rest failed: the requests that
# pass pay for the checks alone, not for a call each.

def _document_error(doc: Any) -> ServingError:
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        return invalid_argument("the infer request must be a JSON object with an 'inputs' list")
    # the id is echoed in the answer: only a string, as Triton
    return invalid_argument("Unable to parse 'id': attempt to access JSON non-string as string")


def _input_error(item: Any, sig: Signature) -> ServingError:
    name = item.get("name") if isinstance(item, dict) else None
    if not isinstance(name, str):
        return invalid_argument("each input must be an object with a 'name'")
    if name not in sig.inputs:  # before its data is read: an unknown input's datatype is no reason for a 501
        return invalid_argument(f"signature {sig.name}: unknown input(s) {name}; it takes {', '.join(sig.inputs)}")
    # its repr could be a 1,000-deep object
    return invalid_argument(f"input '{name}': 'datatype' must be a string")


def _binary_size_error(name: str, size: Any) -> ServingError:
    if type(size) is not int or size < 0:
        return invalid_argument(f"input '{name}': binary_data_size must be a non-negative integer")
    return invalid_argument(f"input '{name}': binary data beyond the end of the body")


def _count_error(name: str, count: int, shape: tuple[int, ...]) -> ServingError:
    return invalid_argument(
        f"input '{name}': unexpected number of elements {count}, the shape {list(shape)} needs {math.prod(shape)}"
    )


def encode_rest(model: str, version: int, doc: Mapping[str, Any], outputs: Mapping[str, np.ndarray],
                sig: Signature) -> tuple[bytes, int | None]:
    """The infer response: JSON, or JSON + binary tensors (returns the JSON length for the header)."""
    requested = doc.get("outputs")
    params = doc.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    if isinstance(requested, list) and requested:
        wanted: list[tuple[str, bool]] = []
        for r in requested:
            name = r["name"]  # checked against the signature before the request was queued (unknown_output)
            out_params = r.get("parameters")
            binary = out_params.get("binary_data", binary_default) if isinstance(out_params, dict) else binary_default
            wanted.append((name, bool(binary)))
    else:
        wanted = [(n, binary_default) for n in sig.outputs]
    out_docs, blobs = [], []
    for name, binary in wanted:
        array = np.asarray(outputs[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype), "shape": array.shape}
        if binary:
            blob = raw_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif array.dtype.kind in "OSU":
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
        else:
            if array.dtype.kind == "V":  # bfloat16: written as the float32 numbers they are, exactly
                array = array.astype(np.float32)
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        out_docs.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": out_docs}
    if "id" in doc:
        response["id"] = doc["id"]
    body = dumps(response)
    if b"null" in body:
        body = dumps_with_nonfinite(response)
    if not blobs:
        return body, None
    return body + b"".join(blobs), len(body)


# ---- gRPC ----

def decode_grpc(request: Any, sig: Signature) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    items = request.inputs
    if raw and len(raw) != len(items):
        raise invalid_argument(f"expected {len(items)} raw input contents, got {len(raw)}")
    inputs = {}
    specs = sig.inputs
    for index, item in enumerate(items):
        name = item.name
        dtype = _dtype(name, item.datatype, specs.get(name))
        shape = tuple(item.shape)  # int64s: Python ints
        if shape and min(shape) < 0:
            raise invalid_argument(f"input '{name}': the shape {list(shape)} has a negative dimension")
        if raw:
            inputs[name] = _from_raw(name, raw[index], dtype, shape)
            continue
        field = CONTENTS.get(item.datatype)
        if field is None:
            raise invalid_argument(f"input '{name}': datatype {item.datatype} needs raw_input_contents")
        values = getattr(item.contents, field)
        if dtype == STRING:
            array = np.empty(len(values), dtype=object)
            array[:] = list(values)
        else:
            array = np.asarray(values, dtype=dtype)
        size = math.prod(shape)
        if array.size != size:
            raise invalid_argument(f"input '{name}': unexpected number of elements {array.size}, the shape "
                                   f"{list(shape)} needs {size}")
        inputs[name] = array.reshape(shape)
    return inputs


def encode_grpc(response: Any, outputs: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
    for name in names:
        array = np.asarray(outputs[name])
        out = response.outputs.add(name=name, datatype=datatype_of(array.dtype))
        out.shape.extend(array.shape)
        response.raw_output_contents.append(raw_bytes(array))


def triton_config(servable: Any, batching: Any) -> dict[str, Any]:
    """The part of Triton's model config that perf_analyzer reads: batching and tensor dims."""
    sig = servable.signature(None)
    batched = batching.enabled and all(s.shape and s.shape[0] == -1 for s in sig.inputs.values())

    def tensors(specs: Mapping[str, TensorSpec]) -> list[dict[str, Any]]:
        return [{"name": n, "data_type": "TYPE_" + ("STRING" if s.dtype.kind in "OSU" else datatype_of(s.dtype)),
                 "dims": [-1] if s.shape is None else list(s.shape[1:] if batched else s.shape)}
                for n, s in specs.items()]

    config: dict[str, Any] = {"name": servable.model, "platform": servable.platform, "backend": servable.platform,
                              "max_batch_size": batching.max_batch_size if batched else 0,
                              "input": tensors(sig.inputs), "output": tensors(sig.outputs)}
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": batching.batch_timeout_micros}
    return config
