"""What a gRPC call costs beside an HTTP request, in process, stage by stage (the gRPC side of budget.py).

1. Closed loops through the whole engine with 64 calls in flight (and 1), on fake transports, one after the
   other in the same process: KServe V2 ModelInfer over the native HTTP/2 transport (64 connections, one
   call each at a time, as 64 HTTP/1.1 connections), the same model over HTTP (TF Serving REST and KServe V2
   JSON): process CPU µs per call, and the ratios.
2. The gRPC stages alone, µs per call: the transport with a method that answers at once (header block cache
   hits, and misses: a new x-request-id each call), protobuf decode of the request, the servicer's Call and
   pipeline (the data plane stubbed), protobuf encode of the answer.

    python benchmarks/grpc_budget.py [--calls 20000] [--repeats 5]

Prints the tables; `--out DIR` also writes them as Markdown with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hpack
import numpy as np
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noqa: E402 - a script run from a checkout

from benchmarks.hot_path import FakeTransport, closed_loop  # noqa: E402
from benchmarks.report import write_text  # noqa: E402
from benchmarks.xgb_http import prepare_model  # noqa: E402
from serving._proto.inference import grpc_predict_v2_pb2 as pb  # noqa: E402
from serving._proto.tensorflow_serving.apis import predict_pb2  # noqa: E402
from serving.core.batching import BatchingOptions  # noqa: E402
from serving.core.dataplane import DataPlane  # noqa: E402
from serving.core.model_config import ModelSpec  # noqa: E402
from serving.core.pipeline import Pipeline  # noqa: E402
from serving.core.repository import ModelManager  # noqa: E402
from serving.core.servable import Runtime  # noqa: E402
from serving.ops.accesslog import AccessLog  # noqa: E402
from serving.ops.metrics import RequestMetrics  # noqa: E402
from serving.protocols.kserve.rpc import InferenceService  # noqa: E402
from serving.protocols.router import RestApi  # noqa: E402
from serving.protocols.tfserving.rpc import PredictionService  # noqa: E402
from serving.transport.http import DeadlineWheel, HttpConnection, HttpLimits  # noqa: E402
from serving.transport.rpc.native import NativeServer, new_native_server  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


class GrpcClient:
    """One connection's requests as a grpcio client writes them: HEADERS (a header block that repeats after the
    first, or one with a new x-request-id each call) and DATA with END_STREAM, on odd stream ids in turn."""

    def __init__(self, message: bytes, unique_ids: bool, method: str = METHOD) -> None:
        encoder = hpack.Encoder()
        headers = [(":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "127.0.0.1"),
                   ("content-type", "application/grpc"), ("te", "trailers"),
                   ("grpc-accept-encoding", "identity, deflate, gzip"), ("user-agent", "grpc-python/bench")]
        # Encoded here, not per call (the client's CPU is this process's too): the first block indexes the
        # headers, every later one names them by index, as grpcio's C-core sends them.
        self.first, self.block = encoder.encode(headers, huffman=True), encoder.encode(headers, huffman=True)
        self.unique, self.stream, self.calls = unique_ids, 1, 0
        self.data = b"\x00" + struct.pack(">I", len(message)) + message

    def next_request(self) -> bytes:
        block = self.first if self.stream == 1 else self.block
        if self.unique:  # a literal without indexing (RFC 7541 6.2.2), new name: the table stays as it is
            self.calls += 1
            value = b"bench-%d" % self.calls
            block += b"\x00\x0cx-request-id" + bytes([len(value)]) + value
        stream, self.stream = self.stream, self.stream + 2
        return frame(1, 4, stream, block) + frame(0, 1, stream, self.data)  # END_HEADERS; END_STREAM


class H2Transport(FakeTransport):
    """A closed loop over HTTP/2: every answer (trailers with END_STREAM) sends the connection's next call."""

    def __init__(self, loop: asyncio.AbstractEventLoop, state: dict[str, Any], client: GrpcClient) -> None:
        super().__init__(loop, state, b"")
        self.client = client

    def write(self, data: bytes) -> None:
        offset = 0
        while offset + 9 <= len(data):
            size = int.from_bytes(data[offset:offset + 3], "big")
            kind, flags = data[offset + 3], data[offset + 4]
            offset += 9 + size
            if kind == 1 and flags & 1:
                self.answered()

    def answered(self) -> None:
        state = self.state
        state["done"] += 1
        if state["left"] > 0:
            state["left"] -= 1
            self.loop.call_soon(self.protocol.data_received, self.client.next_request())
        elif state["done"] == state["total"] and not state["future"].done():
            state["future"].set_result(None)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


