"""Fairness under 2048-row requests: does a big request hold the event loop, and does the queue still refuse?

The model is xgb_http's (100 trees, depth 6, 32 float features), served by `<python> -m serving` started in
the checkout `--root` (cwd and PYTHONPATH), so the same script measures any tree (before and after a change)
with the same flags: --max_batch_size=16 and --inline_batch_micros=1000 (the defaults), --log_level=DEBUG.
Each server is warmed first with WARM one-row requests, so that its queue moves onto the event-loop thread
(the log says "now run on the event-loop thread"; the report says whether it did). Phases, loopback only:

1. baseline: one client sending 1-row predicts in a closed loop, alone: p50/p99/max;
2. under load: 8 clients sending 2048-row predicts in a closed loop (another process), the same 1-row client,
   and a prober that GETs /readyz on a new connection every 50 ms: latencies, the big clients' req/s and
   rows/s, and the answers that were not 200;
3. admission: a server with --max_queue_size=4 --worker_threads=1 (warmed), 8 big and 16 one-row clients:
   200 vs 503 "queue full"; then a fresh server with the defaults and four concurrent 2048-row requests;
4. disconnects: 20 connections send a 2048-row request at once and each resets (SO_LINGER 0) as soon as the
   server's kernel holds all its bytes (sooner, the server never sees a whole request), then one 1-row request:
   its status and latency, and the server's counters over the step (run on phase 2's server after its load).
   That latency includes parsing the 20 bodies (488 kB of JSON each) on the event-loop thread.

Clients are http.client keep-alive connections (HTTP/1.1), the big ones in a process of their own so that
the measured client does not wait for their GIL. Writes benchmarks/results/fairness-<date>.md with the
command, the machine and the root's `git log -1 --oneline`.

    python benchmarks/fairness.py --root /path/to/checkout [--seconds 10] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import functools
import http.client
import json
import multiprocessing as mp
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout

from benchmarks.report import fresh  # noqa: E402
from benchmarks.xgb_http import N_FEATURES, free_port, prepare_model, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # the only address this script sends to
PREDICT = "/v1/models/xgb:predict"
BIG_ROWS = 2048
BIG_CLIENTS = 8
SMALL_CLIENTS_ADMISSION = 16
WARM = 3000  # one-row requests before measuring: enough for the queue to move onto the loop thread
PROBE_EVERY = 0.05
TIMEOUT = 30.0  # a request's socket timeout: a held loop answers late, but not this late
MAX_REQUESTS = 1_000_000  # per client, a bound besides the phase's time
DISCONNECTS = 20
INLINE_LOG = "now run on the event-loop thread"
BACK_LOG = "go back to the worker threads"


@dataclass
class Tally:
    """What one group of clients saw: latencies (s) of every answer, answers by status, rows answered 200."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    elapsed: float = 0.0

    def add(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.statuses.update(other.statuses)
        self.rows += other.rows
        self.elapsed = max(self.elapsed, other.elapsed)

    def pct(self) -> tuple[float, float, float]:
        """p50, p99, max in ms (nan when nothing answered)."""
        if not self.latencies:
            return float("nan"), float("nan"), float("nan")
        ms = np.asarray(self.latencies) * 1e3
        return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max())

    def not_ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "200")


def body_of(rows: int) -> bytes:
    x = np.random.default_rng(rows).standard_normal((rows, N_FEATURES)).round(3)
    return json.dumps({"instances": x.tolist()}).encode()


def status_of(status: int, text: bytes) -> str:
    if status == 503 and b"queue is full" in text:
        return "503 queue full"
    return str(status)


