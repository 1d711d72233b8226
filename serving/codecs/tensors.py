"""Protobuf tensors <-> numpy: TensorFlow's TensorProto (typed `*_val` fields or `tensor_content`) and
the cloud processor's ArrayProto. Bytes are viewed, not copied, where the layout allows it."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import invalid_argument, unimplemented
from ..signature import BFLOAT16, STRING, TF_TYPE_WORDS, Signature, TensorSpec

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


def _dtype(enum_value: int, name: str) -> np.dtype:
    dtype = DTYPES.get(enum_value)
    if dtype is None:
        raise unimplemented(f"input '{name}': data type {enum_value} is not supported")
    return dtype


def _fill(values: Any, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    size = int(np.prod(shape)) if shape else 1
    if dtype == STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
    elif dtype.kind == "c":
        flat = np.asarray(values, dtype=np.float32 if dtype.itemsize == 8 else np.float64)
        array = flat.view(dtype)
    elif dtype.str[1:] == "f2" or dtype == BFLOAT16:  # half_val holds the 16-bit patterns
        array = np.asarray(values, dtype=np.uint16).view(dtype)
    else:
        array = np.asarray(values, dtype=dtype)
    if array.size == size:
        return array.reshape(shape)
    if array.size == 1:  # one value fills the whole tensor, as TensorFlow reads it
        return np.full(shape, array[0], dtype=dtype)
    raise invalid_argument(f"input '{name}': {array.size} values do not fill the shape {list(shape)}")


def tensor_to_array(proto: Any, name: str) -> np.ndarray:
    """A tensorflow.TensorProto as a numpy array."""
    dtype = _dtype(proto.dtype, name)
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"input '{name}': a tensor of unknown rank cannot be served")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise invalid_argument(f"input '{name}': negative dimension in shape {list(shape)}")
    if proto.tensor_content:
        if dtype == STRING:
            raise invalid_argument(f"input '{name}': string tensors cannot use tensor_content")
        size = int(np.prod(shape)) if shape else 1
        if len(proto.tensor_content) != size * dtype.itemsize:
            raise invalid_argument(
                f"input '{name}': tensor_content has {len(proto.tensor_content)} bytes, the shape "
                f"{list(shape)} of {TF_TYPE_WORDS.get(dtype, dtype.name)} needs {size * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).reshape(shape)
    field = "string_val" if dtype == STRING else "half_val" if dtype == BFLOAT16 else TENSOR_FIELDS[dtype.str[1:]]
    return _fill(getattr(proto, field), dtype, shape, name)


def array_proto_to_array(proto: Any, name: str) -> np.ndarray:
    """A cloud processor ArrayProto (tf_predict.proto) as a numpy array."""
    dtype = _dtype(proto.dtype, name)
    shape = tuple(int(d) for d in proto.array_shape.dim)
    field = "string_val" if dtype == STRING else ARRAY_FIELDS.get(dtype.str[1:])
    if field is None:
        raise unimplemented(f"input '{name}': data type {TF_TYPE_WORDS.get(dtype, dtype.name)} has no ArrayProto field")
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


def array_to_tensor(array: np.ndarray, proto: Any, *, content: bool = False) -> None:
    """Fill a tensorflow.TensorProto from an array: typed `*_val` fields, or `tensor_content` bytes."""
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
