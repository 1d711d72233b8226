"""Memory over time: the server's resident memory under a steady load, sampled every 30 s.

Serves the demo model repository (`python -m serving.tools.demo`, made in a temporary folder) with the server's
defaults (access log on, to /dev/null here), and loads it with `wrk -t1 -c16` for `--duration` seconds,
one TF Serving REST predict after another, alternating between the xgb and lgbm models. Every `--every`
seconds it records the RSS of each server process (the supervisor and each worker with `--workers`). Writes
benchmarks/results/rss_curve-<time>.md with the command.

    python benchmarks/rss_curve.py [--workers 1] [--duration 600] [--every 30]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout

from benchmarks.report import fresh  # noqa: E402
from benchmarks.xgb_http import free_port, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local body = '{"instances": [[0.1, -0.2, 0.3, 1.5, -1.0, 0.0, 0.7, 2.0]]}'
local n = 0
request = function()
  n = n + 1
  local model = (n % 2 == 0) and "xgb" or "lgbm"
  return wrk.format(nil, "/v1/models/" .. model .. ":predict", nil, body)
end
"""


def tree(pid: int) -> list[int]:
    """The pid and its descendants."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(parent, []).append(int(d))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return sorted(out)


def rss_mib(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m[1]) / 1024 if m else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--every", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    subprocess.run([sys.executable, "-m", "serving.tools.demo", str(work)], check=True, capture_output=True)
    port = free_port()
    cmd = [sys.executable, "-m", "serving", f"--model_config_file={work / 'model_config.pbtxt'}", "--host=127.0.0.1",
           f"--rest_api_port={port}", f"--port={free_port()}"]
    if args.workers != 1:
        cmd.append(f"--workers={args.workers}")
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    lua = work / "load.lua"
    lua.write_text(WRK_SCRIPT)
    rows: list[tuple[float, list[float]]] = []
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", server)
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{args.concurrency}", f"-d{args.duration}s", "-s", str(lua),
                                f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            rows.append((elapsed, [rss_mib(p) for p in tree(server.pid)]))
            print(f"{elapsed:6.0f} s  " + "  ".join(f"{r:7.1f}" for r in rows[-1][1]) + " MiB", flush=True)
            if elapsed >= args.duration:
                break
            time.sleep(min(args.every, max(args.duration - elapsed, 0.0)))
        out = wrk.communicate(timeout=60)[0]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    first = sum(rows[0][1])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    n = max(len(r[1]) for r in rows)
    names = ["server"] if n == 1 else ["supervisor", *[f"worker {i}" for i in range(1, n)]]
    lines = [f"# Resident memory under steady load, {args.workers} worker(s), {stamp} UTC", "",
             f"Command: `python benchmarks/rss_curve.py --workers {args.workers} --duration {args.duration} "
             f"--every {args.every}`", "",
             f"Demo models (xgb and lgbm, two versions each), server defaults, `wrk -t1 -c{args.concurrency}` "
             f"alternating xgb and lgbm predicts: {float(rate[1]) if rate else 0:,.0f} req/s, "
             f"{int(bad[1]) if bad else 0} non-2xx. {os.cpu_count()} cores.", "",
             "| time s | " + " | ".join(f"{name} MiB" for name in names) + " | total MiB | vs first |",
             "|---" * (len(names) + 3) + "|"]
    for elapsed, values in rows:
        cells = [f"{v:.1f}" for v in values] + [""] * (n - len(values))
        lines.append(f"| {elapsed:.0f} | " + " | ".join(cells) + f" | {sum(values):.1f} | "
                     f"{100 * (sum(values) / first - 1):+.1f}% |")
    args.out.mkdir(parents=True, exist_ok=True)
    path = fresh(args.out, f"rss_curve-w{args.workers}", stamp)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
