"""serving/codecs/predict_wire.py reads the common PredictRequest exactly as protobuf does, and nothing else: for
any bytes it answers either None or what protobuf's own parse of the same bytes holds (a DT_FLOAT tensor's
`float_val`, a DT_DOUBLE one's `double_val`, as the bytes of those values: a NaN's payload as sent)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from serving._proto.tensorflow_serving.apis import predict_pb2
from serving.codecs.predict_wire import read_predict


def common(model: str = "xgb", name: str = "inputs", shape: tuple[int, ...] = (1, 4), dtype: int = 1,
           values: str = "tensor_content", signature: str = "") -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    tensor = request.inputs[name]
    tensor.dtype = dtype
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    array = np.arange(int(np.prod(shape))) * 1.5 - 2.0
    if values == "tensor_content":
        tensor.tensor_content = array.astype(np.float32).tobytes()
    else:
        getattr(tensor, values).extend(array.tolist())
    return request.SerializeToString()


def as_protobuf_reads(data: bytes) -> tuple[str, str, str, int, tuple[int, ...], bytes]:
    request = predict_pb2.PredictRequest.FromString(data)
    [(name, tensor)] = request.inputs.items()
    values = tensor.tensor_content
    if tensor.dtype == 1 and tensor.float_val:
        values = np.asarray(tensor.float_val, "<f4").tobytes()
    elif tensor.dtype == 2 and tensor.double_val:
        values = np.asarray(tensor.double_val, "<f8").tobytes()
    return (request.model_spec.name, request.model_spec.signature_name, name, tensor.dtype,
            tuple(d.size for d in tensor.tensor_shape.dim), values)


@pytest.mark.parametrize("shape", [(1, 4), (3, 2), (2, 2, 3), (5,), (1, 300)])
def test_the_common_request_reads_as_protobuf_reads_it(shape: tuple[int, ...]) -> None:
    data = common(model="mödel", shape=shape)
    assert read_predict(data) == as_protobuf_reads(data)


@pytest.mark.parametrize("values,dtype", [("float_val", 1), ("double_val", 2)])
@pytest.mark.parametrize("signature", ["", "serving_default"])
def test_packed_float_or_double_values_and_a_signature_read_as_protobuf_reads_them(values: str, dtype: int,
                                                                                   signature: str) -> None:
    """perf_analyzer's Predict: the signature named, the values in `float_val`."""
    for shape in ((1, 32), (3, 2)):
        data = common(shape=shape, dtype=dtype, values=values, signature=signature)
        found = read_predict(data)
        assert found == as_protobuf_reads(data)
        assert found is not None and found[1] == signature and len(found[5]) == int(np.prod(shape)) * 4 * dtype
        assert read_predict(data) == found  # again, from its layout


def test_a_long_model_name_and_large_dims_take_multi_byte_varints() -> None:
    data = common(model="m" * 300, shape=(70000, 1))
    assert read_predict(data) == as_protobuf_reads(data)


def declined(edit) -> bytes:  # type: ignore[no-untyped-def]
    request = predict_pb2.PredictRequest.FromString(common())
    edit(request)
    return request.SerializeToString()


@pytest.mark.parametrize("edit", [
    lambda r: r.model_spec.version.__setattr__("value", 2),
    lambda r: r.model_spec.__setattr__("version_label", "stable"),
    lambda r: r.output_filter.append("predictions"),
    lambda r: r.inputs["other"].CopyFrom(r.inputs["inputs"]),  # two inputs
    lambda r: r.inputs["inputs"].float_val.append(1.0),  # typed values beside the content: protobuf's to read
    lambda r: (r.inputs["inputs"].ClearField("tensor_content"), r.inputs["inputs"].int_val.extend([1, 2, 3, 4])),
    lambda r: (r.inputs["inputs"].ClearField("tensor_content"), r.inputs["inputs"].double_val.extend([1.0] * 4)),
    lambda r: (r.inputs["inputs"].ClearField("tensor_content"), r.inputs["inputs"].__setattr__("dtype", 2),
               r.inputs["inputs"].float_val.extend([1.0] * 4)),
    lambda r: r.inputs["inputs"].tensor_shape.__setattr__("unknown_rank", True),
    lambda r: r.inputs["inputs"].tensor_shape.dim[0].__setattr__("name", "batch"),
    lambda r: r.inputs["inputs"].tensor_shape.dim[0].__setattr__("size", -1),
    lambda r: r.inputs["inputs"].__setattr__("version_number", 1),
    lambda r: r.model_spec.__setattr__("name", ""),
], ids=["version", "label", "output_filter", "two_inputs", "typed_and_content", "int_val", "double_val_of_float",
        "float_val_of_double", "unknown_rank", "dim_name", "negative_dim", "version_number", "no_model"])
