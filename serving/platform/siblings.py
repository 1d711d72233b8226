"""A worker's siblings under a supervisor (--workers): the readiness bytes they share, and every request that
must speak for the whole tree, asked of each sibling over its Unix socket and merged here: `/metrics`
(counters and histograms summed, with what restarted workers counted before; gauges per worker), Triton's
statistics extension, the status page, reloads and loads/unloads. `Siblings` is the one object the rest of
the server holds for this; `InternalApi` is what a worker answers its siblings with."""

from __future__ import annotations

import asyncio
import copy
import fcntl
import logging
import mmap
import operator
import os
import pickle
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httptools
import orjson

from ..errors import Code, ServingError
from ..ops.metrics import Families
from ..settings import SUPERVISED_ENV
from ..transport.http import Deferred, Request, Response
from .workers import NOT_READY, READY, RESTARTING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

#: The longest a reload or a load may take in a sibling worker (model loads and warm-ups).
RELOAD_TIMEOUT_S = 3600.0


class Siblings:
    """This worker's view of the tree: readiness, and the fan-out to the other workers with the merge of
    their answers. Built from the supervisor's environment (`from_env`); None in a single process."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.index, self.count = peers.index, peers.count

    @classmethod
    def from_env(cls) -> Siblings | None:
        peers = Peers.from_env()
        return cls(peers) if peers is not None else None

    # ---- readiness ----

    def all_ready(self) -> bool:
        return self.peers.all_ready()

    def ready_text(self) -> str:
        """`ready/count`, for /readyz."""
        return f"{self.peers.count_ready()}/{self.count}"

    def mark(self, ready: bool, starting: bool = False) -> None:
        self.peers.mark(ready, starting)

    def leave(self) -> None:
        self.peers.leave()

    # ---- what the tree reports as one ----

    async def metrics(self, own: Families) -> bytes:
        """The Prometheus text of the whole tree: this worker's families (`own`, as `metric_state`) merged with
        its siblings', with what restarted workers counted before (Peers.tally: summed counters never go
        back)."""
        from prometheus_client import generate_latest

        answers = await self.peers.ask("GET", "/_worker/metrics")
        states = {self.index: own, **{i: orjson.loads(body) for i, (status, body) in answers.items() if status == 200}}
        return bytes(generate_latest(MergedRegistry(merge_metrics(self.peers.tally(states)))))  # type: ignore[arg-type]

    async def statistics(self, own: dict[str, Any], name: str, version: int | None) -> dict[str, Any]:
        """Triton's statistics report of every worker, added up (`own` is this worker's)."""
        answers = await self.peers.ask("POST", "/_worker/statistics", orjson.dumps({"name": name, "version": version}))
        return merge_statistics([own, *(orjson.loads(body) for _, (status, body) in sorted(answers.items())
                                        if status == 200)])

    async def status_parts(self) -> list[dict[str, Any]]:
        """The status page's part of each sibling that answered (`StatusApi.local`)."""
        answers = await self.peers.ask("GET", "/_worker/ui")
        return [orjson.loads(body) for _, (status, body) in sorted(answers.items()) if status == 200]

    # ---- what the tree does as one ----

    async def control(self, verb: str, arg: Any) -> None:
        """A load or unload in the sibling workers (ModelControl.siblings); UNKNOWN with each failing worker's
        answer when one failed."""
        there = await self.peers.ask("POST", "/_worker/control", pickle.dumps((verb, arg)), timeout=RELOAD_TIMEOUT_S)
        failed = _failures(there)
        if failed:
            raise ServingError(Code.UNKNOWN, failed)

    async def reload(self, specs: Any, here: Awaitable[None]) -> str:
        """A reload in every worker: saved for workers started later, applied by this one (`here`) and its
        siblings at once. Returns the siblings' failures ("" when none); `here`'s exception is raised."""
        self.peers.save_reload(specs)
        mine, there = await asyncio.gather(here, self.peers.ask(
            "POST", "/_worker/reload", pickle.dumps(specs), timeout=RELOAD_TIMEOUT_S), return_exceptions=True)
        if isinstance(mine, BaseException):
            raise mine
        assert not isinstance(there, BaseException)
        return _failures(there)

    def save_reload(self, specs: Any) -> None:
        self.peers.save_reload(specs)

    def saved_reload(self) -> Any | None:
        return self.peers.saved_reload()

    async def listen(self, connection: Callable[[], asyncio.Protocol]) -> asyncio.Server:
        """This worker's Unix socket, where its siblings ask it (`InternalApi`)."""
        path = self.peers.socket_path(self.index)
        try:
            os.unlink(path)  # left by this worker's predecessor
        except FileNotFoundError:
            pass
        return await asyncio.get_running_loop().create_unix_server(connection, path)


