"""The lanes: the common predict request taken in one step past the general pipeline (Pipeline.submit_decoded,
`Servable.lane`), with the same answer, the same statistics and the same errors as the general path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving._proto.tensorflow.core.framework import tensor_pb2
from serving._proto.tensorflow_serving.apis import predict_pb2
from serving.core.pipeline import Pipeline
from serving.protocols.tfserving.rpc import PredictionService
from tests.helpers import in_loop, make_linear
from tests.unit.protocols.test_routes import serving, specs


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lanes")
    make_linear(root / "lin", 1, bias=1.0)
    make_linear(root / "lin", 2)
    make_linear(root / "slow", 1)
    make_linear(root / "two", 1, weights=[[1.0, 0.0], [0.0, 2.0]], bias=[0.5, -0.5])
    return root


def general_only(pipeline: Pipeline, calls: list[str]) -> None:
    """Count the calls that take the general step (`Pipeline.infer`)."""
    infer = pipeline.infer

    def counted(call: Any) -> Any:
        calls.append(call.model)
        return infer(call)

    pipeline.infer = counted  # type: ignore[method-assign]


@in_loop
async def test_the_row_format_predict_takes_the_lane_and_answers_as_the_general_path(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        general: list[str] = []
        general_only(s.pipeline, general)
        assert s.manager.get("lin").lane is not None
        lane = await s.post("/v1/models/lin:predict", {"instances": [[2.0], [4.0]]})
        assert general == []  # answered without the general step
        # Naming the lane's signature (or '', the default) is the lane's request too: the same answer.
        for named in ("", "serving_default"):
            assert await s.post("/v1/models/lin:predict", {"instances": [[2.0], [4.0]], "signature_name": named}) \
                == lane
        assert general == []
        # Another signature, or another key beside it, is the general path's: its 400, or its answer.
        other = await s.post("/v1/models/lin:predict", {"instances": [[2.0]], "signature_name": "other"})
        assert other[0] == 400 and "other" in other[1]["error"]
        assert general == ["lin"]
        assert await s.post("/v1/models/lin:predict", {"instances": [[2.0], [4.0]], "signature_name": "serving_default",
                                                       "x": 1}) == lane
        assert general == ["lin", "lin"]
        assert lane == (200, {"predictions": [3.0, 4.0]})


@in_loop
async def test_a_lane_call_is_counted_as_a_general_one(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        await s.post("/v1/models/lin:predict", {"instances": [[2.0], [4.0], [5.0]]})
        await s.post("/v1/models/lin:predict", {"instances": [[2.0]], "signature_name": ""})
        await s.post("/v1/models/lin:predict", {"instances": [[2.0], [4.0]]})
        for _ in range(3):  # observers are told on the loop's next turns
            await asyncio.sleep(0)
        record = s.manager.get("lin").record
        assert len(record.series) == 1  # one series for lane and general calls alike
        series = next(iter(record.series.values()))
        assert series.ok == 3 and sum(series.latency.counts) == 3 and sum(series.rows.counts) == 3
        assert series.rows.sum == 6  # 3 + 1 + 2 rows
        assert record.success == 3 and record.rows == 6 and sum(series.queue.counts) == 3


@in_loop
async def test_what_the_lane_does_not_take_gets_the_general_answer_and_error(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        general: list[str] = []
        general_only(s.pipeline, general)
        # Two outputs: the lane's call is answered by the same encoder, one object per row.
        assert await s.post("/v1/models/two:predict", {"instances": [[1.0, 1.0]]}) == (
            200, {"predictions": [[1.5, 1.5]]})
        assert general == []
        # A wrong width, a wrong type, an empty list, a ragged one: the lane steps aside, the general path refuses.
        for body in ({"instances": [[1.0, 2.0]]}, {"instances": [["a"]]}, {"instances": []},
                     {"instances": [[1.0], [1.0, 2.0]]}):
            status, doc = await s.post("/v1/models/lin:predict", body)
            assert status == 400 and "error" in doc, body
        assert general == ["lin", "lin", "lin", "lin"]
        status, doc = await s.post("/v1/models/nope:predict", {"instances": [[1.0]]})
        assert status == 404 and "nope" in doc["error"]


class Context:
    """What a servicer reads of grpc.aio's ServicerContext, for calls made in process."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None

    def set_trailing_metadata(self, metadata: Any) -> None: ...

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise AbortedError(code, details)


class AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


def predict_request(rows: list[list[float]], *, content: bool = True, **extra: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lin"
    for key, value in extra.items():
        setattr(request.model_spec, key, value)
    tensor = request.inputs["inputs"]
    array = np.asarray(rows, np.float32)
    if content:
        tensor.CopyFrom(tensor_pb2.TensorProto(dtype=1, tensor_content=array.tobytes()))
    else:
        tensor.CopyFrom(tensor_pb2.TensorProto(dtype=1, float_val=array.ravel().tolist()))
    for d in array.shape:
        tensor.tensor_shape.dim.add().size = d
    return request


@in_loop
async def test_a_tensor_content_or_typed_predict_takes_the_grpc_lane_and_answers_as_the_general_path(
        repo: Path) -> None:
    async with serving(specs(repo)) as s:
        general: list[str] = []
        general_only(s.pipeline, general)
        service = PredictionService(s.manager, s.pipeline, 30.0)
        lane = await service.Predict(predict_request([[2.0], [4.0]]), Context())
        assert general == []  # answered without the general step
        typed = await service.Predict(predict_request([[2.0], [4.0]], content=False), Context())  # float_val
        assert general == []
        # The lane's own signature named (perf_analyzer names it): the one the general path would pick by name.
        named = await service.Predict(predict_request([[2.0], [4.0]], signature_name="serving_default"), Context())
        assert general == []
        filled = predict_request([[2.0], [4.0]], content=False)  # one value filling the shape: TensorFlow's shorthand
        del filled.inputs["inputs"].float_val[1:]
        one = await service.Predict(filled, Context())
        assert general == ["lin"]
        assert lane == typed == named
        assert list(one.outputs["predictions"].float_val) == [3.0, 3.0]
        assert list(lane.outputs["predictions"].float_val) == [3.0, 4.0]
        assert lane.model_spec.version.value == 2
        # A wrong shape and a wrong dtype step aside from the lane: the general path refuses them.
        bad = predict_request([[2.0, 1.0]])
        wrong_type = predict_request([[2.0]])
        wrong_type.inputs["inputs"].dtype = 2  # DT_DOUBLE with 4 bytes of content
        for request in (bad, wrong_type):
            with pytest.raises(AbortedError) as e:
                await service.Predict(request, Context())
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert general == ["lin", "lin", "lin"]
        with pytest.raises(AbortedError) as e:  # another signature: the general path's FAILED_PRECONDITION
            await service.Predict(predict_request([[2.0]], signature_name="other"), Context())
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "other" in str(e.value.details)
        assert general == ["lin", "lin", "lin", "lin"]
        for _ in range(3):
            await asyncio.sleep(0)
        every = s.manager.get("lin").record.series.values()  # by signature: a tensor that did not decode has none
        assert sum(x.ok for x in every) == 4 and sum(x.codes["INVALID_ARGUMENT"] for x in every) == 2