def ask(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> str:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return status_of(response.status, response.read())


def closed_loop(port: int, body: bytes, rows: int, stopped: Callable[[], bool]) -> Tally:
    """Predicts on one keep-alive connection until `stopped()`, reconnecting after a failure or a close."""
    tally = Tally()
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    start = time.perf_counter()
    try:
        while not stopped() and len(tally.latencies) < MAX_REQUESTS:
            t0 = time.perf_counter()
            try:
                status = ask(conn, "POST", PREDICT, body)
            except (OSError, http.client.HTTPException) as e:
                status = f"error {type(e).__name__}"
                conn.close()
            tally.latencies.append(time.perf_counter() - t0)
            tally.statuses[status] += 1
            tally.rows += rows if status == "200" else 0
    finally:
        conn.close()
    tally.elapsed = time.perf_counter() - start
    return tally


def probe_loop(port: int, path: str, stopped: Callable[[], bool]) -> Tally:
    """GET `path` on a new connection every PROBE_EVERY s (at once after a late answer)."""
    tally = Tally()
    next_at = time.perf_counter()
    while not stopped() and len(tally.latencies) < MAX_REQUESTS:
        time.sleep(max(0.0, next_at - time.perf_counter()))
        next_at += PROBE_EVERY
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
        try:
            status = ask(conn, "GET", path, None)
        except (OSError, http.client.HTTPException) as e:
            status = f"error {type(e).__name__}"
        finally:
            conn.close()
        tally.latencies.append(time.perf_counter() - t0)
        tally.statuses[status] += 1
        next_at = max(next_at, time.perf_counter())
    return tally


def run_threads(jobs: Mapping[str, Sequence[Callable[[], Tally]]], limit: float) -> dict[str, Tally]:
    """Run each job on a thread; sum the tallies of each group."""
    results: dict[str, Tally] = {name: Tally() for name in jobs}
    lock = threading.Lock()

    def run(name: str, job: Callable[[], Tally]) -> None:
        tally = job()
        with lock:
            results[name].add(tally)

    threads = [threading.Thread(target=run, args=(name, job), daemon=True)
               for name, group in jobs.items() for job in group]
    for t in threads:
        t.start()
    deadline = time.monotonic() + limit
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"clients still running {limit:.0f} s after the phase began")
    return results


def load_process(port: int, groups: list[tuple[str, bytes, int, int]], ready: Any, stop: Any, out: Any) -> None:
    """In a process of its own: each group (name, body, rows, clients) in closed loops until `stop` is set."""
    jobs = {name: [functools.partial(closed_loop, port, body, rows, stop.is_set)] * n
            for name, body, rows, n in groups}
    ready.set()
    out.put(run_threads(jobs, 3600))


class Load:
    """Background clients in another process, started on enter and stopped (and collected) by `finish`."""

    def __init__(self, port: int, groups: list[tuple[str, bytes, int, int]]) -> None:
        ctx = mp.get_context("spawn")  # not fork: this process runs threads
        self.ready, self.stop, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=load_process, args=(port, groups, self.ready, self.stop, self.out),
                                daemon=True)

    def __enter__(self) -> Load:
        self.proc.start()
        if not self.ready.wait(60):
            self.__exit__()
            raise RuntimeError("the load process never started")
        time.sleep(0.3)  # the clients connect and send their first requests
        return self

    def finish(self) -> dict[str, Tally]:
        self.stop.set()
        results: dict[str, Tally] = self.out.get(timeout=TIMEOUT + 30)
        return results

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(TIMEOUT + 30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


class Server:
    """`<python> -m serving` in `root` on a free loopback port, its log in `log`; stopped on exit."""

    def __init__(self, args: argparse.Namespace, repo: Path, log: Path, extra: Sequence[str] = ()) -> None:
        self.port, self.log = free_port(), log
        self.cmd = [args.python, "-m", "serving", f"--model_base_path={repo}", "--model_name=xgb",
                    f"--host={HOST}", f"--rest_api_port={self.port}", "--port=0", "--log_level=DEBUG",
                    "--enable_batching=true", "--max_batch_size=16", "--inline_batch_micros=1000", *extra]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(args.root)}
        self.root = args.root

    def __enter__(self) -> Server:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=self.root, env=self.env, stdout=log, stderr=log,
                                         start_new_session=True)
        try:
            wait_ready(f"http://{HOST}:{self.port}/readyz", self.proc)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass

    def says(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text)

    def counters(self) -> dict[str, float]:
        """The xgb queue's serving_batch_* counters from /metrics."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=TIMEOUT)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        found: dict[str, float] = {}
        for name, value in re.findall(r'^serving_batch_(\w+?)_total\{model="xgb"[^}]*\} (\S+)$', text, re.M):
            found[name] = found.get(name, 0.0) + float(value)
        return found

    def warm(self, small: bytes) -> bool:
        """WARM one-row requests; whether the log then says the queue moved onto the event-loop thread."""
        done = iter(range(WARM))
        closed_loop(self.port, small, 1, lambda: next(done, None) is None)
        return self.says(INLINE_LOG) > 0


def until(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def under_load(server: Server, small: bytes, big: bytes, seconds: float) -> tuple[dict[str, Tally], int]:
    """The tallies of the 1-row client, the prober and the big clients, and the batches run inline meanwhile."""
    before = server.counters()
    with Load(server.port, [("big", big, BIG_ROWS, BIG_CLIENTS)]) as load:
        stopped = until(seconds)
        ours = run_threads({"small": [functools.partial(closed_loop, server.port, small, 1, stopped)],
                            "readyz": [functools.partial(probe_loop, server.port, "/readyz", stopped)]},
                           seconds + TIMEOUT + 10)
        results = {**ours, **load.finish()}
    after = server.counters()
    return results, int(after.get("inline_batches", 0) - before.get("inline_batches", 0))


def admission(server: Server, small: bytes, big: bytes, seconds: float) -> dict[str, Tally]:
    with Load(server.port, [("big", big, BIG_ROWS, BIG_CLIENTS),
                            ("small", small, 1, SMALL_CLIENTS_ADMISSION)]) as load:
        time.sleep(seconds)
        return load.finish()


def concurrent_big(server: Server, big: bytes, n: int = 4) -> Tally:
    """n 2048-row requests released at once, each on its own connection."""
    barrier = threading.Barrier(n)

    def one() -> Tally:
        barrier.wait(TIMEOUT)
        asked = iter((False, True))
        return closed_loop(server.port, big, BIG_ROWS, lambda: next(asked, True))

    return run_threads({"four": [one] * n}, TIMEOUT + 10)["four"]


def delivered(s: socket.socket) -> None:
    """Wait until the server's kernel holds every byte sent (nothing unacknowledged): a reset before that
    would drop the tail of the body, and the server would never see a whole request to queue."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0] == 0:
            return
        time.sleep(0.001)
    raise RuntimeError(f"the server took none of a request's last bytes in {TIMEOUT:.0f} s")


