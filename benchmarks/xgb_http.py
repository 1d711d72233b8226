"""Batch-1 XGBoost over HTTP: serving-engine beside the floor and a peer, all in one run.

The model is the peers' xgb (100 trees, depth 6, 32 float features): `$ANCHOR_MODELS/xgb/model.json`
when `../shared/peers/run_all.sh` made it, else the same recipe built here from numpy data. The one
row is the peers' request row. Measured in the same run, each with `wrk -t1 -cC` at each concurrency:

- serving-engine, TF Serving REST `{"instances": [[32 floats]]}`, batching on (flags: --server-args);
- `../shared/peers/minimal_path.py`, the floor of a Python request path, same body;
- PyTriton (Triton core), KServe V2 JSON body, batching on (max_batch_size 32, 2 ms queue delay), when
  `/tmp/anchors/venv-pytriton` exists (`PHASES="setup models" bash ../shared/peers/run_all.sh`);
- the in-process cost of the same predictions (Booster.inplace_predict, batch 1 and 32).

Records req/s, p50/p99 and the server's CPU per request (process tree), and writes a Markdown table
to benchmarks/results/ with the command that made it.

    python benchmarks/xgb_http.py [--duration 10] [--concurrency 1 4 16 64] [--server-args '...']
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a script run from a checkout
    sys.path.insert(0, str(ROOT))
PEERS = ROOT.parent / "shared" / "peers"
ANCHORS = Path(os.environ.get("ANCHOR_MODELS", "/tmp/anchors/models"))
PYTRITON_PY = Path("/tmp/anchors/venv-pytriton/bin/python")
N_FEATURES = 32
SEED = 20240601


def prepare_model(work: Path) -> tuple[Path, list[float]]:
    """The model as a versioned repository under work/xgb, and the one request row."""
    (work / "xgb" / "1").mkdir(parents=True, exist_ok=True)
    if (ANCHORS / "xgb" / "model.json").exists():
        shutil.copy(ANCHORS / "xgb" / "model.json", work / "xgb" / "1" / "model.json")
        body = json.loads((ANCHORS / "request_b1.json").read_text())
        row = body["inputs"][0]["data"]
    else:
        import xgboost as xgb

        rng = np.random.default_rng(SEED)
        x = rng.standard_normal((20000, N_FEATURES)).astype(np.float32)
        y = (x[:, :16].sum(axis=1) + 0.3 * rng.standard_normal(20000) > 0).astype(np.float32)
        booster = xgb.train({"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "tree_method": "hist",
                             "nthread": 1, "seed": SEED}, xgb.DMatrix(x, label=y), 100)
        booster.save_model(str(work / "xgb" / "1" / "model.json"))
        row = [round(float(v), 6) for v in x[0]]
    shutil.copy(work / "xgb" / "1" / "model.json", work / "xgb" / "model.json")  # minimal_path's place
    return work / "xgb", row


def write_bodies(work: Path, row: list[float]) -> tuple[Path, Path]:
    """The batch-1 request bodies of `row`: TF Serving REST `{"instances": ...}` and KServe V2 JSON."""
    tf_body = work / "tf_body.json"
    tf_body.write_text(json.dumps({"instances": [row]}))
    v2_body = work / "v2_body.json"
    v2_body.write_text(json.dumps({"inputs": [{"name": "input__0", "shape": [1, N_FEATURES], "datatype": "FP32",
                                               "data": row}]}))
    return tf_body, v2_body


def inprocess(model: Path) -> dict[int, float]:
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(model))
    booster.set_param({"nthread": 1})
    x = np.random.default_rng(1).standard_normal((32, N_FEATURES)).astype(np.float32)
    out = {}
    for n in (1, 32):
        times = []
        for _ in range(300):
            t0 = time.perf_counter()
            booster.inplace_predict(x[:n])
            times.append(time.perf_counter() - t0)
        out[n] = float(np.median(times) * 1e6)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.returncode}")
        try:
            if url.startswith("tcp://"):  # a server with no GET route: a connection is enough
                host, port = url[6:].split(":")
                socket.create_connection((host, int(port)), timeout=1).close()
            else:
                urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} never answered")


def tree_cpu(pid: int) -> float:
    """utime+stime of a process and its live descendants, seconds."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                rest = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(rest[1]), []).append(int(d))
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            rest = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
        stack.extend(kids.get(p, []))
    return total


def latency_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, body: Path, conc: int, duration: int, threads: int = 1) -> dict[str, float]:
    lua = body.with_suffix(".lua")
    lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                   f'wrk.body = io.open("{body}"):read("*a")\n')
    cmd = ["wrk", f"-t{min(threads, conc)}", f"-c{conc}", f"-d{duration}s", "--latency", "-s", str(lua), url]
    out = subprocess.run(cmd,
                         capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "requests": float(re.search(r"(\d+) requests in", out)[1]),  # type: ignore[index]
        "p50": latency_ms(pct["50"]),
        "p99": latency_ms(pct["99"]),
        "errors": float(bad[1] if bad else 0) + (sum(map(int, sock.groups())) if sock else 0),
    }


#: A load: (concurrency, seconds) -> the figures of one row (rps, requests, p50, p99 in ms, errors).
Load = Callable[[int, int], dict[str, Any]]


