"""serving/codecs/infer_wire.py: a ModelInferRequest of a layout kept before is read from its bytes as protobuf reads
it, and a layout is used only when the raw contents truly end the message."""

from __future__ import annotations

import random

import numpy as np

from serving._proto.inference import grpc_predict_v2_pb2 as pb
from serving.codecs.infer_wire import RAW_TAG, Layouts, last_field_start


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


def test_random_damage_after_a_layout_was_kept_reads_as_protobuf_or_not_at_all() -> None:
    layouts = Layouts()
    base = perf_analyzer_request(np.ones((2, 3)))
    layouts.keep(base, 24, read_of(base))
    rng = random.Random(3)
    hits = 0
    for _ in range(20000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        found = layouts.find(bytes(data))
        if found is None:
            continue
        hits += 1
        assert found == (read_of(bytes(data)), bytes(data[-24:]))
    assert hits > 0  # damage inside the contents alone still reads
