"""The cost budget of one request, stage by stage, beside the floor's: where our time goes.

One batch-1 `POST /v1/models/xgb:predict` with `{"instances": [[32 floats]]}` (the model of
benchmarks/xgb_http.py: the peers' xgb, 100 trees x 32 features), through the server's objects built in
process as serving/app.py wires them (Runtime, ModelManager, Pipeline observed by RequestMetrics, RestApi,
HttpConnection on a fake transport, the default access log writing to os.devnull), and through
`../shared/peers/minimal_path.py`, the floor of a Python request path. Each stage is called alone with the
inputs the request gives it, µs per request, min of --repeats repeats of --calls calls, ours and the floor's
interleaved stage by stage. A stage that runs once per batch (assembly, slicing, predict, the thread
hand-off) is timed on a batch of the size the first closed loop below made, and divided by its rows; the
thread hand-off is counted for the batches that ran on a worker thread. Where a stage can only be had as a
difference of two timings, its row says so.

Beside the sum of the stages: the closed loop of benchmarks/hot_path.py (64 in flight, --requests
requests, best of 3) in process CPU µs per request, for its variant "as served, access log json (default
...)"; the CPU time its predict calls took there; the same loops with both models answering at once, beside
the sum less predict; and the sum again with each stage run 64 requests at a time in turn, as the loop runs
them (a stage timed alone runs hot: its code and data stay in the caches). The closed loops run at the
start, the middle and the end of the stage repeats: this machine's speed drifts by as much as 2x over
minutes. OMP_NUM_THREADS defaults to 1, as benchmarks/xgb_http.py runs the servers: an idle OpenMP thread
spinning after each predict would otherwise bill the process for CPU no stage uses.

    python benchmarks/budget.py [--calls 10000] [--repeats 9] [--requests 20000] [--out benchmarks/results]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by OpenMP when xgboost loads, below

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httptools  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import uvloop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a script run from a checkout

from benchmarks.hot_path import FakeTransport, closed_loop  # noqa: E402
from benchmarks.report import fresh  # noqa: E402
from benchmarks.xgb_http import PEERS, prepare_model  # noqa: E402
from serving.core import pipeline as pipeline_module  # noqa: E402
from serving.core.batching import SYSTEM_CLOCK, BatchingOptions, BatchQueue  # noqa: E402
from serving.core.batching.queue import _timed  # noqa: E402 - the worker side of a hand-off, as the queue runs it
from serving.core.dataplane import DataPlane, validate_inputs  # noqa: E402
from serving.core.model_config import ModelSpec  # noqa: E402
from serving.core.pipeline import Call, Pipeline  # noqa: E402
from serving.core.repository import ModelManager  # noqa: E402
from serving.core.servable import Runtime  # noqa: E402
from serving.core.stats import VersionStats  # noqa: E402
from serving.ops.accesslog import AccessLog, new_request_id  # noqa: E402
from serving.ops.metrics import RequestMetrics  # noqa: E402
from serving.ops.requestlog import RequestLogger  # noqa: E402
from serving.ops.shadow import ShadowRunner  # noqa: E402
from serving.protocols.adapters import answer_later  # noqa: E402
from serving.protocols.router import RestApi  # noqa: E402
from serving.protocols.tfserving.rest import PREDICT, TfServingRest  # noqa: E402
from serving.settings import Settings  # noqa: E402
from serving.transport.auth import TokenAuth  # noqa: E402
from serving.transport.http import (  # noqa: E402
    DeadlineWheel,
    Deferred,
    HttpConnection,
    HttpLimits,
    Request,
    Response,
    _Slot,
)

PATH = "/v1/models/xgb:predict"
CONCURRENCY = 64
#: Requests between two resets of a stage's state (a connection's answer queue, a batch queue): under the
#: pipelining and queue limits, so no stage meets a limit the request path does not meet.
BLOCK = 32
TOKEN = "budget-token"

#: Where ours' closed loop is clocked once, its model stubbed (`Paths.split_loop`): each part, the functions whose
#: calls it sums (the loop calls each of them itself, none inside another), the probes of its stages, and the
#: probes that call its code whole outside the loop.
PARTS = (
    ("request side: `data_received` -> ... -> `BatchQueue.submit`", ((HttpConnection, "data_received"),),
     ("parse", "route", "call", "infer"), ("request_side",)),
    ("batch: `_run_inline` (`_finish` when on a worker)", ((BatchQueue, "_run_inline"), (BatchQueue, "_finish")),
     ("inline",), ("inline",)),
    ("observers: `_tell`", ((pipeline_module, "_tell"),), ("observers",), ("observers",)),
    ("answer side: `_Slot.done` -> encode -> `_complete` -> write", ((_Slot, "done"),), ("encode", "write", "harness"),
     ("answer_side", "harness")),
)
#: The probes of PARTS that no stage row times.
WHOLE = ("request_side", "answer_side")

#: A probe runs its stage `n` times and answers the seconds it spent on them (set-up between blocks left out).
Probe = Callable[[int], Awaitable[float]]


class NullTransport:
    """A transport that takes the bytes and does nothing: the write is the caller's cost, not a socket's."""

    def write(self, data: bytes) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: return ("127.0.0.1", 50000)
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: return False


class Answered:
    """A pipeline whose calls are answered at once: what routing costs without the model behind it."""

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future

    def infer(self, call: Call) -> asyncio.Future[Any]:
        return self.future


class NoTiming:
    """A batch request's timing that records and tells nobody: the observers have a row of their own."""

    __slots__ = ("dispatched", "computed")

    def __init__(self) -> None:
        self.dispatched = self.computed = 0.0

    def finished(self, future: asyncio.Future[Any]) -> None: ...


class StubJob:
    def __init__(self, result: Any) -> None:
        self._result = result

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...

    def result(self) -> Any:
        return self._result