def hang_up(port: int, request: bytes, barrier: threading.Barrier) -> Tally:
    """One client that sends `request` (with the others, at once) and resets its connection once it is delivered."""
    tally = Tally()
    try:
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as s:
            barrier.wait(TIMEOUT)
            s.sendall(request)
            delivered(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        tally.statuses["reset"] += 1
    except (OSError, RuntimeError, threading.BrokenBarrierError) as e:
        tally.statuses[f"error {type(e).__name__}"] += 1
    return tally


def disconnects(server: Server, small: bytes, big: bytes) -> tuple[Tally, Tally, dict[str, float]]:
    """DISCONNECTS clients send a big request at once and reset once it is delivered, then one 1-row request:
    the hang-ups, the 1-row answer, and the server's counter deltas over the step."""
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(big)}\r\n\r\n").encode()
    before = server.counters()
    barrier = threading.Barrier(DISCONNECTS)
    gone = run_threads({"gone": [functools.partial(hang_up, server.port, head + big, barrier)] * DISCONNECTS},
                       3 * TIMEOUT)["gone"]
    asked = iter((False, True))
    tally = closed_loop(server.port, small, 1, lambda: next(asked, True))
    time.sleep(1.0)  # the server settles what it took in
    after = server.counters()
    return gone, tally, {k: after.get(k, 0) - before.get(k, 0) for k in ("requests", "rejected", "expired", "batches")}


def git_head(root: Path) -> str:
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else f"(git: {done.stderr.strip()})"

    dirty = git("status", "--porcelain", "--untracked-files=no")
    changed = len(dirty.splitlines()) if dirty and not dirty.startswith("(git") else 0
    return git("log", "-1", "--oneline") + (f" (+ {changed} uncommitted tracked files)" if changed else "")


def fmt(values: tuple[float, float, float]) -> str:
    return " | ".join(f"{v:.1f}" for v in values)