def test_anything_but_the_common_request_is_left_to_protobuf(edit) -> None:  # type: ignore[no-untyped-def]
    assert read_predict(declined(edit)) is None


def test_unpacked_float_values_or_a_part_value_are_left_to_protobuf() -> None:
    data = common(shape=(1, 2), values="float_val")
    packed = bytes.fromhex("2a08") + np.asarray([-2.0, -0.5], "<f4").tobytes()
    assert data.endswith(packed)
    unpacked = bytes.fromhex("2d") + packed[2:6] + bytes.fromhex("2d") + packed[6:]  # two fixed32 fields
    other = data[:-len(packed)] + unpacked  # as long: the enclosing lengths still hold
    assert as_protobuf_reads(other) == as_protobuf_reads(data)  # protobuf reads both forms
    assert read_predict(other) is None
    seven = predict_pb2.PredictRequest.FromString(data)
    seven.inputs["inputs"].ClearField("float_val")
    seven.inputs["inputs"].tensor_content = b"1234567"
    raw = seven.SerializeToString()
    assert raw.endswith(b"\x22\x071234567")
    part = raw[:-9] + b"\x2a\x071234567"  # float_val of 7 bytes: not whole floats
    with pytest.raises(DecodeError):
        predict_pb2.PredictRequest.FromString(part)
    assert read_predict(part) is None


def test_a_field_sent_twice_is_left_to_protobuf_which_merges_it() -> None:
    data = common()
    twice = data + data[: data.index(b"\x12")]  # the model_spec again (protobuf merges: the last name wins)
    assert read_predict(twice) is None


@pytest.mark.parametrize("base", [common(shape=(2, 3)),
                                  common(shape=(2, 3), values="float_val", signature="serving_default"),
                                  common(shape=(2, 3), dtype=2, values="double_val")],
                         ids=["tensor_content", "float_val", "double_val"])
def test_random_damage_never_raises_and_never_reads_what_protobuf_would_not(base: bytes) -> None:
    rng = random.Random(11)
    read = 0
    for _ in range(20000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            if kind < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif kind < 0.75:
                del data[rng.randrange(len(data) + 1):]
            else:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        raw = bytes(data)
        found = read_predict(raw)
        if found is None:
            continue
        read += 1
        expected = as_protobuf_reads(raw)  # protobuf parses it, to the same fields
        assert found[:5] == expected[:5], raw
        if found[5] != expected[5]:  # typed values: a NaN's payload as sent (protobuf's Python floats quiet it)
            dtype = "<f4" if found[3] == 1 else "<f8"
            ours, theirs = np.frombuffer(found[5], dtype), np.frombuffer(expected[5], dtype)
            assert np.isnan(ours).any() and np.array_equal(ours, theirs, equal_nan=True), raw
    assert read > 0  # some damage (inside the content, the name) still leaves a common request


def test_a_message_of_a_layout_seen_before_reads_as_protobuf_reads_it() -> None:
    first = common(shape=(1, 4))
    assert read_predict(first) == as_protobuf_reads(first)
    request = predict_pb2.PredictRequest.FromString(first)
    request.inputs["inputs"].tensor_content = np.arange(4, 8, dtype=np.float32).tobytes()
    later = request.SerializeToString()
    assert len(later) == len(first) and later != first
    assert read_predict(later) == as_protobuf_reads(later)
    for same_length in (common(model="xgc"), common(name="inputz"), common(dtype=2), common(shape=(4, 1)),
                        common(values="float_val")):
        assert len(same_length) == len(first)  # another layout of the same length: read whole
        assert read_predict(same_length) == as_protobuf_reads(same_length)


def test_a_layout_is_kept_only_when_the_content_ends_the_message() -> None:
    data = common()
    cut = data.index(b"\x12")
    swapped = data[cut:] + data[:cut]  # the input first, then the model_spec: its last bytes are the name
    assert read_predict(swapped) == as_protobuf_reads(swapped)
    other = predict_pb2.PredictRequest.FromString(swapped)
    other.model_spec.name = "xgc"  # the same length and the same bytes up to the name
    changed = other.SerializeToString()
    changed = changed[changed.index(b"\x12"):] + changed[:changed.index(b"\x12")]
    assert len(changed) == len(swapped) and changed.startswith(swapped[:-3])
    assert read_predict(changed) == as_protobuf_reads(changed)
    assert read_predict(changed)[0] == "xgc"  # type: ignore[index]
