"""The cost budget of the path a request takes as served (the express lanes), stage by stage: the floor's HTTP
path, ours over HTTP (TF Serving REST), and ours over gRPC (TF Serving Predict and KServe V2 ModelInfer, native
transport), side by side.

budget.py times the general path's stages one by one; since the express lanes (serving/protocols/express.py) a
common request no longer takes most of them. Here each path runs its closed loop (hot_path.py's for HTTP,
grpc_budget.py's for gRPC: 64 requests in flight on fake transports, batch-1 xgb, the metrics observer and the
default access log on) with the functions of each stage clocked: every clocked call adds its time to its own
function less the clocked calls inside it (self time), and a stage is the sum of its functions. What no clocked
function ran (the loop's own turns, the fake client) is "the rest": the clocked loop's process CPU less the
stages. Ours' batches are held on the loop thread for this run (a worker thread would share the clocks' stack):
the clocks then read the loop thread's time. The floor's predict runs on its worker thread, clocked by thread CPU
time; its loop-thread stages by wall time, which includes its waits for the GIL while the worker predicts.
Each clocked call costs about 0.2-0.3 µs more: the table also gives the loops unclocked, as served (ours'
batches where the queue puts them), best of --repeats, in process CPU µs per request.

    python benchmarks/lane_budget.py [--requests 20000] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # read by OpenMP when xgboost loads, below (not set for a test importing this)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import collections  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402
import uvloop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a script run from a checkout

from benchmarks.grpc_budget import H2Transport, build, h2_loop, infer_request, predict_request  # noqa: E402
from benchmarks.hot_path import FakeTransport, closed_loop  # noqa: E402
from benchmarks.report import write_text  # noqa: E402
from benchmarks.xgb_http import PEERS, prepare_model  # noqa: E402

FLOOR = PEERS / "minimal_path.py"
from processors.xgboost_processor import XGBoostProcessor  # noqa: E402
from serving.codecs import infer_wire  # noqa: E402
from serving.core.batching.outbox import Outbox  # noqa: E402
from serving.core.batching.queue import BatchQueue  # noqa: E402
from serving.core.stats import VersionStats  # noqa: E402
from serving.ops.accesslog import AccessLog  # noqa: E402
from serving.protocols import express  # noqa: E402
from serving.protocols.kserve import rpc as kserve_rpc  # noqa: E402
from serving.protocols.router import RestApi  # noqa: E402
from serving.protocols.tfserving import rpc as tf_rpc  # noqa: E402
from serving.settings import Settings  # noqa: E402
from serving.transport.h2.connection import H2Connection  # noqa: E402
from serving.transport.h2.headers import HeaderDecoder  # noqa: E402
from serving.transport.http import DeadlineWheel, HttpConnection, HttpLimits, _Slot  # noqa: E402
from serving.transport.rpc.native import Context, NativeServer, new_native_server  # noqa: E402

TF_PREDICT = "/tensorflow.serving.PredictionService/Predict"
PATHS = ("floor", "http", "grpc_tf", "grpc_v2")
TITLES = {"floor": "floor (minimal_path, HTTP)", "http": "ours, HTTP TF REST", "grpc_tf": "ours, gRPC TF Predict",
          "grpc_v2": "ours, gRPC V2 ModelInfer"}

#: A stage: (its name, what it does, and for each path the functions whose self time it sums as (owner, attribute):
#: an owner is a class or a module; "mp." names minimal_path's).
Stage = tuple[str, dict[str, list[tuple[Any, str]]]]
STAGES: list[Stage] = [
    ("read: the connection's bytes to a request (HTTP/1.1: httptools and its callbacks, the slot; HTTP/2: frames, "
     "windows, stream state, the call's body)", {
        "floor": [("mp.Connection", "data_received")],
        "http": [(HttpConnection, "data_received")],
        "grpc_tf": [(H2Connection, "data_received"), (Context, "receive"), (Context, "_unary_request")],
        "grpc_v2": [(H2Connection, "data_received"), (Context, "receive"), (Context, "_unary_request")]}),
    ("headers: HPACK decode (the header-block cache) and the call's open (method, Context, deadline)", {
        "grpc_tf": [(HeaderDecoder, "request"), (NativeServer, "begin")],
        "grpc_v2": [(HeaderDecoder, "request"), (NativeServer, "begin")]}),
    ("lane: route, decode the body to an array, checks", {
        "floor": [("mp.Connection", "on_message_complete")],
        "http": [(express.RestExpress, "take"), (express.TfRestLane, "decode")],
        "grpc_tf": [(tf_rpc.PredictionService, "express_raw_Predict"), (tf_rpc, "read_predict")],
        "grpc_v2": [(kserve_rpc.InferenceService, "express_raw_ModelInfer"), (kserve_rpc.InferenceService, "_take"),
                    (infer_wire.Layouts, "find")]}),
    ("queue: enqueue (future, request, shape key, schedule)", {
        "floor": [("mp.Batcher", "submit")],
        "http": [(BatchQueue, "enqueue"), (HttpConnection, "defer_express")],
        "grpc_tf": [(BatchQueue, "enqueue"), (Context, "take_express")],
        "grpc_v2": [(BatchQueue, "enqueue"), (Context, "take_express")]}),
    ("batch: take, assemble (concatenate), placement, batch statistics; the floor: and its hand-off", {
        "floor": [("mp.Batcher", "_dispatch")],
        "http": [(BatchQueue, "_run_inline")],
        "grpc_tf": [(BatchQueue, "_run_inline")],
        "grpc_v2": [(BatchQueue, "_run_inline")]}),
    ("predict (the floor's: on its worker thread, thread CPU)", {
        "floor": [("mp.predict", "")],
        "http": [(XGBoostProcessor, "predict")],
        "grpc_tf": [(XGBoostProcessor, "predict")],
        "grpc_v2": [(XGBoostProcessor, "predict")]}),
    ("answers: encode (the batch's bodies at once; the floor encodes in its reply, next row)", {
        "http": [(express.TfRestLane, "bodies")],
        "grpc_tf": [("grpc_tf.bodies", "")],
        "grpc_v2": [("grpc_v2.bodies", "")]}),
    ("answers: each request's response (status, headers, access-log choice, frames) and its delivery; the "
     "floor: set_result, then orjson and the write", {
        "floor": [("mp.Batcher", "_finish"), ("mp.Connection", "reply")],
        "http": [(BatchQueue, "_complete"), (_Slot, "answer_batch")],
        "grpc_tf": [(BatchQueue, "_complete"), (Context, "answer_batch"), (H2Connection, "respond")],
        "grpc_v2": [(BatchQueue, "_complete"), (Context, "answer_batch"), (H2Connection, "respond")]}),
    ("statistics: the version's record (one update a batch)", {
        "http": [(VersionStats, "answered_batch")],
        "grpc_tf": [(VersionStats, "answered_batch")],
        "grpc_v2": [(VersionStats, "answered_batch")]}),
    ("writes: the held answers written (joined, handed to the transport)", {
        "http": [(Outbox, "release")],
        "grpc_tf": [(Outbox, "release"), (H2Connection, "_flush")],
        "grpc_v2": [(Outbox, "release"), (H2Connection, "_flush")]}),
    ("the fake client: the transport's write, which sends the connection's next request (not the server's)", {
        "floor": [(FakeTransport, "write")],
        "http": [(FakeTransport, "write")],
        "grpc_tf": [(H2Transport, "write")],
        "grpc_v2": [(H2Transport, "write")]}),
]


class Clocks:
    """Self time of clocked functions on one thread: each clocked call adds its wall time less its clocked
    callees' to its function."""

    def __init__(self) -> None:
        self.spent: collections.Counter[str] = collections.Counter()
        self.stack: list[float] = []

    def wrap(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        stack, spent, clock = self.stack, self.spent, time.perf_counter

        @functools.wraps(fn)
        def clocked(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                inner = stack.pop()
                elapsed = clock() - started
                spent[key] += elapsed - inner
                if stack:
                    stack[-1] += elapsed
        return clocked

    @contextmanager
    def installed(self, functions: list[tuple[Any, str, str]]) -> Iterator[None]:
        """(owner, attribute, key) each clocked under key while the block runs."""
        originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in functions]
        try:
            for owner, name, key in functions:
                clocked = self.wrap(key, getattr(owner, name))
                setattr(owner, name, staticmethod(clocked) if isinstance(owner.__dict__[name], staticmethod)
                        else clocked)
            yield
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)


