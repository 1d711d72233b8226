"""Batch-1 XGBoost over gRPC: serving-engine (TF Serving Predict and KServe V2 ModelInfer) beside
PyTriton (KServe V2 ModelInfer), same model, same row, same multi-process load generator, one run.

    python benchmarks/xgb_grpc.py [--duration 10] [--concurrency 1 4 16 64] [--processes 2]

Writes a Markdown table to benchmarks/results/ with the command that made it.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout

from benchmarks.report import write_report  # noqa: E402
from benchmarks.xgb_http import PEERS, PYTRITON_PY, free_port, prepare_model, tree_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load(args: argparse.Namespace, target: str, api: str, model: str, input_name: str, row_file: Path,
         conc: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grpc_load.py"), "--target", target, "--api", api,
                          "--model", model, "--input", input_name, "--row-file", str(row_file), "--concurrency",
                          str(conc), "--processes", str(args.processes), "--duration", str(args.duration)],
                         capture_output=True, text=True, check=True, timeout=args.duration + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--processes", type=int, default=2, help="load generator processes")
    ap.add_argument("--server-args", default="--max_batch_size=64 --worker_threads=1")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    repo, row = prepare_model(work)
    row_file = work / "row.json"
    row_file.write_text(json.dumps(row))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANCHOR_MODELS": str(work)}
    rows = []

    def measure(name: str, cmd: list[str], target: str, ready: str, api: str, model: str, input_name: str,
                extra_env: dict[str, str]) -> None:
        import signal

        from benchmarks.xgb_http import wait_ready

        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**env, **extra_env}, start_new_session=True)
        try:
            wait_ready(ready, proc)
            load(args, target, api, model, input_name, row_file, 4)  # warm
            for conc in args.concurrency:
                before = tree_cpu(proc.pid)
                r = load(args, target, api, model, input_name, row_file, conc)
                cpu_us = 1e6 * (tree_cpu(proc.pid) - before) / max(r["requests"], 1)
                rows.append({"server": name, "conc": conc, **r, "p50": r["p50_ms"], "p99": r["p99_ms"],
                             "cpu_us": cpu_us})
                print(f"{name:24s} c={conc:<3d} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                      f"p99 {r['p99_ms']:.3f} ms  cpu {cpu_us:.0f} us/req  errors {r['errors']}", flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)

    for api in ("tf", "v2"):
        http, grpc_port = free_port(), free_port()
        measure(f"serving-engine {api}", [sys.executable, "-m", "serving", f"--model_base_path={repo}",
                                          "--model_name=xgb", "--host=127.0.0.1", f"--rest_api_port={http}",
                                          f"--port={grpc_port}", "--log_level=WARNING", *args.server_args.split()],
                f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http}/readyz", api, "xgb", "inputs", {})
    if PYTRITON_PY.exists() and (PEERS / "serve_pytriton.py").exists():
        measure("pytriton v2", [str(PYTRITON_PY), str(PEERS / "serve_pytriton.py"), "--model", "xgb",
                                "--batching", "on"],
                "127.0.0.1:18091", "http://127.0.0.1:18090/v2/models/xgb/ready", "v2", "xgb", "input__0",
                {"LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR")})
    write_report(args.out, "xgb_grpc", "XGBoost (100 trees x 32 features), batch-1 requests over gRPC", [
        f"Command: `python benchmarks/xgb_grpc.py --duration {args.duration} --concurrency "
        f"{' '.join(map(str, args.concurrency))} --processes {args.processes} --server-args '{args.server_args}'`",
        f"(benchmarks/grpc_load.py, {args.processes} client processes, closed loop, loopback, {os.cpu_count()} "
        "cores, every server in the same run).",
    ], rows, [("serving-engine tf", "pytriton v2"), ("serving-engine v2", "pytriton v2")])


if __name__ == "__main__":
    main()
