"""The status page: `GET /ui` (and `GET /` for a browser) answers one self-contained page (index.html, shipped
in the package, nothing fetched from elsewhere) that polls `GET /ui/api/status`.

The JSON says what the server serves (models, versions with state, labels, traffic, shadow, load error,
signatures, a request body to try per protocol; whether each model is loaded or pinned, its memory and its
last use, and the models loaded of those known with their memory of the budget), how it is doing (per
version, series over the last `WINDOW` seconds: requests/s, error rate, p50/p99 latency, queue depth, batch
rows, inline share), the process (uptime, workers, CPU, memory, connections), an async service's queues (each
queue's length, items held uncommitted, oldest item's age, limits, watchers, the subscriber's window, the store
with its password masked, operations), the effective flags (never the token) and the recent errors and
request-log samples.

The series cost the request path nothing: a sampler reads the counters and histograms each version's record
already keeps (serving/core/stats.py, the batch queues' stats) once per `INTERVAL` seconds and keeps the
differences in a ring buffer per version, and the page's series made of them a point at a time, so a poll
only copies lists. Under --workers every worker samples its own; the one answering adds its siblings' points
(same second) to its own and makes the series of the sums (numpy, every point at once), so the page shows
the whole server.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from ...codecs.dtypes import NAMES
from ...codecs.jsonutil import dumps
from ...core.remote import is_remote
from ...core.repository import ManagedModel, ModelManager, State, VersionStatus, resident_bytes
from ...core.signature import PREDICT_METHOD, STRING, Signature, TensorSpec
from ...core.stats import LATENCY_BUCKETS
from ...errors import ServingError, invalid_argument
from ...ops.metrics import RequestMetrics
from ...ops.requestlog import RequestLogger
from ...platform.siblings import Siblings
from ...protocols.adapters import answer_when
from ...protocols.tfserving.codec import encode_error
from ...queue.queue import AnyQueue
from ...queue.remote import RemoteQueues
from ...queue.service import SINK, EmbeddedQueues
from ...queue.store import SqliteStore, Store
from ...queue.store_redis import RedisStore
from ...redact import redact
from ...settings import Settings
from ...transport.auth import TokenAuth
from ...transport.http import Deferred, Request, Response

log = logging.getLogger(__name__)

#: Seconds between samples, and how many seconds of them a series keeps.
INTERVAL = 1.0
WINDOW = 300
POINTS = int(WINDOW / INTERVAL)
#: The settings never shown.
SECRET_SETTINGS = frozenset({"token", "admin_token"})

Key = tuple[str, int]  # (model, version)


@dataclasses.dataclass
class Point:
    """One interval of one version: what happened in it (differences of the counters) and the queue then.
    Also a version's counters as last read (`t` 0), which the next point is the difference from."""

    t: int  # the epoch second it ended
    ok: int = 0
    errors: int = 0
    latency: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    queue: int = 0
    batches: int = 0
    rows: int = 0
    inline: int = 0

    def add(self, other: Point) -> None:
        self.ok += other.ok
        self.errors += other.errors
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        self.queue += other.queue
        self.batches += other.batches
        self.rows += other.rows
        self.inline += other.inline


