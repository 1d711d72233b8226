"""ONNX Runtime's OpenVINO execution provider against its default CPU one, on the CPU MLP (32-64-64-1, the
shape of benchmarks/mlp_http.py), through the onnx processor's `providers` option: one `predict` call at
batch 1 and batch 32, in process, all sessions in one run, interleaved round by round.

    python benchmarks/onnx_providers.py [--rounds 30] [--calls 200]

onnxruntime-openvino installs the module `onnxruntime` as onnxruntime does, so it cannot share .venv: the
script makes its own venv at ~/.cache/serving-engine/ov-venv the first time (`python3 -m venv` +
`pip install onnxruntime-openvino numpy onnx`) and runs a worker there that holds the sessions of that
onnxruntime build (OpenVINO, and its CPU provider as the default); the .venv's onnxruntime (CPU) runs in this
process between the worker's rounds. The model is written here with the tests' onnx.helper MLP. Writes a
Markdown table to benchmarks/results/ with the command that made it (or why there is none: no wheel of
onnxruntime-openvino for this Python and platform).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noqa: E402 - a script run from a checkout

from tests.unit.processors.test_onnx_options import OV_VENV, write_mlp  # noqa: E402 - the tests' MLP and venv

SIZES = (32, 64, 64, 1)
BATCHES = (1, 32)
CPU, OPENVINO = "CPUExecutionProvider", "OpenVINOExecutionProvider"
#: label -> the `onnx` options of the session (the processor's default is one intra-op thread).
SESSIONS = {
    "default (CPU provider, 1 intra-op thread)": {"providers": [CPU]},
    "default (CPU provider, ORT's threads)": {"providers": [CPU], "intra_op_threads": 0},
    "OpenVINO provider": {"providers": [OPENVINO, CPU]},
}

# The worker: loads every session in SESSIONS with the onnx processor, then times one round per "go" line.
WORKER = """
import json, sys, time
import numpy as np
import onnxruntime as ort
from pathlib import Path
from processors.onnx_processor import ONNXProcessor

version_dir, calls, sessions, batches = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), (1, 32)
rng = np.random.default_rng(0)
inputs = {b: {"x": rng.standard_normal((b, 32)).astype(np.float32)} for b in batches}
procs = {}
for label, onnx in sessions.items():
    procs[label] = p = ONNXProcessor()
    p.load(version_dir, "cpu", {"onnx": onnx})
    for b in batches:
        for _ in range(20):
            p.predict(inputs[b], "")
outputs = {label: p.predict(inputs[32], "")["y"].ravel().tolist() for label, p in procs.items()}
print(json.dumps({"ort": ort.__version__, "providers": {k: p.session.get_providers() for k, p in procs.items()},
                  "outputs": outputs}), flush=True)
for n, line in enumerate(sys.stdin):
    labels = list(procs)[n % len(procs):] + list(procs)[:n % len(procs)]  # a different first session each round
    out = {}
    for label in labels:
        p = procs[label]
        for b in batches:
            times = []
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                p.predict(inputs[b], "")
                times.append(time.perf_counter_ns() - t0)
            out[f"{label}|{b}"] = times
    print(json.dumps(out), flush=True)
