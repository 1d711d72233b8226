"""Worker processes: past one core.

`--workers N` (N > 1) makes the `serving` process a supervisor. It starts N copies of the server (the
workers), each loading its own models and listening on the same HTTP and gRPC ports with SO_REUSEPORT,
so that the kernel spreads connections over them. The supervisor restarts a worker that dies (with
backoff), forwards SIGTERM and SIGINT, and exits when every worker has exited: 0 after a clean drain.

What must hold for the whole tree is kept by the workers themselves, in the supervisor's private folder:

- readiness: one byte per worker in a shared file (`ready`, mapped in every worker): NOT_READY, READY, or
  RESTARTING (the supervisor's mark of a worker that had been ready, until its successor is); a worker says
  ready to clients when no byte says NOT_READY and at least one says READY, so that a pod whose other
  workers serve stays ready while one is restarted, and is not ready before every worker has loaded;
- metrics, statistics and reloads: each worker also answers on a Unix socket there (`w<i>.sock`, the
  `/_worker/...` routes of `siblings.InternalApi`); the worker a scrape, a statistics call or a reload
  reaches asks its siblings and answers for all of them (`siblings.Siblings`);
- counted metrics (`w<i>.counted`): what a scrape reported of each worker's counters and histograms, with
  the totals of its earlier lives, so that a restart never takes a summed counter back;
- the last reload's model config (`reload.pickle`), which a worker started later serves too.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


from ..settings import SUPERVISED_ENV

log = logging.getLogger("serving.platform.workers")

#: A worker's exit status when it cannot start (a bad configuration, a port it cannot listen on): the
#: supervisor does not restart it but stops, as a restart could only fail the same way.
START_FAILED = 3
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: A worker that lived this long before it died is restarted after FIRST_BACKOFF_S again.
STABLE_S = 30.0
#: A worker's byte in the `ready` file. RESTARTING: it had been ready and died (or is draining); the
#: supervisor restarts it, and until its successor is ready the other workers answer for it.
NOT_READY, READY, RESTARTING = 0, 1, 2


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
        """Look after the workers until they have all exited (or a second signal came): the exit status."""
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
                if status is not None and self._exited(worker, status, now, stopping):
                    failed_start = stopping = True
            if stopping:
                if not self._live():
                    return self._all_exited(failed_start)
            else:
                self._restart_due(now)
            time.sleep(self.poll_s)

    def _exited(self, worker: _Worker, status: int, now: float, stopping: bool) -> bool:
        """Mark a worker that exited and, unless the workers are stopping, plan its restart; whether it could
        not start (then the other workers are stopped)."""
        assert worker.proc is not None
        worker.exit_status = status
        # A worker that had been ready is being restarted: its siblings keep the tree ready meanwhile.
        restarting = not stopping and status != START_FAILED and self.ready_map[worker.index] != NOT_READY
        self.ready_map[worker.index] = RESTARTING if restarting else NOT_READY
        if stopping:
            log.info("worker %d (pid %d) %s", worker.index, worker.proc.pid, describe_exit(status))
            return False
        if status == START_FAILED:
            log.error("worker %d (pid %d) could not start: stopping the other workers", worker.index,
                      worker.proc.pid)
            self._forward(signal.SIGTERM)
            return True
        lived = now - worker.started
        worker.backoff = FIRST_BACKOFF_S if lived >= STABLE_S or not worker.backoff else min(
            worker.backoff * 2, MAX_BACKOFF_S)
        worker.restart_at = now + worker.backoff
        log.error("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s", worker.index,
                  worker.proc.pid, describe_exit(status), lived, worker.backoff)
        return False

    def _all_exited(self, failed_start: bool) -> int:
        """0 when every worker that ran exited cleanly and none failed to start, else 1."""
        clean = all(w.exit_status == 0 for w in self.workers if w.proc is not None)
        log.info("all workers exited%s", "" if clean and not failed_start else " (not cleanly)")
        return 0 if clean and not failed_start else 1

    def _restart_due(self, now: float) -> None:
        for worker in self.workers:
            if worker.restart_at is not None and now >= worker.restart_at:
                self._start(worker)

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
