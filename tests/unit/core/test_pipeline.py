"""The request pipeline below the protocols: `Call`s through a real Pipeline over a real ModelManager and
DataPlane serving tiny models made at test time, watched by an observer that records what it is told;
and `RequestMetrics`, the first observer, counting what the pipeline reports."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.core.batching import BatchingOptions
from serving.core.dataplane import DataPlane, Outputs
from serving.core.model_config import ModelSpec
from serving.core.pipeline import Call, Inputs, Pipeline, Timings
from serving.core.repository import ModelManager
from serving.core.servable import Runtime, Servable
from serving.core.signature import Signature
from serving.errors import Code, ServingError, invalid_argument
from serving.ops.metrics import RequestMetrics
from tests.helpers import in_loop, make_linear

SLOW_MS = 100


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    make_linear(root / "lin", 1)  # y = 0.5x + 2
    make_linear(root / "slow", 1, delay_ms=SLOW_MS)
    make_linear(root / "picky", 1, reject_nan=True)  # the processor raises on NaN
    return root


class Recorder:
    """An observer that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def received(self, call: Call) -> None:
        self.events.append(("received", call))

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None:
        self.events.append(("finished", call, error, timings))


@contextlib.asynccontextmanager
async def pipeline(repo: Path, *observers: Any, batching: BatchingOptions | None = None) -> AsyncIterator[Pipeline]:
    """A Pipeline over lin, slow and picky, wired as serving/app.py wires it, with `observers` attached."""
    runtime = Runtime(batching)
    manager = ModelManager(runtime=runtime)
    await manager.apply([ModelSpec(n, str(repo / n), "linear") for n in ("lin", "slow", "picky")])
    step = Pipeline(manager, DataPlane(runtime))
    for observer in observers:
        step.observe(observer)
    try:
        yield step
    finally:
        await manager.shutdown()
        runtime.shutdown()


def decode_rows(call: Call, servable: Servable) -> tuple[Signature, Inputs]:
    """The test protocol's decode: `call.context` holds the rows of the default signature's one input."""
    return servable.signature(None), {"inputs": np.asarray(call.context, np.float32)}


def decode_fails(call: Call, servable: Servable) -> tuple[Signature, Inputs]:
    raise invalid_argument("the body is not rows")


def a_call(model: str, rows: Any = ((2.0,),), *, decode: Any = decode_rows, outputs: Sequence[str] = (),
           method: str = "predict", protocol: str = "test", **kw: Any) -> Call:
    return Call(protocol, model, None, None, decode, time.monotonic() + 30, outputs=outputs, method=method,
                context=rows, **kw)


async def outcome(future: asyncio.Future[Outputs]) -> Outputs | BaseException:
    """The outputs, or the exception the future failed with."""
    await asyncio.wait([future])
    return future.exception() or future.result()


def only_finished_count(recorder: Recorder) -> int:
    return sum(1 for e in recorder.events if e[0] == "finished")


def only_finished(recorder: Recorder) -> tuple[Call, ServingError | None, Timings]:
    (event,) = [e for e in recorder.events if e[0] == "finished"]
    return event[1], event[2], event[3]


# ---- what an observer sees ----

@in_loop
async def test_an_observer_sees_received_then_finished_once_per_call(repo: Path) -> None:
    recorder = Recorder()
    async with pipeline(repo, recorder) as step:
        call = a_call("lin", [[2.0], [4.0]])
        outputs = await step.infer(call)
        assert outputs["predictions"].tolist() == [3.0, 4.0]
        await asyncio.sleep(0)  # any late callback would land now
    assert [e[:2] for e in recorder.events] == [("received", call), ("finished", call)]
    _, error, timings = only_finished(recorder)
    assert error is None
    assert call.servable is not None and (call.servable.model, call.servable.version) == ("lin", 1)
    assert call.signature is not None and call.signature.name == "serving_default"
    assert call.inputs is not None and call.inputs["inputs"].tolist() == [[2.0], [4.0]]
    assert timings.queue >= 0 and timings.compute >= 0 and timings.total > 0
    assert timings.total >= timings.queue + timings.compute - 1e-9