def _failures(answers: dict[int, tuple[int, bytes]]) -> str:
    return "; ".join(f"worker {i}: {body.decode(errors='replace')}" for i, (status, body) in sorted(answers.items())
                     if status != 200)


class InternalApi:
    """The routes a worker answers its siblings on, over its Unix socket in the supervisor's folder (never on
    the TCP port): its own metrics, statistics and status, and its part of a reload or a load."""

    def __init__(self, *, metrics: Callable[[], Families], status: Callable[[], dict[str, Any]],
                 statistics: Callable[[str, int | None], dict[str, Any]],
                 reload: Callable[[Any], Awaitable[None]], control: Callable[[str, Any], Awaitable[Any]]) -> None:
        self.metrics, self.status, self.statistics = metrics, status, statistics
        self.reload, self.control = reload, control

    def __call__(self, request: Request) -> Response | Deferred:
        route = (request.method, request.path)
        if route == ("GET", "/_worker/metrics"):
            return Response(200, orjson.dumps(self.metrics()))
        if route == ("GET", "/_worker/ui"):
            return Response(200, orjson.dumps(self.status()))
        if route == ("POST", "/_worker/statistics"):
            query = orjson.loads(request.body)
            try:
                return Response(200, orjson.dumps(self.statistics(query["name"], query["version"])))
            except ServingError as e:
                return Response(e.http_status, orjson.dumps({"error": e.message}))
        if route == ("POST", "/_worker/reload"):
            specs = pickle.loads(request.body)  # noqa: S301 - a sibling worker, over a socket only this user reaches
            return _later(self.reload(specs), b"reload timed out")
        if route == ("POST", "/_worker/control"):
            verb, arg = pickle.loads(request.body)  # noqa: S301 - as above
            return _later(self.control(verb, arg), b"load timed out")
        return Response(404, b'{"error": "no such worker route"}')


def _later(work: Awaitable[Any], timed_out: bytes) -> Deferred:
    return Deferred(asyncio.ensure_future(work), _done, None, time.monotonic() + RELOAD_TIMEOUT_S,
                    lambda: Response(504, timed_out))


def _done(future: asyncio.Future[Any], _: Any) -> Response:
    failure = None if future.cancelled() else future.exception()
    if failure is None and not future.cancelled():
        return Response(200, b"{}")
    return Response(409, str(failure or "cancelled").encode())


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

    def tally(self, states: dict[int, Families]) -> list[tuple[int, Families]]:
        """The workers' parts of one scrape: each worker's answer (`states`, this worker's and its siblings')
        with the counts of its earlier lives added, and for a worker that did not answer (dead, restarting)
        what it counted till then. What is reported of a worker is recorded first, under a lock the
        workers share, so that no scrape reports less of it than an earlier one, whichever worker answers."""
        parts: list[tuple[int, Families]] = []
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


def fold(states: Iterable[Families], op: Callable[[float, float], float]) -> Families:
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


def merge_metrics(per_worker: Sequence[tuple[int, Families]]) -> list[Metric]:
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


def life_of(state: Families) -> float:
    """When the process that reported `state` started (0 where the process collector is missing)."""
    for family in state:
        if family["name"] == LIFE_SAMPLE:
            return float(family["samples"][0][2]) if family["samples"] else 0.0
    return 0.0


def at_least(state: Families, earlier: Families) -> Families:
    """`state`, each sample no less than `earlier` had it: two scrapes at once may record a worker's answers
    out of order. Only `state`'s series: one gone (an unloaded version's) goes from the record too."""
    had = {(family["name"], name, series(labels)): value
           for family in earlier for name, labels, value in family["samples"]}
    return [{**family, "samples": [[name, labels, max(value, had.get((family["name"], name, series(labels)), value))]
                                   for name, labels, value in family["samples"]]} for family in state]


def counted(record: dict[str, Any] | None, life: float, state: Families) -> dict[str, Any]:
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
