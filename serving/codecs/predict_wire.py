"""The common TF Serving `PredictRequest` read straight from its wire bytes, for the gRPC express lane.

What the lane takes (serving/protocols/tfserving/rpc.py `express_raw_Predict`) is one shape of message: a
`model_spec` with only its `name`, one `inputs` entry whose TensorProto has only `dtype`, a `tensor_shape` of dims
with only their `size`, and `tensor_content`, as tensorflow's `make_tensor_proto` and the TF Serving clients
write it. Parsed by upb and its fields read as the lane reads them, that message costs ~2.4 µs a call here (each
nested message and map entry a new Python object); read whole here, ~3 µs of varints and slices, and ~0.2 µs
when its layout was seen before (below). Anything else in the bytes (another field, a
field twice, a version, a signature, typed values, an output filter, a malformed varint) is None: the caller then
decodes the message with protobuf and goes on as before, so nothing is refused or read differently here.

A client sends the same layout call after call: only the tensor's bytes change. So a message read whole whose
`tensor_content` is its last bytes (the model_spec first, as every client writes it) leaves its layout: its
length and the bytes before the content. A later message of that length starting with those bytes parses the same
way up to the content, and the content is the rest: read with one comparison (`_LAYOUTS`).
"""

from __future__ import annotations

#: (model name, input name, DataType enum, shape, tensor_content) of a PredictRequest this module reads.
Predict = tuple[str, str, int, tuple[int, ...], bytes]

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


#: A message's length -> (the bytes before its tensor_content, model, input name, DataType enum, shape) of the last
#: common request of that length read whole. Emptied when full.
_LAYOUTS: dict[int, tuple[bytes, str, str, int, tuple[int, ...]]] = {}
LAYOUTS_MAX = 64


def read_predict(data: bytes) -> Predict | None:
    """The fields of `data` when it is the common PredictRequest (above), else None."""
    size = len(data)
    layout = _LAYOUTS.get(size)
    if layout is not None and data.startswith(layout[0]):
        head = layout[0]
        return layout[1], layout[2], layout[3], layout[4], data[len(head):]
    try:
        found = _read(data)
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    if found is not None and data[0] == 0x0A:  # model_spec first: the input's entry, and its content, end it
        if len(_LAYOUTS) >= LAYOUTS_MAX:
            _LAYOUTS.clear()
        model, name, enum, shape, content = found
        _LAYOUTS[size] = (data[:size - len(content)], model, name, enum, shape)
    return found


def _read(data: bytes) -> Predict | None:
    at, end = 0, len(data)
    model = entry = None
    while at < end:
        tag = data[at]
        if tag == 0x0A and model is None:  # 1: model_spec
            spec, at = _length_delimited(data, at + 1)
            model = _model_name(spec)
            if model is None:
                return None
        elif tag == 0x12 and entry is None:  # 2: inputs, one map entry
            entry, at = _length_delimited(data, at + 1)
        else:
            return None
    if model is None or entry is None:
        return None
    found = _entry(entry)
    return None if found is None else (model, *found)


def _model_name(spec: bytes) -> str | None:
    """A ModelSpec holding only a non-empty `name` (field 1)."""
    if not spec or spec[0] != 0x0A:
        return None
    name, at = _length_delimited(spec, 1)
    return name.decode() if at == len(spec) and name else None


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
    """A TensorProto of dtype (1), tensor_shape (2) and tensor_content (4), each once, in that order."""
    if not tensor or tensor[0] != 0x08:
        return None
    dtype, at = varint(tensor, 1)
    if at >= len(tensor) or tensor[at] != 0x12:
        return None
    shape_bytes, at = _length_delimited(tensor, at + 1)
    if at >= len(tensor) or tensor[at] != 0x22:
        return None
    content, at = _length_delimited(tensor, at + 1)
    if at != len(tensor):
        return None
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
