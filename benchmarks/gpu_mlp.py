"""A TorchScript MLP on CUDA: what the device buys, in process and over HTTP, in one run.

The model is made here: an MLP 512-2048-2048-16 (about 5.3M parameters), scripted, with a signature.json
naming its input `x` [-1, 512] and output `y` [-1, 16].

1. In process (`Processor.predict`, the path a batch takes): ms per batch at batch sizes 1, 32, 256 and
   2048 on the CPU (torch's own threads), on CUDA in fp32 and in fp16 (`--fp16`); and the host-to-device
   copy of one batch from pinned memory (what the processor does) beside a plain pageable copy.
2. Over HTTP, TF Serving REST `{"instances": [[512 floats]]}` batch-1 requests, `wrk -t2` (`--wrk-threads`) at each
   concurrency: the server on the CPU and on CUDA with dynamic batching (`--max_batch_size=64
   --batch_timeout_micros=500`), and on CUDA without batching (`--max_batch_size=1`), and CUDA fp16.

Writes benchmarks/results/gpu_mlp-<time>.md with the command and the device. Needs a CUDA device.

    python benchmarks/gpu_mlp.py [--duration 5] [--concurrency 1 16 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout

from benchmarks.report import write_report  # noqa: E402
from benchmarks.xgb_http import free_port, measure  # noqa: E402
from serving.core.processor import processor_class  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1, 32, 256, 2048)


def make_model(base: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048),
                              torch.nn.ReLU(), torch.nn.Linear(2048, 16)).eval()
    d = base / "mlp" / "1"
    d.mkdir(parents=True)
    torch.jit.save(torch.jit.script(net), str(d / "model.pt"))
    (d / "signature.json").write_text(json.dumps({
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 512]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 16]}]}))
    return d.parent


def ms_per_call(fn: Callable[[], object], seconds: float = 0.5) -> float:
    fn()
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return 1e3 * (time.perf_counter() - start) / n


def in_process(model: Path) -> list[str]:
    lines = ["| batch | CPU ms | CUDA fp32 ms | CUDA fp16 ms | copy pinned ms | copy pageable ms |",
             "|---|---|---|---|---|---|"]
    procs = {}
    for name, device, options in (("cpu", "cpu", {}), ("fp32", "cuda", {}), ("fp16", "cuda", {"fp16": True})):
        procs[name] = processor_class("torchscript")()
        procs[name].load(model / "1", device, options)
    rng = np.random.default_rng(1)
    for size in SIZES:
        x = rng.standard_normal((size, 512)).astype(np.float32)
        row = [ms_per_call(lambda p=p, x=x: p.predict({"x": x}, "")) for p in procs.values()]  # type: ignore[misc]

        def pinned(x: np.ndarray = x) -> None:
            torch.from_numpy(x).pin_memory().to("cuda", non_blocking=True)
            torch.cuda.synchronize()

        def pageable(x: np.ndarray = x) -> None:
            torch.from_numpy(x).to("cuda")
            torch.cuda.synchronize()

        row += [ms_per_call(pinned), ms_per_call(pageable)]
        lines.append(f"| {size} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_mlp needs a CUDA device")
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    model = make_model(work)
    table = in_process(model)
    body = work / "body.json"
    body.write_text(json.dumps({"instances": [np.linspace(-1, 1, 512).round(4).tolist()]}))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    rows: list[dict[str, object]] = []
    for name, extra in (("cpu, batching", ["--device=cpu", "--max_batch_size=64"]),
                        ("cuda, batching", ["--device=cuda", "--max_batch_size=64"]),
                        ("cuda, no batching", ["--device=cuda", "--max_batch_size=1"]),
                        ("cuda fp16, batching", ["--device=cuda", "--fp16", "--max_batch_size=64"])):
        port = free_port()
        rows += measure(name, [sys.executable, "-m", "serving", f"--model_base_path={model}", "--model_name=mlp",
                               "--host=127.0.0.1", f"--rest_api_port={port}", "--port=0", "--log_level=WARNING",
                               "--access_log=off", "--batch_timeout_micros=500", *extra],
                        f"http://127.0.0.1:{port}/v1/models/mlp:predict", f"http://127.0.0.1:{port}/readyz", body,
                        args, env)
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip() or torch.cuda.get_device_name()
    write_report(args.out, "gpu_mlp", "TorchScript MLP 512-2048-2048-16 on CUDA and on the CPU", [
        f"Command: `python benchmarks/gpu_mlp.py --duration {args.duration} --concurrency "
        f"{' '.join(map(str, args.concurrency))}`",
        f"Device: {gpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}. HTTP: batch-1 TF Serving REST "
        f"requests, `wrk -t{args.wrk_threads}`, loopback, access log off, `--batch_timeout_micros=500`.",
        "", "In process, `Processor.predict` per batch (ms):", "", *table, "", "Over HTTP:",
    ], rows, [("cuda, batching", "cpu, batching"), ("cuda, batching", "cuda, no batching"),
              ("cuda fp16, batching", "cuda, batching")])


if __name__ == "__main__":
    main()