class Metered:
    """The floor's booster: the thread CPU time of its predict calls (on its worker thread)."""

    def __init__(self, booster: Any) -> None:
        self.booster, self.cpu = booster, 0.0

    def inplace_predict(self, batch: Any, **options: Any) -> Any:
        started = time.thread_time()
        out = self.booster.inplace_predict(batch, **options)
        self.cpu += time.thread_time() - started
        return out


def key_of(owner: Any, name: str) -> str:
    return f"{getattr(owner, '__name__', owner)}.{name}"


class Bench:
    """The four paths, built once in process."""

    async def build(self, work: Path) -> None:
        repo, row = prepare_model(work)
        self.manager, self.pipeline = await build(repo)
        loop = self.loop = asyncio.get_running_loop()
        defaults = Settings()
        self.access_log = AccessLog.open(defaults.access_log, sample_rate=defaults.access_log_sample_rate,
                                         slow_ms=defaults.access_log_slow_ms, health=defaults.access_log_health,
                                         path=os.devnull)
        self.wheel = DeadlineWheel(loop)
        api = RestApi(self.manager, self.pipeline, timeout_s=30, default_model=lambda: "xgb")
        self.http = functools.partial(HttpConnection, api, HttpLimits(), set(), self.wheel, access_log=self.access_log)
        body = orjson.dumps({"instances": [row]})
        self.request = (b"POST /v1/models/xgb:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.floor_request = self.request.replace(b"/v1/models/xgb:predict", b"/")
        self.predict, self.infer = predict_request(row), infer_request(row)
        os.environ["ANCHOR_MODELS"] = str(work)
        self.mp: Any = None  # the floor's path needs ../shared/peers/minimal_path.py beside the checkout
        if FLOOR.exists():
            spec = importlib.util.spec_from_file_location("minimal_path", FLOOR)
            self.mp = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(self.mp)  # type: ignore[union-attr]
            import xgboost as xgb

            booster = xgb.Booster(model_file=str(repo / "1" / "model.json"))
            booster.set_param({"nthread": 1})  # as minimal_path's main
            self.batcher = self.mp.Batcher(loop, booster)
        servable = self.manager.get("xgb")
        self.queue = servable.queues[servable.signature("").name]

    def native(self) -> tuple[NativeServer, Any, Any]:
        """A native gRPC server of both services (made anew: its method table holds the servicers' bound methods,
        clocked or not as they are now)."""
        tf = tf_rpc.PredictionService(self.manager, self.pipeline, 30.0)
        v2 = kserve_rpc.InferenceService(self.manager, self.pipeline, 30.0, None, None)
        server = new_native_server([v2, tf], access_log=self.access_log)
        server.loop, server.wheel = self.loop, self.wheel
        return server, tf, v2

    def run(self, path: str, requests: int) -> Awaitable[float]:
        if path == "floor":
            return closed_loop(lambda: self.mp.Connection(self.batcher), self.floor_request, requests)
        if path == "http":
            return closed_loop(self.http, self.request, requests)
        server, _, _ = self.native()
        if path == "grpc_tf":
            return h2_loop(server, self.predict, requests, 64, False, TF_PREDICT)
        return h2_loop(server, self.infer, requests, 64, False)

    def owner(self, owner: Any) -> Any:
        if isinstance(owner, str) and owner.startswith("mp."):
            return getattr(self.mp, owner[3:])
        return owner

    async def clocked(self, path: str, requests: int) -> tuple[float, dict[str, float]]:
        """One clocked closed loop of `path`: its process CPU µs a request, and each stage's µs a request."""
        clocks = Clocks()
        functions = [(self.owner(owner), name, key_of(self.owner(owner), name))
                     for _, by_path in STAGES for owner, name in by_path.get(path, [])
                     if name and not (isinstance(owner, str) and not owner.startswith("mp."))]
        placement = self.queue.placement
        held = placement.limit_s, placement.inline
        placement.limit_s, placement.inline = 0.0, True  # held on the loop thread, never judged
        metered = None  # the floor's model call, timed by its own meter
        if path == "floor":
            booster = self.batcher.booster
            self.batcher.booster = metered = Metered(booster)
        try:
            with clocks.installed(functions):
                if path.startswith("grpc"):
                    server, tf, v2 = self.native()
                    service = tf if path == "grpc_tf" else v2
                    service.express.bodies = clocks.wrap(f"{path}.bodies", service.express.bodies)
                    message, method = (self.predict, TF_PREDICT) if path == "grpc_tf" else (
                        self.infer, "/inference.GRPCInferenceService/ModelInfer")
                    cpu = await h2_loop(server, message, requests, 64, False, method)
                else:
                    cpu = await self.run(path, requests)
        finally:
            placement.limit_s, placement.inline = held
            if metered is not None:
                self.batcher.booster = booster
        spent = {key: seconds / requests * 1e6 for key, seconds in clocks.spent.items()}
        if metered is not None:
            spent["mp.predict."] = metered.cpu / requests * 1e6
        return cpu, spent


def stage_of(spent: dict[str, float], bench: Bench, functions: list[tuple[Any, str]]) -> float:
    total = 0.0
    for owner, name in functions:
        if owner == "mp.predict":
            total += spent.get("mp.predict.", 0.0)
        elif isinstance(owner, str) and not owner.startswith("mp."):
            total += spent.get(f"{owner}", 0.0)
        else:
            total += spent.get(key_of(bench.owner(owner), name), 0.0)
    return total


async def main(args: argparse.Namespace) -> None:
    if not FLOOR.exists():
        raise SystemExit(f"the floor is needed: {FLOOR}")
    bench = Bench()
    await bench.build(Path(tempfile.mkdtemp(prefix="lane-budget-")))
    gc.collect()
    gc.freeze()  # as the server does once its models are loaded
    served: dict[str, list[float]] = {path: [] for path in PATHS}
    for path in PATHS:
        await bench.run(path, 2000)  # warm: layouts, templates, placement
    for _ in range(args.repeats):
        for path in PATHS:
            served[path].append(await bench.run(path, args.requests))
    clocked = {path: await bench.clocked(path, args.requests) for path in PATHS}

    header = "| stage | " + " | ".join(TITLES[p] for p in PATHS) + " |"
    lines = [header, "|---" * (len(PATHS) + 1) + "|"]
    sums = dict.fromkeys(PATHS, 0.0)
    for name, by_path in STAGES:
        cells = []
        for path in PATHS:
            if path not in by_path:
                cells.append("—")
                continue
            us = stage_of(clocked[path][1], bench, by_path[path])
            sums[path] += us
            cells.append(f"{us:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| the rest: the loop's turns, what no clocked function runs, the clocks' own cost | " + " | ".join(
        f"{clocked[p][0] - sums[p]:.2f}" for p in PATHS) + " |")
    lines.append("| **the clocked loop** (process CPU) | " + " | ".join(f"**{clocked[p][0]:.2f}**" for p in PATHS)
                 + " |")
    lines.append(f"| **the loop as served, unclocked** (best of {args.repeats}) | " + " | ".join(
        f"**{min(served[p]):.2f}**" for p in PATHS) + " |")
    best = {p: min(served[p]) for p in PATHS}
    client = {p: stage_of(clocked[p][1], bench, STAGES[-1][1][p]) for p in PATHS}  # the fake client's row
    lines.append("| the loop as served, less the fake client's row: the server's own | " + " | ".join(
        f"{best[p] - client[p]:.2f}" for p in PATHS) + " |")
    own = {p: best[p] - client[p] for p in PATHS}
    ratios = (f"\nAs served, ours / the floor: HTTP TF REST {best['http'] / best['floor']:.2f}, gRPC TF Predict "
              f"{best['grpc_tf'] / best['floor']:.2f}, gRPC V2 ModelInfer {best['grpc_v2'] / best['floor']:.2f}; "
              f"gRPC TF Predict / HTTP TF REST {best['grpc_tf'] / best['http']:.2f}. The server's own (less the fake "
              f"client): HTTP TF REST / the floor {own['http'] / own['floor']:.2f}, gRPC TF Predict / HTTP TF REST "
              f"{own['grpc_tf'] / own['http']:.2f}, gRPC V2 ModelInfer / HTTP TF REST "
              f"{own['grpc_v2'] / own['http']:.2f}."
              "\n\nEvery unclocked run, "
              "µs a request: " + "; ".join(f"{TITLES[p]} " + ", ".join(f"{v:.1f}" for v in served[p]) for p in PATHS))
    text = "\n".join(lines) + "\n" + ratios
    print(text)
    write_text(args.out, "lane_budget", "The request path as served, stage by stage",
               f"`python benchmarks/lane_budget.py --requests {args.requests} --repeats {args.repeats}` "
               f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}, {os.cpu_count()} cores). xgb (100 trees x "
               "32 features), batch-1 requests, 64 in flight on fake transports, in process; µs a request. How the "
               "stages are clocked: the script's docstring.", text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    uvloop.run(main(ap.parse_args()))
