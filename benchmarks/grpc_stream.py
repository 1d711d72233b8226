"""Unary KServe V2 ModelInfer against the same inferences as messages of one ModelStreamInfer stream: the
server's CPU (utime + stime of its process tree, /proc) per inference and the client's calls/s, batch-1 xgb
(the model of xgb_http.py), `--in-flight` calls or messages outstanding, a grpc.aio client in a process of
its own, or with `--client h2load` Debian's nghttp2 h2load (C++; a Python client saturates first on 2 cores):
unary calls `--in-flight` at once on one connection, or streams each carrying `--in-flight` messages in one
body, one stream at a time. Rounds alternate the two modes; each mode's median round is printed.

    python benchmarks/grpc_stream.py [--client aio|h2load] [--calls 20000] [--in-flight 64] [--rounds 3]
        [--server-args '...']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shlex
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noqa: E402 - a script run from a checkout

import grpc  # noqa: E402

from benchmarks.xgb_http import free_port, prepare_model, tree_cpu  # noqa: E402
from serving._proto.inference import grpc_predict_v2_pb2 as v2  # noqa: E402
from serving._proto.inference import grpc_predict_v2_pb2_grpc as v2_grpc  # noqa: E402


async def unary(stub: v2_grpc.GRPCInferenceServiceStub, request: v2.ModelInferRequest, calls: int,
                in_flight: int) -> int:
    left, errors = [calls], [0]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            try:
                await stub.ModelInfer(request)
            except grpc.RpcError:
                errors[0] += 1

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return errors[0]


async def streamed(stub: v2_grpc.GRPCInferenceServiceStub, request: v2.ModelInferRequest, calls: int,
                   in_flight: int) -> int:
    call = stub.ModelStreamInfer()
    room = asyncio.Semaphore(in_flight)

    async def write() -> None:
        for _ in range(calls):
            await room.acquire()
            await call.write(request)
        await call.done_writing()

    writer = asyncio.ensure_future(write())
    answered = errors = 0
    async for answer in call:
        room.release()
        answered += 1
        errors += bool(answer.error_message)
    await writer
    return errors + calls - answered


def client(port: int, mode: str, calls: int, in_flight: int, out: multiprocessing.Queue) -> None:
    async def run() -> tuple[float, int]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            started = time.perf_counter()
            errors = await (unary if mode == "unary" else streamed)(stub, REQUEST, calls, in_flight)
            return time.perf_counter() - started, errors

    out.put(asyncio.run(run()))


REQUEST = v2.ModelInferRequest(model_name="xgb")


def aio_client(port: int, mode: str, calls: int, in_flight: int) -> tuple[float, int]:
    out: multiprocessing.Queue = multiprocessing.Queue()
    proc = multiprocessing.Process(target=client, args=(port, mode, calls, in_flight, out))
    proc.start()
    seconds, errors = out.get()
    proc.join()
    return seconds, errors


def h2load_client(port: int, mode: str, calls: int, in_flight: int) -> tuple[float, int]:
    """h2load's seconds; the errors are the caller's to count (h2load sees HTTP 200 for a gRPC error too)."""
    message = REQUEST.SerializeToString()
    framed = struct.pack(">BI", 0, len(message)) + message  # gRPC's length-prefixed message
    per_stream = 1 if mode == "unary" else in_flight
    with tempfile.NamedTemporaryFile(suffix=".body") as body:
        body.write(framed * per_stream)
        body.flush()
        method = "ModelInfer" if mode == "unary" else "ModelStreamInfer"
        started = time.perf_counter()
        subprocess.run(["h2load", "-c", "1", "-m", str(in_flight if mode == "unary" else 1), "-n",
                        str(calls // per_stream), "-d", body.name, "-H", "content-type: application/grpc",
                        "-H", "te: trailers", f"http://127.0.0.1:{port}/inference.GRPCInferenceService/{method}"],
                       capture_output=True, check=True)
        return time.perf_counter() - started, 0


def one_round(server: subprocess.Popen[bytes], ports: tuple[int, int], mode: str, calls: int, in_flight: int,
              run_client: Any = aio_client) -> dict[str, float]:
    cpu0, counts0 = tree_cpu(server.pid), counts(ports[0])
    seconds, errors = run_client(ports[1], mode, calls, in_flight)
    cpu = tree_cpu(server.pid) - cpu0
    rows, batches = (b - a for a, b in zip(counts0, counts(ports[0]), strict=True))
    errors = max(errors, calls - rows)  # every inference is one row
    return {"rate": calls / seconds, "cpu_us": cpu / calls * 1e6, "errors": errors, "batch": rows / max(batches, 1)}


def counts(http_port: int) -> tuple[int, int]:
    """(rows, batches) the model computed so far: the statistics extension's inference and execution counts."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/xgb/stats", timeout=10) as answer:
        (stat,) = json.load(answer)["model_stats"]
    return int(stat["inference_count"]), int(stat["execution_count"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", choices=("aio", "h2load"), default="aio")
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server-args", default="--max_batch_size=64 --worker_threads=1")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="grpc-stream-"))
    repo, row = prepare_model(work)
    tensor = REQUEST.inputs.add(name="inputs", datatype="FP32", shape=[1, len(row)])
    tensor.contents.fp32_contents.extend(row)
    http, port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving", "--host", "127.0.0.1", f"--rest_api_port={http}",
                               f"--port={port}", f"--model_base_path={repo}", "--model_name=xgb", "--access_log=off",
                               *shlex.split(args.server_args)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_client = aio_client if args.client == "aio" else h2load_client
    try:
        wait_answering(port)
        for mode in ("unary", "stream"):  # warm both paths
            one_round(server, (http, port), mode, 2048, args.in_flight, run_client)
        rounds: dict[str, list[dict[str, float]]] = {"unary": [], "stream": []}
        for _ in range(args.rounds):
            for mode in rounds:
                rounds[mode].append(one_round(server, (http, port), mode, args.calls, args.in_flight, run_client))
    finally:
        server.terminate()
        server.wait(30)
    for mode, results in rounds.items():
        cpu = statistics.median(r["cpu_us"] for r in results)
        rate = statistics.median(r["rate"] for r in results)
        each = ", ".join(f"{r['cpu_us']:.0f}" for r in results)
        batch = statistics.median(r["batch"] for r in results)
        print(f"{mode:>6}: {rate:,.0f} inferences/s, {cpu:.1f} µs server CPU per inference (rounds: {each} µs), "
              f"{batch:.1f} rows per batch, {sum(r['errors'] for r in results):.0f} errors, {args.in_flight} in flight")


def wait_answering(port: int, timeout_s: float = 60, request: v2.ModelInferRequest | None = None) -> None:
    """Until the server on `port` answers `request` (REQUEST when None) with OK: the figures must count answered
    calls."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                stub.ModelInfer(REQUEST if request is None else request, timeout=5)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


if __name__ == "__main__":
    main()
