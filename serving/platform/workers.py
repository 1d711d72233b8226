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
  `/_worker/...` routes of `InternalApi`); the worker a scrape, a statistics call or a reload reaches asks
  its siblings and answers for all of them;
- counted metrics (`w<i>.counted`): what a scrape reported of each worker's counters and histograms, with
  the totals of its earlier lives, so that a restart never takes a summed counter back;
- the last reload's model config (`reload.pickle`), which a worker started later serves too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import fcntl
import logging
import math
import mmap
import operator
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

import httptools
import orjson

log = logging.getLogger("serving.platform.workers")

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
                # A worker that had been ready is being restarted: its siblings keep the tree ready meanwhile.
                restarting = not stopping and status != START_FAILED and self.ready_map[worker.index] != NOT_READY
                self.ready_map[worker.index] = RESTARTING if restarting else NOT_READY
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


# ---- closing a listener without a reset ----

#: A classic BPF socket filter that drops TCP segments with SYN set (the TCP header's flags, byte 13): on a
#: listener, new handshakes (their clients send the SYN again a second later, to a listener still open or
#: to a closed port that refuses it), while the handshakes already answered complete.
DROP_SYN = b"".join(struct.pack("HBBI", *op) for op in (
    (0x30, 0, 0, 13),           # ldb [13]
    (0x45, 0, 1, 0x02),         # jset #SYN, next, skip 1
    (0x06, 0, 0, 0),            # ret #0: drop
    (0x06, 0, 0, 0xFFFFFFFF),   # ret #-1: keep
))
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
#: After a listener stops taking new handshakes, how long those already answered (their ACK on its way, a
#: round trip) have to complete before it closes: a data centre's round trips are well under this.
HANDSHAKE_S = 0.1