def statuses(tally: Tally) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(tally.statuses.items())) or "none"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def report(args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    base, load, adm = r["baseline"], r["load"], r["admission"]
    big = load["big"]
    gone, one_row, lost = r["disconnect"]
    lines = [
        "Command: `python benchmarks/fairness.py " + shlex.join(sys.argv[1:]) + "`",
        f"Root: `{args.root}` at `{r['head']}`; python `{args.python}`; {os.cpu_count()} cores (nproc), loopback.",
        f"Server flags: `{' '.join(r['flags'])}`; every phase {args.seconds:g} s.",
        "",
        f"After the warm-up ({WARM} one-row requests) the log says \"{INLINE_LOG}\": "
        f"{yes(r['warm_inline'])} (phases 1, 2, 4), {yes(r['admission_warm_inline'])} (phase 3). Over phases 1, "
        f"2 and 4 it moved there {r['inline_moves']} times and back to the workers {r['back_moves']} times; "
        f"batches run on the event-loop thread during phase 2: {r['inline_batches']}.",
        "",
        "| phase | who | answers | p50 ms | p99 ms | max ms | not 200 |",
        "|---|---|---|---|---|---|---|",
        f"| 1 baseline | 1-row client | {len(base.latencies)} | {fmt(base.pct())} | {base.not_ok()} |",
        f"| 2 under load | 1-row client | {len(load['small'].latencies)} | {fmt(load['small'].pct())} "
        f"| {load['small'].not_ok()} |",
        f"| 2 under load | /readyz prober (new connection each) | {len(load['readyz'].latencies)} "
        f"| {fmt(load['readyz'].pct())} | {load['readyz'].not_ok()} |",
        f"| 2 under load | {BIG_CLIENTS} x {BIG_ROWS}-row clients | {len(big.latencies)} | {fmt(big.pct())} "
        f"| {big.not_ok()} |",
        "",
        f"Big clients under load: {big.statuses['200'] / max(big.elapsed, 1e-9):.1f} req/s and "
        f"{big.rows / max(big.elapsed, 1e-9):,.0f} rows/s answered 200 (answers: {statuses(big)}); "
        f"1-row client answers: {statuses(load['small'])}; prober answers: {statuses(load['readyz'])}.",
        "",
        f"3. Admission, `--max_queue_size=4 --worker_threads=1`, {BIG_CLIENTS} big + {SMALL_CLIENTS_ADMISSION} "
        "one-row clients:",
        "",
        "| clients | answers | 200 | 503 queue full | other |",
        "|---|---|---|---|---|",
    ]
    for name in ("big", "small"):
        t = adm[name]
        other = sum(n for s, n in t.statuses.items() if s not in ("200", "503 queue full"))
        lines.append(f"| {name} | {len(t.latencies)} | {t.statuses['200']} | {t.statuses['503 queue full']} "
                     f"| {other} |")
    lines += [
        "",
        f"Fresh server with the defaults, four concurrent {BIG_ROWS}-row requests: {statuses(r['four'])}.",
        "",
        f"4. Disconnects: {DISCONNECTS} connections send a {BIG_ROWS}-row request at once, each reset (SO_LINGER 0) "
        f"as soon as the server's kernel holds all its bytes ({statuses(gone)}), then one 1-row request: "
        f"{statuses(one_row)} in {one_row.pct()[2]:.1f} ms. Server counters over that step: "
        + ", ".join(f"{k} +{v:.0f}" for k, v in lost.items()) + ".",
    ]
    return lines


def write(out: Path, lines: list[str]) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    path = fresh(out, "fairness", stamp)  # two runs in one minute (a before and an after) keep both
    title = f"# Fairness: 1-row requests, probes and admission beside {BIG_ROWS}-row requests, {stamp} UTC"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([title, "", *lines]) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to serve from (default: this one)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs serving")
    args = ap.parse_args()
    args.root = args.root.resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    repo, _ = prepare_model(work)
    small, big = body_of(1), body_of(BIG_ROWS)
    r: dict[str, Any] = {"head": git_head(args.root)}
    with Server(args, repo, work / "server-defaults.log") as server:
        r["flags"] = server.cmd[3:]
        r["warm_inline"] = server.warm(small)
        r["baseline"] = closed_loop(server.port, small, 1, until(args.seconds))
        print(f"phase 1 done: {len(r['baseline'].latencies)} answers", flush=True)
        r["load"], r["inline_batches"] = under_load(server, small, big, args.seconds)
        print("phase 2 done", flush=True)
        time.sleep(1.0)  # the last big requests drain
        r["disconnect"] = disconnects(server, small, big)
        print("phase 4 done", flush=True)
        r["inline_moves"], r["back_moves"] = server.says(INLINE_LOG), server.says(BACK_LOG)
    with Server(args, repo, work / "server-admission.log", ["--max_queue_size=4", "--worker_threads=1"]) as server:
        r["admission_warm_inline"] = server.warm(small)
        r["admission"] = admission(server, small, big, args.seconds)
        print("phase 3 done", flush=True)
    with Server(args, repo, work / "server-fresh.log") as server:
        r["four"] = concurrent_big(server, big)
    lines = report(args, r)
    print("\n".join(lines))
    print(f"wrote {write(args.out, lines)} (server logs in {work})")


if __name__ == "__main__":
    main()