class Sampler:
    """Reads the versions' records and batch queues every INTERVAL s into the page's series of each version
    (and, under --workers, a ring of its raw Points for a sibling to add up), and the process's CPU time into
    a CPU share."""

    def __init__(self, manager: ModelManager, keep_points: bool = False) -> None:
        self.manager = manager
        self.keep_points = keep_points
        self.rings: dict[Key, collections.deque[Point]] = {}
        #: The page's series of each version, extended a point at a time (a poll only copies them).
        self.series: dict[Key, dict[str, collections.deque[Any]]] = {}
        self.totals: dict[Key, Point] = {}
        self.cpu_percent = 0.0
        self._cpu = (time.monotonic(), _cpu_seconds())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL - time.time() % INTERVAL)  # on the second: workers' points line up
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a bug here must not end the page's series for good
                log.exception("status page: a sample failed")

    def sample(self) -> None:
        now = int(round(time.time()))
        counted = self._read()
        seen = set()
        for key, totals in counted.items():
            before = self.totals.get(key) or Point(0)
            if totals.batches < before.batches:  # the version was loaded again: its queues' counters started over
                before = dataclasses.replace(before, batches=0, rows=0, inline=0)
            point = Point(now, totals.ok - before.ok, totals.errors - before.errors,
                          [a - b for a, b in zip(totals.latency, before.latency, strict=True)],
                          queue_depth(self.manager, key), totals.batches - before.batches,
                          totals.rows - before.rows, totals.inline - before.inline)
            self.totals[key] = totals
            kept = self.series.get(key)
            if kept is None:
                kept = self.series[key] = {k: collections.deque(maxlen=POINTS) for k in SERIES}
                if self.keep_points:
                    self.rings[key] = collections.deque(maxlen=POINTS)
            for name, values in series([point]).items():
                kept[name].extend(values)
            if self.keep_points:
                self.rings[key].append(point)
            seen.add(key)
        for key in set(self.series) - seen:  # a version gone (unloaded, or its model removed)
            del self.series[key]
            self.rings.pop(key, None)
            self.totals.pop(key, None)
        clock, cpu = time.monotonic(), _cpu_seconds()
        if clock > self._cpu[0]:
            self.cpu_percent = 100.0 * (cpu - self._cpu[1]) / (clock - self._cpu[0])
        self._cpu = (clock, cpu)

    def _read(self) -> dict[Key, Point]:
        counted: dict[Key, Point] = {}
        for name, model in self.manager.models.items():
            for version, status in model.versions.items():
                if status.state in (State.AVAILABLE, State.UNLOADING, State.LOADING):
                    counted[(name, version)] = Point(0)
        for servable in self.manager.loaded():
            totals = counted.get((servable.model, servable.version))
            if totals is None:
                continue
            for series in servable.record.series.values():
                totals.ok += series.ok
                totals.errors += sum(series.codes.values())
                totals.latency = [a + b for a, b in zip(totals.latency, series.latency.counts, strict=True)]
            for stats in servable.stats():
                totals.batches += stats.counters.batches
                totals.rows += stats.counters.rows
                totals.inline += stats.counters.inline_batches
        return counted

    def points(self) -> dict[str, list[list[Any]]]:
        """The rings as plain data (what a worker sends its sibling): "model\\tversion" -> point rows."""
        return {f"{m}\t{v}": [[p.t, p.ok, p.errors, p.latency, p.queue, p.batches, p.rows, p.inline] for p in ring]
                for (m, v), ring in self.rings.items()}


def queue_depth(manager: ModelManager, key: Key) -> int:
    """Requests waiting in the version's batch queues now."""
    model = manager.models.get(key[0])
    status = model.versions.get(key[1]) if model is not None else None
    servable = status.servable if status is not None else None
    return sum(q.waiting for q in servable.queues.values()) if servable is not None else 0


def merge_points(own: Mapping[str, list[list[Any]]], others: Iterable[Mapping[str, list[list[Any]]]]
                 ) -> dict[Key, list[Point]]:
    """Every worker's points of a version added up, second by second."""
    merged: dict[Key, dict[int, Point]] = {}
    for points in (own, *others):
        for key_text, rows in points.items():
            model, _, version = key_text.rpartition("\t")
            by_second = merged.setdefault((model, int(version)), {})
            for row in rows:
                point = Point(*row)
                if point.t in by_second:
                    by_second[point.t].add(point)
                else:
                    by_second[point.t] = point
    return {key: [by_second[t] for t in sorted(by_second)] for key, by_second in merged.items()}


def quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile (seconds) of a histogram's bucket counts, linear within its bucket as Prometheus's
    histogram_quantile; None without observations."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(counts):
        if seen + count >= rank and count:
            low = LATENCY_BUCKETS[i - 1] if i else 0.0
            if i >= len(LATENCY_BUCKETS):  # above the last bound: say the last bound
                return LATENCY_BUCKETS[-1]
            return low + (LATENCY_BUCKETS[i] - low) * (rank - seen) / count
        seen += count
    return LATENCY_BUCKETS[-1]