@in_loop
async def test_observers_are_told_after_the_answer_is_handed_over(repo: Path) -> None:
    recorder = Recorder()
    told_before_answer: list[int] = []
    async with pipeline(repo, recorder) as step:
        for call in (a_call("lin"), a_call("lin", method="classify")):  # a queued call, and one on the executor
            recorder.events.clear()
            future = step.infer(call)
            future.add_done_callback(lambda _: told_before_answer.append(only_finished_count(recorder)))
            await outcome(future)
            await asyncio.sleep(0)
            assert only_finished(recorder)[0] is call
    assert told_before_answer == [0, 0]  # the answer's callback ran first, every time


@in_loop
async def test_a_models_own_observers_are_chosen_when_its_config_is_applied(repo: Path) -> None:
    """`ModelManager.observers_for` (the server's request log and shadow) is asked when a config is applied,
    not per call: a model whose config asks for nothing has no observer of its own."""
    own, asked = Recorder(), []

    def observers_for(spec: ModelSpec) -> tuple[Any, ...]:
        asked.append(spec.name)
        return (own,) if spec.platform == "linear" and spec.name == "lin" and spec.labels.get("log") == 1 else ()

    async with pipeline(repo, Recorder()) as step:
        step.manager.observers_for = observers_for
        specs = [ModelSpec(n, str(repo / n), "linear") for n in ("lin", "slow", "picky")]
        logged = [ModelSpec("lin", str(repo / "lin"), "linear", labels={"log": 1}), *specs[1:]]
        await step.manager.apply(logged)
        assert step.manager.get("lin").observers == (own,) and step.manager.get("slow").observers == ()
        asked.clear()
        for model in ("lin", "slow", "lin"):
            await step.infer(a_call(model))
        await asyncio.sleep(0)
        assert asked == []  # nothing looked up per call
        assert [e[1].model for e in own.events if e[0] == "finished"] == ["lin", "lin"]
        await step.manager.apply(specs)  # the config no longer asks: applied to the loaded version at once
        assert step.manager.get("lin").observers == ()
        own.events.clear()
        await step.infer(a_call("lin"))
        await asyncio.sleep(0)
        assert own.events == []


@in_loop
async def test_a_call_behind_a_busy_queue_reports_its_queue_wait(repo: Path) -> None:
    recorder = Recorder()
    async with pipeline(repo, recorder, batching=BatchingOptions(max_in_flight=1)) as step:
        first, second = a_call("slow"), a_call("slow")
        futures = [step.infer(first), step.infer(second)]  # the second waits while the first's batch runs
        await asyncio.gather(*futures)
    timings = {id(e[1]): e[3] for e in recorder.events if e[0] == "finished"}
    assert len(timings) == 2
    ran, waited = timings[id(first)], timings[id(second)]
    assert ran.queue < SLOW_MS / 1000 / 2 <= waited.queue  # it waited for the first batch's compute
    for t in (ran, waited):
        assert t.compute >= SLOW_MS / 1000 - 1e-3  # the model sleeps that long per batch
        assert t.total >= t.queue + t.compute - 1e-9


@in_loop
async def test_a_full_queue_refuses_before_the_body_is_decoded(repo: Path) -> None:
    decoded = []

    def decode(call: Call, servable: Servable) -> tuple[Signature, Inputs]:
        decoded.append(call)
        return decode_rows(call, servable)

    async with pipeline(repo, batching=BatchingOptions(max_in_flight=1, max_queue_size=1)) as step:
        running, queued = step.infer(a_call("slow")), step.infer(a_call("slow"))
        with pytest.raises(ServingError) as e:
            step.infer(a_call("slow", decode=decode))
        assert e.value.code is Code.UNAVAILABLE and "the request queue is full (1 requests waiting)" in e.value.message
        assert decoded == []
        await asyncio.gather(running, queued)
        step.infer(a_call("slow", decode=decode)).cancel()  # room again: decoded and queued
        assert len(decoded) == 1


