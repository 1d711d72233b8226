"""Batch-1 XGBoost, KServe V2 ModelInfer, driven by Triton's own C++ client (perf_analyzer) over gRPC and
HTTP: serving-engine on its native HTTP/2 transport and on grpc.aio, beside PyTriton, in one run (and TF Serving's
Predict over gRPC, ours only, with --tfserving).

    python benchmarks/grpc_perf_analyzer.py [--duration 10] [--concurrency 1 64] [--streaming] [--tfserving]
        [--async] [--rate 12000] [--quiet]

perf_analyzer comes from `../shared/peers/setup.sh` (/tmp/anchors/pa/perf_analyzer.sh; $PERF_ANALYZER
overrides it), PyTriton from the same setup (skipped when absent). Each row: perf_analyzer's own
inferences/s and p50/p99 (its last stable window), and the server's CPU per call: the growth of the
server's process-tree CPU time over the whole perf_analyzer run, divided by its calls (inferences/s times
the run's wall time, warm-up windows included on both sides of the division), and perf_analyzer's own. With
--quiet, also the p99 of the calls sent while its main thread was quiet: after each measurement window that thread
does the window's bookkeeping, up to a core for a second or more at 20k calls/s, and on a machine whose cores
the server shares, the calls in flight meanwhile wait for the client (`quiet_calls`). Writes a Markdown table to
benchmarks/results/ with the command that made it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - a script run from a checkout

from benchmarks.report import write_report  # noqa: E402
from benchmarks.xgb_http import PEERS, PYTRITON_PY, Load, free_port, prepare_model, serve  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = os.environ.get("PERF_ANALYZER", "/tmp/anchors/pa/perf_analyzer.sh")


def perf_analyzer(url: str, protocol: str, conc: int, args: argparse.Namespace, work: Path,
                  mode: str = "") -> dict[str, float]:
    """One perf_analyzer run at `conc` against `url` (`grpc` or `http`): its figures, its wall time and its own
    CPU per request. `mode`: "" (its default: `conc` threads, one blocking call each), "stream" (`--streaming`),
    "tfserving" (TF Serving's Predict: `--service-kind tfserving`), "async" (`--async`: a few threads, `conc` calls
    in flight) or "rate" (`--request-rate-range args.rate`, with up to `conc` threads: p99 at the same offered load
    whatever a protocol's throughput)."""
    out = work / f"pa-{protocol}-{conc}-{time.monotonic_ns()}.csv"
    # Count windows of at most 2,000 requests per call in flight: a slow server's windows at concurrency 1 would
    # otherwise take minutes (PyTriton's, 40,000 requests, ran past the timeout).
    window = min(args.requests, 2000 * conc)
    if mode == "rate":
        if conc * 1000 < args.rate:  # a thread offers about one call a millisecond here: the rate is not reached
            raise RuntimeError(f"{conc} thread(s) cannot offer {args.rate}/s")
        load = ["--request-rate-range", str(args.rate), "--max-threads", str(conc)]
    else:
        load = ["--concurrency-range", str(conc)]
    cmd = [PERF_ANALYZER, "-m", "xgb", "-u", url, "-i", protocol, "-b", "1", *load,
           *(["--measurement-mode", "count_windows", "--measurement-request-count", str(window)]
             if window else ["--measurement-interval", str(args.duration * 1000)]), "--max-trials", "6",
           # A shared 2-core machine: windows within 30% of each other count as stable (perf_analyzer's 10%
           # fails whole runs here).
           "--stability-percentage", "30", "-f", str(out)]
    cmd += {"stream": ["--streaming"], "async": ["--async"], "tfserving": ["--service-kind", "tfserving"]}.get(mode, [])
    quiet = getattr(args, "quiet", False)
    export = out.with_suffix(".json")
    if quiet:
        cmd += ["--profile-export-file", str(export)]
    log = out.with_suffix(".log")
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
        # The wrapper script execs perf_analyzer: the same pid, whose main thread keeps its id.
        samples = main_thread_cpu(proc, deadline=started + 8 * max(args.duration, window / 300) + 120,
                                  every=0.01 if quiet else 0.5)
    wall, after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode is None:  # past the deadline: its row is left out; the other rows go on
        proc.kill()
        proc.wait()
        raise RuntimeError(f"perf_analyzer did not finish in {wall:.0f} s")
    if proc.returncode == -9:
        raise RuntimeError(f"perf_analyzer killed: over {CLIENT_MEMORY >> 30} GiB resident, or by someone else")
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"perf_analyzer failed: {log.read_text()[-1600:]}")
    with out.open() as f:
        row = next(csv.DictReader(f))
    rps = float(row["Inferences/Second"])
    client = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    figures = {"rps": rps, "requests": rps * wall, "p50": float(row["p50 latency"]) / 1000,
               "p99": float(row["p99 latency"]) / 1000, "errors": 0.0, "client_us": client / max(rps * wall, 1) * 1e6}
    if quiet:
        sent, answered = read_export(export)
        calm = quiet_calls(sent, samples)
        export.unlink()
        if calm.any():
            latency = (answered[calm] - sent[calm]) / 1e6
            figures |= {"quiet_p99": float(np.percentile(latency, 99)), "quiet_share": float(calm.mean())}
    return figures


