"""A closed-loop gRPC load generator in several processes (so the client is not the bottleneck):
TF Serving PredictionService/Predict or KServe V2 ModelInfer, one pre-built batch-1 request.

    python benchmarks/grpc_load.py --target 127.0.0.1:9090 --api tf|v2 --model xgb --input inputs \\
        --row-file row.json --concurrency 64 --processes 4 --duration 10

Prints one JSON line: requests, rps, p50/p90/p99 (ms), errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout


def build(api: str, model: str, input_name: str, row: list[float]) -> tuple[object, str]:
    if api == "tf":
        from serving._proto.tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        tensor = request.inputs[input_name]
        tensor.dtype = 1
        tensor.tensor_shape.dim.add().size = 1
        tensor.tensor_shape.dim.add().size = len(row)
        tensor.float_val.extend(row)
        return request, "/tensorflow.serving.PredictionService/Predict"
    from serving._proto.inference import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    item = request.inputs.add(name=input_name, datatype="FP32")
    item.shape.extend([1, len(row)])
    request.raw_input_contents.append(np.asarray(row, np.float32).tobytes())
    return request, "/inference.GRPCInferenceService/ModelInfer"


async def worker_loop(args: argparse.Namespace, concurrency: int, row: list[float]) -> tuple[list[float], int]:
    import grpc

    request, method = build(args.api, args.model, args.input, row)
    payload = request.SerializeToString()  # type: ignore[attr-defined]
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(args.target) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        await call(payload, timeout=10)
        warm_end = time.perf_counter() + args.warmup
        end = warm_end + args.duration

        async def one() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                try:
                    await call(payload, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                t1 = time.perf_counter()
                if t0 >= warm_end and t1 <= end:
                    latencies.append(t1 - t0)

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return latencies, errors


def process_main(args: argparse.Namespace, concurrency: int, row: list[float], queue: multiprocessing.Queue) -> None:
    queue.put(asyncio.run(worker_loop(args, concurrency, row)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--api", choices=["tf", "v2"], required=True)
    ap.add_argument("--model", default="xgb")
    ap.add_argument("--input", default="inputs")
    ap.add_argument("--row-file", type=Path, required=True, help="JSON list of the row's floats")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=1)
    args = ap.parse_args()
    row = json.loads(args.row_file.read_text())
    procs = max(1, min(args.processes, args.concurrency))
    shares = [args.concurrency // procs + (1 if i < args.concurrency % procs else 0) for i in range(procs)]
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=process_main, args=(args, n, row, queue)) for n in shares]
    for w in workers:
        w.start()
    results = [queue.get(timeout=args.duration + args.warmup + 60) for _ in workers]
    for w in workers:
        w.join()
    latencies = sorted(x for lat, _ in results for x in lat)
    n = len(latencies)

    def pct(p: float) -> float:
        return round(latencies[min(n - 1, int(p / 100 * n))] * 1e3, 3) if n else float("nan")

    print(json.dumps({"requests": n, "rps": round(n / args.duration, 1), "p50_ms": pct(50), "p90_ms": pct(90),
                      "p99_ms": pct(99), "errors": sum(e for _, e in results)}))


if __name__ == "__main__":
    main()