@in_loop
async def test_a_failure_before_queueing_is_finished_with_its_error_and_no_queue_or_compute(repo: Path) -> None:
    recorder = Recorder()
    async with pipeline(repo, recorder) as step:
        cases = [
            (a_call("nope"), Code.NOT_FOUND,
             "Servable not found for request: Latest(nope) (known models: lin, picky, slow)"),
            (a_call("lin", decode=decode_fails), Code.INVALID_ARGUMENT, "the body is not rows"),
            (a_call("lin", [[1.0, 2.0]]), Code.INVALID_ARGUMENT,
             "model lin version 1 signature serving_default: input 'inputs' expects shape [-1,1], got [1,2] "
             "(the model takes 1 features per row, the request has 2)"),
        ]
        for call, code, message in cases:
            recorder.events.clear()
            with pytest.raises(ServingError) as raised:
                step.infer(call)
            assert (raised.value.code, raised.value.message) == (code, message)
            assert only_finished_count(recorder) == 0  # told once the adapter answered: on the next turn
            await asyncio.sleep(0)
            finished, error, timings = only_finished(recorder)
            assert finished is call and error is raised.value
            assert (timings.queue, timings.compute) == (0.0, 0.0) and timings.total >= 0
        assert step.manager.get("lin").queues["serving_default"].stats.requests == 0


@in_loop
async def test_only_a_call_that_decoded_is_received(repo: Path) -> None:
    recorder = Recorder()
    async with pipeline(repo, recorder) as step:
        for call in (a_call("nope"), a_call("lin", decode=decode_fails)):
            with pytest.raises(ServingError):
                step.infer(call)
            await asyncio.sleep(0)  # its observers are told on the next turn
        bad_rows = a_call("lin", [[1.0, 2.0]])  # decodes, then the data plane refuses it
        with pytest.raises(ServingError):
            step.infer(bad_rows)
    assert [e[0] for e in recorder.events] == ["finished", "finished", "received", "finished"]
    assert recorder.events[2][1] is bad_rows


@in_loop
async def test_a_processor_failure_after_queueing_is_finished_with_that_error(repo: Path) -> None:
    recorder = Recorder()
    async with pipeline(repo, recorder) as step:
        call = a_call("picky", [[float("nan")]])
        failure = await outcome(step.infer(call))
    assert isinstance(failure, ServingError) and failure.code is Code.INTERNAL
    assert failure.message == "model picky version 1 failed in predict: ValueError: linear model refuses NaN input"
    finished, error, timings = only_finished(recorder)
    assert finished is call and error is failure
    assert timings.queue >= 0 and timings.compute > 0 and timings.total >= timings.queue + timings.compute - 1e-9


@in_loop
async def test_a_method_the_processor_lacks_fails_after_dispatch_with_unimplemented(repo: Path) -> None:
    recorder = Recorder()
    async with pipeline(repo, recorder) as step:
        failure = await outcome(step.infer(a_call("lin", method="classify")))  # not queued: on the executor
    assert isinstance(failure, ServingError)
    assert (failure.code, failure.message) == (Code.UNIMPLEMENTED, "processor linear does not implement classify")
    _, error, timings = only_finished(recorder)
    assert error is failure and timings.compute > 0


@in_loop
async def test_a_cancelled_call_is_finished_once_as_cancelled(repo: Path) -> None:
    recorder = Recorder()
    async with pipeline(repo, recorder, batching=BatchingOptions(max_in_flight=1)) as step:
        running_call, queued_call = a_call("slow"), a_call("slow")
        running, queued = step.infer(running_call), step.infer(queued_call)
        queued.cancel()  # as the HTTP connection does past the deadline: dropped before it is computed
        await asyncio.wait([running])
        await asyncio.sleep(0)
        assert step.manager.get("slow").queues["serving_default"].stats.batches == 1
    finished = [(e[1], e[2]) for e in recorder.events if e[0] == "finished"]
    assert len(finished) == 2  # once each: the queue tells the cancelled call when it reaches it
    errors = {id(call): error for call, error in finished}
    cancelled = errors[id(running_call)] is None and errors[id(queued_call)]
    assert cancelled and (cancelled.code, cancelled.message) == (Code.CANCELLED, "request cancelled")