#: perf_analyzer's resident memory: at an offered rate the server does not keep up with, its backlog grows
#: without end (10.5 GB in 12 minutes at --rate 15000 over HTTP here); past this it is stopped, its row left out.
#: With --quiet it keeps every call for its export: 0.8 GB (gRPC) and 1.5 GB (HTTP) in a c=64 run here.
CLIENT_MEMORY = 8 << 30


def main_thread_cpu(proc: subprocess.Popen[bytes], deadline: float, every: float) -> np.ndarray:
    """Wait for `proc` (until the monotonic `deadline`, or until it holds more than CLIENT_MEMORY: then it is
    killed), sampling its main thread's CPU time every `every` s: rows of (time.time_ns(), ns on a CPU so far,
    from /proc's schedstat), for `quiet_calls`."""
    stat, statm, samples = (Path(f"/proc/{proc.pid}/task/{proc.pid}/schedstat"), Path(f"/proc/{proc.pid}/statm"),
                            [])
    page = os.sysconf("SC_PAGE_SIZE")
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            samples.append((time.time_ns(), int(stat.read_text().split()[0])))
            if int(statm.read_text().split()[1]) * page > CLIENT_MEMORY:
                proc.kill()
        except (OSError, IndexError, ValueError):
            break
        time.sleep(every)
    if time.monotonic() < deadline:
        try:
            proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            pass
    return np.array(samples, dtype=np.int64).reshape(-1, 2)


