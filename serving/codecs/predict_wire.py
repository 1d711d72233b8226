"""The common TF Serving `PredictRequest` read straight from its wire bytes, for the gRPC express lane.

What the lane takes (serving/protocols/tfserving/rpc.py `express_raw_Predict`) is one shape of message: a
`model_spec` with its `name` and perhaps a `signature_name`, one `inputs` entry whose TensorProto has only
`dtype`, a `tensor_shape` of dims with only their `size`, and its values in `tensor_content` (as tensorflow's
`make_tensor_proto` and the TF Serving clients write them) or, for DT_FLOAT and DT_DOUBLE, in the packed
`float_val` / `double_val` (as perf_analyzer and hand-built requests write them: the same little-endian bytes, a
NaN with the payload it was sent with, which protobuf's Python floats would quiet).
Parsed by upb and its fields read as the lane reads them, that message costs ~2.4 µs a call here (each nested
message and map entry a new Python object); read whole here, ~3 µs of varints and slices, and ~0.2 µs when its
layout was seen before (below). Anything else in the bytes (another field, a field twice, a version, integer
typed values, an unpacked `float_val`, an output filter, a malformed varint) is None: the caller then decodes the
message with protobuf and goes on as before, so nothing is refused or read differently here.

A client sends the same layout call after call: only the tensor's bytes change. So a message read whole whose
values are its last bytes (the model_spec first, as every client writes it) leaves its layout: its length and the
bytes before the values. A later message of that length starting with those bytes parses the same way up to the
values, and the values are the rest: read with one comparison (`_LAYOUTS`).
"""

from __future__ import annotations

#: (model name, signature name ('' for none), input name, DataType enum, shape, the values' bytes) of a
#: PredictRequest this module reads.
Predict = tuple[str, str, str, int, tuple[int, ...], bytes]

#: The packed typed fields read as bytes: their tag -> the DataType enum they must go with (DT_FLOAT's
#: `float_val`, fixed32; DT_DOUBLE's `double_val`, fixed64). `tensor_content` (0x22) goes with any dtype.
_PACKED = {0x2A: 1, 0x32: 2}

_NEGATIVE = 1 << 63  # an int64 varint at or past this is negative (ten bytes, two's complement)


def varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at `at` and where it ends; IndexError past the end, ValueError past ten bytes."""
    byte = data[at]
    if byte < 0x80:
        return byte, at + 1
    value, shift = byte & 0x7F, 7
    at += 1
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _length_delimited(data: bytes, at: int) -> tuple[bytes, int]:
    size, at = varint(data, at)
    end = at + size
    if end > len(data):
        raise IndexError("field past the message")
    return data[at:end], end


#: A message's length -> (the bytes before its values, model, signature, input name, DataType enum, shape) of the
#: last common request of that length read whole. Emptied when full.
_LAYOUTS: dict[int, tuple[bytes, str, str, str, int, tuple[int, ...]]] = {}
LAYOUTS_MAX = 64


def read_predict(data: bytes) -> Predict | None:
    """The fields of `data` when it is the common PredictRequest (above), else None."""
    size = len(data)
    layout = _LAYOUTS.get(size)
    if layout is not None and data.startswith(layout[0]):
        head = layout[0]
        return layout[1], layout[2], layout[3], layout[4], layout[5], data[len(head):]
    try:
        found = _read(data)
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    if found is not None and data[0] == 0x0A:  # model_spec first: the input's entry, and its content, end it
        if len(_LAYOUTS) >= LAYOUTS_MAX:
            _LAYOUTS.clear()
        model, signature, name, enum, shape, content = found
        _LAYOUTS[size] = (data[:size - len(content)], model, signature, name, enum, shape)
    return found


def _read(data: bytes) -> Predict | None:
    at, end = 0, len(data)
    model = entry = None
    while at < end:
        tag = data[at]
        if tag == 0x0A and model is None:  # 1: model_spec
            spec, at = _length_delimited(data, at + 1)
            model = _model_spec(spec)
            if model is None:
                return None
        elif tag == 0x12 and entry is None:  # 2: inputs, one map entry
            entry, at = _length_delimited(data, at + 1)
        else:
            return None
    if model is None or entry is None:
        return None
    found = _entry(entry)
    return None if found is None else (*model, *found)


def _model_spec(spec: bytes) -> tuple[str, str] | None:
    """(name, signature) of a ModelSpec holding a non-empty `name` (field 1) and perhaps a non-empty
    `signature_name` (field 3) after it, nothing else."""
    if not spec or spec[0] != 0x0A:
        return None
    name, at = _length_delimited(spec, 1)
    if not name:
        return None
    if at == len(spec):
        return name.decode(), ""
    if spec[at] != 0x1A:
        return None
    signature, at = _length_delimited(spec, at + 1)
    return (name.decode(), signature.decode()) if at == len(spec) and signature else None


def _entry(entry: bytes) -> tuple[str, int, tuple[int, ...], bytes] | None:
    """A map entry: key (1) then a TensorProto value (2), each once."""
    if not entry or entry[0] != 0x0A:
        return None
    key, at = _length_delimited(entry, 1)
    if at >= len(entry) or entry[at] != 0x12:
        return None
    tensor, at = _length_delimited(entry, at + 1)
    if at != len(entry):
        return None
    found = _tensor(tensor)
    return None if found is None else (key.decode(), *found)


def _tensor(tensor: bytes) -> tuple[int, tuple[int, ...], bytes] | None:
    """A TensorProto of dtype (1), tensor_shape (2) and tensor_content (4) or its dtype's packed typed field
    (`_PACKED`), each once, in that order."""
    if not tensor or tensor[0] != 0x08:
        return None
    dtype, at = varint(tensor, 1)
    if at >= len(tensor) or tensor[at] != 0x12:
        return None
    shape_bytes, at = _length_delimited(tensor, at + 1)
    if at >= len(tensor):
        return None
    tag = tensor[at]
    if tag != 0x22 and _PACKED.get(tag) != dtype:
        return None
    content, at = _length_delimited(tensor, at + 1)
    if at != len(tensor) or (tag != 0x22 and len(content) % (4 if tag == 0x2A else 8)):
        return None  # a packed field of a part value: protobuf refuses it
    shape = _shape(shape_bytes)
    return None if shape is None else (dtype, shape, content)


def _shape(shape: bytes) -> tuple[int, ...] | None:
    """A TensorShapeProto of dims (2) holding only a non-negative `size` (1); no unknown_rank."""
    dims = []
    at, end = 0, len(shape)
    while at < end:
        if shape[at] != 0x12:
            return None
        dim, at = _length_delimited(shape, at + 1)
        if not dim:
            dims.append(0)  # a dim of size 0, its default omitted
            continue
        if dim[0] != 0x08:
            return None
        size, used = varint(dim, 1)
        if used != len(dim) or size >= _NEGATIVE:
            return None
        dims.append(size)
    return tuple(dims)