async def h2_loop(server: NativeServer, message: bytes, total: int, conc: int, unique: bool,
                  method: str = METHOD) -> float:
    """Process CPU µs per call of `total` calls of `method`, `conc` connections each with one call in flight."""
    loop = asyncio.get_running_loop()
    state = {"left": total - conc, "done": 0, "total": total, "future": loop.create_future()}
    conns = []
    for _ in range(conc):
        client = GrpcClient(message, unique, method)
        conn = server.connection()
        transport = H2Transport(loop, state, client)
        transport.protocol = conn
        conn.connection_made(transport)  # type: ignore[arg-type]
        # The preface, SETTINGS opening every stream's window and a WINDOW_UPDATE opening the connection's: the
        # fake client reads everything at once, so it never needs to give a window back.
        conn.data_received(PREFACE + frame(4, 0, 0, struct.pack(">HI", 4, 0x7FFFFFFF))
                           + frame(8, 0, 0, struct.pack(">I", 0x7FFFFFFF - 65535)))
        conns.append((conn, client))
    await asyncio.sleep(0)
    t0 = time.process_time()
    for conn, client in conns:
        conn.data_received(client.next_request())
    await state["future"]
    return (time.process_time() - t0) / total * 1e6


def predict_request(row: list[float]) -> bytes:
    """A batch-1 TF Serving PredictRequest, its tensor in tensor_content (as tensorflow's make_tensor_proto)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "xgb"
    tensor = request.inputs["inputs"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add().size = 1
    tensor.tensor_shape.dim.add().size = len(row)
    tensor.tensor_content = np.asarray(row, np.float32).tobytes()
    return request.SerializeToString()


def infer_request(row: list[float]) -> bytes:
    """A batch-1 ModelInferRequest with its tensor in raw_input_contents, as tritonclient and perf_analyzer
    send it."""
    request = pb.ModelInferRequest(model_name="xgb", id="1")
    request.inputs.add(name="inputs", datatype="FP32", shape=[1, len(row)])
    request.raw_input_contents.append(np.asarray(row, np.float32).tobytes())
    return request.SerializeToString()


def per_call(fn: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


class _Constant:
    """A servicer whose ModelInfer answers at once: the transport alone."""

    SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]

    def __init__(self) -> None:
        self.answer = pb.ModelInferResponse(model_name="xgb", id="1")

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        return self.answer


async def build(repo: Path) -> tuple[ModelManager, Pipeline]:
    runtime = Runtime(BatchingOptions(max_batch_size=64, max_in_flight=1))
    manager = ModelManager(runtime=runtime)
    await manager.apply([ModelSpec("xgb", str(repo), "xgboost")])
    pipeline = Pipeline(manager, DataPlane(runtime))
    pipeline.observe(RequestMetrics())
    return manager, pipeline


async def loops(args: argparse.Namespace, manager: ModelManager, pipeline: Pipeline, row: list[float],
                log: AccessLog | None) -> list[tuple[str, list[float]]]:
    """Each closed loop `args.repeats` times, interleaved: (name, µs per call of each repeat)."""
    loop = asyncio.get_running_loop()
    native = new_native_server([InferenceService(manager, pipeline, 30.0, None, None),
                                PredictionService(manager, pipeline, 30.0)], access_log=log)
    native.loop, native.wheel = loop, DeadlineWheel(loop)
    bare = new_native_server([_Constant()])
    bare.loop, bare.wheel = loop, DeadlineWheel(loop)
    api = RestApi(manager, pipeline, timeout_s=30, default_model=lambda: "xgb")
    http = functools.partial(HttpConnection, api, HttpLimits(), set(), DeadlineWheel(loop), access_log=log)
    tf_body = orjson.dumps({"instances": [row]})
    v2_body = orjson.dumps({"inputs": [{"name": "inputs", "datatype": "FP32", "shape": [1, len(row)], "data": row}]})
    http_request = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s")
    tf = http_request % (b"/v1/models/xgb:predict", len(tf_body), tf_body)
    v2 = http_request % (b"/v2/models/xgb/infer", len(v2_body), v2_body)
    message, predict = infer_request(row), predict_request(row)
    runs: list[tuple[str, Callable[[int], Any]]] = [
        ("gRPC ModelInfer, native (header cache hits)", lambda c: h2_loop(native, message, args.calls, c, False)),
        ("gRPC TF Serving Predict, native (header cache hits)",
         lambda c: h2_loop(native, predict, args.calls, c, False, "/tensorflow.serving.PredictionService/Predict")),
        ("gRPC ModelInfer, native, a new x-request-id each call (cache misses)",
         lambda c: h2_loop(native, message, args.calls, c, True)),
        ("HTTP TF Serving REST predict", lambda c: closed_loop(http, tf, args.calls, c)),
        ("HTTP KServe V2 JSON infer", lambda c: closed_loop(http, v2, args.calls, c)),
        ("gRPC transport alone (ModelInfer answering at once)", lambda c: h2_loop(bare, message, args.calls, c, False)),
    ]
    results: dict[str, list[float]] = {}
    for conc in (64, 1):
        for _, run in runs:
            await run(conc)  # warm
        for _ in range(args.repeats):
            for name, run in runs:
                results.setdefault(f"{name}, {conc} in flight", []).append(await run(conc))
    return list(results.items())


def stages(args: argparse.Namespace, row: list[float]) -> list[tuple[str, float]]:
    message = infer_request(row)
    request = pb.ModelInferRequest.FromString(message)
    response = pb.ModelInferResponse(model_name="xgb", model_version="1", id="1")
    out = response.outputs.add(name="predictions", datatype="FP32", shape=[1])
    response.raw_output_contents.append(np.zeros(1, np.float32).tobytes())
    del out
    return [
        ("protobuf decode of the ModelInferRequest", per_call(lambda: pb.ModelInferRequest.FromString(message),
                                                               args.calls)),
        ("np.frombuffer of its raw contents", per_call(lambda: np.frombuffer(request.raw_input_contents[0],
                                                                             np.float32), args.calls)),
        ("protobuf encode of the ModelInferResponse", per_call(response.SerializeToString, args.calls)),
    ]


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="grpc-budget-"))
    repo, row = prepare_model(work)
    manager, pipeline = await build(repo)
    log = AccessLog.open("json", sample_rate=0.01, slow_ms=1000, health=False, path=os.devnull)
    gc.collect()
    gc.freeze()  # as the server does once its models are loaded
    results = await loops(args, manager, pipeline, row, log)
    lines = ["| closed loop | min µs/call | median µs/call |", "|---|---|---|"]
    for name, values in results:
        values.sort()
        lines.append(f"| {name} | {values[0]:.1f} | {values[len(values) // 2]:.1f} |")
    by = {name: sorted(values)[len(values) // 2] for name, values in results}
    for conc in (64, 1):
        grpc_us = by[f"gRPC ModelInfer, native (header cache hits), {conc} in flight"]
        tf_us = by[f"HTTP TF Serving REST predict, {conc} in flight"]
        v2_us = by[f"HTTP KServe V2 JSON infer, {conc} in flight"]
        predict_us = by[f"gRPC TF Serving Predict, native (header cache hits), {conc} in flight"]
        lines.append(f"\n{conc} in flight, medians: gRPC ModelInfer / HTTP V2 JSON {grpc_us / v2_us:.2f}, "
                     f"gRPC Predict / HTTP TF REST {predict_us / tf_us:.2f}")
    lines += ["", "| gRPC stage alone | µs/call (min of 5) |", "|---|---|"]
    lines += [f"| {name} | {us:.2f} |" for name, us in stages(args, row)]
    text = "\n".join(lines)
    print(text)
    write_text(args.out, "grpc_budget", "A gRPC call beside an HTTP request, in process",
               f"`python benchmarks/grpc_budget.py --calls {args.calls} --repeats {args.repeats}` (OMP_NUM_THREADS="
               f"{os.environ.get('OMP_NUM_THREADS', '')}, {os.cpu_count()} cores; xgb 100 trees x 32 features, batch-1 "
               "calls, metrics observer and the default access log on, as served).", text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    uvloop.run(main(ap.parse_args()))
