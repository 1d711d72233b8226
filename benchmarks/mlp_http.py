"""The TorchScript MLP (32-64-64-1) of `../shared/peers/torchserve/make_mlp.py` over HTTP: serving-engine
beside TorchServe (batching on: batchSize 32, maxBatchDelay 2 ms), same KServe V2 JSON batch-1 body,
`wrk -t1` at each concurrency, one run. For scale, the same run also measures
`../shared/peers/minimal_path.py` (the floor of a Python request path; it serves the peers' xgb model
with a `{"instances": [[32 floats]]}` body, so its row is the floor, not the same model).

Needs `PHASES="setup models" bash ../shared/peers/run_all.sh` (TorchServe venv, mlp.pt, mlp.mar).

    python benchmarks/mlp_http.py [--duration 10] [--concurrency 1 4 16 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout

from benchmarks.report import write_report  # noqa: E402
from benchmarks.xgb_http import ANCHORS, PEERS, free_port, measure, measure_floor, prepare_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TS_VENV = Path("/tmp/anchors/venv-ts")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--server-args", default="--max_batch_size=32 --worker_threads=1")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    mlp = ANCHORS / "mlp" / "mlp.pt"
    if not mlp.exists():
        raise SystemExit(f"{mlp} is missing: run PHASES='setup models' bash ../shared/peers/run_all.sh")
    work = Path(tempfile.mkdtemp(prefix="bench-mlp-"))
    (work / "mlp" / "1").mkdir(parents=True)
    shutil.copy(mlp, work / "mlp" / "1" / "model.pt")
    body = work / "v2_body.json"
    shutil.copy(ANCHORS / "request_b1.json", body)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    port = free_port()
    rows += measure("serving-engine", [sys.executable, "-m", "serving", f"--model_base_path={work / 'mlp'}",
                                       "--model_name=mlp", "--host=127.0.0.1", f"--rest_api_port={port}", "--port=0",
                                       "--log_level=WARNING", *args.server_args.split()],
                    f"http://127.0.0.1:{port}/v2/models/mlp/infer", f"http://127.0.0.1:{port}/readyz", body, args, env)
    if (TS_VENV / "bin" / "torchserve").exists():
        ts_dir = work / "ts"
        ts_dir.mkdir()
        config = PEERS / "torchserve" / "batch_on" / "config.properties"
        os.chdir(ts_dir)
        rows += measure("torchserve", [str(TS_VENV / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
                                       "--ts-config", str(config)],
                        "http://127.0.0.1:18100/v2/models/mlp/infer", "http://127.0.0.1:18101/models/mlp", body, args,
                        {**env, "PATH": f"{TS_VENV / 'bin'}:{env['PATH']}"})
        os.chdir(ROOT)
    if (PEERS / "minimal_path.py").exists():
        _, row = prepare_model(work / "floor")
        floor_body = work / "floor_body.json"
        floor_body.write_text(json.dumps({"instances": [row]}))
        floor_env = {**env, "ANCHOR_MODELS": str(work / "floor")}
        rows += measure_floor("minimal_path (xgb floor)", floor_body, args, floor_env)
    write_report(args.out, "mlp_http", "TorchScript MLP 32-64-64-1, batch-1 KServe V2 requests over HTTP", [
        f"Command: `python benchmarks/mlp_http.py --duration {args.duration} --concurrency "
        f"{' '.join(map(str, args.concurrency))} --server-args '{args.server_args}'`",
        f"(wrk -t1, loopback, {os.cpu_count()} cores, the same body, same run; TorchServe batchSize 32, "
        "maxBatchDelay 2 ms).",
    ], rows, [("serving-engine", "torchserve"), ("minimal_path (xgb floor)", "torchserve")])


if __name__ == "__main__":
    main()
