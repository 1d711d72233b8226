"""Worker processes: past one core.

`--workers N` (N > 1) makes the `serving` process a supervisor. It starts N copies of the server (the
workers), each loading its own models and listening on the same HTTP and gRPC ports with SO_REUSEPORT,
so that the kernel spreads connections over them. The supervisor restarts a worker that dies (with
backoff), forwards SIGTERM and SIGINT, and exits when every worker has exited: 0 after a clean drain.

What must hold for the whole tree is kept by the workers themselves, in the supervisor's private folder:

- readiness: one byte per worker in a shared file (`ready`, mapped in every worker); a worker says ready
  to clients only when every byte says ready;
- metrics, statistics and reloads: each worker also answers on a Unix socket there (`w<i>.sock`, the
  `/_worker/...` routes of `InternalApi`); the worker a scrape, a statistics call or a reload reaches asks
  its siblings and answers for all of them;
- the last reload's model config (`reload.pickle`), which a worker started later serves too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import logging
import math
import mmap
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

import httptools

log = logging.getLogger("serving.workers")

#: Set by the supervisor for each worker: "index,count,folder".
SUPERVISED_ENV = "SERVING_SUPERVISED"
#: A worker's exit status when it cannot start (a bad configuration, a port it cannot listen on): the
#: supervisor does not restart it but stops, as a restart could only fail the same way.
START_FAILED = 3
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: A worker that lived this long before it died is restarted after FIRST_BACKOFF_S again.
STABLE_S = 30.0


# ---- how many ----

def _cgroup_v2_files(name: str, root: Path, proc_cgroup: Path) -> list[str]:
    """The text of the cgroup v2 file `name` of this process's group and of every group above it."""
    texts: list[str] = []
    try:
        group = next((line.split(":", 2)[2].strip() for line in proc_cgroup.read_text().splitlines()
                      if line.startswith("0::")), "/")
    except OSError:
        group = "/"
    path = root / group.lstrip("/")
    while True:
        try:
            texts.append((path / name).read_text())
        except OSError:
            pass
        if path == root or root not in path.parents:
            break
        path = path.parent
    return texts


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"),
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 `cpu.max` of its group and the groups
    above it, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None where there is none."""
    limits: list[float] = []
    for text in _cgroup_v2_files("cpu.max", root, proc_cgroup):
        try:
            quota, period = text.split()[:2]
            if quota != "max":
                limits.append(int(quota) / int(period))
        except ValueError:
            pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            limits.append(quota_us / period_us)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup"),
                        proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The memory limit of this process's cgroup in bytes (v2 `memory.max` up the group tree, or v1
    `memory.limit_in_bytes`); None where there is none."""
    limits: list[int] = []
    for text in _cgroup_v2_files("memory.max", root, proc_cgroup):
        if text.strip().isdigit():
            limits.append(int(text))
    try:
        v1 = int((root / "memory" / "memory.limit_in_bytes").read_text())
        if v1 < 1 << 60:  # "no limit" is a page-rounded LONG_MAX
            limits.append(v1)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by the cgroup's CPU quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(cores, 1)


def worker_count(text: str) -> int:
    """`--workers`: a number, or `0` / `auto` for the cores this process may use."""
    key = str(text).strip().lower()
    if key in ("0", "auto"):
        return available_cores()
    try:
        count = int(key)
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"--workers: expected a number of worker processes, 0 or auto, got {text!r}")
    return count


# ---- the supervisor ----

@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float | None = None
    exit_status: int | None = None


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


