"""Protobuf tensors <-> numpy: TensorFlow's TensorProto (typed `*_val` fields or `tensor_content`) and
the cloud processor's ArrayProto. Bytes are viewed, not copied, where the layout allows it."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from .._proto.tensorflow.core.framework import types_pb2
from ..core.signature import (
    BFLOAT16,
    STRING,
    TF_TYPE_WORDS,
    Signature,
    TensorSpec,
)
from ..errors import invalid_argument, unimplemented

# tensorflow.DataType (and tensorflow.eas.ArrayDataType, same numbers) -> numpy dtype
DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32), 2: np.dtype(np.float64), 3: np.dtype(np.int32), 4: np.dtype(np.uint8),
    5: np.dtype(np.int16), 6: np.dtype(np.int8), 7: STRING, 8: np.dtype(np.complex64), 9: np.dtype(np.int64),
    10: np.dtype(np.bool_), 17: np.dtype(np.uint16), 18: np.dtype(np.complex128), 19: np.dtype(np.float16),
    22: np.dtype(np.uint32), 23: np.dtype(np.uint64),
}
if BFLOAT16 is not None:
    DTYPES[14] = BFLOAT16
DTYPE_ENUMS = {dt: num for num, dt in DTYPES.items()}
# Which repeated field holds the values of each dtype in a TensorProto.
TENSOR_FIELDS = {
    "f4": "float_val", "f8": "double_val", "i4": "int_val", "u1": "int_val", "i2": "int_val", "i1": "int_val",
    "u2": "int_val", "i8": "int64_val", "b1": "bool_val", "u4": "uint32_val", "u8": "uint64_val",
    "c8": "scomplex_val", "c16": "dcomplex_val", "f2": "half_val",
}
ARRAY_FIELDS = {"f4": "float_val", "f8": "double_val", "i4": "int_val", "u1": "int_val", "i2": "int_val",
                "i1": "int_val", "i8": "int64_val", "b1": "bool_val"}


# numpy's limit on dimensions (TensorFlow allows 254; no served signature comes near either).
MAX_RANK = 64
# One value repeated to fill a shape is TensorFlow's shorthand; past this many bytes it is a large
# allocation that a few bytes of request could ask for, so it is refused (the default gRPC message limit).
MAX_FILL_BYTES = 64 << 20


def _dtype(enum_value: int, name: str) -> np.dtype:
    """The numpy dtype of a tensorflow.DataType; a type we cannot hold is the client's error, as
    TensorFlow's "tensor parsing error" is."""
    dtype = DTYPES.get(enum_value)
    if dtype is None:
        word = types_pb2.DataType.Name(enum_value) if enum_value in types_pb2.DataType.values() else enum_value
        raise invalid_argument(f"input '{name}': data type {word} is not supported")
    return dtype


def _shape(dims: Any, dtype: np.dtype, name: str) -> tuple[int, ...]:
    """The dims of a tensor, checked so that numpy can hold them (Python ints: no silent overflow)."""
    shape = tuple(map(int, dims))
    if shape and min(shape) < 0:
        raise invalid_argument(f"input '{name}': negative dimension in shape {list(shape)}")
    if len(shape) > MAX_RANK:
        raise invalid_argument(f"input '{name}': {len(shape)} dimensions, more than {MAX_RANK}")
    # numpy refuses even an empty array whose non-zero dims multiply past the address space.
    if math.prod([d for d in shape if d] if 0 in shape else shape) * dtype.itemsize > sys.maxsize:
        raise invalid_argument(f"input '{name}': the shape {list(shape)} is too large")
    return shape