def serve(cmd: list[str], ready: str, env: dict[str, str], loads: list[tuple[str, Load]],
          args: argparse.Namespace, warm: bool = True) -> list[dict[str, Any]]:
    """Start a server, run each (name, load) at each of args.concurrency for args.duration, stop it; the rows
    carry the server's CPU per request (its whole process tree). A load that raises RuntimeError at one
    concurrency (perf_analyzer finding no stable window) leaves that row out; the others run. `warm`: each
    load first runs 2 s at 8 in flight (a load that warms up by itself, as perf_analyzer does, needs not).
    The server gets a session of its own, so the kernel's autogroup gives it and the load generator a core's
    worth each of two; with `args.one_session` it stays in ours (a process group of its own, still stopped as
    one), and the kernel shares the cores among their threads."""
    one = getattr(args, "one_session", False)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=not one, process_group=0 if one else None)
    rows = []
    try:
        wait_ready(ready, proc)
        for name, load in loads:
            if warm:
                load(8, 2)
            for conc in args.concurrency:
                before = tree_cpu(proc.pid)
                try:
                    r = load(conc, args.duration)
                except RuntimeError as e:
                    print(f"{name} c={conc}: {e}", flush=True)
                    continue
                cpu_us = 1e6 * (tree_cpu(proc.pid) - before) / max(r["requests"], 1)
                rows.append({"server": name, "conc": conc, **r, "cpu_us": cpu_us})
                print(f"{name:28s} c={conc:<3d} {r['rps']:>9.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms"
                      f"  cpu {cpu_us:.0f} us/req  errors {r['errors']:.0f}", flush=True)
    except RuntimeError as e:
        print(f"{cmd[:3]}: {e}", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return rows


def measure(name: str, cmd: list[str], url: str, ready: str, body: Path, args: argparse.Namespace,
            env: dict[str, str]) -> list[dict[str, Any]]:
    """`serve` with wrk posting `body` to `url`."""
    threads = getattr(args, "wrk_threads", 1)
    return serve(cmd, ready, env, [(name, lambda conc, seconds: run_wrk(url, body, conc, seconds, threads))], args)


def measure_floor(name: str, body: Path, args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    """`../shared/peers/minimal_path.py` (the floor of a Python request path) on $ANCHOR_MODELS/xgb, `body` an
    `{"instances": [[32 floats]]}` file."""
    port = free_port()
    return measure(name, [sys.executable, str(PEERS / "minimal_path.py"), "--port", str(port)],
                   f"http://127.0.0.1:{port}/", f"tcp://127.0.0.1:{port}", body, args, env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--server-args", default="--max_batch_size=64 --worker_threads=1",
                    help="flags for serving (default: %(default)s)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["minimal_path", "pytriton"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    repo, row = prepare_model(work)
    tf_body, v2_body = write_bodies(work, row)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANCHOR_MODELS": str(work)}
    base = inprocess(repo / "1" / "model.json")
    print(f"in-process inplace_predict: batch 1 {base[1]:.0f} us, batch 32 {base[32]:.0f} us", flush=True)
    rows: list[dict[str, object]] = []
    port = free_port()
    rows += measure("serving-engine", [sys.executable, "-m", "serving", f"--model_base_path={repo}",
                                       "--model_name=xgb", "--host=127.0.0.1", f"--rest_api_port={port}",
                                       "--log_level=WARNING", *args.server_args.split()],
                    f"http://127.0.0.1:{port}/v1/models/xgb:predict", f"http://127.0.0.1:{port}/readyz",
                    tf_body, args, env)
    if (PEERS / "minimal_path.py").exists() and "minimal_path" not in args.skip:
        rows += measure_floor("minimal_path", tf_body, args, env)
    if PYTRITON_PY.exists() and (PEERS / "serve_pytriton.py").exists() and "pytriton" not in args.skip:
        libdir = sysconfig.get_config_var("LIBDIR")  # the python_backend stub needs this libpython
        rows += measure("pytriton", [str(PYTRITON_PY), str(PEERS / "serve_pytriton.py"), "--model", "xgb",
                                     "--batching", "on"],
                        "http://127.0.0.1:18090/v2/models/xgb/infer", "http://127.0.0.1:18090/v2/models/xgb/ready",
                        v2_body, args, {**env, "LD_LIBRARY_PATH": libdir})
    write_table(args, rows, base)


def write_table(args: argparse.Namespace, rows: list[dict[str, object]], base: dict[int, float]) -> None:
    from benchmarks.report import write_report

    concs = " ".join(map(str, args.concurrency))
    write_report(args.out, "xgb_http", "XGBoost (100 trees x 32 features), batch-1 requests over HTTP", [
        f"Command: `python benchmarks/xgb_http.py --duration {args.duration} --concurrency {concs} "
        f"--server-args '{args.server_args}'`",
        f"(wrk -t1, loopback, {os.cpu_count()} cores, every server in the same run; server CPU = process tree).",
        "",
        f"In-process `Booster.inplace_predict`, 1 thread: batch 1 {base[1]:.0f} µs, batch 32 {base[32]:.0f} µs.",
    ], rows, [("serving-engine", "minimal_path"), ("serving-engine", "pytriton")])


if __name__ == "__main__":
    main()