class Supervisor:
    """Starts `count` workers running `argv` (the server's own arguments) and looks after them."""

    def __init__(self, argv: Sequence[str], count: int, poll_s: float = 0.05) -> None:
        self.argv, self.count, self.poll_s = list(argv), count, poll_s
        self.workers = [_Worker(i) for i in range(count)]
        self.signals: list[int] = []
        self.folder = Path(tempfile.mkdtemp(prefix="serving-workers-"))  # mode 0700: this user's alone
        (self.folder / "ready").write_bytes(bytes(count))
        self.ready = open(self.folder / "ready", "r+b")  # noqa: SIM115 - held as long as the supervisor
        self.ready_map = mmap.mmap(self.ready.fileno(), count)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda sig, _frame: self.signals.append(sig))
        log.info("supervisor (pid %d): starting %d workers", os.getpid(), self.count)
        try:
            for worker in self.workers:
                self._start(worker)
            return self._watch()
        finally:
            self.ready_map.close()
            self.ready.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _start(self, worker: _Worker) -> None:
        env = {**os.environ, SUPERVISED_ENV: f"{worker.index},{self.count},{self.folder}"}
        worker.proc = subprocess.Popen([sys.executable, "-m", "serving", *self.argv], env=env,
                                       preexec_fn=_drain_when_orphaned)  # the supervisor runs no thread
        worker.started, worker.restart_at, worker.exit_status = time.monotonic(), None, None
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def _live(self) -> list[_Worker]:
        return [w for w in self.workers if w.proc is not None and w.exit_status is None]

    def _forward(self, sig: int) -> None:
        for worker in self._live():
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(sig)

    def _watch(self) -> int:
        stopping = False
        failed_start = False
        while True:
            while self.signals:
                sig = self.signals.pop(0)
                self._forward(sig)
                if stopping:  # a second signal: the workers exit at once; so does the supervisor
                    log.warning("%s again: exiting now", signal.Signals(sig).name)
                    self._reap(5.0)
                    return 128 + sig
                stopping = True
                log.info("%s: draining %d workers", signal.Signals(sig).name, len(self._live()))
            now = time.monotonic()
            for worker in self.workers:
                if worker.proc is None or worker.exit_status is not None:
                    continue
                status = worker.proc.poll()
                if status is None:
                    continue
                worker.exit_status = status
                self.ready_map[worker.index] = 0
                if stopping:
                    log.info("worker %d (pid %d) %s", worker.index, worker.proc.pid, describe_exit(status))
                    continue
                if status == START_FAILED:
                    log.error("worker %d (pid %d) could not start: stopping the other workers", worker.index,
                              worker.proc.pid)
                    failed_start = stopping = True
                    self._forward(signal.SIGTERM)
                    continue
                lived = now - worker.started
                worker.backoff = FIRST_BACKOFF_S if lived >= STABLE_S or not worker.backoff else min(
                    worker.backoff * 2, MAX_BACKOFF_S)
                worker.restart_at = now + worker.backoff
                log.error("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s", worker.index,
                          worker.proc.pid, describe_exit(status), lived, worker.backoff)
            if stopping:
                if not self._live():
                    clean = all(w.exit_status == 0 for w in self.workers if w.proc is not None)
                    log.info("all workers exited%s", "" if clean and not failed_start else " (not cleanly)")
                    return 0 if clean and not failed_start else 1
            else:
                for worker in self.workers:
                    if worker.restart_at is not None and now >= worker.restart_at:
                        self._start(worker)
            time.sleep(self.poll_s)

    def _reap(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for worker in self._live():
            assert worker.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(max(deadline - time.monotonic(), 0.01))


def _drain_when_orphaned() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux PR_SET_PDEATHSIG), even by SIGKILL,
    so that no worker serves on without it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def supervise(argv: Sequence[str], count: int) -> int:
    return Supervisor(argv, count).run()


# ---- a worker's siblings ----

class Peers:
    """A worker's view of the tree it belongs to: the readiness bytes and its siblings' sockets."""

    def __init__(self, index: int, count: int, folder: Path) -> None:
        self.index, self.count, self.folder = index, count, folder
        with open(folder / "ready", "r+b") as f:
            self.ready_map = mmap.mmap(f.fileno(), count)
        self.all_ones = b"\x01" * count

    @classmethod
    def from_env(cls) -> Peers | None:
        """The worker's Peers when a supervisor started this process, else None."""
        value = os.environ.get(SUPERVISED_ENV)
        if not value:
            return None
        index, count, folder = value.split(",", 2)
        return cls(int(index), int(count), Path(folder))

    def socket_path(self, index: int) -> str:
        return str(self.folder / f"w{index}.sock")

    def mark(self, ready: bool) -> None:
        """This worker's own readiness, for its siblings to read."""
        self.ready_map[self.index] = 1 if ready else 0

    def all_ready(self) -> bool:
        return self.ready_map[:] == self.all_ones

    def count_ready(self) -> int:
        return self.ready_map[:].count(1)

    def save_reload(self, specs: Any) -> None:
        """The model config of the last reload, for workers started from now on (written whole, renamed)."""
        tmp = self.folder / f"reload.{self.index}.tmp"
        tmp.write_bytes(pickle.dumps(specs))
        os.replace(tmp, self.folder / "reload.pickle")

    def saved_reload(self) -> Any | None:
        try:
            return pickle.loads((self.folder / "reload.pickle").read_bytes())  # noqa: S301 - our own folder
        except FileNotFoundError:
            return None

    async def ask(self, method: str, path: str, body: bytes = b"",
                  timeout: float = 5.0) -> dict[int, tuple[int, bytes]]:
        """The same request to every sibling, at once: {index: (status, body)} of those that answered in
        time (a sibling that is restarting, or stuck, is left out)."""
        others = [i for i in range(self.count) if i != self.index]
        answers = await asyncio.gather(*(self._ask_one(i, method, path, body, timeout) for i in others))
        return {i: a for i, a in zip(others, answers, strict=True) if a is not None}

    async def _ask_one(self, index: int, method: str, path: str, body: bytes,
                       timeout: float) -> tuple[int, bytes] | None:
        try:
            return await asyncio.wait_for(exchange(self.socket_path(index), method, path, body), timeout)
        except (OSError, TimeoutError, httptools.HttpParserError) as e:
            log.warning("worker %d did not answer %s %s: %r", index, method, path, e)
            return None


