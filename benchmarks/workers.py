"""Workers: serving-engine with `--workers 1, 2, ...` over HTTP and gRPC, beside PyTriton and the two
floors of a Python request path, in one run.

The model and the row are benchmarks/xgb_http.py's (the peers' xgb, 100 trees x 32 features, batch-1
requests). For each worker count: HTTP with `wrk -t<T>` (TF Serving REST `{"instances": [[32 floats]]}`),
gRPC TF Serving `Predict` and KServe V2 `ModelInfer` with benchmarks/grpc_load.py (`--processes` client
processes). Beside them, when they are there: `minimal_path.py` (HTTP floor) and `minimal_grpc.py` (gRPC
floor) from `--peers`, and PyTriton (KServe V2 over HTTP and gRPC, batching on) from /tmp/anchors.
Records req/s, p50/p99 and the server's CPU per request (the whole process tree: supervisor and workers).

    python benchmarks/workers.py [--workers 1 2] [--concurrency 64] [--duration 10] [--processes 2]

Writes benchmarks/results/workers-<time>.md with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout

from benchmarks.report import write_report  # noqa: E402
from benchmarks.xgb_http import (  # noqa: E402
    PEERS,
    PYTRITON_PY,
    Load,
    free_port,
    prepare_model,
    run_wrk,
    serve,
    write_bodies,
)

ROOT = Path(__file__).resolve().parent.parent


def grpc_load(args: argparse.Namespace, target: str, api: str, model: str, input_name: str, row_file: Path,
              conc: int, duration: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grpc_load.py"), "--target", target, "--api", api,
                          "--model", model, "--input", input_name, "--row-file", str(row_file), "--concurrency",
                          str(conc), "--processes", str(args.processes), "--duration", str(duration)],
                         capture_output=True, text=True, check=True, timeout=duration + 120)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {**r, "p50": r["p50_ms"], "p99": r["p99_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--processes", type=int, default=2, help="gRPC load generator processes")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--server-args", default="--max_batch_size=64 --worker_threads=1 --access_log=off")
    ap.add_argument("--skip", nargs="*", default=[], choices=["http", "grpc", "floors", "pytriton"])
    ap.add_argument("--peers", type=Path, default=PEERS, help="the folder of minimal_path.py and minimal_grpc.py")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    repo, row = prepare_model(work)
    tf_body, v2_body = write_bodies(work, row)
    row_file = work / "row.json"
    row_file.write_text(json.dumps(row))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANCHOR_MODELS": str(work)}
    http_on, grpc_on = "http" not in args.skip, "grpc" not in args.skip

    def wrk(url: str, body: Path) -> Load:
        return lambda conc, seconds: run_wrk(url, body, conc, seconds, args.wrk_threads)

    def rpc(target: str, api: str, model: str, input_name: str) -> Load:
        return lambda conc, seconds: grpc_load(args, target, api, model, input_name, row_file, conc, seconds)

    rows: list[dict[str, Any]] = []
    for n in args.workers:
        http, grpc_port = free_port(), free_port()
        loads = []
        if http_on:
            loads.append((f"serving-engine w{n} http", wrk(f"http://127.0.0.1:{http}/v1/models/xgb:predict", tf_body)))
        if grpc_on:
            loads += [(f"serving-engine w{n} grpc tf", rpc(f"127.0.0.1:{grpc_port}", "tf", "xgb", "inputs")),
                      (f"serving-engine w{n} grpc v2", rpc(f"127.0.0.1:{grpc_port}", "v2", "xgb", "inputs"))]
        rows += serve([sys.executable, "-m", "serving", f"--model_base_path={repo}", "--model_name=xgb",
                       "--host=127.0.0.1", f"--rest_api_port={http}", f"--port={grpc_port}", "--log_level=WARNING",
                       f"--workers={n}", *args.server_args.split()],
                      f"http://127.0.0.1:{http}/readyz", env, loads, args)
    if "floors" not in args.skip and (args.peers / "minimal_path.py").exists():
        if http_on:
            port = free_port()
            rows += serve([sys.executable, str(args.peers / "minimal_path.py"), "--port", str(port)],
                          f"tcp://127.0.0.1:{port}", env,
                          [("minimal_path (HTTP floor)", wrk(f"http://127.0.0.1:{port}/", tf_body))], args)
        if grpc_on:
            port = free_port()
            floor_env = {**env, "PYTHONPATH": os.pathsep.join([str(args.peers), str(ROOT), env.get("PYTHONPATH", "")])}
            rows += serve([sys.executable, str(args.peers / "minimal_grpc.py"), "--port", str(port)],
                          f"tcp://127.0.0.1:{port}", floor_env,
                          [("minimal_grpc (gRPC floor) v2", rpc(f"127.0.0.1:{port}", "v2", "xgb", "input__0"))],
                          args)
    if "pytriton" not in args.skip and PYTRITON_PY.exists() and (args.peers / "serve_pytriton.py").exists():
        loads = []
        if http_on:
            loads.append(("pytriton http v2", wrk("http://127.0.0.1:18090/v2/models/xgb/infer", v2_body)))
        if grpc_on:
            loads.append(("pytriton grpc v2", rpc("127.0.0.1:18091", "v2", "xgb", "input__0")))
        rows += serve([str(PYTRITON_PY), str(args.peers / "serve_pytriton.py"), "--model", "xgb", "--batching", "on"],
                      "http://127.0.0.1:18090/v2/models/xgb/ready",
                      {**env, "LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR")}, loads, args)
    comparisons = []
    for n in args.workers:
        comparisons += [(f"serving-engine w{n} http", "pytriton http v2"),
                        (f"serving-engine w{n} grpc tf", "pytriton grpc v2"),
                        (f"serving-engine w{n} grpc v2", "pytriton grpc v2"),
                        (f"serving-engine w{n} http", "minimal_path (HTTP floor)"),
                        (f"serving-engine w{n} grpc v2", "minimal_grpc (gRPC floor) v2")]
    for n in args.workers[1:]:
        comparisons += [(f"serving-engine w{n} http", f"serving-engine w{args.workers[0]} http"),
                        (f"serving-engine w{n} grpc v2", f"serving-engine w{args.workers[0]} grpc v2")]
    write_report(args.out, "workers", "Workers: batch-1 XGBoost (100 trees x 32 features) over HTTP and gRPC", [
        f"Command: `python benchmarks/workers.py --workers {' '.join(map(str, args.workers))} --concurrency "
        f"{' '.join(map(str, args.concurrency))} --duration {args.duration} --processes {args.processes} "
        f"--wrk-threads {args.wrk_threads} --server-args '{args.server_args}'`",
        f"(HTTP: wrk -t{args.wrk_threads}; gRPC: benchmarks/grpc_load.py with {args.processes} client processes; "
        f"loopback, {os.cpu_count()} cores shared by servers and clients, every server in the same run; "
        "server CPU = the process tree).",
    ], rows, comparisons)


if __name__ == "__main__":
    main()