def read_export(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(sent, first answer) in ns since the epoch of every call in a perf_analyzer --profile-export-file. Its
    responses are written as raw bytes, which need not be UTF-8: they are not read."""
    doc = json.loads(path.read_bytes().decode("utf-8", "replace"))
    calls = [(r["timestamp"], r["response_timestamps"][0]) for e in doc["experiments"] for r in e["requests"]
             if r.get("response_timestamps")]
    both = np.array(calls, dtype=np.int64).reshape(-1, 2)
    return both[:, 0], both[:, 1]


def quiet_calls(sent: np.ndarray, samples: np.ndarray, share: float = 0.1) -> np.ndarray:
    """Which calls were sent while perf_analyzer's main thread was quiet: in the sampling interval holding the
    send, it ran no more than `share` of the interval (its polls for the window's count run less). Chosen by
    the send alone, so a slow call is as likely to be chosen as a fast one; calls outside the samples are not.
    The main thread does perf_analyzer's bookkeeping after each measurement window, up to a core for a second
    or more at 20k calls/s; where the client has no core to spare, its worker threads wait meanwhile."""
    if len(samples) < 2:
        return np.zeros(len(sent), dtype=bool)
    times = samples[:, 0]
    busy = np.diff(samples[:, 1]) > share * np.diff(times)
    at = np.searchsorted(times, sent, "right") - 1
    inside = (at >= 0) & (at < len(busy))
    return inside & ~busy[np.clip(at, 0, len(busy) - 1)]


def measure(name: str, cmd: list[str], ready: str, loads: list[tuple[str, str, str, str]], env: dict[str, str],
            args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Start a server, run each (row name, protocol, url, mode) at every concurrency, stop it (xgb_http's
    `serve`; perf_analyzer warms up by itself)."""

    def load(protocol: str, url: str, mode: str) -> Load:
        return lambda conc, _: perf_analyzer(url, protocol, conc, args, work, mode)

    return serve(cmd, ready, env, [(f"{name} {row}", load(protocol, url, mode))
                                   for row, protocol, url, mode in loads], args, warm=False)


def modes(loads: list[tuple[str, str, str, str]], args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Each load, then its --async and --rate rows when asked for (a streaming row has neither; the native
    transport's server only: the others do not reach the rate)."""
    more = [("async", "async")] * args.async_rows + [(f"rate {args.rate}/s", "rate")] * bool(args.rate)
    return loads + [(f"{row} {label}", protocol, url, mode) for label, mode in more
                    for row, protocol, url, plain in loads if not plain]


def ours(transport: str, repo: Path, args: argparse.Namespace, env: dict[str, str], work: Path) -> list[dict[str, Any]]:
    http, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "serving", f"--model_base_path={repo}", "--model_name=xgb", "--host=127.0.0.1",
           f"--rest_api_port={http}", f"--port={grpc_port}", "--log_level=WARNING", f"--grpc_transport={transport}",
           *args.server_args.split()]
    loads = [("grpc", "grpc", f"127.0.0.1:{grpc_port}", "")]
    if args.streaming:
        loads.append(("grpc stream", "grpc", f"127.0.0.1:{grpc_port}", "stream"))
    if args.tfserving:
        loads.append(("grpc tfserving", "grpc", f"127.0.0.1:{grpc_port}", "tfserving"))
    if transport == "native":  # the HTTP baseline once, from the same server
        loads = modes([*loads, ("http", "http", f"127.0.0.1:{http}", "")], args)
    return measure(f"serving-engine {transport}", cmd, f"http://127.0.0.1:{http}/readyz", loads, env, args, work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds of each perf_analyzer window")
    ap.add_argument("--requests", type=int, default=0,
                    help="windows of this many requests (perf_analyzer's count_windows; at most 2,000 per call in "
                         "flight) in place of --duration's time windows: its time windows stall here at ~20k req/s "
                         "over HTTP (2 cores)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--streaming", action="store_true", help="also ModelStreamInfer (perf_analyzer --streaming)")
    ap.add_argument("--tfserving", action="store_true",
                    help="also TF Serving's Predict over gRPC (perf_analyzer --service-kind tfserving): ours only")
    ap.add_argument("--async", dest="async_rows", action="store_true",
                    help="also perf_analyzer --async rows (a few threads keep `conc` calls in flight)")
    ap.add_argument("--rate", type=int, default=0,
                    help="also rows at this offered request rate (perf_analyzer --request-rate-range, up to `conc` "
                         "threads): p99 at the same load over gRPC and HTTP")
    ap.add_argument("--quiet", action="store_true",
                    help="also each row's p99 over the calls sent while perf_analyzer's main thread was quiet "
                         "(its per-window bookkeeping takes up to a core here; from its --profile-export-file, "
                         "warm-up windows included)")
    ap.add_argument("--one-session", action="store_true",
                    help="start the servers in this session, not one of their own: the kernel then shares the "
                         "cores among the client's and the server's threads, not half to each session")
    ap.add_argument("--server-args", default="--max_batch_size=64 --worker_threads=1")
    ap.add_argument("--skip", nargs="*", default=[], choices=["grpcio", "pytriton"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if not Path(PERF_ANALYZER).exists():
        raise SystemExit(f"perf_analyzer not found at {PERF_ANALYZER}: run ../shared/peers/setup.sh")
    work = Path(tempfile.mkdtemp(prefix="bench-pa-"))
    repo, _ = prepare_model(work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANCHOR_MODELS": str(work)}
    rows = ours("native", repo, args, env, work)
    if "grpcio" not in args.skip:
        rows += ours("grpcio", repo, args, env, work)
    if PYTRITON_PY.exists() and (PEERS / "serve_pytriton.py").exists() and "pytriton" not in args.skip:
        loads = [("grpc", "grpc", "127.0.0.1:18091", ""), ("http", "http", "127.0.0.1:18090", "")]
        rows += measure("pytriton", [str(PYTRITON_PY), str(PEERS / "serve_pytriton.py"), "--model", "xgb",
                                     "--batching", "on"], "http://127.0.0.1:18090/v2/models/xgb/ready", loads,
                        {**env, "LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR")}, args, work)
    write_report(args.out, "grpc_perf_analyzer", "XGBoost (100 trees x 32 features), batch-1 KServe V2 ModelInfer, "
                 "perf_analyzer", [
                     f"Command: `python benchmarks/grpc_perf_analyzer.py --duration {args.duration}"
                     f"{f' --requests {args.requests}' if args.requests else ''} --concurrency "
                     f"{' '.join(map(str, args.concurrency))}{' --streaming' if args.streaming else ''}"
                     f"{' --tfserving' if args.tfserving else ''}"
                     f"{' --async' if args.async_rows else ''}{f' --rate {args.rate}' if args.rate else ''}"
                     f"{' --quiet' if args.quiet else ''}{' --one-session' if args.one_session else ''}"
                     f"{f' --skip {chr(32).join(args.skip)}' if args.skip else ''} "
                     f"--server-args '{args.server_args}'`",
                     f"(perf_analyzer 2.45 from ../shared/peers/setup.sh, one client process, loopback, "
                     f"{os.cpu_count()} cores, every server in the same run; server and client CPU per call over "
                     "the whole perf_analyzer run, warm-up included).",
                 ], rows, [("serving-engine native grpc", "pytriton grpc"),
                           ("serving-engine native grpc", "serving-engine native http"),
                           ("serving-engine native grpc async", "serving-engine native http async"),
                           ("serving-engine native grpc", "serving-engine grpcio grpc")])


if __name__ == "__main__":
    main()
