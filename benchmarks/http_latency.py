"""HTTP throughput and latency of serving-engine next to the floor of a Python request path, same run.

Builds an XGBoost binary classifier of the peers' shape (100 trees, depth 6, 32 float features; numpy
data, fixed seed), serves it with `serving` (single-model form) and with `../shared/peers/minimal_path.py`
when present, and drives each with `wrk -t1 -cC` at the given concurrencies with the same one-row body
`{"instances": [[32 floats]]}`. Records req/s, p50/p99 and the server's CPU seconds per request, and
writes a Markdown table to benchmarks/results/ with the command that made it.

    python benchmarks/http_latency.py [--duration 10] [--concurrency 1 4 16 64]

Needs `wrk` (Debian package `wrk`; `make bench` installs it when missing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
N_FEATURES = 32
SEED = 20240601


def make_model(out: Path) -> np.ndarray:
    import xgboost as xgb

    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((20000, N_FEATURES)).astype(np.float32)
    y = (x[:, :16].sum(axis=1) + 0.3 * rng.standard_normal(20000) > 0).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "tree_method": "hist",
                         "nthread": 1, "seed": SEED}, xgb.DMatrix(x, label=y), 100)
    (out / "xgb" / "1").mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "xgb" / "1" / "model.json"))
    booster.save_model(str(out / "xgb" / "model.json"))  # where minimal_path.py looks ($ANCHOR_MODELS/xgb)
    return x[:1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.returncode}")
        try:
            if url.startswith("tcp://"):  # a server with no GET route: a connection is enough
                host, port = url[6:].split(":")
                socket.create_connection((host, int(port)), timeout=1).close()
            else:
                urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} never answered")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_latency(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, body_file: Path, conc: int, duration: int) -> dict[str, float]:
    lua = body_file.with_suffix(".lua")
    lua.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.body = io.open("{body_file}"):read("*a")\n'
    )
    out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "requests": float(re.search(r"(\d+) requests in", out)[1]),  # type: ignore[index]
        "p50": parse_latency(pct["50"]),
        "p99": parse_latency(pct["99"]),
        "errors": float(errors[1]) if errors else 0.0 + (sum(map(int, sock.groups())) if sock else 0),
    }


def measure(name: str, cmd: list[str], url: str, ready: str, body: Path, concs: list[int], dur: int,
            env: dict[str, str]) -> list[dict[str, object]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    rows = []
    try:
        wait_http(ready, proc)
        run_wrk(url, body, 4, 2)  # warm
        for conc in concs:
            before = cpu_seconds(proc.pid)
            r = run_wrk(url, body, conc, dur)
            cpu = cpu_seconds(proc.pid) - before
            rows.append({"server": name, "conc": conc, **r, "cpu_us_per_req": 1e6 * cpu / max(r["requests"], 1)})
            print(f"{name:14s} c={conc:<3d} {r['rps']:>9.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms"
                  f"  cpu {rows[-1]['cpu_us_per_req']:.0f} us/req  errors {r['errors']:.0f}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--server-args", default="", help="extra flags for serving, e.g. '--max_batch_size=64'")
    ap.add_argument("--no-floor", action="store_true", help="skip minimal_path")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    row = make_model(work)
    body = work / "body.json"
    body.write_text(json.dumps({"instances": [[round(float(v), 6) for v in row[0]]]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANCHOR_MODELS": str(work)}
    rows = []
    port = free_port()
    rows += measure("serving-engine", [sys.executable, "-m", "serving", f"--model_base_path={work / 'xgb'}",
                                       "--model_name=xgb", "--host=127.0.0.1", f"--rest_api_port={port}",
                                       "--log_level=WARNING", *args.server_args.split()],
                    f"http://127.0.0.1:{port}/v1/models/xgb:predict", f"http://127.0.0.1:{port}/readyz",
                    body, args.concurrency, args.duration, env)
    if (PEERS / "minimal_path.py").exists() and not args.no_floor:
        port = free_port()
        rows += measure("minimal_path", [sys.executable, str(PEERS / "minimal_path.py"), "--port", str(port)],
                        f"http://127.0.0.1:{port}/", f"tcp://127.0.0.1:{port}", body, args.concurrency,
                        args.duration, env)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"http_latency-{stamp}.md"
    lines = [
        f"# HTTP latency, xgb 100 trees x 32 features, batch-1 requests ({stamp})",
        "",
        f"Command: `python benchmarks/http_latency.py --duration {args.duration} --concurrency "
        f"{' '.join(map(str, args.concurrency))}"
        + (f" --server-args '{args.server_args}'" if args.server_args else "")
        + f"` (wrk -t1, loopback, {os.cpu_count()} cores; same run, same body)",
        "",
        "| server | conc | req/s | p50 ms | p99 ms | server CPU µs/req | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    floor = {r["conc"]: r["rps"] for r in rows if r["server"] == "minimal_path"}
    for r in rows:
        lines.append(f"| {r['server']} | {r['conc']} | {r['rps']:,.0f} | {r['p50']:.3f} | {r['p99']:.3f} | "
                     f"{r['cpu_us_per_req']:.0f} | {r['errors']:.0f} |")
    if floor:
        lines += ["", "serving-engine / minimal_path req/s: " + ", ".join(
            f"c={r['conc']}: {r['rps'] / floor[r['conc']]:.2f}" for r in rows
            if r["server"] == "serving-engine" and r["conc"] in floor)]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