def _fill(values: Any, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    size = math.prod(shape)
    if dtype.kind == "c" and len(values) % 2:
        raise invalid_argument(f"input '{name}': complex values come as (real, imaginary) pairs; "
                               f"{len(values)} numbers given")
    try:
        array = _values(values, dtype)
    except (OverflowError, ValueError) as e:  # e.g. int_val 300 for a uint8 tensor
        raise invalid_argument(f"input '{name}': {e}") from e
    if array.size == size:
        return array.reshape(shape)
    if array.size == 1:  # one value fills the whole tensor, as TensorFlow reads it
        if size * dtype.itemsize > MAX_FILL_BYTES:
            raise invalid_argument(f"input '{name}': one value cannot fill the shape {list(shape)}: "
                                   f"more than {MAX_FILL_BYTES} bytes")
        return np.full(shape, array[0], dtype=dtype)
    raise invalid_argument(f"input '{name}': {array.size} values do not fill the shape {list(shape)}")


def _values(values: Any, dtype: np.dtype) -> np.ndarray:
    """The repeated `*_val` field of a tensor as a flat array of `dtype`."""
    if dtype == STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array
    if dtype.kind == "c":
        return np.asarray(values, dtype=np.float32 if dtype.itemsize == 8 else np.float64).view(dtype)
    if dtype.str[1:] == "f2" or dtype == BFLOAT16:  # half_val holds the 16-bit patterns
        return np.asarray(values, dtype=np.uint16).view(dtype)
    return np.asarray(values, dtype=dtype)


def little_endian(dtype: np.dtype) -> np.dtype:
    """`dtype` as tensor_content holds it (little-endian): itself on a little-endian host, no new dtype a call."""
    return dtype if LITTLE_HOST and dtype.byteorder in "=|<" else dtype.newbyteorder("<")


LITTLE_HOST = sys.byteorder == "little"


def tensor_to_array(proto: Any, name: str) -> np.ndarray:
    """A tensorflow.TensorProto as a numpy array."""
    dtype = _dtype(proto.dtype, name)
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"input '{name}': a tensor of unknown rank cannot be served")
    shape = _shape([d.size for d in proto.tensor_shape.dim], dtype, name)
    if proto.tensor_content:
        if dtype == STRING:
            raise invalid_argument(f"input '{name}': string tensors cannot use tensor_content")
        size = math.prod(shape)
        if len(proto.tensor_content) != size * dtype.itemsize:
            raise invalid_argument(
                f"input '{name}': tensor_content has {len(proto.tensor_content)} bytes, the shape "
                f"{list(shape)} of {TF_TYPE_WORDS.get(dtype, dtype.name)} needs {size * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=little_endian(dtype)).reshape(shape)
    field = "string_val" if dtype == STRING else "half_val" if dtype == BFLOAT16 else TENSOR_FIELDS[dtype.str[1:]]
    return _fill(getattr(proto, field), dtype, shape, name)


def array_proto_to_array(proto: Any, name: str) -> np.ndarray:
    """A cloud processor ArrayProto (tf_predict.proto) as a numpy array."""
    dtype = _dtype(proto.dtype, name)
    shape = _shape(proto.array_shape.dim, dtype, name)
    field = "string_val" if dtype == STRING else ARRAY_FIELDS.get(dtype.str[1:])
    if field is None:
        raise invalid_argument(f"input '{name}': data type {TF_TYPE_WORDS.get(dtype, dtype.name)} has no ArrayProto "
                               f"field")
    return _fill(getattr(proto, field), dtype, shape, name)


def conform(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """An input from a binary protocol in the signature's dtype.

    A safe widening (int32 -> int64, float32 -> float64) is allowed; anything else is INVALID_ARGUMENT
    naming both types.
    """
    if array.dtype == spec.dtype:
        return array
    if spec.dtype != STRING and array.dtype != STRING and np.can_cast(array.dtype, spec.dtype, "safe"):
        return array.astype(spec.dtype)
    want = TF_TYPE_WORDS.get(spec.dtype, spec.dtype.name)
    got = TF_TYPE_WORDS.get(array.dtype, array.dtype.name)
    raise invalid_argument(f"{where}: input '{spec.name}' expects {want} but {got} is provided")


#: The numeric dtypes written as one typed field, native byte order: (DataType enum, field), one lookup per array.
_TYPED = {np.dtype(code): (DTYPE_ENUMS[np.dtype(code)], field) for code, field in TENSOR_FIELDS.items()
          if code[0] in "fiub" and code != "f2" and np.dtype(code) in DTYPE_ENUMS}


def array_to_tensor(array: np.ndarray, proto: Any, *, content: bool = False) -> None:
    """Fill a tensorflow.TensorProto from an array: typed `*_val` fields, or `tensor_content` bytes."""
    typed = _TYPED.get(array.dtype) if not content and array.__class__ is np.ndarray else None
    if typed is not None:  # the common answer (a float32 prediction), in the fewest steps
        proto.dtype = typed[0]
        dims = proto.tensor_shape.dim
        for d in array.shape:
            dims.add().size = d
        getattr(proto, typed[1]).extend(array.ravel().tolist())
        return
    array = np.asarray(array)
    dtype = STRING if array.dtype.kind in "OSU" else array.dtype
    enum_value = DTYPE_ENUMS.get(dtype)
    if enum_value is None:
        raise unimplemented(f"output of type {array.dtype} cannot be written as a TensorProto")
    proto.dtype = enum_value
    for d in array.shape:
        proto.tensor_shape.dim.add().size = d
    if dtype == STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
    elif content:
        proto.tensor_content = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
    elif dtype.kind == "c":
        getattr(proto, TENSOR_FIELDS[dtype.str[1:]]).extend(array.ravel().view(
            np.float32 if dtype.itemsize == 8 else np.float64).tolist())
    elif dtype.str[1:] == "f2" or dtype == BFLOAT16:
        proto.half_val.extend(array.ravel().view(np.uint16).tolist())
    else:
        getattr(proto, TENSOR_FIELDS[dtype.str[1:]]).extend(array.ravel().tolist())


def conform_all(inputs: dict[str, np.ndarray], sig: Signature, where: str) -> dict[str, np.ndarray]:
    """`conform` every input the signature declares; unknown names pass through for validation to name."""
    return {n: conform(a, sig.inputs[n], where) if n in sig.inputs else a for n, a in inputs.items()}
