"""serving/codecs/infer_wire.py: a ModelInferRequest of a layout kept before is read from its bytes as protobuf reads
it, and a layout is used only when the raw contents truly end the message."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np

from serving._proto.inference import grpc_predict_v2_pb2 as pb
from serving.codecs.infer_wire import RAW_PATH, RAW_TAG, TYPED_PATHS, Layouts, last_field_start, nested_start


def perf_analyzer_request(values: np.ndarray, rid: str = "") -> bytes:
    """A ModelInferRequest as perf_analyzer writes it (seen on the wire): a parameter, every output named, the
    input's bytes in raw_input_contents."""
    request = pb.ModelInferRequest(model_name="xgb", id=rid)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    request.inputs.add(name="inputs", datatype="FP32", shape=list(values.shape))
    request.outputs.add(name="predictions")
    request.raw_input_contents.append(values.astype(np.float32).tobytes())
    return request.SerializeToString()


def read_of(data: bytes) -> tuple[object, ...]:
    request = pb.ModelInferRequest.FromString(data)
    item = request.inputs[0]
    return request.model_name, request.id, item.name, item.datatype, tuple(item.shape), tuple(
        o.name for o in request.outputs)


def raw_field(data: bytes) -> bytes:
    size = len(data)
    length = bytes([size]) if size < 0x80 else bytes([size & 0x7F | 0x80, size >> 7])
    return bytes([RAW_TAG]) + length + data


def test_the_raw_contents_are_found_where_protobuf_wrote_them_last() -> None:
    for shape in ((1, 32), (3, 2), (1, 1), (64, 40)):
        values = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        data = perf_analyzer_request(values, rid="r-7")
        start = last_field_start(data, RAW_TAG)
        assert start is not None and data[start:] == values.tobytes()


def test_raw_contents_not_last_twice_or_only_looking_like_it_are_not_found() -> None:
    data = perf_analyzer_request(np.ones((1, 4)))
    assert last_field_start(data + b"\x1a\x01x", RAW_TAG) is None  # the id after the raw contents
    assert last_field_start(data + raw_field(b"abcd"), RAW_TAG) is None  # twice
    assert last_field_start(data[:-1], RAW_TAG) is None  # cut short
    assert last_field_start(b"\xff" * 12, RAW_TAG) is None  # not fields
    # The id last, its value ending in what looks like a raw contents field: not the raw contents.
    request = pb.ModelInferRequest(model_name="xgb")
    request.raw_input_contents.append(b"abcd")
    disguised = request.SerializeToString()
    disguised = disguised[:disguised.index(bytes([RAW_TAG]))] + b"\x1a\x06" + raw_field(b"abcd")
    assert pb.ModelInferRequest.FromString(disguised).id.endswith("abcd")
    assert last_field_start(disguised, RAW_TAG) is None


def test_a_kept_layout_reads_later_messages_as_protobuf_does() -> None:
    layouts = Layouts()
    first = perf_analyzer_request(np.zeros((1, 8)))
    layouts.keep(first, 32, read_of(first))
    for seed in range(5):
        values = np.random.default_rng(seed).standard_normal((1, 8)).astype(np.float32)
        data = perf_analyzer_request(values)
        found = layouts.find(data)
        assert found == (read_of(data), values.tobytes())
    assert layouts.find(perf_analyzer_request(np.zeros((1, 8)), rid="x")) is None  # another length
    assert layouts.find(perf_analyzer_request(np.zeros((2, 4)))) is None  # the same length, another start


def test_a_layout_whose_contents_do_not_end_the_message_is_dropped_unused() -> None:
    layouts = Layouts()
    request = pb.ModelInferRequest(model_name="xgb")
    request.raw_input_contents.append(b"abcd")
    disguised = request.SerializeToString()
    disguised = disguised[:disguised.index(bytes([RAW_TAG]))] + b"\x1a\x06" + raw_field(b"abcd")
    layouts.keep(disguised, 4, "read")  # as if its last 4 bytes were the contents
    later = disguised[:-4] + b"wxyz"
    assert layouts.find(later) is None and not layouts.kept  # checked on first use, and dropped