@in_loop
async def test_with_no_observer_nothing_is_measured(repo: Path) -> None:
    async with pipeline(repo) as step:
        calls = [a_call("lin"), a_call("lin", method="regress")]  # a queued call, and one on the executor
        assert (await step.infer(calls[0]))["predictions"].tolist() == [3.0]
        assert isinstance(await outcome(step.infer(calls[1])), ServingError)
    for call in calls:
        assert (call.received, call.dispatched, call.computed) == (0.0, 0.0, 0.0)


# ---- the output filter ----

@in_loop
async def test_an_unknown_wanted_output_is_refused_before_anything_is_queued(repo: Path) -> None:
    recorder = Recorder()
    async with pipeline(repo, recorder) as step:
        with pytest.raises(ServingError) as raised:
            step.infer(a_call("lin", outputs=["predictions", "nope"]))
        assert (raised.value.code, raised.value.message) == (
            Code.INVALID_ARGUMENT,
            "output tensor alias not found in signature: nope Outputs expected to be in the set {predictions}.")
        await asyncio.sleep(0)  # its observers are told on the next turn
        assert step.manager.get("lin").queues["serving_default"].stats.requests == 0
        assert (await step.infer(a_call("lin", outputs=["predictions"])))["predictions"].tolist() == [3.0]
    assert [e[0] for e in recorder.events] == ["finished", "received", "finished"]


@in_loop
async def test_the_unknown_output_error_is_the_calls_own(repo: Path) -> None:
    def triton(call: Call, name: str) -> ServingError:
        return invalid_argument(f"unexpected inference output '{name}' for model '{call.model}'")

    async with pipeline(repo) as step:
        with pytest.raises(ServingError, match=r"^unexpected inference output 'nope' for model 'lin'$"):
            step.infer(a_call("lin", outputs=["nope"], unknown_output=triton))
        assert step.manager.get("lin").queues["serving_default"].stats.requests == 0


# ---- RequestMetrics ----

@in_loop
async def test_request_metrics_count_into_each_versions_record_by_signature_protocol_method_and_code(
        repo: Path) -> None:
    metrics = RequestMetrics()
    async with pipeline(repo, metrics) as step:
        for _ in range(2):
            await step.infer(a_call("lin"))
        await step.infer(a_call("lin", protocol="kserve"))
        await outcome(step.infer(a_call("lin", method="classify")))
        with pytest.raises(ServingError):
            step.infer(a_call("lin", [[1.0, 2.0]]))
        for name in ("nope", "other"):
            with pytest.raises(ServingError):
                step.infer(a_call(name))
        await asyncio.sleep(0)
        record = step.manager.get("lin").record
    assert {key: dict(series.counts()) for key, series in record.series.items()} == {
        ("serving_default", "test", "predict"): {"OK": 2, "INVALID_ARGUMENT": 1},
        ("serving_default", "kserve", "predict"): {"OK": 1},
        ("serving_default", "test", "classify"): {"UNIMPLEMENTED": 1},
    }
    assert {key: dict(series.counts()) for key, series in metrics.unrouted.items()} == {
        ("test", "predict"): {"NOT_FOUND": 2},  # no series per client-chosen name
    }
    ok = record.series[("serving_default", "test", "predict")]
    assert sum(ok.latency.counts) == 3 and ok.latency.sum > 0  # every finished call, errors too
    assert sum(ok.rows.counts) == 2 and ok.rows.sum == 2.0  # the rows of the answered ones
    assert sum(ok.queue.counts) == 2  # the refused one never reached a queue
    unknown = metrics.unrouted[("test", "predict")]
    assert sum(unknown.queue.counts) == 0 and sum(unknown.latency.counts) == 2
    # Triton's sums are the predict calls': 3 answered (2 test, 1 kserve), 1 failed after it resolved
    assert (record.success, record.fail, record.rows) == (3, 1, 3)
    assert record.batches["serving_default"].size.sum == 3  # every answered predict call ran in a batch
