"""Server CPU per gRPC call with a C client: h2load (Debian's nghttp2-client) sends pre-framed KServe V2
ModelInfer or TF Serving Predict messages (batch-1 xgb, the model of xgb_http.py) with `--streams` in flight on
each of `--connections`; the server's CPU (utime + stime of its process tree) per call is the figure, as a
Python client saturates first on 2 cores. p50/p99 come from h2load's per-request log. `--both` alternates the
gRPC run with the same API's HTTP/1.1 JSON route (h2load --h1, one request in flight per connection), `--repeats`
times, against one server, and writes the rows to benchmarks/results/. Give a checkout to time another tree (a
`git worktree` of the commit before) with this venv.

    python benchmarks/grpc_h2load.py [--api v2|tf] [--calls 40000] [--connections 1] [--streams 64] [--http]
    python benchmarks/grpc_h2load.py --api tf --both --concurrency 1 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noqa: E402 - a script run from a checkout

import numpy as np  # noqa: E402

from benchmarks.grpc_budget import predict_request  # noqa: E402
from benchmarks.grpc_stream import wait_answering  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from benchmarks.xgb_http import free_port, prepare_model, tree_cpu  # noqa: E402
from serving._proto.inference import grpc_predict_v2_pb2 as v2  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def answered_ok(http_port: int) -> float:
    """The server's count of OK inference calls (h2load sees HTTP 200 even for a gRPC error)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("serving_requests_total{") and 'code="OK"' in line)


def latencies(log: str) -> tuple[float, float, int]:
    """(p50, p99 in ms, failed streams) of an h2load --log-file: tab-separated start (µs since the epoch),
    status (-1 for a failed stream), µs to the end of the response."""
    rows = [line.split("\t") for line in log.splitlines() if line.strip()]
    ok = np.array([float(r[2]) for r in rows if r[1] != "-1"])
    if ok.size == 0:
        return 0.0, 0.0, len(rows)
    p50, p99 = np.percentile(ok, [50, 99]) / 1000
    return float(p50), float(p99), len(rows) - ok.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", type=Path, default=ROOT, help="the tree whose server runs")
    ap.add_argument("--calls", type=int, default=40_000)
    ap.add_argument("--streams", type=int, default=64, help="calls in flight on each connection")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--api", choices=["v2", "tf"], default="v2", help="KServe V2 ModelInfer or TF Serving Predict")
    ap.add_argument("--http", action="store_true",
                    help="the same API's HTTP/1.1 JSON route instead (h2load --h1), the baseline of the same client")
    ap.add_argument("--both", action="store_true",
                    help="gRPC and HTTP/1.1 alternated, at each --concurrency (that many connections, one call "
                         "in flight on each), and a report written")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64], help="with --both")
    ap.add_argument("--repeats", type=int, default=1, help="with --both: the pairs at each concurrency")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is needed: apt-get install nghttp2-client")
    work = Path(tempfile.mkdtemp(prefix="grpc-h2load-"))
    repo, row = prepare_model(work)
    request = v2.ModelInferRequest(model_name="xgb")
    tensor = request.inputs.add(name="inputs", datatype="FP32", shape=[1, len(row)])
    tensor.contents.fp32_contents.extend(row)
    http, port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving", "--host", "127.0.0.1", f"--rest_api_port={http}",
                               f"--port={port}", f"--model_base_path={repo}", "--model_name=xgb", "--access_log=off",
                               "--max_batch_size=64", "--worker_threads=1"], cwd=args.checkout,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: list[dict[str, Any]] = []
    try:
        wait_answering(port, request=request)

        def one(over_http: bool, connections: int, streams: int) -> dict[str, Any]:
            target, body, headers = target_of(args.api, over_http, row, request)
            (work / "body").write_bytes(body)
            h2load = ["h2load", "-c", str(connections), "-m", str(streams), "-d", str(work / "body"), *headers,
                      f"http://127.0.0.1:{http if over_http else port}{target}"]
            subprocess.run([*h2load, "-n", "2000"], capture_output=True, check=True)  # warm
            log = work / "h2load.log"
            log.unlink(missing_ok=True)  # h2load appends to its log
            ok0, cpu0, mine0 = answered_ok(http), tree_cpu(server.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([*h2load, "-n", str(args.calls), f"--log-file={log}"], capture_output=True,
                                 text=True, check=True).stdout
            mine = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu, ok = tree_cpu(server.pid) - cpu0, answered_ok(http) - ok0
            client = mine.ru_utime + mine.ru_stime - mine0.ru_utime - mine0.ru_stime
            rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
            p50, p99, failed = latencies(log.read_text())
            return {"server": f"{args.api} {'HTTP/1.1' if over_http else 'gRPC'}", "conc": connections * streams,
                    "rps": float(rate[1]) if rate else 0.0, "p50": p50, "p99": p99,
                    "cpu_us": cpu / args.calls * 1e6, "client_us": client / args.calls * 1e6,
                    "errors": args.calls - ok + failed}

        if not args.both:
            r = one(args.http, args.connections, args.streams)
            print(f"{args.checkout} ({r['server']}, {args.connections} connection(s) x {args.streams}): "
                  f"{r['rps']:,.0f} calls/s, {r['cpu_us']:.1f} µs server CPU per call ({r['client_us']:.1f} "
                  f"h2load's), p50 {r['p50']:.3f} ms, "
                  f"p99 {r['p99']:.3f} ms, {args.calls - r['errors']:.0f} of {args.calls} answered OK")
            return
        for conc in args.concurrency:
            for _ in range(args.repeats):
                for over_http in (False, True):
                    rows.append(one(over_http, conc, 1))
                    print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(30)
    write_report(args.out, "grpc_h2load", f"{'TF Serving Predict' if args.api == 'tf' else 'KServe V2 ModelInfer'} "
                 "over gRPC against its HTTP/1.1 JSON route, batch-1 xgb, h2load", [
                     f"Command: `python benchmarks/grpc_h2load.py --api {args.api} --both --concurrency "
                     f"{' '.join(map(str, args.concurrency))} --repeats {args.repeats} --calls {args.calls}`",
                     "(h2load from Debian's nghttp2-client, one client thread, `conc` connections with one call in "
                     "flight on each, gRPC and HTTP/1.1 alternated against one server; p50/p99 from h2load's "
                     "per-request log; server and h2load CPU per call over the measured run).",
                 ], rows, [])


def target_of(api: str, over_http: bool, row: list[float],
              request: v2.ModelInferRequest) -> tuple[str, bytes, list[str]]:
    """(path, body, h2load header options) of one call of `api`, over gRPC or its JSON route."""
    if over_http:
        doc = ({"instances": [row]} if api == "tf" else
               {"inputs": [{"name": "inputs", "datatype": "FP32", "shape": [1, len(row)], "data": row}]})
        path = "/v1/models/xgb:predict" if api == "tf" else "/v2/models/xgb/infer"
        return path, json.dumps(doc).encode(), ["--h1", "-H", "content-type: application/json"]
    if api == "tf":
        message, path = predict_request(row), "/tensorflow.serving.PredictionService/Predict"
    else:
        message, path = request.SerializeToString(), METHOD
    framed = struct.pack(">BI", 0, len(message)) + message  # gRPC's length-prefixed frame
    return path, framed, ["-H", "content-type: application/grpc", "-H", "te: trailers"]


if __name__ == "__main__":
    main()