class StubPool:
    """The floor's thread pool without the thread: its batch assembly alone."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> StubJob:
        return StubJob(None)


class MeteredBooster:
    """A booster that counts its batches and rows and the CPU time of its calls on the thread that ran them: what
    predict costs inside a closed loop, beside what it costs alone (one Python call and two clock reads a batch
    more)."""

    def __init__(self, booster: Any) -> None:
        self.booster, self.batches, self.rows, self.cpu = booster, 0, 0, 0.0

    def inplace_predict(self, batch: np.ndarray, **options: Any) -> Any:
        started = time.thread_time()
        out = self.booster.inplace_predict(batch, **options)
        self.cpu += time.thread_time() - started
        self.batches += 1
        self.rows += len(batch)
        return out


async def drain() -> None:
    """Let the loop run the callbacks the calls just scheduled."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def blocks(n: int) -> list[int]:
    """`n` calls as blocks of at most BLOCK."""
    return [BLOCK] * (n // BLOCK) + ([n % BLOCK] if n % BLOCK else [])


class Zeros:
    """A booster that answers at once."""

    def __init__(self, zeros: dict[int, np.ndarray]) -> None:
        self.zeros = zeros

    def inplace_predict(self, batch: np.ndarray) -> np.ndarray:
        return self.zeros[len(batch)]


@dataclass
class Loop:
    """One closed-loop run: CPU µs per request, and how its requests were batched."""

    cpu_us: float
    batches: int
    rows: int
    worker_batches: int
    predict_us: float  # the CPU time of its predict calls a request

    @property
    def batch(self) -> int:
        return max(1, round(self.rows / self.batches)) if self.batches else 1

    def __str__(self) -> str:
        return (f"{self.cpu_us:.1f} µs/request ({self.batches} batches, {self.worker_batches} on a worker, "
                f"predict {self.predict_us:.1f} µs/request)")


def cheapest(runs: list[Loop]) -> Loop:
    return min(runs, key=lambda r: r.cpu_us)


@dataclass
class Row:
    """One stage: each side's probe (a method of OurStages / FloorStages), a difference `a-b-c` of probes,
    or None where that side has no such stage."""

    stage: str
    ours: str | None
    floor: str | None
    how: str
    handoff: bool = False  # a round trip per batch that ran on a worker, not a cost per request
    in_total: bool = True


class Paths:
    """Both request paths, built once in process: ours as serving/app.py wires it, and the floor."""

    async def build(self, work: Path) -> None:
        repo, self.row = prepare_model(work)
        self.body = orjson.dumps({"instances": [self.row]})
        self.request = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (PATH.encode(), len(self.body), self.body))
        self.floor_request = self.request.replace(PATH.encode(), b"/")
        loop = self.loop = asyncio.get_running_loop()
        # As benchmarks/hot_path.py builds it: max_batch_size as the floor's MAX_BATCH, one batch at a time as
        # its one worker thread.
        self.runtime = Runtime(BatchingOptions(max_batch_size=64, max_in_flight=1))
        manager = self.manager = ModelManager(runtime=self.runtime)
        dataplane = DataPlane(self.runtime)
        self.pipeline = Pipeline(manager, dataplane)
        self.pipeline.observe(RequestMetrics())  # into each version's record
        request_log, shadow = RequestLogger(manager), ShadowRunner(manager, dataplane)
        manager.observers_for = lambda spec: tuple(  # a model's own: none, its config asks for neither
            o for o in (request_log.observer_for(spec), shadow.observer_for(spec)) if o is not None)
        await manager.apply([ModelSpec("xgb", str(repo), "xgboost")])
        defaults = Settings()
        self.access_log = AccessLog.open(defaults.access_log, sample_rate=defaults.access_log_sample_rate,
                                         slow_ms=defaults.access_log_slow_ms, health=defaults.access_log_health,
                                         path=os.devnull)
        self.wheel = DeadlineWheel(loop)
        self.api = RestApi(manager, self.pipeline, timeout_s=30, default_model=lambda: "xgb")
        self.servable = manager.get("xgb")
        self.sig = self.servable.signature("")
        self.queue = self.servable.queues[self.sig.name]

        os.environ["ANCHOR_MODELS"] = str(work)
        spec = importlib.util.spec_from_file_location("minimal_path", PEERS / "minimal_path.py")
        self.mp = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(self.mp)  # type: ignore[union-attr]
        import xgboost as xgb

        self.booster = xgb.Booster(model_file=str(repo / "1" / "model.json"))
        self.booster.set_param({"nthread": 1})  # as minimal_path's main
        self.batcher = self.mp.Batcher(loop, self.booster)

    async def loop_pair(self, requests: int) -> tuple[Loop, Loop]:
        """hot_path.py's closed loop once for each path, ours first."""
        return await self.ours_loop(requests), await self.floor_loop(requests)

    async def ours_loop(self, requests: int) -> Loop:
        """Ours as hot_path.py's "as served, access log json (default)" variant."""
        connection = functools.partial(HttpConnection, self.api, HttpLimits(), set(), self.wheel,
                                       access_log=self.access_log)
        stats, processor = self.queue.stats, self.servable.processor
        booster = processor.booster  # type: ignore[attr-defined]
        batches, rows, inline = stats.batches, stats.rows, stats.inline_batches
        processor.booster = meter = MeteredBooster(booster)  # type: ignore[attr-defined]
        try:
            cpu = await closed_loop(connection, self.request, requests, CONCURRENCY)
        finally:
            processor.booster = booster  # type: ignore[attr-defined]
        batches, rows, inline = stats.batches - batches, stats.rows - rows, stats.inline_batches - inline
        return Loop(cpu, batches, rows, batches - inline, meter.cpu / rows * 1e6)

    async def floor_loop(self, requests: int) -> Loop:
        batcher = self.batcher
        booster = batcher.booster
        batcher.booster = meter = MeteredBooster(booster)
        try:
            cpu = await closed_loop(lambda: self.mp.Connection(batcher), self.floor_request, requests, CONCURRENCY)
        finally:
            batcher.booster = booster
        return Loop(cpu, meter.batches, meter.rows, meter.batches, meter.cpu / meter.rows * 1e6)

    async def split_loop(self, requests: int) -> tuple[Loop, list[float]]:
        """Ours' closed loop once more, its model stubbed and its batches held on the loop thread (no other
        thread competes for the GIL, so the clocks read the loop thread's time), with the calls of each of PARTS
        clocked: the run, and each part's µs a request (each clocked call costs about 0.3 µs more)."""
        spent = [0.0] * len(PARTS)
        originals = [(owner, name, getattr(owner, name)) for _, functions, *_ in PARTS for owner, name in functions]

        def clocked(index: int, fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent[index] += time.perf_counter() - started
            return call

        for index, (_, functions, *_) in enumerate(PARTS):
            for owner, name in functions:
                setattr(owner, name, clocked(index, getattr(owner, name)))
        placement = self.queue.placement
        held = placement.limit_s, placement.inline
        placement.limit_s, placement.inline = 0.0, True  # no limit: never judged, never moved
        try:
            with self.stubbed_models():
                run = await self.ours_loop(requests)
        finally:
            placement.limit_s, placement.inline = held
            for owner, name, fn in originals:
                setattr(owner, name, fn)
        return run, [seconds / requests * 1e6 for seconds in spent]

    @contextlib.contextmanager
    def stubbed_models(self) -> Iterator[None]:
        """Both models answer at once (a zero a row): what the closed loops cost without predict."""
        zeros = {n: np.zeros(n, np.float32) for n in range(1, 65)}
        run, booster = self.queue.run, self.batcher.booster
        self.queue.run = lambda inputs: {"predictions": zeros[len(next(iter(inputs.values())))]}
        self.batcher.booster = Zeros(zeros)
        try:
            yield
        finally:
            self.queue.run, self.batcher.booster = run, booster


def per_batch(spent: float, n: int, batches: int, rows: int) -> float:
    """Seconds for `n` requests, of `batches` batches of `rows` rows timed."""
    return spent * n / (batches * rows)


def predict(run: Callable[[], Any], rows: int) -> Probe:
    """A predict of `rows` rows, per row: a tenth of the calls (each costs hundreds of µs)."""
    async def probe(n: int) -> float:
        calls = max(1, n // 10)
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        return per_batch(time.perf_counter() - t0, n, calls, rows)
    return probe


def handoff(submit: Callable[[Callable[[Any], None]], None]) -> Probe:
    """Round trips to a worker thread and back through call_soon_threadsafe, one after the other; process
    CPU (both threads), as the closed loop counts it."""
    async def probe(n: int) -> float:
        finished = asyncio.get_running_loop().create_future()
        left = n

        def back(job: Any) -> None:
            nonlocal left
            job.result()
            left -= 1
            if left:
                submit(back)
            else:
                finished.set_result(None)

        t0 = time.process_time()
        submit(back)
        await finished
        return time.process_time() - t0
    return probe


def harness(paths: Paths) -> Probe:
    """hot_path's FakeTransport.write and the loop's turn that hands the connection its next request."""
    class Idle:
        def data_received(self, data: bytes) -> None: ...

    transport = FakeTransport(paths.loop, {"left": 1 << 60, "done": 0, "total": -1, "future": None}, paths.request)
    transport.protocol = Idle()

    async def probe(n: int) -> float:
        spent, write = 0.0, transport.write
        for size in blocks(n):
            t0 = time.perf_counter()
            for _ in range(size):
                write(b"")
            await drain()
            spent += time.perf_counter() - t0
        return spent
    return probe


class OurStages:
    """Each stage of our request path alone; `batch`: the rows of the closed loop's batches."""

    def __init__(self, paths: Paths, batch: int) -> None:
        self.paths, self.batch = paths, batch
        loop, servable, sig = paths.loop, paths.servable, paths.sig
        self.headers = {b"content-type": b"application/json"}  # what the connection keeps of the request's
        self.request = Request("POST", PATH, "", self.headers, paths.body, new_request_id())
        self.token_request = Request("POST", PATH, "", {**self.headers, b"authorization": TOKEN.encode()},
                                     paths.body, new_request_id())
        self.x1 = np.asarray([paths.row], np.float32)
        self.inputs = {sig.sole_input().name: self.x1}  # type: ignore[union-attr]
        self.outputs = servable.run("predict", self.inputs, sig.name)
        self.done = loop.create_future()
        self.done.set_result(self.outputs)
        self.response = Response(200, b'{"predictions":[0.5]}')
        self.adapter = TfServingRest(paths.manager, Answered(self.done), 30)  # type: ignore[arg-type]
        self.routes: dict[str, RestApi] = {}
        for key, auth in (("plain", None), ("token", TokenAuth(TOKEN))):
            api = self.routes[key] = RestApi(paths.manager, paths.pipeline, timeout_s=30,
                                             default_model=lambda: "xgb", auth=auth)
            api.tfserving = lambda r: self.response  # type: ignore[assignment,method-assign]
        # The connection with the request handed to nobody; one that writes; one that hands answers back.
        self.parse_conn = self.connection(paths.access_log)
        self.parse_conn._dispatch = lambda slot, request: None  # type: ignore[method-assign]
        self.write_conn = self.connection(paths.access_log)
        self.back_conn = self.connection(None)
        self.back_conn._complete = lambda slot, response: None  # type: ignore[method-assign]
        self.whole_conns = [self.connection(paths.access_log) for _ in range(BLOCK)]
        self.answer_conn = self.connection(paths.access_log)
        # The model's queue is timed in submit-only mode (`measure`); the per-batch stages on a queue of
        # the same options whose model answers at once.
        self.predictions = {k: np.repeat(v, batch, axis=0) for k, v in self.outputs.items()}
        self.stage_queue = BatchQueue(lambda inputs: self.predictions, paths.runtime.batching,
                                      paths.runtime.executor, paths.queue.name,
                                      on_batch=VersionStats().batch_observer(sig.name))
        self.decode_call = self.adapter_call()
        self.encode_call = self.observed_call()
        self.deferred = answer_later(self.encode_call, self.done, PREDICT)
        self.answer = self.deferred.finish(self.done, self.deferred.context)
        self.x_batch = np.repeat(self.x1, batch, axis=0)
        self.handoff = handoff(self._handoff)
        self.predict1 = predict(lambda: servable.run("predict", self.inputs, sig.name), 1)
        batch_inputs = {name: self.x_batch for name in self.inputs}
        self.predict = predict(lambda: servable.run("predict", batch_inputs, sig.name), batch)
        self.harness = harness(paths)

    def connection(self, access_log: AccessLog | None) -> HttpConnection:
        conn = HttpConnection(self.paths.api, HttpLimits(), set(), self.paths.wheel, access_log=access_log)
        conn.connection_made(NullTransport())  # type: ignore[arg-type]
        return conn

    def adapter_call(self) -> Call:
        """A Call as TF Serving's REST adapter makes it of this request."""
        request = Request("POST", PATH, "", self.headers, self.paths.body, new_request_id())
        self.adapter(request)
        return request.call  # type: ignore[no-any-return]

    def observed_call(self) -> Call:
        """A Call as the pipeline leaves it once its batch computed (what the observers and the encoder read)."""
        call = self.adapter_call()
        call.servable, call.signature, call.inputs, call.rows = self.paths.servable, self.paths.sig, self.inputs, 1
        call.observers = self.paths.pipeline.observers
        call.received = call.dispatched = call.computed = time.perf_counter()
        call.context.row_format = True
        return call

    def fill(self) -> None:
        """A batch's requests in the stage queue, none scheduled."""
        queue = self.stage_queue
        queue.placement.inline = True
        queue.placement.inline_windows = 0  # no re-probe on the workers: its model is a stub
        queue._inline_pending = True
        for _ in range(self.batch):
            queue.submit(self.inputs, time.monotonic() + 30, NoTiming())

    def _handoff(self, back: Callable[[Any], None]) -> None:  # BatchQueue._dispatch's two lines
        loop, outputs = self.paths.loop, self.outputs
        job = self.paths.runtime.executor.submit(_timed, lambda inputs: outputs, self.inputs, SYSTEM_CLOCK)
        job.add_done_callback(lambda j: loop.call_soon_threadsafe(back, j))

    async def parse(self, n: int) -> float:
        conn, data, spent = self.parse_conn, self.paths.request, 0.0
        for size in blocks(n):
            t0 = time.perf_counter()
            for _ in range(size):
                conn.data_received(data)
            spent += time.perf_counter() - t0
            conn.pending.clear()
        return spent

    async def route(self, n: int) -> float:
        api, request = self.routes["plain"], self.request
        t0 = time.perf_counter()
        for _ in range(n):
            api(request)
        return time.perf_counter() - t0

    async def route_token(self, n: int) -> float:
        api, request = self.routes["token"], self.token_request
        t0 = time.perf_counter()
        for _ in range(n):
            api(request)
        return time.perf_counter() - t0

    async def call(self, n: int) -> float:
        adapter, request = self.adapter, self.request
        t0 = time.perf_counter()
        for _ in range(n):
            adapter(request)
        return time.perf_counter() - t0

    async def lookup(self, n: int) -> float:
        get, headers = self.paths.manager.get, self.headers
        t0 = time.perf_counter()
        for _ in range(n):
            get("xgb", None, None, headers).refusal()
        return time.perf_counter() - t0

    async def decode(self, n: int) -> float:
        call, servable = self.decode_call, self.paths.servable
        decode = call.decode
        t0 = time.perf_counter()
        for _ in range(n):
            decode(call, servable)
        return time.perf_counter() - t0

    async def validate(self, n: int) -> float:
        servable, sig, inputs = self.paths.servable, self.paths.sig, self.inputs
        check = servable.processor.validate
        t0 = time.perf_counter()
        for _ in range(n):
            validate_inputs(servable, sig, inputs)
            check(inputs, sig)
        return time.perf_counter() - t0

    async def infer(self, n: int) -> float:
        """Pipeline.infer whole, into the model's own queue (submit only)."""
        infer, queue, spent = self.paths.pipeline.infer, self.paths.queue, 0.0
        for size in blocks(n):
            calls = [self.adapter_call() for _ in range(size)]
            t0 = time.perf_counter()
            for call in calls:
                infer(call)
            spent += time.perf_counter() - t0
            reset(queue)
        return spent

    async def submit(self, n: int) -> float:
        queue, inputs, spent = self.paths.queue, self.inputs, 0.0
        submit = queue.submit
        timings = [self.observed_call() for _ in range(BLOCK)]
        for size in blocks(n):
            t0 = time.perf_counter()
            for timing in timings[:size]:
                submit(inputs, 1e18, timing)
            spent += time.perf_counter() - t0
            reset(queue)
        return spent

    async def assemble(self, n: int) -> float:
        queue, batches, spent = self.stage_queue, max(1, n // self.batch), 0.0
        for _ in range(batches):
            self.fill()
            t0 = time.perf_counter()
            batch, rows = queue._take()
            queue._assemble(batch, rows)
            spent += time.perf_counter() - t0
        return per_batch(spent, n, batches, self.batch)

    async def inline(self, n: int) -> float:
        """`_run_inline` on one batch: take, assemble, the stub model, placement and batch statistics, slice,
        deliver."""
        queue, batches, spent = self.stage_queue, max(1, n // self.batch), 0.0
        for _ in range(batches):
            self.fill()
            t0 = time.perf_counter()
            queue._run_inline()
            spent += time.perf_counter() - t0
        return per_batch(spent, n, batches, self.batch)

    async def complete(self, n: int) -> float:
        queue, batches, spent = self.stage_queue, max(1, n // self.batch), 0.0
        for _ in range(batches):
            self.fill()
            batch, rows = queue._take()
            t0 = time.perf_counter()
            queue._complete(batch, rows, self.predictions, None)
            spent += time.perf_counter() - t0
        return per_batch(spent, n, batches, self.batch)

    async def observers(self, n: int) -> float:
        done, spent = self.done, 0.0
        for size in blocks(n):
            calls = [self.observed_call() for _ in range(size)]
            t0 = time.perf_counter()
            for call in calls:
                call.finished(done)
            await drain()  # _tell: RequestMetrics into the version's record
            spent += time.perf_counter() - t0
        return spent

    async def back(self, n: int) -> float:
        """`_defer` (the deadline wheel, the done callback), the result set, the loop running `_Slot.done`."""
        conn, loop, response, outputs, spent = self.back_conn, self.paths.loop, self.response, self.outputs, 0.0
        for size in blocks(n):
            items = [(_Slot(conn, new_request_id()), Deferred(loop.create_future(), lambda f, c: response, None,
                                                              time.monotonic() + 30, lambda: response))
                     for _ in range(size)]
            t0 = time.perf_counter()
            for slot, deferred in items:
                conn._defer(slot, deferred)
                deferred.future.set_result(outputs)
            await drain()
            spent += time.perf_counter() - t0
        return spent

    async def request_side(self, n: int) -> float:
        """The request side whole, as the loop calls it: `data_received` on BLOCK connections in turn, the real
        routes, into the model's queue (submit only); the requests dropped between blocks."""
        conns, data, queue, spent = self.whole_conns, self.paths.request, self.paths.queue, 0.0
        for size in blocks(n):
            t0 = time.perf_counter()
            for conn in conns[:size]:
                conn.data_received(data)
            spent += time.perf_counter() - t0
            for conn in conns[:size]:
                for slot in conn.pending:
                    slot.drop()  # its future cancelled: no cycle of slot, Deferred and future is left to the GC
                conn.pending.clear()
                conn.dispatched = 0  # as if answered: the next request is handed over, not held back
            reset(queue)
            await drain()
        return spent

    async def answer_side(self, n: int) -> float:
        """The answer side whole, as the loop runs it once the outputs are set: `_defer`, the result, the loop
        running `_Slot.done`: `adapters._answer` (encode), `_complete` (bytes, access log, write)."""
        conn, loop, outputs, request, spent = self.answer_conn, self.paths.loop, self.outputs, self.request, 0.0
        for size in blocks(n):
            items = []
            for _ in range(size):
                slot = _Slot(conn, new_request_id())
                slot.request, slot.started, slot.bytes_in = request, time.perf_counter(), len(self.paths.body)
                items.append((slot, answer_later(self.observed_call(), loop.create_future(), PREDICT)))
            conn.pending.extend(slot for slot, _ in items)
            t0 = time.perf_counter()
            for slot, deferred in items:
                conn._defer(slot, deferred)
                deferred.future.set_result(outputs)
            await drain()
            spent += time.perf_counter() - t0
        return spent

    async def encode(self, n: int) -> float:
        done, finish, context = self.done, self.deferred.finish, self.deferred.context
        t0 = time.perf_counter()
        for _ in range(n):
            finish(done, context)
        return time.perf_counter() - t0

    async def write(self, n: int) -> float:
        conn, answer, request, size_in, spent = self.write_conn, self.answer, self.request, len(self.paths.body), 0.0
        for size in blocks(n):
            slots = [_Slot(conn, new_request_id()) for _ in range(size)]
            for slot in slots:  # as the parse leaves it with the access log on
                slot.request, slot.started, slot.bytes_in = request, time.perf_counter(), size_in
            conn.pending.extend(slots)
            t0 = time.perf_counter()
            for slot in slots:
                conn._complete(slot, answer)
            spent += time.perf_counter() - t0
        return spent


def reset(queue: BatchQueue) -> None:
    """Empty a queue timed in submit-only mode."""
    queue.queue.clear()
    queue.waiting = queue.rows_queued = 0


class FloorStages:
    """The same stages of minimal_path.py, its own code where it has a function for them, else its lines."""

    def __init__(self, paths: Paths, batch: int) -> None:
        self.paths, self.batch = paths, batch
        mp, loop = paths.mp, paths.loop
        self.x1 = np.asarray([paths.row], np.float32)
        self.out = paths.booster.inplace_predict(self.x1)
        self.batch_out = paths.booster.inplace_predict(np.repeat(self.x1, batch, axis=0))
        self.parse_conn = mp.Connection(paths.batcher)
        self.parse_conn.on_message_complete = lambda: None  # the request handed to nobody
        self.parse_conn.parser = httptools.HttpRequestParser(self.parse_conn)  # it reads its callbacks when made
        self.parse_conn.connection_made(NullTransport())
        self.reply_conn = mp.Connection(paths.batcher)
        self.reply_conn.connection_made(NullTransport())
        self.back_conn = mp.Connection(paths.batcher)
        self.back_conn.reply = lambda out: None  # the answer's encode and write have rows of their own
        self.busy = mp.Batcher(loop, paths.booster)  # submit only: busy, it never dispatches
        self.busy.busy = True
        self.stub = mp.Batcher(loop, paths.booster)  # assembly and finish without a thread
        self.stub.pool = StubPool()
        self.handoff = handoff(self._handoff)
        self.predict1 = predict(lambda: paths.booster.inplace_predict(self.x1), 1)
        x_batch = np.repeat(self.x1, batch, axis=0)
        self.predict = predict(lambda: paths.booster.inplace_predict(x_batch), batch)
        self.harness = harness(paths)

    def _handoff(self, back: Callable[[Any], None]) -> None:  # Batcher._dispatch's two lines
        loop, out = self.paths.loop, self.out
        job = self.busy.pool.submit(lambda batch: out, self.x1)
        job.add_done_callback(lambda j: loop.call_soon_threadsafe(back, j))

    async def parse(self, n: int) -> float:
        conn, data = self.parse_conn, self.paths.floor_request
        t0 = time.perf_counter()
        for _ in range(n):
            conn.data_received(data)
        return time.perf_counter() - t0

    async def decode(self, n: int) -> float:
        chunks = [self.paths.body]  # the connection's body list
        t0 = time.perf_counter()
        for _ in range(n):  # on_message_complete, its first two lines
            request = orjson.loads(b"".join(chunks))
            np.asarray(request["instances"], dtype=np.float32)
        return time.perf_counter() - t0

    async def submit(self, n: int) -> float:
        batcher, create, x1, spent = self.busy, self.paths.loop.create_future, self.x1, 0.0
        submit = batcher.submit
        for size in blocks(n):
            t0 = time.perf_counter()
            for _ in range(size):  # on_message_complete: the future and the submit
                future = create()
                submit(x1, future)
            spent += time.perf_counter() - t0
            batcher.queue.clear()
        return spent

    async def assemble(self, n: int) -> float:
        batcher, create, batches, spent = self.stub, self.paths.loop.create_future, max(1, n // self.batch), 0.0
        for _ in range(batches):
            batcher.queue = [(self.x1, create()) for _ in range(self.batch)]
            t0 = time.perf_counter()
            batcher._dispatch()
            spent += time.perf_counter() - t0
        return per_batch(spent, n, batches, self.batch)

    async def complete(self, n: int) -> float:
        batcher, create, batches, spent = self.stub, self.paths.loop.create_future, max(1, n // self.batch), 0.0
        job = StubJob(self.batch_out)
        for _ in range(batches):
            items = [(self.x1, create()) for _ in range(self.batch)]
            batcher.busy = True
            t0 = time.perf_counter()
            batcher._finish(items, job)
            spent += time.perf_counter() - t0
        return per_batch(spent, n, batches, self.batch)

    async def back(self, n: int) -> float:
        reply, create, out, spent = self.back_conn.reply, self.paths.loop.create_future, self.out, 0.0
        for size in blocks(n):
            futures = [create() for _ in range(size)]
            t0 = time.perf_counter()
            for future in futures:  # on_message_complete's done callback, _finish's set_result
                future.add_done_callback(lambda f: reply(f.result()))
                future.set_result(out)
            await drain()
            spent += time.perf_counter() - t0
        return spent

    async def encode(self, n: int) -> float:
        out, option = self.out, orjson.OPT_SERIALIZE_NUMPY
        t0 = time.perf_counter()
        for _ in range(n):  # reply, its first line
            orjson.dumps({"predictions": out}, option=option)
        return time.perf_counter() - t0

    async def reply(self, n: int) -> float:
        reply, out = self.reply_conn.reply, self.out
        t0 = time.perf_counter()
        for _ in range(n):
            reply(out)
        return time.perf_counter() - t0


def rows(ob: int, fb: int) -> list[Row]:
    """The table's stages; `ob`, `fb`: the rows of ours' and the floor's batches as the per-batch stages time them."""
    return [
        Row("HTTP parse + request object", "parse", "parse",
            "`HttpConnection.data_received`: httptools and its callbacks, request id, `_Slot`, URL, `Request`; "
            "handed to nobody / `Connection.data_received`, its `on_message_complete` a no-op"),
        Row("route + token check (no token set)", "route", None,
            "`RestApi.__call__`, the TF Serving adapter answering at once"),
        Row("path parse + Call", "call", None,
            "`TfServingRest.__call__`: cached path parse, deadline, `Call`, `TfRestState`, `answer_later`'s "
            "`Deferred`; the pipeline answering at once"),
        Row("model lookup", "lookup", None, "`ModelManager.get` + `Servable.refusal`"),
        Row("decode (JSON + arrays)", "decode", "decode",
            "`Call.decode`: `jsonutil.loads`, `signature_name`, `decode_predict` / `orjson.loads(b''.join(body))` "
            "+ `np.asarray(..., float32)`"),
        Row("validation", "validate", None, "`validate_inputs` + `processor.validate`"),
        Row("pipeline + data plane glue", "infer-lookup-decode-validate-submit", None,
            "a difference: `Pipeline.infer` whole (into the queue, submit only) less the lookup, decode, "
            "validation and submit rows: observer clock and list, output check, `rows_of`, rate-limit check"),
        Row("queue submit", "submit", "submit",
            "`BatchQueue.submit`: future, `_Request`, shape key, `_schedule` / `create_future` + "
            "`Batcher.submit`"),
        Row(f"batch assembly (batches of {ob} / {fb} rows)", "assemble", "assemble",
            "`BatchQueue._take` + `_assemble` (concatenate) / `Batcher._dispatch` with a pool that runs nothing; "
            "per batch, divided by its rows"),
        Row("inline batch loop", "inline-assemble-complete", None,
            "a difference: `BatchQueue._run_inline` on one batch with a stub model, less the assembly and "
            "slicing rows: placement windows, batch statistics, the stub's call"),
        Row("thread hand-off", "handoff", "handoff",
            "executor submit + `call_soon_threadsafe` back, a no-op on the worker (ours through `_timed`), "
            "process CPU a round trip, counted for the closed loop's batches that ran on a worker", handoff=True),
        Row(f"predict (batches of {ob} / {fb} rows)", "predict", "predict",
            "`Servable.run` (processor `predict`: `inplace_predict` + `np.asarray`) / `Booster.inplace_predict`; "
            "per batch, divided by its rows"),
        Row("slicing outputs + deliver", "complete", "complete",
            "`BatchQueue._complete`: check, `slice_outputs`, `set_result` / `Batcher._finish`; per batch, divided "
            "by its rows"),
        Row("observers", "observers", None,
            "`Call.finished` (`notify`: clock, `Timings`, `call_soon`) + the loop running `_tell` -> "
            "`RequestMetrics.finished` -> `VersionStats.finished`"),
        Row("answer hand-back", "back", "back",
            "`_defer` (deadline wheel, done callback) + `set_result` + the loop running `_Slot.done` "
            "(`_released`) / the done callback + `set_result` + the loop running it"),
        Row("encode answer", "encode", "encode",
            "`Deferred.finish` = `adapters._answer` -> `encode_predict` + the version header / `orjson.dumps`"),
        Row("response bytes + access-log decision + write", "write", "reply-encode",
            "`HttpConnection._complete`: status line, headers, `AccessLog.http` (default selection), `_flush` / "
            "a difference: `Connection.reply` less its encode"),
        Row("closed-loop harness (neither server's)", "harness", "harness",
            "hot_path's `FakeTransport.write` + the loop's turn to the next `data_received`; the same code both "
            "sides, timed twice"),
        Row("route + token check (token set)", "route_token", None,
            "the route row with `--token` set and sent (plain `Authorization`)", in_total=False),
        Row("predict, batch 1", "predict1", "predict1", "one row alone", in_total=False),
    ]


def probes_of(key: str | None) -> list[str]:
    return key.split("-") if key else []


Probes = dict[tuple[str, str], float]


def probe_order(table_rows: list[Row], grouped: bool) -> list[tuple[str, str]]:
    """Every (side, probe) the rows need (only the total's, `grouped`), a stage's ours then the floor's."""
    order: list[tuple[str, str]] = []
    for row in table_rows:
        if row.in_total or not grouped:
            for side, key in (("ours", row.ours), ("floor", row.floor)):
                order += [(side, p) for p in probes_of(key) if (side, p) not in order]
    return order


async def stage_pass(paths: Paths, stages: dict[str, Any], order: list[tuple[str, str]], calls: int,
                     size: int | None, best: Probes) -> None:
    """One repeat of every probe in `order`, µs per request kept in `best` where lower. `size` None: each probe
    `calls` requests at once (the hand-off half), as hot as a stage alone gets; else `size` requests of each
    probe in turn, `calls // size` rounds, as a closed loop runs its stages 64 at a time."""
    queue = paths.queue
    queue.in_flight = 1 << 30  # the model's queue: submit only, never dispatched (as hot_path.py times it)
    queue._inline_pending = True  # nor run inline
    spent = dict.fromkeys(order, 0.0)
    rounds = 1 if size is None else calls // size
    for _ in range(rounds):
        for side, name in order:
            n = size or (calls // 2 if name == "handoff" else calls)
            spent[side, name] += await getattr(stages[side], name)(n) / (n * rounds)
    for key, seconds in spent.items():
        best[key] = min(best.get(key, float("inf")), seconds * 1e6)
    queue.in_flight, queue._inline_pending = 0, False


def cost(side: str, key: str | None, best: Probes) -> float | None:
    """A probe's µs per request, or a difference `a-b-c` of probes."""
    if key is None:
        return None
    first, *rest = probes_of(key)
    return best[side, first] - sum(best[side, k] for k in rest)


def costs(best: Probes, run: dict[str, Loop], batch: dict[str, int],
          in_total: bool = False) -> list[tuple[Row, dict[str, float | None]]]:
    """Each row's µs per request by side (only the total's rows: `in_total`); the hand-off's round trip counted
    for the loop's batches that ran on a worker."""
    out = []
    for row in rows(batch["ours"], batch["floor"]):
        if in_total and not row.in_total:
            continue
        value = {side: cost(side, key, best) for side, key in (("ours", row.ours), ("floor", row.floor))}
        if row.handoff:
            value = {side: (v or 0.0) * run[side].worker_batches / run[side].rows for side, v in value.items()}
        out.append((row, value))
    return out


def total(best: Probes, run: dict[str, Loop], batch: dict[str, int], side: str) -> float:
    return sum(value[side] or 0.0 for _, value in costs(best, run, batch, in_total=True))


def table(best: Probes, grouped: Probes, loops: dict[str, list[Loop]], stubbed: dict[str, list[Loop]],
          batch: dict[str, int], requests: int) -> list[str]:
    """The Markdown table: the stages alone and 64 at a time, their totals, the closed loops (the best run's
    batches are the stages')."""
    def text(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    def line(label: str, o: float | None, f: float | None, together: tuple[str, str] = ("", ""), how: str = "") -> str:
        return f"| {label} | {text(o)} | {text(f)} | {text((o or 0.0) - (f or 0.0))} | {' | '.join(together)} | {how} |"

    sides = ("ours", "floor")
    run = {side: cheapest(loops[side]) for side in sides}
    stub = {side: cheapest(stubbed[side]) for side in sides}
    lines = ["| stage | ours µs | floor µs | ours - floor | ours, 64 at a time | floor, 64 at a time | what is timed "
             "(ours / floor) |", "|---|---|---|---|---|---|---|"]
    in_turn = {row.stage: value for row, value in costs(grouped, run, batch, in_total=True)}
    aside: list[str] = []
    for row, value in costs(best, run, batch):
        how = row.how
        if row.handoff:
            how += f" (a round trip: ours {best['ours', 'handoff']:.1f}, floor {best['floor', 'handoff']:.1f})"
        turn = in_turn.get(row.stage)
        shown = (text(turn["ours"]), text(turn["floor"])) if turn is not None else ("", "")
        (lines if row.in_total else aside).append(line(row.stage, value["ours"], value["floor"], shown, how))
    hot = {side: total(best, run, batch, side) for side in sides}
    together = {side: total(grouped, run, batch, side) for side in sides}
    # Without predict; the hand-off counted for the batches that ran on a worker in the stubbed loop.
    less = {side: hot[side] - best[side, "predict"] + best[side, "handoff"] * (
        stub[side].worker_batches / stub[side].rows - run[side].worker_batches / run[side].rows) for side in sides}
    lines += [
        line("**total of the rows**", hot["ours"], hot["floor"], (text(together["ours"]), text(together["floor"])),
             "64 at a time: each probe run for 64 requests, then the next, as the closed loop runs its stages"),
        line("**closed loop, 64 in flight** (process CPU)", run["ours"].cpu_us, run["floor"].cpu_us,
             how=f"hot_path.py's `closed_loop`, {requests} requests, best of {len(loops['ours'])}; ours \"as served, "
             f"access log json (default: failures, slow, 1% sample)\"; its batches: ours {run['ours'].batches} "
             f"({run['ours'].worker_batches} on a worker), floor {run['floor'].batches} (all on its worker)"),
        line("closed loop - total", run["ours"].cpu_us - hot["ours"], run["floor"].cpu_us - hot["floor"],
             (text(run["ours"].cpu_us - together["ours"]), text(run["floor"].cpu_us - together["floor"]))),
        line("predict in the closed loop", run["ours"].predict_us, run["floor"].predict_us,
             how="the CPU time of the loop's predict calls (on the thread that ran them) a request, beside the "
             "predict row's: the same batches alone"),
        line("closed loop, models stubbed (answer at once)", stub["ours"].cpu_us, stub["floor"].cpu_us,
             how=f"the same loop, best of {len(stubbed['ours'])}, batches: ours {stub['ours'].batches} "
             f"({stub['ours'].worker_batches} on a worker), floor {stub['floor'].batches}"),
        line("total of the rows less predict", less["ours"], less["floor"],
             how="the hand-off counted for the stubbed loop's worker batches"),
        line("stubbed closed loop - total less predict", stub["ours"].cpu_us - less["ours"],
             stub["floor"].cpu_us - less["floor"]),
    ]
    return lines + aside


def split_table(run: Loop, parts: list[float], best: Probes, grouped: Probes) -> list[str]:
    """Ours' closed loop by part, beside its stages' probes (alone, 64 at a time) and its code called whole."""
    lines = ["| part of ours' closed loop, model stubbed, batches inline | in the loop µs | its stages alone | "
             "64 at a time | called whole, outside the loop | stages (probes) |", "|---|---|---|---|---|---|"]
    for (label, _, probes, whole), spent in zip(PARTS, parts, strict=True):
        alone = sum(best["ours", p] for p in probes)
        together = sum(grouped["ours", p] for p in probes)
        called = sum(best["ours", p] for p in whole)
        lines.append(f"| {label} | {spent:.2f} | {alone:.2f} | {together:.2f} | {called:.2f} | "
                     f"{', '.join(probes)} / {', '.join(whole)} |")
    lines += [f"| the rest: the loop's own turns, other threads, the clocks | "
              f"{run.cpu_us - sum(parts):.2f} | | | | |",
              f"| **that closed loop, clocked** (process CPU; {run}) | **{run.cpu_us:.2f}** | | | | |"]
    return lines


def runs_text(label: str, loops: dict[str, list[Loop]]) -> str:
    return (f"{label}: ours " + ", ".join(map(str, loops["ours"])) + "; floor " + ", ".join(map(str, loops["floor"]))
            + ".")


async def main(args: argparse.Namespace) -> None:
    if not (PEERS / "minimal_path.py").exists():
        raise SystemExit(f"the floor is needed: {PEERS / 'minimal_path.py'}")
    paths = Paths()
    await paths.build(Path(tempfile.mkdtemp(prefix="budget-")))
    gc.collect()
    gc.freeze()  # as the server does once its models are loaded (serving/app.py)
    loops: dict[str, list[Loop]] = {"ours": [], "floor": []}
    stubbed: dict[str, list[Loop]] = {"ours": [], "floor": []}

    async def closed_loops() -> None:
        """One run of each closed loop, then of each with the models stubbed."""
        for runs, stub in ((loops, False), (stubbed, True)):
            with paths.stubbed_models() if stub else contextlib.nullcontext():
                ours, floor = await paths.loop_pair(args.requests)
            runs["ours"].append(ours)
            runs["floor"].append(floor)
            print(f"closed loop{', models stubbed' if stub else ''}: ours {ours}, floor {floor}", flush=True)

    # The machine's speed drifts by as much as 2x over minutes: the closed loops run at the start, the middle and
    # the end of the stage repeats, so that their best and the stages' minima come from the same stretch.
    await closed_loops()
    batch = {side: runs[0].batch for side, runs in loops.items()}
    stages = {"ours": OurStages(paths, batch["ours"]), "floor": FloorStages(paths, batch["floor"])}
    table_rows = rows(batch["ours"], batch["floor"])
    hot = probe_order(table_rows, False) + [("ours", name) for name in WHOLE]
    grouped = probe_order(table_rows, True)
    best: Probes = {}
    together: Probes = {}
    await stage_pass(paths, stages, hot, min(args.calls, 1000), None, {})  # warm: caches, numpy's first calls
    for repeat in range(args.repeats):
        await stage_pass(paths, stages, hot, args.calls, None, best)
        await stage_pass(paths, stages, grouped, args.calls, CONCURRENCY, together)
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        if repeat in (args.repeats // 2, args.repeats - 1):
            await closed_loops()
    split_run, parts = await paths.split_loop(args.requests)
    if paths.access_log is not None:
        paths.access_log.close()
    lines = table(best, together, loops, stubbed, batch, args.requests)
    split = split_table(split_run, parts, best, together)
    print("\n".join(lines + [""] + split))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    command = f"python benchmarks/budget.py --calls {args.calls} --repeats {args.repeats} --requests {args.requests}"
    text = [f"# The request's cost budget, ours beside the floor's, {stamp} UTC", "",
            f"Command: `{command}` (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} cores).", "",
            "xgb (100 trees x 32 features), one batch-1 `POST /v1/models/xgb:predict`, µs per request: each stage "
            f"alone, min of {args.repeats} repeats of {args.calls} requests (the hand-off {args.calls // 2} round "
            f"trips, predict {args.calls // 10} calls), ours and the floor's (`../shared/peers/minimal_path.py`) "
            "one after the other; \"64 at a time\": the same, each probe run for 64 requests and then the next. A "
            "per-batch stage is timed on a batch of the first closed loop's mean size (ours "
            f"{batch['ours']} rows, floor {batch['floor']}) and divided by its rows. The closed loops ran at the "
            "start, the middle and the end of the stage repeats.", "", *lines, "",
            runs_text("Closed-loop runs", loops), "", runs_text("Closed-loop runs, models stubbed", stubbed), "",
            "Ours' closed loop once more, its model stubbed and its batches held on the loop thread, the calls of "
            "each part clocked (perf_counter around "
            "each; about 0.3 µs a call more), beside the probes of the stages each part runs, and the part's code "
            "called whole outside the loop:", "", *split, ""]
    args.out.mkdir(parents=True, exist_ok=True)
    path = fresh(args.out, "budget", stamp)
    path.write_text("\n".join(text))
    print(f"wrote {path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10000, help="requests per repeat of a stage (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--requests", type=int, default=20000, help="requests per closed loop (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    uvloop.run(main(ap.parse_args()))
