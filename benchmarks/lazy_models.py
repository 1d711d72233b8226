"""Many models under a memory budget: `--model_control_mode=lazy` with 200 small generated models.

Makes 200 models in a temporary folder (fixed seeds, no downloads): every other one XGBoost or LightGBM, 8
float features, 10 to 200 trees, so their sizes spread. Serves them with `--model_control_mode=lazy` and
`--model_memory_capacity_bytes=<--budget_mb>` (`--model_min_residency_seconds=<--min_residency>`), and sends
`--requests` batch-1 TF Serving REST predicts from `--concurrency` client threads (one keep-alive connection
each), each for a model drawn from a Zipf distribution (exponent `--zipf`) over the 200, ranked at random.

A request is a miss when its model was not loaded when it was sent: then a load of that model ended while it
was under way (read from the server's JSON log, millisecond times). Reports the hit rate, p50/p99 of hits and
of misses, loads and unloads per second, and the server's resident memory (sampled every 0.2 s) against the
budget, for the whole run and for its second half (the cache warm); and, for scale, the RSS of the same 200
models all loaded at once (`--model_control_mode=poll`).

    python benchmarks/lazy_models.py [--requests 20000] [--concurrency 8] [--budget_mb 12] [--zipf 1.1]
                                     [--min_residency 0]

Writes benchmarks/results/lazy_models-<time>.md with the command.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout

from benchmarks.xgb_http import free_port, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = 200
N_FEATURES = 8
ROW = [0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.9, 0.2]
#: The answers that were not 200: model, status, body.
ERRORS: list[str] = []


def make_models(root: Path, count: int) -> Path:
    """`count` models, XGBoost and LightGBM in turn, 10-200 trees; their model_config.pbtxt."""
    import lightgbm as lgb
    import xgboost as xgb

    rng = np.random.default_rng(7)
    x = rng.standard_normal((500, N_FEATURES)).astype(np.float32)
    y = (x[:, :4].sum(axis=1) + 0.3 * rng.standard_normal(500) > 0).astype(np.float32)
    entries = []
    for i in range(count):
        name, trees = f"m{i:03d}", int(rng.integers(10, 201))
        folder = root / name / "1"
        folder.mkdir(parents=True)
        if i % 2 == 0:
            booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "nthread": 1, "seed": i},
                                xgb.DMatrix(x, label=y), trees)
            booster.save_model(str(folder / "model.json"))
            platform = "xgboost"
        else:
            model = lgb.train({"objective": "regression", "num_leaves": 15, "verbose": -1, "num_threads": 1,
                               "seed": i}, lgb.Dataset(x, label=y), trees)
            model.save_model(str(folder / "model.txt"))
            platform = "lightgbm"
        entries.append(f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "{platform}" }}')
    config = root / "models.pbtxt"
    config.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    return config


def rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class Sampler(threading.Thread):
    """The server's RSS every 0.2 s while the load runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), rss(self.pid)))
            time.sleep(0.2)


def start(config: Path, log: Path, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving", f"--model_config_file={config}", "--host=127.0.0.1",
                             f"--rest_api_port={port}", "--port=0", "--access_log=off", "--log_format=json",
                             "--file_system_poll_wait_seconds=0", *flags],
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=ROOT)
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, port


def drive(port: int, names: list[str], concurrency: int) -> list[tuple[str, float, float, int]]:
    """Send one request per name, from `concurrency` threads; (model, sent, answered, status) each."""
    body = json.dumps({"instances": [ROW]}).encode()
    out: list[tuple[str, float, float, int]] = []
    lock, position = threading.Lock(), [0]
    errors = ERRORS

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = position[0]
                position[0] += 1
            if i >= len(names):
                break
            sent = time.time()
            conn.request("POST", f"/v1/models/{names[i]}:predict", body=body)
            resp = conn.getresponse()
            answer = resp.read()
            with lock:
                out.append((names[i], sent, time.time(), resp.status))
                if resp.status != 200:
                    errors.append(f"{names[i]}: {resp.status} {answer[:300]!r}")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def load_ends(log: Path) -> dict[str, list[float]]:
    """The times (epoch s, ms precision) at which each model's load ended, from the JSON log."""
    ends: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        match = re.match(r"model (\S+) version \d+ is AVAILABLE", doc.get("message", ""))
        if match:
            when = datetime.datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).timestamp()
            ends.setdefault(match.group(1), []).append(when)
    return ends


def classify(results: list[tuple[str, float, float, int]], ends: dict[str, list[float]]) -> list[bool]:
    """Whether each request missed: a load of its model ended while it was under way (log times are
    truncated to the millisecond, hence the millisecond before it was sent)."""
    missed = []
    for name, sent, answered, _ in results:
        times = ends.get(name, [])
        i = bisect.bisect_left(times, sent - 0.001)
        missed.append(i < len(times) and times[i] <= answered)
    return missed


def percentiles(values: list[float]) -> str:
    if not values:
        return "- | -"
    return f"{np.percentile(values, 50) * 1000:.2f} | {np.percentile(values, 99) * 1000:.2f}"