class _Answer:
    """httptools' callbacks for one response."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)

    def on_message_complete(self) -> None:
        self.done = True


async def exchange(path: str, method: str, target: str, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request over a Unix socket: (status, body)."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: worker\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        answer = _Answer()
        parser = httptools.HttpResponseParser(answer)
        while not answer.done:
            data = await reader.read(65536)
            if not data:
                raise ConnectionResetError("closed before a whole answer")
            parser.feed_data(data)
        return parser.get_status_code(), b"".join(answer.chunks)
    finally:
        writer.close()


# ---- what the tree reports as one ----

def metric_state(families: Iterable[Metric]) -> list[dict[str, Any]]:
    """Metric families as plain data, to send to a sibling."""
    return [{"name": m.name, "type": m.type, "help": m.documentation, "unit": m.unit,
             "samples": [[s.name, s.labels, s.value] for s in m.samples]} for m in families]


#: Families whose values are levels of one process (memory, state, start time): kept per worker, with a
#: `worker` label, rather than summed.
LEVEL_TYPES = ("gauge", "info", "stateset", "unknown")


def merge_metrics(per_worker: Sequence[tuple[int, list[dict[str, Any]]]]) -> list[Metric]:
    """One set of families for the tree: counters, histograms and summaries summed across workers (their
    `_created` samples: the earliest), gauges kept per worker under a `worker` label."""
    from prometheus_client.metrics_core import Metric

    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, state in per_worker:
        for family in state:
            name = family["name"]
            if name not in families:
                families[name] = Metric(name, family["help"], family["type"], family["unit"])
                values[name] = {}
            level = family["type"] in LEVEL_TYPES
            into = values[name]
            for sample_name, labels, value in family["samples"]:
                if level:
                    labels = {**labels, "worker": str(worker)}
                key = (sample_name, tuple(sorted(labels.items())))
                if key not in into or level:
                    into[key] = value
                elif sample_name.endswith("_created"):
                    into[key] = min(into[key], value)
                else:
                    into[key] += value
    for name, metric in families.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class MergedRegistry:
    """What prometheus_client's generate_latest() needs: collect()."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge_statistics(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Triton statistics reports of several workers as one: counts and durations summed per (model,
    version), batch_stats per batch size, last_inference the latest."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for report in reports:
        for stat in report.get("model_stats", []):
            key = (stat["name"], stat["version"])
            if key in merged:
                _add_stat(merged[key], stat)
            else:
                merged[key] = copy.deepcopy(stat)
    return {"model_stats": list(merged.values())}


def _add_stat(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if key == "last_inference":
            into[key] = max(into.get(key, 0), value)
        elif key == "batch_stats":
            sizes = {b["batch_size"]: b for b in into.setdefault(key, [])}
            for batch in value:
                if batch["batch_size"] in sizes:
                    _add_stat(sizes[batch["batch_size"]], {k: v for k, v in batch.items() if k != "batch_size"})
                else:
                    into[key].append(copy.deepcopy(batch))
            into[key].sort(key=lambda b: b["batch_size"])
        elif isinstance(value, dict):
            _add_stat(into.setdefault(key, {}), value)
        elif isinstance(value, int | float) and key not in ("name", "version"):
            into[key] = into.get(key, 0) + value