def quantiles(counts: np.ndarray, q: float) -> np.ndarray:
    """quantile() of every row of a (points, buckets) array at once (NaN where a row has no observation):
    a poll of the page reads 300 points per version, too many for a Python loop on the event loop."""
    total = counts.sum(axis=1)
    rank = q * total
    cumulative = counts.cumsum(axis=1)
    hit = (cumulative >= rank[:, None]) & (counts > 0)
    index = hit.argmax(axis=1)
    rows = np.arange(len(counts))
    count = counts[rows, index]
    seen = cumulative[rows, index] - count
    upper = np.array([*LATENCY_BUCKETS, LATENCY_BUCKETS[-1]])  # above the last bound: say the last bound
    lower = np.array([0.0, *LATENCY_BUCKETS])
    lower[-1] = LATENCY_BUCKETS[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = lower[index] + (upper[index] - lower[index]) * (rank - seen) / count
    return np.where(total > 0, value, np.nan)


def series(points: list[Point]) -> dict[str, list[Any]]:
    """The page's series of a version: one value per interval (null where there is none)."""
    if not points:
        return {k: [] for k in SERIES}
    latency = np.array([p.latency for p in points], dtype=np.float64)
    ok, errors, queue, batches, rows, inline = np.array(
        [(p.ok, p.errors, p.queue, p.batches, p.rows, p.inline) for p in points], dtype=np.float64).T
    calls = ok + errors
    with np.errstate(invalid="ignore", divide="ignore"):
        per_batch = np.where(batches > 0, rows / batches, np.nan)
        inline_share = np.where(batches > 0, inline / batches, np.nan)
        error_rate = np.where(calls > 0, errors / calls, 0.0)
    return {
        "t": [p.t for p in points],
        "rps": _values(calls / INTERVAL, 3),
        "error_rate": _values(error_rate, 4),
        "p50_ms": _values(quantiles(latency, 0.5) * 1000, 3),
        "p99_ms": _values(quantiles(latency, 0.99) * 1000, 3),
        "queue": [int(v) for v in queue],
        "batch_rows": _values(per_batch, 2),
        "inline_share": _values(inline_share, 3),
    }


SERIES = ("t", "rps", "error_rate", "p50_ms", "p99_ms", "queue", "batch_rows", "inline_share")


def _values(array: np.ndarray, digits: int) -> list[float | None]:
    """Rounded, NaN (no request, no batch) as None."""
    return [None if v != v else v for v in np.round(array, digits).tolist()]


def after(values: dict[str, list[Any]], since: int | None) -> dict[str, list[Any]]:
    """The points of a series later than the second `since` (all of them for None)."""
    if since is None:
        return values
    start = bisect.bisect_right(values["t"], since)
    return {k: v[start:] for k, v in values.items()}


def latest(values: dict[str, list[Any]]) -> dict[str, Any]:
    """The last interval's values ("now")."""
    return {k: v[-1] if v else None for k, v in values.items() if k != "t"}


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# ---------------------------------------------------------------- a request body to try, per protocol


def _example_value(spec: TensorSpec) -> Any:
    """One row of an input: zeros of its dtype, of its shape past the batch axis (an unknown dim: 1)."""
    kind = spec.dtype.kind
    zero: Any = "" if spec.dtype == STRING or kind in "OSU" else False if kind == "b" else 0 if kind in "iu" \
        else 0.0
    dims = [d if d and d > 0 else 1 for d in (spec.shape or (None, 1))[1:]]
    value: Any = zero
    for d in reversed(dims):
        value = [value] * d if not isinstance(value, list) else [list(value) for _ in range(d)]
    return value


def _flat(value: Any) -> list[Any]:
    return list(np.asarray(value, dtype=object).reshape(-1)) if isinstance(value, list) else [value]


def try_requests(model: str, version: int, sig: Signature, default: bool, served: bool = False
                 ) -> list[dict[str, Any]]:
    """A request body per protocol that the version answers: TF Serving REST, KServe V2, and, for the version
    that answers requests naming none (`served`), the cloud route of a tabular model (one 2-D input)."""

    if sig.method_name != PREDICT_METHOD:
        return []
    rows = {name: _example_value(spec) for name, spec in sig.inputs.items()}
    binary = [name for name, spec in sig.inputs.items() if spec.dtype == STRING or spec.dtype.kind in "OSU"]
    tf_body: dict[str, Any] = {"instances": [next(iter(rows.values())) if len(rows) == 1 else rows]}
    if not default:
        tf_body = {"signature_name": sig.name, **tf_body}
    out = [{"protocol": "tfserving", "label": "TF Serving REST", "method": "POST",
            "path": f"/v1/models/{model}/versions/{version}:predict", "body": tf_body, "binary_inputs": binary}]
    if all(spec.dtype in NAMES for spec in sig.inputs.values()):
        inputs = []
        for name, spec in sig.inputs.items():
            value = rows[name]
            shape = [1, *np.shape(value)] if isinstance(value, list) else [1]
            inputs.append({"name": name, "shape": shape, "datatype": NAMES[spec.dtype], "data": _flat(value)})
        out.append({"protocol": "kserve", "label": "KServe V2", "method": "POST",
                    "path": f"/v2/models/{model}/versions/{version}/infer", "body": {"inputs": inputs},
                    "binary_inputs": []})
    if default and served and len(sig.inputs) == 1:
        (spec,) = sig.inputs.values()
        if spec.shape is not None and len(spec.shape) == 2:
            out.append({"protocol": "cloud", "label": "Cloud route", "method": "POST",
                        "path": f"/api/predict/{model}", "body": [rows[spec.name]], "binary_inputs": []})
    return out


# ---------------------------------------------------------------- the status document


def tensor_json(spec: TensorSpec) -> dict[str, Any]:
    dtype = "string" if spec.dtype == STRING or spec.dtype.kind in "OSU" else str(spec.dtype)
    return {"name": spec.name, "dtype": dtype, "shape": list(spec.shape) if spec.shape is not None else None}


def models_json(manager: ModelManager, series_of: Callable[[Key], dict[str, list[Any]]],
                since: int | None = None) -> list[dict[str, Any]]:
    models = []
    for name, model in sorted(manager.models.items()):
        spec = model.spec
        versions = []
        for version, status in sorted(model.versions.items()):
            doc = version_json(model, version, status)
            values = series_of((name, version))
            doc["now"], doc["series"] = latest(values), after(values, since)
            versions.append(doc)
        models.append({
            "name": name, "platform": spec.platform or "", "base_path": redact(spec.base_path),
            "error": "" if versions or manager.lazy else model_error(manager, name, spec.base_path),
            **residency_json(manager, name, model),
            "labels": dict(sorted(model.labels.items())),
            "traffic": {str(v): w for v, w in sorted(model.traffic.items())},
            "shadow": {"version": spec.shadow.version, "sample_rate": spec.shadow.sample_rate}
            if spec.shadow is not None else None,
            "request_log": {"path": spec.request_log.prefix, "sample_rate": spec.request_log.sample_rate}
            if spec.request_log is not None else None,
            "versions": versions,
        })
    # A model whose explicit load failed is not in the manager (nothing of it loaded): its error still shows.
    models += [{"name": name, "platform": "", "base_path": "", "error": failure.message, "labels": {},
                "traffic": {}, "shadow": None, "request_log": None, "versions": [], "loaded": False,
                "pinned": False, "size_bytes": 0, "last_used": None}
               for name, failure in sorted(manager.failures.items()) if name not in manager.models]
    return sorted(models, key=lambda m: m["name"])


def residency_json(manager: ModelManager, name: str, model: ManagedModel) -> dict[str, Any]:
    """Whether a model is loaded and pinned, the memory its versions took, its last use (epoch seconds; None
    before any)."""
    size = manager.size_of(name)
    last_used = time.time() - (time.monotonic() - model.last_used) if model.last_used else None
    loaded = any(s.servable is not None for s in model.versions.values())
    return {"loaded": loaded, "pinned": model.spec.pinned, "size_bytes": size, "last_used": last_used}


def residency_part(manager: ModelManager) -> dict[str, Any]:
    """This process's models: known and loaded, their memory and the budget (None: no budget), the unloads
    made to make room."""
    loaded = manager.loaded_models()
    budget = manager.budget
    return {"lazy": manager.lazy, "known": len(manager.models), "loaded": len(loaded),
            "memory_bytes": sum(manager.size_of(name) for name in loaded),
            "budget_bytes": budget.capacity if budget is not None else None,
            "evictions": budget.evictions if budget is not None else 0}


def residency_sum(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' residency parts added up (the models known are each worker's, the same)."""
    first = parts[0]
    budgets = [p["budget_bytes"] for p in parts if p.get("budget_bytes") is not None]
    return {"lazy": first["lazy"], "known": first["known"], "loaded": sum(p["loaded"] for p in parts),
            "memory_bytes": sum(p["memory_bytes"] for p in parts), "budget_bytes": sum(budgets) if budgets else None,
            "evictions": sum(p["evictions"] for p in parts)}


def version_json(model: ManagedModel, version: int, status: VersionStatus) -> dict[str, Any]:
    """One version: its state and load, and once loaded its device, batching, signatures and requests to try."""
    spec, servable = model.spec, status.servable
    doc: dict[str, Any] = {
        "version": version, "state": status.state.value,
        "error": status.error.message if status.error is not None else "",
        "processor": status.platform or spec.platform or "", "device": spec.device,
        "load_seconds": round(status.load_seconds, 3), "warmup_seconds": round(status.warmup_seconds, 3),
        "warmup_requests": status.warmup_requests,
        "size_bytes": status.size_bytes, "batching": None, "signatures": [], "try": [],
    }
    if servable is None:
        return doc
    processor = servable.processor
    doc["device"] = getattr(processor, "device", spec.device)
    queue = next(iter(servable.queues.values()), None)  # every signature's queue has the same options
    doc["batching"] = dataclasses.asdict(queue.options) if queue is not None else None
    default = processor.signature(None).name
    doc["signatures"] = [{"name": sig.name, "method": sig.method_name,
                          "inputs": [tensor_json(t) for t in sig.inputs.values()],
                          "outputs": [tensor_json(t) for t in sig.outputs.values()]}
                         for sig in processor.signatures.values()]
    if status.state is State.AVAILABLE:  # the default signature's requests, else the first predict one's
        served = model.latest is servable and not model.traffic
        doc["try"] = try_requests(spec.name, version, processor.signature(None), True, served) or next(
            (t for sig in processor.signatures.values() if sig.name != default
             if (t := try_requests(spec.name, version, sig, False))), [])
    return doc


def model_error(manager: ModelManager, name: str, base_path: str) -> str:
    """Why a model has no version at all: its last failed load, or what its base path holds."""
    failure = manager.failures.get(name)
    if failure is not None:
        return failure.message
    if not is_remote(base_path) and not os.path.isdir(base_path):
        return f"the base path {base_path} does not exist"
    return f"No versions of servable {name} found under base path {redact(base_path)}"  # TF Serving's words


def config_json(settings: Any) -> dict[str, dict[str, Any]]:
    """The effective flags by group, as `serving --help` groups them; never the token."""
    groups: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(settings):
        if f.name in SECRET_SETTINGS or "group" not in f.metadata:
            continue
        value = getattr(settings, f.name)
        if isinstance(value, str):
            value = redact(value)  # an endpoint's user:password@ or a token in its query
        groups.setdefault(f.metadata["group"], {})[f.name] = list(value) if isinstance(value, tuple) else value
    return groups


Hosted = EmbeddedQueues | RemoteQueues | None  # an async service's queues (None: the engine serves none)


def queues_json(hosted: Hosted) -> list[dict[str, Any]]:
    """The async service's queues as this process sees them, input then sink: [] when it serves none. An
    embedded service's two (its store, the subscriber's window on the input); a remote service's input as this
    process's subscription to it (what it holds, its window and operations; the rest is the queue service's)."""
    if isinstance(hosted, EmbeddedQueues):
        store = store_text(hosted.service.store)
        subscriber = hosted.subscriber
        window = subscriber.watcher.window if subscriber is not None else hosted.window
        return [queue_json(queue, store, window if not name.endswith(SINK) else None)
                for name, queue in sorted(hosted.service.queues.items())]
    if isinstance(hosted, RemoteQueues):
        s, remote = hosted.settings, hosted.subscriber
        return [{"name": s.model_name, "kind": "input", "store": redact(s.queue_endpoint), "remote": True,
                 "length": None, "inflight": len(remote.held) if remote is not None else 0, "oldest_seconds": None,
                 "max_length": None, "max_payload_bytes": None, "watchers": None,
                 "window": s.queue_window or s.max_batch_size,
                 "counts": dict(remote.counts) if remote is not None else {"put": 0, "get": 0, "commit": 0}}]
    return []


def queue_json(queue: AnyQueue, store: str, window: int | None) -> dict[str, Any]:
    """One hosted queue now: its length, the items watchers hold uncommitted, its oldest item's age, its limits,
    its watchers, the subscriber's window (the input's), its store and its operations (this process's)."""
    return {"name": queue.name, "kind": "sink" if queue.name.endswith(SINK) else "input", "store": store,
            "remote": False, "length": len(queue), "inflight": queue.inflight(),
            "oldest_seconds": round(queue.oldest_seconds(), 3), "max_length": queue.limits.max_length,
            "max_payload_bytes": queue.limits.max_payload_bytes, "watchers": len(queue.watchers),
            "window": window, "counts": dict(queue.counts)}


def store_text(store: Store | RedisStore) -> str:
    """Where a queue service keeps its items: `sqlite:PATH` or the Redis URL, its password masked."""
    if isinstance(store, RedisStore):
        return redact(store.url)
    return f"sqlite:{store.path}" if isinstance(store, SqliteStore) else type(store).__name__


def queues_sum(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The workers' queues added up by name (under --workers each subscribes to a remote queue with its own
    window): what they hold, their windows and operations summed; the queue's own figures are the first's."""
    merged: dict[str, dict[str, Any]] = {}
    for queues in parts:
        for queue in queues:
            kept = merged.get(queue["name"])
            if kept is None:
                merged[queue["name"]] = {**queue, "counts": dict(queue["counts"])}
                continue
            kept["inflight"] += queue["inflight"]
            if kept["window"] is not None and queue["window"] is not None:
                kept["window"] += queue["window"]
            for op, count in queue["counts"].items():
                kept["counts"][op] = kept["counts"].get(op, 0) + count
    return [merged[name] for name in sorted(merged)]


def page() -> bytes:
    """The page, read from the package once."""
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files(__package__).joinpath("index.html").read_bytes()
    return _PAGE


_PAGE: bytes | None = None


#: The latest `since` the status accepts (the year 5138): past it a second is no time the page could mean.
MAX_SINCE = 10**11


def since_of(query: str) -> int | None:
    """`since=<epoch second>` of the status's query string (None when absent); INVALID_ARGUMENT when it is
    not a number of seconds from 0 to MAX_SINCE."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "since":
            try:
                since = float(value)
            except ValueError:
                since = math.nan
            if not 0 <= since <= MAX_SINCE:  # also nan
                raise invalid_argument(f"since: expected epoch seconds from 0 to {MAX_SINCE}, got {value[:32]!r}")
            return int(since)
    return None


def readme() -> bytes:
    """The README as the installed package carries it (its long description)."""
    from importlib import metadata

    try:
        text = metadata.metadata("serving-engine").get_payload()  # type: ignore[attr-defined]
    except metadata.PackageNotFoundError:
        text = None
    return (text or "The README is not installed with this package.").encode()


@dataclass
class StatusSources:
    """What the status page shows, from the server that runs it."""

    manager: ModelManager
    request_metrics: RequestMetrics
    request_log: RequestLogger  # its recent samples
    settings: Settings  # the effective flags (shown redacted, never the token)
    connections: Sized  # the open HTTP connections
    draining: Callable[[], bool]
    auth: TokenAuth | None  # the status JSON is behind the token when there is one
    siblings: Siblings | None  # under --workers: the other workers' parts are added in
    timeout_s: float = 5.0
    queues: Callable[[], Hosted] = lambda: None  # an async service's queues (made after the page)


class StatusApi:
    """`GET /ui/api/status`: this process's part (`local`, also what a sibling worker asks for) and the
    whole document, its siblings' parts added in under --workers; `route` answers the page's paths."""

    def __init__(self, sources: StatusSources) -> None:
        self.sources = sources
        self.sampler = Sampler(sources.manager, keep_points=sources.siblings is not None)
        self.started_at = time.time()

    def route(self, request: Request) -> Response | Deferred:
        """The status page (`/`, `/ui`), its JSON (`/ui/api/status`, behind the token when there is one) and
        the README it links to (`/ui/docs`)."""
        path = request.path.rstrip("/") or "/"
        if request.method != "GET":
            return Response(405, encode_error(f"Method not allowed: {request.method} {request.path}"))
        if path in ("/", "/ui"):
            return Response(200, page(), HTML, PAGE_HEADERS)
        if path == "/ui/docs":
            return Response(200, readme(), TEXT)
        if path != "/ui/api/status":
            return Response(404, encode_error(f"Not found: GET {request.path}"))
        try:
            if self.sources.auth is not None:
                self.sources.auth.check_http("GET", path, request.headers, b"")
            since = since_of(request.query)
        except ServingError as e:
            return Response(e.http_status, encode_error(e.message))
        return answer_when(self.document(since), lambda doc: Response(200, dumps(doc), headers=NO_STORE),
                           lambda e: Response(e.http_status, encode_error(e.message)), self.sources.timeout_s)

    def local(self, points: bool = True) -> dict[str, Any]:
        """This process's part: its raw points (what a sibling adds to its own), process figures, recent
        errors and request-log samples."""
        sources = self.sources
        return {
            "points": self.sampler.points() if points else {}, "cpu_percent": self.sampler.cpu_percent,
            "rss_bytes": resident_bytes(), "open_connections": len(sources.connections),
            "errors": [list(e) for e in sources.request_metrics.recent_errors],
            "requests": [list(r) for r in sources.request_log.recent],
            "residency": residency_part(sources.manager),
            "queues": queues_json(sources.queues()),
        }

    def _server(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """The process tree: this worker's figures and its siblings' (`parts`) added up."""
        from ... import __version__

        sources, siblings = self.sources, self.sources.siblings
        draining = sources.draining()
        return {
            "name": "serving-engine", "version": __version__, "pid": os.getpid(),
            "started_at": self.started_at, "uptime_s": round(time.time() - self.started_at, 1),
            "workers": siblings.count if siblings is not None else 1, "workers_answered": len(parts),
            "ready": sources.manager.ready() and not draining, "draining": draining,
            "cpu_percent": round(sum(p["cpu_percent"] for p in parts), 1), "cpu_cores": os.cpu_count() or 1,
            "rss_bytes": sum(p["rss_bytes"] for p in parts),
            "open_connections": sum(p["open_connections"] for p in parts),
            "auth": sources.auth is not None,
            "residency": residency_sum([p["residency"] for p in parts if "residency" in p] or
                                       [residency_part(sources.manager)]),
        }

    async def document(self, since: int | None = None) -> dict[str, Any]:
        """The status; with `since` (an epoch second) the series hold only the seconds after it, for a page
        that keeps what it had (it asks a few seconds back, so a sibling worker's late point still comes)."""
        sources, siblings = self.sources, self.sources.siblings
        own = self.local(points=siblings is not None)
        others = await siblings.status_parts() if siblings is not None else []
        parts = [own, *others]
        if others:  # every worker's points of a second added up, then the series made of them
            merged = merge_points(own["points"], (o["points"] for o in others))

            def series_of(key: Key) -> dict[str, list[Any]]:
                return series(merged.get(key, []))
        else:
            def series_of(key: Key) -> dict[str, list[Any]]:
                kept = self.sampler.series.get(key)
                return {k: list(v) for k, v in kept.items()} if kept is not None else series([])
        errors = sorted((e for p in parts for e in p["errors"]), key=lambda e: -e[0])[:RECENT]
        requests = sorted((r for p in parts for r in p["requests"]), key=lambda r: -r[0])[:RECENT]
        return {
            "server": self._server(parts),
            "config": config_json(sources.settings),
            "links": {"metrics": "/metrics", "statistics": "/v2/models/stats", "server_metadata": "/v2",
                      "docs": DOCS},
            "interval_s": INTERVAL, "window_s": WINDOW, "since": since,
            "models": models_json(sources.manager, series_of, since),
            "queues": queues_sum([p["queues"] for p in parts if "queues" in p]),
            "recent": {
                "errors": [dict(zip(ERROR_FIELDS, e, strict=True)) for e in errors],
                "requests": [dict(zip(REQUEST_FIELDS, r, strict=True)) for r in requests],
                "payloads": True,
            },
        }


HTML = b"text/html; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"
NO_STORE = b"Cache-Control: no-store\r\n"
#: The recent errors and request-log samples kept (per process) and shown.
RECENT = 50
ERROR_FIELDS = ("time", "request_id", "model", "version", "protocol", "method", "code", "message")
REQUEST_FIELDS = ("time", "request_id", "model", "version", "method", "inputs", "outputs")
#: The README (its HTTP API section is what the page points to), served from the package's metadata.
DOCS = "/ui/docs"
#: The page may run only its own inline script and style and talk only to this server: nothing from a CDN.
PAGE_HEADERS = (b"Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                b"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'\r\n"
                b"Cache-Control: no-cache\r\n")