def metric(port: int, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def run_lazy(args: argparse.Namespace, config: Path, work: Path) -> dict[str, Any]:
    log = work / "lazy.log"
    budget = args.budget_mb << 20
    proc, port = start(config, log, "--model_control_mode=lazy", f"--model_memory_capacity_bytes={budget}",
                       f"--model_min_residency_seconds={args.min_residency}")
    try:
        rng = np.random.default_rng(11)
        ranks = rng.permutation(MODELS)  # rank r is model ranks[r]
        weights = 1.0 / np.arange(1, MODELS + 1) ** args.zipf
        draws = rng.choice(MODELS, size=args.requests, p=weights / weights.sum())
        names = [f"m{ranks[d]:03d}" for d in draws]
        idle_rss = rss(proc.pid)
        sampler = Sampler(proc.pid)
        sampler.start()
        started = time.time()
        results = drive(port, names, args.concurrency)
        elapsed = time.time() - started
        sampler.stop.set()
        sampler.join()
        figures = {"elapsed": elapsed, "budget": budget, "idle_rss": idle_rss, "samples": sampler.samples,
                   "started": started,
                   "loads": metric(port, 'serving_model_loads_total{reason="lazy"}'),
                   "evictions": metric(port, "serving_model_evictions_total"),
                   "over_budget": metric(port, "serving_model_over_budget_loads_total"),
                   "memory": metric(port, "serving_model_memory_bytes"),
                   "loaded": metric(port, "serving_models_loaded")}
    finally:
        proc.terminate()
        proc.wait(30)
    results.sort(key=lambda r: r[1])
    return {**figures, "results": results, "missed": classify(results, load_ends(log))}


def eager_rss(config: Path, work: Path) -> int:
    """The RSS of the 200 models all loaded (poll mode), for scale."""
    proc, _ = start(config, work / "eager.log", "--model_control_mode=poll")
    try:
        time.sleep(1.0)
        return rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def rows(run: dict[str, Any], since: float) -> str:
    """One table row for the requests sent after `since` (epoch s)."""
    since = max(since, run["started"])
    picked = [(r, m) for r, m in zip(run["results"], run["missed"], strict=True) if r[1] >= since]
    hits = [r[2] - r[1] for r, m in picked if not m]
    misses = [r[2] - r[1] for r, m in picked if m]
    errors = sum(r[3] != 200 for r, _ in picked)
    rate = len(hits) / len(picked) if picked else 0.0
    rss_values = [v for t, v in run["samples"] if t >= since]
    span = (run["started"] + run["elapsed"] - since) or 1.0
    return (f"{len(picked)} | {errors} | {rate:.1%} | {percentiles(hits)} | {percentiles(misses)} | "
            f"{len(misses) / span:.1f} | {max(rss_values) / 2**20:.0f} | {np.median(rss_values) / 2**20:.0f}")


def report(args: argparse.Namespace, run: dict[str, Any], eager: int, disk: int) -> str:
    stamp = datetime.datetime.now(datetime.UTC)
    half = run["started"] + run["elapsed"] / 2
    lines = [
        f"# 200 models, lazy loading under a memory budget, {stamp:%Y-%m-%d %H:%M} UTC", "",
        f"`python benchmarks/lazy_models.py {' '.join(sys.argv[1:])}`: {MODELS} models (XGBoost and LightGBM in "
        f"turn, 10-200 trees, {disk / 2**20:.1f} MiB on disk in all), Zipf exponent {args.zipf}, "
        f"{args.requests} batch-1 TF Serving REST predicts from {args.concurrency} threads; server flags "
        f"`--model_control_mode=lazy --model_memory_capacity_bytes={run['budget']} "
        f"--model_min_residency_seconds={args.min_residency} --access_log=off`; {os.cpu_count()} cores, "
        f"client and server on the same machine.", "",
        "| requests | sent | errors | hit rate | hits p50 ms | hits p99 ms | misses p50 ms | misses p99 ms | "
        "misses/s | RSS max MiB | RSS median MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| all | {rows(run, 0.0)} |",
        f"| second half | {rows(run, half)} |", "",
        f"- {run['loads']:.0f} lazy loads in {run['elapsed']:.1f} s ({run['loads'] / run['elapsed']:.1f} loads/s), "
        f"{run['evictions']:.0f} models unloaded to make room, {run['over_budget']:.0f} loads over the budget",
        f"- budget {run['budget'] / 2**20:.0f} MiB; at the end {run['loaded']:.0f} models loaded, measured at "
        f"{run['memory'] / 2**20:.1f} MiB (`serving_model_memory_bytes`)",
        f"- RSS of the lazy server before its first request (no model loaded): {run['idle_rss'] / 2**20:.0f} MiB; "
        f"the same {MODELS} models all loaded (`--model_control_mode=poll`): RSS {eager / 2**20:.0f} MiB", "",
        *(f"- error: {e}" for e in ERRORS[:10]),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--budget_mb", type=int, default=12)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--min_residency", type=float, default=0.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = make_models(work / "models", MODELS)
        disk = sum(f.stat().st_size for f in (work / "models").rglob("*") if f.is_file())
        run = run_lazy(args, config, work)
        eager = eager_rss(config, work)
    text = report(args, run, eager, disk)
    print(text)
    stamp = datetime.datetime.now(datetime.UTC)
    out = Path(args.out) / f"lazy_models-{stamp:%Y-%m-%d-%H%M}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