def refuse_handshakes(listener: socket.socket) -> None:
    """From now on, `listener` takes no new TCP handshake (DROP_SYN); Linux only, else nothing."""
    program = ctypes.create_string_buffer(DROP_SYN)
    fprog = struct.pack("HP", len(DROP_SYN) // 8, ctypes.addressof(program))  # struct sock_fprog
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as e:  # pragma: no cover - not Linux
        log.warning("cannot stop new handshakes on %s before it closes: %s", listener.getsockname(), e)


async def close_listeners(server: asyncio.Server) -> list[socket.socket]:
    """Close `server`'s listening sockets, returning the connections still queued on them, to be served.

    Closing a listening socket resets every connection in its accept queue, and every handshake under way
    on it: the clients took them as accepted and are sending requests. With SO_REUSEPORT each worker's
    socket has a queue of its own that no other worker can empty, and on a busy machine a worker that is
    not running lets connections gather there. So each socket first stops taking new handshakes, the event
    loop accepts on for HANDSHAKE_S while those under way complete, and the loop's listener is then closed
    on a duplicate of the socket, which keeps the kernel's socket open for it to be accepted from until its
    queue is empty, and closed.
    """
    kept = [socket.socket(fileno=os.dup(sock.fileno())) for sock in server.sockets]
    for listener in kept:
        refuse_handshakes(listener)
    await asyncio.sleep(HANDSHAKE_S)
    server.close()
    taken: list[socket.socket] = []
    for listener in kept:
        with listener:
            listener.setblocking(False)
            while True:
                try:
                    taken.append(listener.accept()[0])
                except BlockingIOError:
                    break
                except ConnectionAbortedError:  # reset by its client while queued
                    continue
                except OSError as e:  # out of file descriptors: what is left is reset
                    log.warning("cannot accept the connections queued on %s: %s", listener.getsockname(), e)
                    break
    return taken


# ---- a worker's siblings ----

class Peers:
    """A worker's view of the tree it belongs to: the readiness bytes and its siblings' sockets."""

    def __init__(self, index: int, count: int, folder: Path) -> None:
        self.index, self.count, self.folder = index, count, folder
        with open(folder / "ready", "r+b") as f:
            self.ready_map = mmap.mmap(f.fileno(), count)

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

    def mark(self, ready: bool, starting: bool = False) -> None:
        """This worker's own readiness, for its siblings to read. A worker that is `starting` where the
        supervisor restarts one that had been ready leaves RESTARTING: it says ready or not once it has
        loaded and joined the ports."""
        if ready:
            self.ready_map[self.index] = READY
        elif not (starting and self.ready_map[self.index] == RESTARTING):
            self.ready_map[self.index] = NOT_READY

    def leave(self) -> None:
        """This worker drains. When it alone does (a SIGTERM to it, not to the supervisor), the supervisor
        restarts it and its siblings answer meanwhile; when the whole tree drains, each worker says
        `draining` itself, whatever the bytes say."""
        if self.ready_map[self.index] == READY:
            self.ready_map[self.index] = RESTARTING

    def all_ready(self) -> bool:
        """Ready as a tree: every worker ready or being restarted after it had been, at least one ready."""
        states = self.ready_map[:]
        return NOT_READY not in states and READY in states

    def count_ready(self) -> int:
        return self.ready_map[:].count(READY)

    def tally(self, states: dict[int, State]) -> list[tuple[int, State]]:
        """The workers' parts of one scrape: each worker's answer (`states`, this worker's and its siblings')
        with the counts of its earlier lives added, and for a worker that did not answer (dead, restarting)
        what it counted till then. What is reported of a worker is recorded first, under a lock the
        workers share, so that no scrape reports less of it than an earlier one, whichever worker answers."""
        parts: list[tuple[int, State]] = []
        with open(self.folder / "counted.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when closed; held for a few file reads
            for index in range(self.count):
                path = self.folder / f"w{index}.counted"
                try:
                    record = orjson.loads(path.read_bytes())
                except FileNotFoundError:
                    record = None
                state = states.get(index)
                if state is not None:
                    parts.append((index, [family for family in state if family["type"] not in CARRIED_TYPES]))
                    updated = counted(record, life_of(state), state)
                    if updated != record:
                        tmp = self.folder / f"w{index}.counted.{self.index}.tmp"
                        tmp.write_bytes(orjson.dumps(updated))
                        os.replace(tmp, path)
                    record = updated
                if record is not None:
                    parts.append((index, fold([record["before"], record["last"]], operator.add)))
        return parts

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

#: Metric families as plain data (`metric_state`): [{"name", "type", "help", "unit", "samples": [[sample
#: name, labels, value], ...]}, ...].
State = list[dict[str, Any]]


def metric_state(families: Iterable[Metric]) -> State:
    """Metric families as plain data, to send to a sibling."""
    return [{"name": m.name, "type": m.type, "help": m.documentation, "unit": m.unit,
             "samples": [[s.name, s.labels, s.value] for s in m.samples]} for m in families]


#: Families whose values are levels of one process (memory, state, start time): kept per worker, with a
#: `worker` label, rather than summed.
LEVEL_TYPES = ("gauge", "info", "stateset", "unknown")
#: Families whose values only grow in one process: what a worker counted before a restart stays in the sum.
CARRIED_TYPES = ("counter", "histogram", "summary")
#: The sample that tells one life of a worker from the next (prometheus-client's process collector, to the
#: hundredth of a second): a restarted worker starts at least FIRST_BACKOFF_S after its predecessor.
LIFE_SAMPLE = "process_start_time_seconds"


def series(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Labels as a key: a sample's series within its family."""
    return tuple(sorted(labels.items()))


def fold(states: Iterable[State], op: Callable[[float, float], float]) -> State:
    """Families of several states as one, sample by sample: `op` of the values of the same sample name and
    labels (of `_created` samples: the earliest)."""
    meta: dict[str, dict[str, Any]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for state in states:
        for family in state:
            name = family["name"]
            if name not in meta:
                meta[name], values[name] = family, {}
            into = values[name]
            for sample_name, labels, value in family["samples"]:
                key = (sample_name, series(labels))
                if key not in into:
                    into[key] = value
                elif sample_name.endswith("_created"):
                    into[key] = min(into[key], value)
                else:
                    into[key] = op(into[key], value)
    return [{"name": name, "type": meta[name]["type"], "help": meta[name]["help"], "unit": meta[name]["unit"],
             "samples": [[sample_name, dict(labels), value] for (sample_name, labels), value in into.items()]}
            for name, into in values.items()]


def merge_metrics(per_worker: Sequence[tuple[int, State]]) -> list[Metric]:
    """One set of families for the tree: counters, histograms and summaries summed across workers (their
    `_created` samples: the earliest), gauges kept per worker under a `worker` label."""
    from prometheus_client.metrics_core import Metric

    labelled = [[{**family, "samples": [[name, {**labels, "worker": str(worker)}, value]
                                        for name, labels, value in family["samples"]]}
                 if family["type"] in LEVEL_TYPES else family for family in state] for worker, state in per_worker]
    merged = []
    for family in fold(labelled, operator.add):
        metric = Metric(family["name"], family["help"], family["type"], family["unit"])
        for name, labels, value in family["samples"]:
            metric.add_sample(name, labels, value)
        merged.append(metric)
    return merged


def life_of(state: State) -> float:
    """When the process that reported `state` started (0 where the process collector is missing)."""
    for family in state:
        if family["name"] == LIFE_SAMPLE:
            return float(family["samples"][0][2]) if family["samples"] else 0.0
    return 0.0


def at_least(state: State, earlier: State) -> State:
    """`state`, each sample no less than `earlier` had it: two scrapes at once may record a worker's answers
    out of order. Only `state`'s series: one gone (an unloaded version's) goes from the record too."""
    had = {(family["name"], name, series(labels)): value
           for family in earlier for name, labels, value in family["samples"]}
    return [{**family, "samples": [[name, labels, max(value, had.get((family["name"], name, series(labels)), value))]
                                   for name, labels, value in family["samples"]]} for family in state]


def counted(record: dict[str, Any] | None, life: float, state: State) -> dict[str, Any]:
    """A worker's record of counts (`{"life", "before", "last"}`: when its present life began, the totals
    of its earlier lives, its present life's last report) once it reported `state` in the life begun at
    `life`."""
    carried = [family for family in state if family["type"] in CARRIED_TYPES]
    if record is None:
        return {"life": life, "before": [], "last": carried}
    if life == record["life"]:
        return {**record, "last": at_least(carried, record["last"])}
    if life > record["life"]:  # restarted: its last life's counts join those before it
        return {"life": life, "before": fold([record["before"], record["last"]], operator.add), "last": carried}
    return record  # a report of an earlier life that came after the next life's: nothing new


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