def damaged_finds(layouts: Layouts, base: bytes, seed: int) -> Iterator[tuple[bytes, tuple[Any, bytes]]]:
    """(message, what `layouts` found in it) for each of 20,000 copies of `base` with 1-3 bytes changed that a kept
    layout reads."""
    rng = random.Random(seed)
    for _ in range(20000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        found = layouts.find(bytes(data))
        if found is not None:
            yield bytes(data), found


def test_random_damage_after_a_layout_was_kept_reads_as_protobuf_or_not_at_all() -> None:
    layouts = Layouts()
    base = perf_analyzer_request(np.ones((2, 3)))
    layouts.keep(base, 24, read_of(base))
    hits = 0
    for data, found in damaged_finds(layouts, base, 3):
        hits += 1
        assert found == (read_of(data), data[-24:])
    assert hits > 0  # damage inside the contents alone still reads


def sdk_request(values: np.ndarray, datatype: str = "FP32", outputs: tuple[str, ...] = (), rid: str = "") -> bytes:
    """A ModelInferRequest as KServe's SDK writes it: the values in the input's typed field."""
    request = pb.ModelInferRequest(model_name="xgb", id=rid)
    tensor = request.inputs.add(name="inputs", datatype=datatype, shape=list(values.shape))
    field = tensor.contents.fp32_contents if datatype == "FP32" else tensor.contents.fp64_contents
    field.extend(values.ravel().tolist())
    for name in outputs:
        request.outputs.add(name=name)
    return request.SerializeToString()


def typed_bytes(data: bytes, datatype: str = "FP32") -> bytes:
    """The values of a typed request's input as protobuf reads them, as little-endian bytes."""
    contents = pb.ModelInferRequest.FromString(data).inputs[0].contents
    if datatype == "FP32":
        return np.asarray(contents.fp32_contents, "<f4").tobytes()
    return np.asarray(contents.fp64_contents, "<f8").tobytes()


def test_typed_values_are_found_down_their_path_of_fields_when_they_end_the_message() -> None:
    for datatype, dtype in (("FP32", np.float32), ("FP64", np.float64)):
        for shape in ((1, 32), (3, 2), (40, 1)):
            values = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape) * 0.5 - 3
            data = sdk_request(values, datatype, rid="id-9")
            start = nested_start(data, TYPED_PATHS[datatype])
            assert start is not None and data[start:] == values.astype(dtype).tobytes() == typed_bytes(data, datatype)
            assert nested_start(data, TYPED_PATHS["FP64" if datatype == "FP32" else "FP32"]) is None  # the other
            assert nested_start(data, RAW_PATH) is None
    named = sdk_request(np.ones((1, 4)), outputs=("predictions",))  # the outputs after the input: not last
    assert nested_start(named, TYPED_PATHS["FP32"]) is None
    two = pb.ModelInferRequest.FromString(sdk_request(np.ones((1, 4))))
    two.inputs.add(name="other", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)  # two inputs
    assert nested_start(two.SerializeToString(), TYPED_PATHS["FP32"]) is None


def test_a_kept_typed_layout_reads_later_messages_as_protobuf_does() -> None:
    layouts = Layouts()
    first = sdk_request(np.zeros((2, 3)))
    layouts.keep(first, 24, read_of(first), TYPED_PATHS["FP32"])
    for seed in range(5):
        values = np.random.default_rng(seed).standard_normal((2, 3)).astype(np.float32)
        data = sdk_request(values)
        assert typed_bytes(data) == values.tobytes()
        assert layouts.find(data) == (read_of(data), values.tobytes())
    # Kept as raw contents, the same bytes are not a layout: the check follows the path it was kept with.
    wrong = Layouts()
    wrong.keep(first, 24, read_of(first))
    assert wrong.find(sdk_request(np.ones((2, 3)))) is None and not wrong.kept


def test_random_damage_after_a_typed_layout_was_kept_reads_as_protobuf_or_not_at_all() -> None:
    layouts = Layouts()
    base = sdk_request(np.ones((2, 3)), rid="r")
    layouts.keep(base, 24, read_of(base), TYPED_PATHS["FP32"])
    hits = 0
    for data, (read, values) in damaged_finds(layouts, base, 5):
        hits += 1
        assert read == read_of(data)
        # The same values; a NaN's payload as sent (protobuf's Python floats quiet a signalling NaN).
        assert np.array_equal(np.frombuffer(values, "<f4"), np.frombuffer(typed_bytes(data), "<f4"), equal_nan=True)
    assert hits > 0  # damage inside the values alone still reads
