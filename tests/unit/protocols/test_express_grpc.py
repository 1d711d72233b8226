"""The express lane of TF Serving's gRPC Predict on the native transport (`PredictionService.express_Predict`),
served in the test's loop to grpcio's sync client in a thread, beside the same servicer with the lane off: the
same response message and trailing metadata, the same statistics, the same errors; what the lane does not take
goes the general way; deadlines and the access log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving._proto.inference import grpc_predict_v2_pb2 as v2
from serving._proto.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from serving._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from serving.protocols.kserve.rpc import InferenceService
from serving.protocols.tfserving.rpc import PredictionService
from serving.transport.rpc.native import new_native_server
from tests.helpers import in_loop, make_linear
from tests.unit.protocols.test_express import counted
from tests.unit.protocols.test_lanes import predict_request
from tests.unit.protocols.test_routes import Served, serving, specs
from tests.unit.transport.test_native_grpc import Log, code_of, in_thread


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("express_grpc")
    make_linear(root / "lin", 1, bias=1.0)
    make_linear(root / "lin", 2)
    return root


@contextlib.asynccontextmanager
async def native(s: Served, *, express: bool = True, log: Any = None, timeout_s: float = 30.0,
                 kserve: bool = False) -> AsyncIterator[tuple[int, list[str]]]:
    """A native server of TF Serving's PredictionService (or KServe V2's InferenceService) on `s`: its port, and
    the calls its lane took (by model)."""
    service: Any = (InferenceService(s.manager, s.pipeline, timeout_s) if kserve
                    else PredictionService(s.manager, s.pipeline, timeout_s))
    taken: list[str] = []
    if express:
        if not kserve:  # the decoded Predict's lane (after the bytes' one below declined)
            take = service.express_Predict

            def counted_take(request: Any, context: Any) -> bool:
                took = take(request, context)
                if took:
                    taken.append(request.model_spec.name)
                return bool(took)

            service.express_Predict = counted_take
        message = v2.ModelInferRequest if kserve else predict_pb2.PredictRequest
        take_raw = service.express_raw_ModelInfer if kserve else service.express_raw_Predict

        def counted_raw(data: bytes, context: Any) -> bool:
            took = take_raw(data, context)
            if took:
                request = message.FromString(data)
                taken.append(request.model_name if kserve else request.model_spec.name)
            return bool(took)

        setattr(service, "express_raw_ModelInfer" if kserve else "express_raw_Predict", counted_raw)
    else:
        if not kserve:
            service.express_Predict = None
        setattr(service, "express_raw_ModelInfer" if kserve else "express_raw_Predict", None)
    server = new_native_server([service], access_log=log)
    await server.start("127.0.0.1", 0)
    try:
        yield server.port, taken
    finally:
        await server.stop(0.5)


def call(port: int, request: Any, **kw: Any) -> Any:
    """(response, trailing metadata) of one Predict, or ModelInfer for a ModelInferRequest."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        if isinstance(request, v2.ModelInferRequest):
            method = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        else:
            method = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        response, rpc = method.with_call(request, **kw)
        return response, dict(rpc.trailing_metadata() or ())


async def both(s: Served, request: Any, **kw: Any) -> tuple[Any, Any, list[str]]:
    """The answers to `request` with the lane on and off, and what the lane took."""
    kserve = isinstance(request, v2.ModelInferRequest)
    async with native(s, kserve=kserve) as (port, taken):
        fast = await in_thread(lambda: call(port, request, **kw))
    async with native(s, express=False, kserve=kserve) as (port, _):
        slow = await in_thread(lambda: call(port, request, **kw))
    return fast, slow, taken