"""


def ov_python() -> Path | None:
    """The venv's python with onnxruntime-openvino, made the first time; None when pip finds no wheel."""
    python = OV_VENV / "bin" / "python"
    probe = [str(python), "-c", f"import onnxruntime as o; assert {OPENVINO!r} in o.get_available_providers()"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    subprocess.run(["python3", "-m", "venv", str(OV_VENV)], check=True)
    install = subprocess.run([str(OV_VENV / "bin" / "pip"), "install", "onnxruntime-openvino", "numpy", "onnx"],
                             capture_output=True, text=True)
    if install.returncode != 0:
        print(install.stdout[-2000:], install.stderr[-2000:], file=sys.stderr)
        return None
    return python


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200, help="calls per session and batch size in a round")
    args = parser.parse_args()
    import numpy as np
    import onnxruntime as ort

    from processors.onnx_processor import ONNXProcessor

    stamp = datetime.datetime.now(datetime.UTC)
    load = os.getloadavg()[0]
    command = " ".join(["python benchmarks/onnx_providers.py", *sys.argv[1:]])
    lines = [f"# ONNX Runtime: OpenVINO provider against the default CPU one, {stamp:%Y-%m-%d %H:%M} UTC", "",
             f"Command: `{command}`", ""]
    out = ROOT / "benchmarks" / "results" / f"onnx_providers-{stamp:%Y-%m-%d-%H%M}.md"
    python = ov_python()
    if python is None:
        lines.append(f"No result: `pip install onnxruntime-openvino` found no wheel for Python "
                     f"{platform.python_version()} on {platform.system()} {platform.machine()}.")
        out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    work = Path(tempfile.mkdtemp(prefix="onnx-providers-"))
    layers = write_mlp(work / "1", SIZES, seed=0, scale=0.2)
    worker = subprocess.Popen([str(python), "-c", WORKER, str(work / "1"), str(args.calls), json.dumps(SESSIONS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert worker.stdin is not None and worker.stdout is not None
    here_label = f"this .venv's onnxruntime {ort.__version__} (CPU provider, 1 intra-op thread)"
    here = ONNXProcessor()
    here.load(work / "1", "cpu", {"onnx": {"providers": [CPU]}})
    rng = np.random.default_rng(0)
    inputs = {b: {"x": rng.standard_normal((b, SIZES[0])).astype(np.float32)} for b in BATCHES}
    for b in BATCHES:
        for _ in range(20):
            here.predict(inputs[b], "")
    hello = json.loads(worker.stdout.readline())
    want = inputs[32]["x"]
    for i, (w, bias) in enumerate(layers):
        want = want @ w + bias
        want = np.maximum(want, 0) if i < len(layers) - 1 else want
    for label, values in hello["outputs"].items():  # every session answers the same numbers
        np.testing.assert_allclose(np.array(values), want.ravel(), rtol=1e-3, atol=1e-4, err_msg=label)
    samples: dict[str, list[int]] = {}
    started = time.monotonic()
    for _ in range(args.rounds):
        worker.stdin.write("go\n")
        worker.stdin.flush()
        for key, times in json.loads(worker.stdout.readline()).items():
            samples.setdefault(key, []).extend(times)
        for b in BATCHES:  # this process's session runs while the worker waits for its next line
            times = samples.setdefault(f"{here_label}|{b}", [])
            for _ in range(args.calls):
                t0 = time.perf_counter_ns()
                here.predict(inputs[b], "")
                times.append(time.perf_counter_ns() - t0)
    worker.stdin.close()
    worker.wait()
    elapsed = time.monotonic() - started
    ov_ort = hello["ort"]
    lines += [
        f"Model: MLP {'-'.join(map(str, SIZES))} (float32, ReLU), written with onnx.helper "
        "(tests/unit/processors/test_onnx_options.py `write_mlp`), through the onnx processor's `predict`.",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, shared with other "
        f"work (load average {load:.1f} at the start). onnxruntime-openvino {ov_ort} in {OV_VENV} (its CPU "
        "provider is the default compared); "
        f"{args.rounds} rounds x {args.calls} calls per session and batch size, sessions interleaved round by "
        f"round ({elapsed:.0f} s).",
        "Providers read back: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in hello["providers"].items()), "",
        "| session | batch | median µs per call | p90 µs | µs per row |", "|---|---|---|---|---|"]
    medians: dict[str, float] = {}
    for label in [*SESSIONS, here_label]:
        for b in BATCHES:
            times = sorted(samples[f"{label}|{b}"])
            med = statistics.median(times) / 1000
            medians[f"{label}|{b}"] = med
            shown = label if label == here_label else f"onnxruntime-openvino {ov_ort}: {label}"
            lines.append(f"| {shown} | {b} | {med:,.1f} | {times[int(len(times) * 0.9)] / 1000:,.1f} | "
                         f"{med / b:,.2f} |")
    ov, default = "OpenVINO provider", "default (CPU provider, 1 intra-op thread)"
    lines += ["", "OpenVINO / default median time per call (below 1: OpenVINO is faster): " + ", ".join(
        f"batch {b}: {medians[f'{ov}|{b}'] / medians[f'{default}|{b}']:.2f}" for b in BATCHES)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
