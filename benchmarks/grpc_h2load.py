"""Server CPU per gRPC call with a C++ client: h2load (Debian's nghttp2-client) sends pre-framed KServe V2
ModelInfer messages (batch-1 xgb, the model of xgb_http.py) over one connection with `--streams` in flight;
the server's CPU (utime + stime of its process tree) per call is the figure, as a Python client saturates
first on 2 cores. Give a checkout to time another tree (a `git worktree` of the commit before) with this venv.

    python benchmarks/grpc_h2load.py [--checkout DIR] [--calls 40000] [--streams 64]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noqa: E402 - a script run from a checkout

import grpc  # noqa: E402

from benchmarks.grpc_budget import predict_request  # noqa: E402
from benchmarks.xgb_http import free_port, prepare_model, tree_cpu  # noqa: E402
from serving._proto.inference import grpc_predict_v2_pb2 as v2  # noqa: E402
from serving._proto.inference import grpc_predict_v2_pb2_grpc as v2_grpc  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def answered_ok(http_port: int) -> float:
    """The server's count of OK inference calls (h2load sees HTTP 200 even for a gRPC error)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("serving_requests_total{") and 'code="OK"' in line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", type=Path, default=ROOT, help="the tree whose server runs")
    ap.add_argument("--calls", type=int, default=40_000)
    ap.add_argument("--streams", type=int, default=64, help="calls in flight on each connection")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--api", choices=["v2", "tf"], default="v2", help="KServe V2 ModelInfer or TF Serving Predict")
    ap.add_argument("--http", action="store_true",
                    help="the same API's HTTP/1.1 JSON route instead (h2load --h1), the baseline of the same client")
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is needed: apt-get install nghttp2-client")
    work = Path(tempfile.mkdtemp(prefix="grpc-h2load-"))
    repo, row = prepare_model(work)
    request = v2.ModelInferRequest(model_name="xgb")
    tensor = request.inputs.add(name="inputs", datatype="FP32", shape=[1, len(row)])
    tensor.contents.fp32_contents.extend(row)
    target, body, headers = target_of(args, row, request)
    (work / "body").write_bytes(body)
    http, port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving", "--host", "127.0.0.1", f"--rest_api_port={http}",
                               f"--port={port}", f"--model_base_path={repo}", "--model_name=xgb", "--access_log=off",
                               "--max_batch_size=64", "--worker_threads=1"], cwd=args.checkout,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + 60
            while True:  # ready and answering: the figure must count answered calls
                try:
                    stub.ModelInfer(request, timeout=5)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        h2load = ["h2load", "-c", str(args.connections), "-m", str(args.streams), "-d", str(work / "body"),
                  *headers, f"http://127.0.0.1:{http if args.http else port}{target}"]
        subprocess.run([*h2load, "-n", "2000"], capture_output=True, check=True)  # warm
        ok0, cpu0 = answered_ok(http), tree_cpu(server.pid)
        out = subprocess.run([*h2load, "-n", str(args.calls)], capture_output=True, text=True, check=True).stdout
        cpu, ok = tree_cpu(server.pid) - cpu0, answered_ok(http) - ok0
    finally:
        server.terminate()
        server.wait(30)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    what = f"{args.api} {'HTTP/1.1' if args.http else 'gRPC'}, {args.connections} connection(s) x {args.streams}"
    print(f"{args.checkout} ({what}): {float(rate[1]) if rate else 0:,.0f} calls/s, {cpu / args.calls * 1e6:.1f} "
          f"µs server CPU per call, {ok:.0f} of {args.calls} answered OK")


def target_of(args: argparse.Namespace, row: list[float],
              request: v2.ModelInferRequest) -> tuple[str, bytes, list[str]]:
    """(path, body, h2load header options) of one call of args.api, over gRPC or (args.http) its JSON route."""
    if args.http:
        doc = ({"instances": [row]} if args.api == "tf" else
               {"inputs": [{"name": "inputs", "datatype": "FP32", "shape": [1, len(row)], "data": row}]})
        path = "/v1/models/xgb:predict" if args.api == "tf" else "/v2/models/xgb/infer"
        return path, json.dumps(doc).encode(), ["--h1", "-H", "content-type: application/json"]
    if args.api == "tf":
        message, path = predict_request(row), "/tensorflow.serving.PredictionService/Predict"
    else:
        message, path = request.SerializeToString(), METHOD
    framed = struct.pack(">BI", 0, len(message)) + message  # gRPC's length-prefixed frame
    return path, framed, ["-H", "content-type: application/grpc", "-H", "te: trailers"]


if __name__ == "__main__":
    main()