@in_loop
async def test_the_express_answer_is_the_general_ones_and_is_counted_as_one(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        for rows in ([[2.0]], [[2.0], [4.0], [5.0]]):
            fast, slow, taken = await both(s, predict_request(rows), metadata=(("x-request-id", "rid-7"),))
            assert taken == ["lin"]
            assert fast[0].SerializeToString(deterministic=True) == slow[0].SerializeToString(deterministic=True)
            assert fast[1]["x-request-id"] == slow[1]["x-request-id"] == "rid-7"
            assert fast[0].model_spec.version.value == 2
        record = s.manager.get("lin").record
        series = record.series[("serving_default", "tfserving_grpc", "predict")]
        assert series.ok == 4 and series.rows.sum == 8 and sum(series.queue.counts) == 4
        assert record.success == 4


@in_loop
async def test_what_the_lane_does_not_take_goes_the_general_way_with_the_same_answer(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        typed = predict_request([[2.0], [4.0]], content=False)  # float_val, as a hand-built request sends it
        fast, slow, taken = await both(s, typed)
        assert taken == ["lin"] and fast[0] == slow[0]
        filled = predict_request([[2.0], [4.0]], content=False)  # one value filling the shape: the general path
        del filled.inputs["inputs"].float_val[1:]
        declined = [
            (filled, {}),
            (predict_request([[2.0]]), {"metadata": (("mm-model-id", "lin"),)}),  # ModelMesh names the model
        ]
        versioned = predict_request([[2.0]])
        versioned.model_spec.version.value = 1
        filtered = predict_request([[2.0]])
        filtered.output_filter.append("predictions")
        declined += [(versioned, {}), (filtered, {})]
        for request, kw in declined:
            fast, slow, taken = await both(s, request, **kw)
            assert taken == [] and fast[0] == slow[0], request
        wrong = predict_request([[1.0, 2.0]])  # a wrong width: the general path's INVALID_ARGUMENT either way
        async with native(s) as (port, taken):
            code, details, trailing = await in_thread(lambda: code_of(lambda: call(port, wrong)))
        assert taken == [] and code == grpc.StatusCode.INVALID_ARGUMENT and trailing["x-request-id"]
        other = predict_request([[2.0]], signature_name="other")  # not the lane's signature: the general path's error
        async with native(s) as (port, taken):
            code, details, _ = await in_thread(lambda: code_of(lambda: call(port, other)))
        assert taken == [] and code == grpc.StatusCode.FAILED_PRECONDITION and '"other" not found' in details


@in_loop
async def test_perf_analyzers_predict_is_read_from_its_bytes(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """perf_analyzer's TF Serving Predict, the signature named and the values in `float_val`, and each of those
    alone: read from the bytes, answered as the general path answers it."""
    from serving.protocols.tfserving import rpc

    read: list[str] = []

    def spied(data: bytes) -> Any:
        found = rpc_read(data)
        if found is not None:
            read.append(found[1])
        return found

    rpc_read = rpc.read_predict
    monkeypatch.setattr(rpc, "read_predict", spied)
    async with serving(specs(repo)) as s:
        for request in (predict_request([[2.0], [4.0]], content=False, signature_name="serving_default"),
                        predict_request([[2.0]], content=False),
                        predict_request([[2.0]], signature_name="serving_default")):
            read.clear()
            fast, slow, taken = await both(s, request)
            assert taken == ["lin"] and read == [request.model_spec.signature_name]
            assert fast[0].SerializeToString(deterministic=True) == slow[0].SerializeToString(deterministic=True)


@in_loop
async def test_an_express_call_past_its_deadline_is_deadline_exceeded_and_counted(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        request = predict_request([[2.0]])
        queue = s.manager.get("lin").lane[2]  # type: ignore[index]
        queue.in_flight = queue.options.max_in_flight  # nothing dispatches: the call waits in the queue
        queue.placement.inline = False
        # The server's deadline (a client's grpc-timeout would race with the client's own reset: CANCELLED).
        async with native(s, timeout_s=0.05) as (port, taken):
            answer = asyncio.ensure_future(in_thread(lambda: code_of(lambda: call(port, request))))
            await asyncio.sleep(0.2)
            queue.in_flight = 0
            queue._schedule()  # the queue looks: past its deadline, it is failed uncomputed
            code, details, trailing = await answer
        assert taken == ["lin"] and code == grpc.StatusCode.DEADLINE_EXCEEDED and trailing["x-request-id"]
        assert "before it was computed" in details and queue.stats.expired == 1
        series = await counted(s, "lin", 1)
        assert series.codes == {"DEADLINE_EXCEEDED": 1} and series.ok == 0


@in_loop
async def test_the_access_log_has_the_express_calls_line(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        log = Log()
        request = predict_request([[2.0], [3.0]])
        async with native(s, log=log) as (port, taken):
            await in_thread(lambda: call(port, request, metadata=(("x-request-id", "rid-9"),)))
        assert taken == ["lin"]
        [(route, rid, _, logged, code, _, bytes_in, bytes_out)] = log.lines
        assert (route, rid, code) == ("/tensorflow.serving.PredictionService/Predict", "rid-9", "OK")
        assert (logged.model, logged.version, logged.signature.name, logged.rows) == ("lin", 2, "serving_default", 2)
        assert bytes_in == request.ByteSize() and bytes_out > 0


def infer_request(rows: list[list[float]], **fields: Any) -> Any:
    array = np.asarray(rows, np.float32)
    request = v2.ModelInferRequest(model_name="lin", **{"id": "req-1", **fields})
    request.inputs.add(name="inputs", datatype="FP32", shape=list(array.shape))
    request.raw_input_contents.append(array.tobytes())
    return request


@in_loop
async def test_kserve_model_infer_takes_its_lane_and_answers_as_the_general_path(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        fast, slow, taken = await both(s, infer_request([[2.0], [4.0]]), metadata=(("x-request-id", "rid-3"),))
        assert taken == ["lin"] and fast[0] == slow[0] and fast[1]["x-request-id"] == "rid-3"
        assert (fast[0].model_name, fast[0].model_version, fast[0].id) == ("lin", "2", "req-1")
        assert np.frombuffer(fast[0].raw_output_contents[0], np.float32).tolist() == [3.0, 4.0]
        assert s.manager.get("lin").record.series[("serving_default", "kserve_grpc", "predict")].ok == 2
        # perf_analyzer's request: every output named, a parameter a unary call ignores. The lane takes it.
        fast, slow, taken = await both(s, infer_request(
            [[2.0]], outputs=[{"name": "predictions"}],
            parameters={"triton_enable_empty_final_response": {"bool_param": True}}))
        assert taken == ["lin"] and fast[0] == slow[0]
        # The values in the input's typed field, as KServe's SDK sends them: taken too.
        contents = v2.ModelInferRequest(model_name="lin", id="sdk")
        contents.inputs.add(name="inputs", datatype="FP32", shape=[2, 1]).contents.fp32_contents.extend([2.0, 6.0])
        fast, slow, taken = await both(s, contents)
        assert taken == ["lin"] and fast[0] == slow[0] and fast[0].id == "sdk"
        assert np.frombuffer(fast[0].raw_output_contents[0], np.float32).tolist() == [3.0, 5.0]
        # The lane's own signature named: taken, as the general path would pick it by that name.
        fast, slow, taken = await both(s, infer_request(
            [[2.0]], parameters={"signature_name": {"string_param": "serving_default"}}))
        assert taken == ["lin"] and fast[0] == slow[0]
        declined = [infer_request([[2.0]], model_version="1"), infer_request([[2.0]], outputs=[{"name": "nope"}]),
                    infer_request([[2.0]], parameters={"signature_name": {"int64_param": 3}})]  # read as no name
        other = infer_request([[2.0]], parameters={"signature_name": {"string_param": "other"}})
        async with native(s, kserve=True) as (port, taken):  # another signature: the general path's error
            code, details, _ = await in_thread(lambda: code_of(lambda: call(port, other)))
        assert taken == [] and code == grpc.StatusCode.FAILED_PRECONDITION and '"other" not found' in details
        short = v2.ModelInferRequest(model_name="lin")  # fewer values than its shape: the general path's error
        short.inputs.add(name="inputs", datatype="FP32", shape=[2, 1]).contents.fp32_contents.append(2.0)
        async with native(s, kserve=True) as (port, taken):
            code, details, _ = await in_thread(lambda: code_of(lambda: call(port, short)))
        assert taken == [] and code == grpc.StatusCode.INVALID_ARGUMENT and "needs 2" in details
        for request in declined[:1] + declined[2:]:
            fast, slow, taken = await both(s, request)
            assert taken == [] and fast[0] == slow[0], request
        async with native(s, kserve=True) as (port, taken):  # an unknown output: the general path's error
            code, details, _ = await in_thread(lambda: code_of(lambda: call(port, declined[1])))
        assert taken == [] and code == grpc.StatusCode.INVALID_ARGUMENT and "nope" in details
        wrong = infer_request([[2.0]])
        wrong.inputs[0].datatype = "FP64"  # the general path's INVALID_ARGUMENT
        async with native(s, kserve=True) as (port, taken):
            code, details, _ = await in_thread(lambda: code_of(lambda: call(port, wrong)))
        assert taken == [] and code == grpc.StatusCode.INVALID_ARGUMENT and "FP64" in details


@contextlib.contextmanager
def layout_finds() -> Iterator[list[bool]]:
    """The V2 lane's layouts emptied, and whether each message it looked up was read by a kept layout."""
    from serving.protocols.kserve import rpc

    rpc._LAYOUTS.kept.clear()
    found: list[bool] = []
    find = rpc._LAYOUTS.find

    def counted_find(data: bytes) -> Any:
        out = find(data)
        found.append(out is not None)
        return out

    rpc._LAYOUTS.find = counted_find  # type: ignore[method-assign]
    try:
        yield found
    finally:
        del rpc._LAYOUTS.find


@in_loop
async def test_model_infers_of_one_layout_are_read_from_their_bytes_each_with_its_own_values(repo: Path) -> None:
    async with serving(specs(repo)) as s, native(s, kserve=True) as (port, taken):
        with layout_finds() as found:
            answers = [await in_thread(lambda v=v: call(port, infer_request([[v]]))) for v in (1.0, 3.0, 5.0, 7.0)]
    assert taken == ["lin"] * 4 and found == [False, True, True, True]  # decoded once, then read by its layout
    assert [np.frombuffer(a.raw_output_contents[0], np.float32).tolist() for a, _ in answers] == [
        [0.5 * v + 2.0] for v in (1.0, 3.0, 5.0, 7.0)]
    assert {a.id for a, _ in answers} == {"req-1"}


def sdk_request(rows: list[list[float]], **fields: Any) -> Any:
    """A ModelInferRequest as KServe's SDK writes it: the values in the input's `fp32_contents`."""
    array = np.asarray(rows, np.float32)
    request = v2.ModelInferRequest(model_name="lin", **{"id": "sdk-1", **fields})
    request.inputs.add(name="inputs", datatype="FP32", shape=list(array.shape)).contents.fp32_contents.extend(
        array.ravel().tolist())
    return request


@in_loop
async def test_typed_model_infers_of_one_layout_are_read_from_their_bytes_as_the_general_path_reads_them(
        repo: Path) -> None:
    async with serving(specs(repo)) as s:
        with layout_finds() as found:
            async with native(s, kserve=True) as (port, taken):
                answers = [await in_thread(lambda v=v: call(port, sdk_request([[v], [v + 1]])))
                           for v in (1.0, 3.0, 5.0)]
                # An output named after the input: its values do not end the message, decoded each time.
                named = [await in_thread(lambda v=v: call(port, sdk_request([[v]], outputs=[{"name": "predictions"}])))
                         for v in (2.0, 4.0)]
        assert taken == ["lin"] * 5 and found == [False, True, True, False, False]
        assert [np.frombuffer(a.raw_output_contents[0], np.float32).tolist() for a, _ in answers] == [
            [0.5 * v + 2.0, 0.5 * v + 2.5] for v in (1.0, 3.0, 5.0)]
        assert [np.frombuffer(a.raw_output_contents[0], np.float32).tolist() for a, _ in named] == [[3.0], [4.0]]
        for request in (sdk_request([[7.0], [8.0]]), sdk_request([[9.0]], outputs=[{"name": "predictions"}])):
            fast, slow, taken = await both(s, request)  # the same bytes as the general path's answer
            assert taken == ["lin"] and fast[0] == slow[0] and fast[0].id == "sdk-1"


async def held_batch(s: Served, requests: list[Any], *, express: bool,
                     log: Any = None, kserve: bool = False) -> list[tuple[Any, dict[str, str]]]:
    """`requests` sent at once (a client thread each) while lin's queue dispatches nothing, then let go as one
    batch: each call's (response, trailing metadata)."""
    queue = s.manager.get("lin").lane[2]  # type: ignore[index]
    queue.placement.inline = False
    queue.in_flight = queue.options.max_in_flight  # nothing dispatches: the calls wait in the queue
    async with native(s, express=express, log=log, kserve=kserve) as (port, _):
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(len(requests)) as pool:
            answers = [loop.run_in_executor(pool, call, port, r) for r in requests]
            while queue.waiting < len(requests):
                await asyncio.sleep(0.005)
            queue.in_flight = 0
            queue._schedule()  # all of them in one batch
            return list(await asyncio.gather(*answers))


@contextlib.contextmanager
def counted_bodies(module: Any) -> Iterator[list[int | None]]:
    """The batches whose answers `module`'s `_express_bodies` made (their count; None where it declined), while the
    servicers made inside the block use it."""
    made: list[int | None] = []
    bodies = module._express_bodies

    def counted(contexts: Any, outputs: Any, rows: int) -> Any:
        out = bodies(contexts, outputs, rows)
        made.append(None if out is None else len(out))
        return out

    module._express_bodies = counted
    try:
        yield made
    finally:
        module._express_bodies = bodies


@in_loop
async def test_a_batch_of_one_row_predicts_is_answered_at_once_with_the_bytes_of_one_by_one(repo: Path) -> None:
    from serving.protocols.tfserving import rpc

    async with serving(specs(repo)) as s:
        with counted_bodies(rpc) as made:
            requests = [predict_request([[float(i) + 0.25]]) for i in range(5)]
            log = Log()
            fast = await held_batch(s, requests, express=True, log=log)
            assert made == [5]
            assert sorted((line[3].rows, line[4], line[7]) for line in log.lines) == [
                (1, "OK", f.ByteSize()) for f, _ in fast]  # each call's line, its answer's size
            slow = await held_batch(s, requests, express=False)
        for (f, _), (g, _) in zip(fast, slow, strict=True):
            assert f.SerializeToString(deterministic=True) == g.SerializeToString(deterministic=True)
        values = [list(f.outputs["predictions"].float_val) for f, _ in fast]
        assert values == [[0.5 * (i + 0.25) + 2.0] for i in range(5)]  # lin version 2: 0.5 x + 2, in order
        series = await counted(s, "lin", 10)
        assert series.ok == 10 and sum(series.queue.counts) == 10


@in_loop
async def test_a_batch_s_answers_are_written_back_to_back_as_the_batch_ends(repo: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """As over HTTP (serving/core/batching/outbox.py): the connections' writes of a batch's answers wait until
    all are made, and go out as the batch's completion ends, not one loop turn each later."""
    from serving.core.batching.queue import BatchQueue
    from serving.transport.h2.connection import H2Connection
    from serving.transport.rpc.native import Context

    events: list[str] = []
    respond, flush, complete = Context._respond, H2Connection._flush, BatchQueue._complete

    def made(self: Any, data: bytes) -> None:
        events.append("made")
        respond(self, data)

    def written(self: Any) -> None:
        if self.out:
            events.append("written")
        flush(self)

    def completed(self: Any, *args: Any) -> None:
        complete(self, *args)
        events.append("batch completed")

    monkeypatch.setattr(Context, "_respond", made)
    monkeypatch.setattr(H2Connection, "_flush", written)
    monkeypatch.setattr(BatchQueue, "_complete", completed)
    async with serving(specs(repo)) as s:
        requests = [predict_request([[float(i)]]) for i in range(4)]
        answers = await held_batch(s, requests, express=True)
    assert [list(a.outputs["predictions"].float_val) for a, _ in answers] == [[0.5 * i + 2.0] for i in range(4)]
    batch = events[events.index("made"):]  # before it: the connections' SETTINGS and their ACKs
    batch = batch[:batch.index("batch completed")]
    # grpcio's channels in one process may share a connection: one write for each connection
    assert batch[:4] == ["made"] * 4 and batch[4:] and set(batch[4:]) == {"written"}, events


@in_loop
async def test_a_batch_of_one_row_model_infers_is_answered_at_once_with_the_bytes_of_one_by_one(repo: Path) -> None:
    from serving.protocols.kserve import rpc

    async with serving(specs(repo)) as s:
        with counted_bodies(rpc) as made:
            # ids of every kind (none, short, a length of two varint bytes, not ASCII), outputs named or not
            requests = [infer_request([[float(i) + 0.25]], id=rid) for i, rid in enumerate(["", "a", "é" * 90, "q-3"])]
            requests.append(infer_request([[7.0]], outputs=[{"name": "predictions"}]))
            fast = await held_batch(s, requests, express=True, kserve=True)
            assert made == [5]
            slow = await held_batch(s, requests, express=False, kserve=True)
        for (f, _), (g, _) in zip(fast, slow, strict=True):
            assert f.SerializeToString(deterministic=True) == g.SerializeToString(deterministic=True)
        assert [f.id for f, _ in fast] == ["", "a", "é" * 90, "q-3", "req-1"]
        values = [np.frombuffer(f.raw_output_contents[0], np.float32).tolist() for f, _ in fast]
        assert values == [[0.5 * (i + 0.25) + 2.0] for i in range(4)] + [[5.5]]  # lin version 2: 0.5 x + 2
        series = await counted(s, "lin", 10)
        assert series.ok == 10


def test_the_model_infer_template_writes_what_the_message_serializes_to_or_declines() -> None:
    from serving.core.signature import Signature, TensorSpec
    from serving.protocols.kserve.rpc import _express_answer, _express_bodies

    class Servable:
        model, version = "m", 3

    def calls(ids: list[str], dtype: Any, outputs: tuple[str, ...] = ()) -> list[Any]:
        class Call:
            servable = Servable()
            signature = Signature("serving_default", {"x": TensorSpec("x", np.dtype(np.float32), (-1, 2))},
                                  {"y": TensorSpec("y", np.dtype(dtype), None)})

            def __init__(self, rid: str) -> None:
                self.message = v2.ModelInferRequest(id=rid, outputs=[{"name": n} for n in outputs])

        return [Call(rid) for rid in ids]

    rng = np.random.default_rng(5)
    ids = ["", "x", "y" * 127, "z" * 128, "ü" * 5000]
    for dtype, shape in ((np.float32, (5, 3)), (np.float64, (5,)), (np.int64, (5, 2, 2)), (np.int8, (5, 1)),
                         (np.bool_, (5, 2)), (np.uint16, (5, 4))):
        outputs = {"y": (rng.standard_normal(shape) * 100).astype(dtype)}
        for named in ((), ("y",)):
            batch = calls(ids, dtype, named)
            got = _express_bodies(batch, outputs, shape[0])
            expected = [_express_answer(c, {"y": outputs["y"][i:i + 1]}).SerializeToString()
                        for i, c in enumerate(batch)]
            assert got == expected, (dtype, shape, named)
    # Strings, byte-swapped values, two outputs, or an output named twice: each encoded alone.
    assert _express_bodies(calls(["a"], object), {"y": np.array([b"s"], dtype=object)}, 1) is None
    assert _express_bodies(calls(["a"], ">f4"), {"y": np.ones((2, 1), dtype=">f4")}, 2) is None
    assert _express_bodies(calls(["a", "b"], np.float32), {"y": np.ones(2, np.float32), "z": np.ones(2)}, 2) is None
    assert _express_bodies(calls(["a"], np.float32, ("y", "y")), {"y": np.ones(1, np.float32)}, 1) is None


def test_the_response_template_writes_what_the_message_serializes_to_or_declines() -> None:
    from serving.core.signature import Signature, TensorSpec
    from serving.protocols.tfserving.rpc import _express_bodies, predict_response

    class Servable:
        model, version = "m", 3

    class Call:
        servable = Servable()
        signature = Signature("serving_default", {"x": TensorSpec("x", np.dtype(np.float32), (-1, 2))},
                              {"y": TensorSpec("y", np.dtype(np.float32), (-1, 3))})

    rng = np.random.default_rng(3)
    for dtype, shape in ((np.float32, (4, 3)), (np.float64, (4,)), (np.float32, (2, 2, 2)), (np.float32, (3, 1))):
        outputs = {"y": rng.standard_normal(shape).astype(dtype)}
        outputs["y"].ravel()[1] = np.nan  # NaN is bytes like any other value here
        got = _express_bodies([Call()], outputs, shape[0])
        expected = [predict_response(Call.servable, Call.signature, {"y": outputs["y"][i:i + 1]}).SerializeToString()
                    for i in range(shape[0])]
        assert got == expected, (dtype, shape)
    # Not laid out as their bytes (int varints, half precision), or not one output: each encoded alone.
    assert _express_bodies([Call()], {"y": np.arange(4, dtype=np.int32).reshape(4, 1)}, 4) is None
    assert _express_bodies([Call()], {"y": np.ones((4, 1), dtype=np.float16)}, 4) is None
    assert _express_bodies([Call()], {"y": np.ones((4, 1), np.float32), "z": np.ones(4, np.float32)}, 4) is None
