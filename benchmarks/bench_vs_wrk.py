"""Is `serving bench` ever the bottleneck? It against `wrk -t1` on the floor of a Python request path
(../shared/peers/minimal_path.py, the xgb model, one row), concurrency 64, interleaved rounds, one run.

    python benchmarks/bench_vs_wrk.py [--rounds 3] [--duration 5]

Writes a Markdown table to benchmarks/results/ with the command that made it. Needs wrk and the peers'
models ($ANCHOR_MODELS, default /tmp/anchors/models, from ../shared/peers/make_models.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout

from benchmarks.report import fresh  # noqa: E402
from benchmarks.xgb_http import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
MODELS = Path(os.environ.get("ANCHOR_MODELS", "/tmp/anchors/models"))


def wrk(port: int, body: Path, duration: int) -> float:
    out = subprocess.run(["wrk", "-t1", "-c64", f"-d{duration}s", "-s", str(PEERS / "load" / "v2_post.lua"),
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         env={**os.environ, "BODY_FILE": str(body)}, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def bench(port: int, body: Path, duration: int, processes: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "serving", "bench", "--url", f"http://127.0.0.1:{port}/", "--body",
                        str(body), "--concurrency", "64", "--duration", str(duration), "--warmup", "1",
                        "--processes", str(processes), "--quiet", "--out", out], capture_output=True, check=True,
                       cwd=ROOT)
        step = json.loads((Path(out) / "report.json").read_text())["steps"][0]
        return step["achieved_rate"], step["generator_cpu"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    request = json.loads((MODELS / "request_b1.json").read_text())
    body = Path(tempfile.mkstemp(suffix=".json")[1])
    body.write_text(json.dumps({"instances": [request["inputs"][0]["data"]]}))
    port = free_port()
    server = subprocess.Popen([sys.executable, str(PEERS / "minimal_path.py"), "--port", str(port)],
                              env={**os.environ, "ANCHOR_MODELS": str(MODELS)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    rows = []
    try:
        deadline = time.monotonic() + 60
        while True:  # up once it answers a request
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body.stat().st_size
                                 + body.read_bytes())
                    if sock.recv(100).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        for r in range(args.rounds):
            w = wrk(port, body, args.duration)
            b1, cpu1 = bench(port, body, args.duration, 1)
            b2, cpu2 = bench(port, body, args.duration, 2)
            rows.append((r + 1, w, b1, cpu1, b2, cpu2))
            print(f"round {r + 1}: wrk -t1 {w:,.0f} req/s; serving bench --processes 1 {b1:,.0f} ({cpu1:.0%} of a "
                  f"core); --processes 2 {b2:,.0f} ({cpu2:.0%} each)", flush=True)
    finally:
        server.terminate()
        server.wait()
        body.unlink()
    command = "python benchmarks/bench_vs_wrk.py " + " ".join(sys.argv[1:])
    stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
    lines = [
        f"# serving bench against wrk -t1 on minimal_path.py, concurrency 64, {stamp} UTC", "",
        f"Command: `{command}` (xgb model of ../shared/peers, one row as `{{\"instances\": [[32 floats]]}}`, "
        f"{args.duration} s a run, closed loop, keep-alive, loopback, the rounds interleaved).", "",
        "| round | wrk -t1 req/s | serving bench, 1 process | ratio | its CPU | serving bench, 2 processes | ratio | "
        "CPU each |", "|---|---|---|---|---|---|---|---|"]
    for r, w, b1, cpu1, b2, cpu2 in rows:
        lines.append(f"| {r} | {w:,.0f} | {b1:,.0f} | {b1 / w:.2f} | {cpu1:.0%} | {b2:,.0f} | {b2 / w:.2f} | "
                     f"{cpu2:.0%} |")
    args.out.mkdir(parents=True, exist_ok=True)
    path = fresh(args.out, "bench_vs_wrk", stamp)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
