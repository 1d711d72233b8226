"""Asynchronous services against synchronous calls: XGBoost (the xgb model of benchmarks/xgb_http.py, 100 trees
x 32 features, one row a request), all in one run, each for --duration seconds at --concurrency clients:

- sync: `POST /api/predict/xgb` (the cloud route) of an engine, each client waiting for its answer;
- embedded: the same engine with `--async_service`: the clients put to `/api/predict/xgb` (its own input queue,
  SQLite, durable before the index is answered) while its subscriber answers into `/api/predict/xgb/sink`;
- standalone: `serving queue` and an engine subscribed to it with `--queue_endpoint`; the clients put to the
  queue service.

The two queued modes run on each `--store` (repeatable): `sqlite` (the default, a file in a tmp dir), `redis`
(Debian's redis-server started here on a free port by tests/redis_server.py, appendonly with fsync on every
write: as durable as SQLite's synchronous=FULL; its CPU counted with the servers') or
a `redis://host:port/db` URL of a Redis of yours.

For the queues: puts/s (indexes answered, over the put phase), results/s during the put phase (answers in the
sink over the same seconds) and end to end (every put answered in the sink, from the first put to the last
answer), and the put latency. Writes a Markdown table to benchmarks/results/ with the command that made it.

    python benchmarks/queue_bench.py [--duration 10] [--concurrency 16] [--store sqlite --store redis]
        [--server-args '...']
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a script run from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.report import fresh  # noqa: E402
from benchmarks.xgb_http import free_port, prepare_model, tree_cpu, wait_ready  # noqa: E402
from serving.redact import redact  # noqa: E402
from tests.redis_server import REDIS_SERVER, RedisServer  # noqa: E402 - the tests' redis-server, fsync on every write

BIG = 10_000_000  # queue lengths: the run never fills a queue


async def closed_loop(url: str, body: bytes, conc: int, duration: float) -> tuple[list[float], int, float]:
    """`conc` clients POST `body` back to back for `duration` s: (latencies in s of the 200s, errors, seconds)."""
    latencies: list[float] = []
    errors = 0

    async def client(session: aiohttp.ClientSession, stop: float) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            async with session.post(url, data=body) as resp:
                await resp.read()
                if resp.status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session, start + duration) for _ in range(conc)))
        return latencies, errors, time.perf_counter() - start


def sink_answers(base: str) -> int:
    """Answers put to the sink so far: its last index (nothing reads the sink during the run)."""
    import urllib.request

    with urllib.request.urlopen(f"{base}/api/predict/xgb/sink?_attrs_=true", timeout=10) as resp:
        return int(json.loads(resp.read())["stream.lastEntry"])


def row_of(name: str, latencies: list[float], errors: int, seconds: float, cpu_s: float) -> dict[str, Any]:
    ms = np.array(latencies or [0.0]) * 1000
    return {"mode": name, "ops": len(latencies) / seconds, "requests": len(latencies), "p50": float(np.median(ms)),
            "p99": float(np.percentile(ms, 99)), "errors": errors, "cpu_us": 1e6 * cpu_s / max(len(latencies), 1)}


def queued(name: str, base: str, body: bytes, args: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    """Puts for args.duration, then waits for every answer in the sink."""
    url = f"{base}/api/predict/xgb"
    asyncio.run(closed_loop(url, body, 4, 1.0))  # warm: the model, the connections, the subscriber
    wait_all(base, None, None)  # the warm-up's answers are all in
    first = sink_answers(base)
    cpu0 = sum(tree_cpu(p) for p in pids)
    t0 = time.perf_counter()
    latencies, errors, seconds = asyncio.run(closed_loop(url, body, args.concurrency, args.duration))
    during = sink_answers(base) - first
    total = len(latencies)
    t_end = wait_all(base, first + total, 120)
    cpu = sum(tree_cpu(p) for p in pids) - cpu0
    row = row_of(name, latencies, errors, seconds, cpu)
    row.update(results_during=during / seconds, results_e2e=total / (t_end - t0), drain_s=t_end - t0 - seconds)
    return row


def wait_all(base: str, want: int | None, timeout: float | None) -> float:
    """Waits until the sink holds `want` answers (None: until it stops growing); the time it got there."""
    deadline = time.monotonic() + (timeout or 60)
    last, last_t = -1, time.perf_counter()
    while time.monotonic() < deadline:
        n = sink_answers(base)
        if want is not None and n >= want:
            return time.perf_counter()
        if want is None and n == last and time.perf_counter() - last_t > 0.5:
            return last_t
        if n != last:
            last, last_t = n, time.perf_counter()
        time.sleep(0.02)
    raise RuntimeError(f"the sink has {sink_answers(base)} answers, not {want}")


def start(cmd: list[str], ready: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    wait_ready(ready, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def store_urls(store: str, work: Path, started: list[RedisServer]) -> tuple[str, str, str, list[int]]:
    """(its label, the embedded mode's store URL, the standalone mode's, the pids whose CPU counts with the
    servers'): `sqlite`, `redis` (a redis-server started here, a database per mode) or a redis:// URL."""
    if store == "sqlite":
        return "SQLite", f"sqlite:{work / 'embedded.db'}", f"sqlite:{work / 'standalone.db'}", []
    if store == "redis":
        if REDIS_SERVER is None:
            raise SystemExit("--store redis needs redis-server (apt-get install redis-server), or give a redis:// URL")
        redis = RedisServer(work / f"redis-{len(started)}")
        started.append(redis)
        assert redis.proc is not None
        return "Redis", redis.url(0), redis.url(1), [redis.proc.pid]
    if store.startswith(("redis://", "rediss://")):
        return "Redis", store, store, []  # one database: each mode counts only the answers it made
    raise SystemExit(f"--store {store}: expected sqlite, redis or a redis:// URL")


def engine_cmd(repo: Path, port: int, args: argparse.Namespace, *extra: str) -> list[str]:
    return [sys.executable, "-m", "serving", f"--model_base_path={repo}", "--model_name=xgb", "--host=127.0.0.1",
            f"--rest_api_port={port}", f"--port={free_port()}", "--log_level=WARNING", *args.server_args.split(),
            *extra]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per mode (default: 10)")
    ap.add_argument("--concurrency", type=int, default=16, help="clients (default: 16)")
    ap.add_argument("--server-args", default="--max_batch_size=32 --worker_threads=1",
                    help="the engine's flags, every mode (default: --max_batch_size=32 --worker_threads=1)")
    ap.add_argument("--store", action="append", default=[],
                    help="the queues' store, repeatable: sqlite (default), redis (a redis-server started here) "
                    "or a redis://host:port/db URL")
    args = ap.parse_args()
    args.store = args.store or ["sqlite"]
    args.load = os.getloadavg()[0]  # what else ran: a shared machine's figures are lower
    work = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    repo, row = prepare_model(work)
    body = json.dumps([row]).encode()  # the cloud protocol: a list of rows
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(engine_cmd(repo, port, args), f"{base}/readyz", env)
    try:
        url = f"{base}/api/predict/xgb"
        asyncio.run(closed_loop(url, body, 4, 1.0))  # warm
        cpu0 = tree_cpu(proc.pid)
        latencies, errors, seconds = asyncio.run(closed_loop(url, body, args.concurrency, args.duration))
        rows.append(row_of("sync (cloud route)", latencies, errors, seconds, tree_cpu(proc.pid) - cpu0))
    finally:
        stop(proc)
    print(rows[-1], flush=True)

    redises: list[RedisServer] = []
    try:
        for store in args.store:
            rows += queued_modes(store, repo, work, body, args, env, redises)
    finally:
        for redis in redises:
            redis.stop()
    write(rows, args)


def queued_modes(store: str, repo: Path, work: Path, body: bytes, args: argparse.Namespace, env: dict[str, str],
                 redises: list[RedisServer]) -> list[dict[str, Any]]:
    """The embedded and the standalone modes on one store."""
    label, embedded_url, standalone_url, extra_pids = store_urls(store, work, redises)
    rows = []
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(engine_cmd(repo, port, args, "--async_service", f"--queue_store={embedded_url}",
                            f"--queue_max_length={BIG}", f"--queue_sink_max_length={BIG}"), f"{base}/readyz", env)
    try:
        rows.append(queued(f"embedded async service, {label}", base, body, args, [proc.pid, *extra_pids]))
    finally:
        stop(proc)
    print(rows[-1], flush=True)

    qport = free_port()
    qbase = f"http://127.0.0.1:{qport}"
    queue = start([sys.executable, "-m", "serving", "queue", "--host=127.0.0.1", f"--port={qport}",
                   f"--store={standalone_url}", f"--max_length={BIG}", f"--sink_max_length={BIG}"],
                  f"{qbase}/readyz", env)
    port = free_port()
    try:
        proc = start(engine_cmd(repo, port, args, f"--queue_endpoint={qbase}"), f"http://127.0.0.1:{port}/readyz",
                     env)
        try:
            rows.append(queued(f"serving queue + --queue_endpoint, {label}", qbase, body, args,
                               [queue.pid, proc.pid, *extra_pids]))
        finally:
            stop(proc)
    finally:
        stop(queue)
    print(rows[-1], flush=True)
    return rows


def stores_text(stores: list[str]) -> str:
    said = {"sqlite": "on SQLite in WAL with synchronous=FULL",
            "redis": "on a redis-server started here with appendonly and appendfsync always"}
    return ", ".join(said.get(store, f"on Redis at {redact(store)}") for store in stores)


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    command = f"python benchmarks/queue_bench.py --duration {args.duration:g} --concurrency {args.concurrency}"
    if args.store != ["sqlite"]:
        command += "".join(f" --store {redact(store)}" for store in args.store)
    if args.server_args != "--max_batch_size=32 --worker_threads=1":
        command += f" --server-args '{args.server_args}'"
    redis_cpu = " (the redis-server's included)" if "redis" in args.store else ""
    lines = [f"# Asynchronous services vs synchronous calls, XGBoost (100 trees x 32 features), {stamp} UTC", "",
             f"Command: `{command}`",
             f"(aiohttp clients in one process, loopback, {os.cpu_count()} cores (load average {args.load:.1f} at "
             "the start), every mode in the same run; "
             f"queues {stores_text(args.store)}; CPU = the servers' process trees{redis_cpu}, per put or call).",
             "",
             "| mode | calls or puts/s | p50 ms | p99 ms | results/s during puts | results/s end to end | "
             "drain after puts s | CPU µs/req | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        during = f"{r['results_during']:,.0f}" if "results_during" in r else f"{r['ops']:,.0f}"
        e2e = f"{r['results_e2e']:,.0f}" if "results_e2e" in r else f"{r['ops']:,.0f}"
        drain = f"{r['drain_s']:.2f}" if "drain_s" in r else "-"
        lines.append(f"| {r['mode']} | {r['ops']:,.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {during} | {e2e} | "
                     f"{drain} | {r['cpu_us']:.0f} | {r['errors']} |")
    lines += ["", "p50/p99: of a synchronous call, or of a put (until its index is answered, durable). A "
              "synchronous call's result is its answer, so its results/s is its calls/s."]
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = fresh(out, "queue_bench", stamp)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
