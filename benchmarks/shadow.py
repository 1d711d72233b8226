"""What a shadow version costs the served traffic: one-row latency and throughput with and without a shadow.

The peers' XGBoost model (benchmarks/xgb_http.py's recipe) as versions 1 and 2 of one model, all traffic to
version 1 (`version_traffic`), once without a shadow and once with `shadow_version { version: 2 }` (every
answered call also run on version 2); each configuration loaded by `serving bench` (closed loop, one load
process) at each concurrency, the configurations interleaved `--rounds` times so both see the same machine.
Records req/s and p50/p90/p99, and the shadow's outcomes (`serving_shadow_requests_total`) of each step
(its 1 s warm-up included), and writes a Markdown table to benchmarks/results/ with the command that made it.

    python benchmarks/shadow.py [--duration 4] [--concurrency 1 16] [--rounds 2] [--server-args '...']
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a script run from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.report import fresh  # noqa: E402
from benchmarks.xgb_http import free_port, prepare_model  # noqa: E402


def config_text(base: Path, shadow: bool) -> str:
    extra = " shadow_version { version: 2 }" if shadow else ""
    return (f'model_config_list {{ config {{ name: "xgb" base_path: "{base}" model_platform: "xgboost" '
            f"model_version_policy {{ all {{}} }} version_traffic {{ key: 1 value: 100 }}{extra} }} }}\n")


def shadow_outcomes(port: int) -> dict[str, int]:
    """serving_shadow_requests_total by outcome, now (warm-up load included)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    return {m.group(1): int(float(m.group(2))) for m in re.finditer(
        r'serving_shadow_requests_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)', metrics)}


def run_config(work: Path, shadow: bool, args: argparse.Namespace, body: Path) -> list[dict[str, object]]:
    config = work / ("shadow.pbtxt" if shadow else "plain.pbtxt")
    config.write_text(config_text(work / "xgb", shadow))
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "serving", f"--model_config_file={config}", f"--rest_api_port={port}",
           f"--port={grpc_port}", "--host=127.0.0.1", *shlex.split(args.server_args)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(0.1)
        rows = []
        for concurrency in args.concurrency:
            before = shadow_outcomes(port)
            out = work / f"bench-{'shadow' if shadow else 'plain'}-{concurrency}-{time.monotonic_ns()}"
            subprocess.run([sys.executable, "-m", "serving", "bench", "--url",
                            f"http://127.0.0.1:{port}/v1/models/xgb:predict", "--body", str(body), "--concurrency",
                            str(concurrency), "--duration", str(args.duration), "--warmup", "1", "--processes", "1",
                            "--quiet", "--out", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            (step,) = json.loads((out / "report.json").read_text())["steps"]
            after = shadow_outcomes(port)
            lat = step["latency_ms"]
            rows.append({"shadow": shadow, "concurrency": concurrency, "rps": step["achieved_rate"],
                         "p50": lat["p50"], "p90": lat["p90"], "p99": lat["p99"],
                         "outcomes": {k: v - before.get(k, 0) for k, v in after.items()}})
        return rows
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--server-args", default="--max_batch_size=64 --worker_threads=1 --access_log=off")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, row = prepare_model(work)
        (work / "xgb" / "2").mkdir()
        (work / "xgb" / "2" / "model.json").write_bytes((work / "xgb" / "1" / "model.json").read_bytes())
        body = work / "body.json"
        body.write_text(json.dumps({"instances": [row]}))
        started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        rows = []
        for round_ in range(1, args.rounds + 1):
            for shadow in (False, True):
                rows += [{"round": round_, **r} for r in run_config(work, shadow, args, body)]
    lines = [f"# One-row latency with and without a shadow version, {started} UTC", "",
             f"`python benchmarks/shadow.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}` "
             f"(server flags `{args.server_args}`; one load process; {args.duration:g} s per step).", "",
             "| round | shadow | conc | req/s | p50 ms | p90 ms | p99 ms | shadow outcomes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["round"], r["shadow"])):
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())) or "-"
        lines.append(f"| {r['round']} | {'yes' if r['shadow'] else 'no'} | {r['concurrency']} | {r['rps']:,.0f} | "
                     f"{r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} | {outcomes} |")
    lines.append("")
    for conc in args.concurrency:
        plain = [r["rps"] for r in rows if r["concurrency"] == conc and not r["shadow"]]
        shadowed = [r["rps"] for r in rows if r["concurrency"] == conc and r["shadow"]]
        lines.append(f"- c={conc}: with a shadow {sum(shadowed) / len(shadowed):,.0f} req/s = "
                     f"{sum(shadowed) / sum(plain):.2f} of without ({sum(plain) / len(plain):,.0f})")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    path = fresh(args.out, "shadow", time.strftime("%Y-%m-%d-%H%M", time.gmtime()))
    path.write_text(text)
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
