"""Where the request path's time goes, in process, without the network or a load generator.

1. Closed loop through the whole engine (HttpConnection -> routes -> codec -> batch queue -> xgboost
   -> response bytes) with 64 requests in flight on fake transports, beside the same loop through
   `../shared/peers/minimal_path.py`: CPU µs per request of each, and their ratio (same run).
2. The stages one by one (µs per call): JSON parse, decode, validation, queue submit, encode, the
   routes without the data plane, the HTTP protocol with a trivial handler.

    python benchmarks/hot_path.py [--requests 30000]

Uses the model of benchmarks/xgb_http.py (the peers' xgb when present).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noqa: E402 - a script run from a checkout

from benchmarks.xgb_http import PEERS, prepare_model  # noqa: E402
from serving.core.batching import BatchingOptions  # noqa: E402
from serving.core.dataplane import DataPlane, validate_inputs  # noqa: E402
from serving.core.model_config import ModelSpec  # noqa: E402
from serving.core.pipeline import Pipeline  # noqa: E402
from serving.core.repository import ModelManager  # noqa: E402
from serving.core.servable import Runtime  # noqa: E402
from serving.ops.accesslog import AccessLog  # noqa: E402
from serving.ops.metrics import RequestMetrics  # noqa: E402
from serving.ops.requestlog import RequestLogger  # noqa: E402
from serving.ops.shadow import ShadowRunner  # noqa: E402
from serving.ops.tracing import Tracing  # noqa: E402
from serving.protocols.router import RestApi  # noqa: E402
from serving.protocols.tfserving import codec as tfserving  # noqa: E402
from serving.settings import Settings  # noqa: E402
from serving.transport.http import (  # noqa: E402
    DeadlineWheel,
    HttpConnection,
    HttpLimits,
    Request,
    Response,
)


class FakeTransport:
    """Counts responses; each response sends the connection its next request (a closed loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, state: dict[str, Any], request: bytes) -> None:
        self.loop, self.state, self.request = loop, state, request
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        state = self.state
        state["done"] += 1
        if state["left"] > 0:
            state["left"] -= 1
            self.loop.call_soon(self.protocol.data_received, self.request)
        elif state["done"] == state["total"] and not state["future"].done():
            state["future"].set_result(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


async def closed_loop(make_protocol: Callable[[], Any], request: bytes, total: int, conc: int = 64) -> float:
    loop = asyncio.get_running_loop()
    state = {"left": total - conc, "done": 0, "total": total, "future": loop.create_future()}
    protocols = []
    for _ in range(conc):
        p = make_protocol()
        t = FakeTransport(loop, state, request)
        t.protocol = p
        p.connection_made(t)
        protocols.append(p)
    t0 = time.process_time()
    for p in protocols:
        p.data_received(request)
    await state["future"]
    return (time.process_time() - t0) / total * 1e6


def discarding_tracing() -> Tracing | None:
    """The OpenTelemetry observer with its batch processor and an exporter that drops the spans (None
    without the otel extra): the cost of making and handing over the spans, not of a network."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError:
        return None

    class Discard(SpanExporter):  # type: ignore[misc]
        def export(self, spans: Any) -> Any:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    return Tracing(provider)


def per_call(fn: Callable[[], Any], n: int = 20000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


async def main(total: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="hotpath-"))
    repo, row = prepare_model(work)
    body = orjson.dumps({"instances": [row]})
    request = b"POST /v1/models/xgb:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    runtime = Runtime(BatchingOptions(max_batch_size=64, max_in_flight=1))
    manager = ModelManager(runtime=runtime)
    await manager.apply([ModelSpec("xgb", str(repo), "xgboost")])
    dataplane = DataPlane(runtime)
    bare = Pipeline(manager, dataplane)  # no observer
    served = Pipeline(manager, dataplane)  # observed as serving/app.py wires it
    served.observe(RequestMetrics())  # into each version's record: Prometheus and Triton's statistics read it
    request_log, shadow = RequestLogger(manager), ShadowRunner(manager, dataplane)
    manager.observers_for = lambda spec: tuple(  # a model's own: none, its config asks for neither
        o for o in (request_log.observer_for(spec), shadow.observer_for(spec)) if o is not None)
    await manager.apply([ModelSpec("xgb", str(repo), "xgboost")])  # the config applied again: observers chosen
    traced = Pipeline(manager, dataplane)
    for observer in served.observers:
        traced.observe(observer)
    defaults = Settings()
    variants: list[tuple[str, Pipeline, AccessLog | None]] = [
        ("no observer, access log off", bare, None),
        ("as served (metrics, statistics, request log, shadow), access log off", served, None),
        # The default selection: every request here is a fast 200, so only the 1% sample is written.
        ("as served, access log json (default: failures, slow, 1% sample)", served,
         AccessLog.open("json", sample_rate=defaults.access_log_sample_rate, slow_ms=defaults.access_log_slow_ms,
                        health=False, path=os.devnull)),
        ("as served, access log all", served,
         AccessLog.open("all", sample_rate=1.0, slow_ms=0.0, health=False, path=os.devnull)),
    ]
    tracing = discarding_tracing()
    if tracing is not None:
        traced.observe(tracing)
        variants.append(("as served + OpenTelemetry spans, access log off", traced, None))
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop)
    gc.collect()
    gc.freeze()  # as the server does once its models are loaded (serving/app.py)
    for label, pipeline, access_log in variants:
        api = RestApi(manager, pipeline, timeout_s=30, default_model=lambda: "xgb")
        connection = functools.partial(HttpConnection, api, HttpLimits(), set(), wheel, access_log=access_log)
        ours1 = await closed_loop(connection, request, total // 10, 1)
        ours = await closed_loop(connection, request, total)
        print(f"serving-engine closed loop ({label}): 1 in flight {ours1:.1f}, 64 in flight {ours:.1f} "
              "CPU us/request (process CPU: writer and exporter threads included)")
        if access_log is not None:
            access_log.close()
    floor = None
    if (PEERS / "minimal_path.py").exists():
        os.environ["ANCHOR_MODELS"] = str(work)
        spec = importlib.util.spec_from_file_location("minimal_path", PEERS / "minimal_path.py")
        mp = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(mp)  # type: ignore[union-attr]
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(repo / "1" / "model.json"))
        booster.set_param({"nthread": 1})
        batcher = mp.Batcher(loop, booster)
        floor_request = request.replace(b"/v1/models/xgb:predict", b"/")
        floor1 = await closed_loop(lambda: mp.Connection(batcher), floor_request, total // 10, 1)
        floor = await closed_loop(lambda: mp.Connection(batcher), floor_request, total)
        print(f"minimal_path closed loop:   1 in flight {floor1:.1f}, 64 in flight {floor:.1f} CPU us/request "
              f"(ratios {ours1 / floor1:.2f}, {ours / floor:.2f})")

    servable = manager.get("xgb")
    sig = servable.signature("")
    doc = orjson.loads(body)
    inputs, _ = tfserving.decode_predict(doc, sig)
    queue = servable.queues[sig.name]
    queue.in_flight = 1 << 30  # submit only, never dispatch

    def submit() -> None:
        queue.submit(inputs, 1e18)
        queue.queue.clear()
        queue.rows_queued = queue.waiting = 0

    outputs = {"predictions": np.array([0.5], np.float32)}
    done = loop.create_future()
    done.set_result(outputs)
    stub = DataPlane(runtime)
    stub.infer = lambda *a, **k: done  # type: ignore[method-assign]
    routes_only = RestApi(manager, Pipeline(manager, stub), timeout_s=30, default_model=lambda: "xgb")
    req = Request("POST", "/v1/models/xgb:predict", "", {}, body)
    conn = HttpConnection(lambda r: Response(200, b'{"predictions":[0.5]}'), HttpLimits(), set(), wheel)
    conn.connection_made(FakeTransport(loop, {"left": 0, "done": 0, "total": -1, "future": done}, b""))
    stages = [
        ("orjson.loads", lambda: orjson.loads(body)),
        ("tfserving.decode_predict", lambda: tfserving.decode_predict(doc, sig)),
        ("validate_inputs", lambda: validate_inputs(servable, sig, inputs)),
        ("BatchQueue.submit", submit),
        ("tfserving.encode_predict", lambda: tfserving.encode_predict(outputs, True)),
        ("routes + codec, data plane stubbed", lambda: routes_only(req)),
        ("HTTP protocol, trivial handler", lambda: conn.data_received(request)),
    ]
    for name, fn in stages:
        print(f"  {name:38s} {per_call(fn):6.2f} us")
    queue.in_flight = 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=30000)
    uvloop.run(main(ap.parse_args().requests))
