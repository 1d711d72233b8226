"""Prometheus metrics, computed when scraped from state the engine keeps anyway: model version states and
load times, batch queue counters and depths, HTTP answers by status, process metrics, GPU memory, and
what the request pipeline's `RequestMetrics` observer counts: inference requests by model, version,
signature, protocol, method and outcome, with histograms of their latency, queue wait and rows, and of
every batch's compute time and size.

Histograms are Prometheus histograms (cumulative buckets, a sum and a count: they aggregate across
processes and pods). The engine keeps their bucket counts itself in plain lists, one `bisect` and two adds
an observation, and prometheus-client renders them at scrape time: its own Histogram takes a lock and a
label lookup per observation, more than the rest of the request path's bookkeeping together.

Served at `GET /metrics` and at TF Serving's `GET /monitoring/prometheus/metrics`.
"""

from __future__ import annotations

import bisect
import collections
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..core.repository import ModelManager, State
from ..platform.workers import MergedRegistry, Peers, merge_metrics, metric_state
from ..transport.http import HTTP_RESPONSES
from .accesslog import ACCESS_LOG_DROPPED

if TYPE_CHECKING:
    from ..core.batching import BatchObserver
    from ..core.pipeline import Call, Timings
    from ..errors import ServingError

#: Seconds: from 50 µs (a small model inline) to 30 s.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0)
#: Failed calls kept for the status page.
RECENT_ERRORS = 50
#: Rows of a request or a batch.
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384)


class Histogram:
    """Bucket counts and a sum, kept by the engine (see the module doc)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(cumulative)))
        family.add_metric(labels, buckets, self.sum)


class _Series:
    """One (model, version, signature, protocol, method): outcomes and histograms."""

    __slots__ = ("ok", "codes", "latency", "queue", "rows")

    def __init__(self) -> None:
        self.ok = 0  # answered (the common case, counted apart from the error codes)
        self.codes: collections.Counter[str] = collections.Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.queue = Histogram(LATENCY_BUCKETS)
        self.rows = Histogram(ROWS_BUCKETS)

    def counts(self) -> collections.Counter[str]:
        """Calls by outcome code ("OK" included)."""
        return self.codes + collections.Counter({"OK": self.ok})


class _Batches:
    """One batch queue's batches: compute time and size."""

    __slots__ = ("compute", "size")

    def __init__(self) -> None:
        self.compute = Histogram(LATENCY_BUCKETS)
        self.size = Histogram(ROWS_BUCKETS)

    def observe(self, rows: int, seconds: float) -> None:
        self.compute.observe(seconds)
        self.size.observe(rows)


SeriesKey = tuple[str, int, str, str, str]


class RequestMetrics:
    """A request pipeline observer, and the batch observer of every queue (Runtime.batch_observers).

    A call that named no loaded model counts under model "" (clients choose the names: no label per name);
    its signature is "" until it decoded."""

    def __init__(self) -> None:
        self.series: dict[SeriesKey, _Series] = {}
        self.batches: dict[tuple[str, int, str], _Batches] = {}
        #: The last failed calls, newest last: (time, request id, model, version, protocol, method, code,
        #: message), for the status page. Kept on failures only: an answered call costs nothing more.
        self.recent_errors: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=RECENT_ERRORS)

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None:
        servable, sig = call.servable, call.signature
        key = (servable.model if servable is not None else "", servable.version if servable is not None else -1,
               sig.name if sig is not None else "", call.protocol, call.method)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        if error is None:
            series.ok += 1
            if call.rows is not None:
                series.rows.observe(call.rows)
        else:
            series.codes[error.code.name] += 1
            self.recent_errors.append((time.time(), call.request_id, call.model if servable is None else key[0],
                                       key[1] if servable is not None else None, call.protocol, call.method,
                                       error.code.name, error.message))
        series.latency.observe(timings.total)
        if call.dispatched:
            series.queue.observe(timings.queue)

    def batch_observer(self, model: str, version: int, signature: str) -> BatchObserver:
        """What a new batch queue tells of each batch it runs."""
        batches = self.batches.setdefault((model, version, signature), _Batches())
        return batches.observe

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version", "signature", "protocol", "method"]
        count = CounterMetricFamily("serving_requests", "inference requests by outcome (a gRPC code name)",
                                    labels=[*labels, "code"])
        latency = HistogramMetricFamily("serving_request_duration_seconds",
                                        "inference requests from decoded to outputs or error", labels=labels)
        queue = HistogramMetricFamily("serving_request_queue_seconds",
                                      "time inference requests waited in a batch queue", labels=labels)
        rows = HistogramMetricFamily("serving_request_rows", "rows of answered inference requests", labels=labels)
        for (model, version, signature, protocol, method), series in sorted(self.series.items()):
            values = [model, str(version) if version >= 0 else "", signature, protocol, method]
            for code, n in sorted(series.counts().items()):
                count.add_metric([*values, code], float(n))
            series.latency.add_to(latency, values)
            series.queue.add_to(queue, values)
            series.rows.add_to(rows, values)
        queue_labels = ["model", "version", "signature"]
        compute = HistogramMetricFamily("serving_batch_compute_duration_seconds", "compute time of each batch",
                                        labels=queue_labels)
        size = HistogramMetricFamily("serving_batch_size_rows", "rows of each batch", labels=queue_labels)
        for (model, version, signature), batches in sorted(self.batches.items()):
            values = [model, str(version), signature]
            batches.compute.add_to(compute, values)
            batches.size.add_to(size, values)
        yield from (count, latency, queue, rows, compute, size)


class EngineCollector(Collector):  # type: ignore[misc]
    def __init__(self, manager: ModelManager, requests: RequestMetrics | None) -> None:
        self.manager, self.requests = manager, requests

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("serving_model_version_state", "1 for the state each model version is in",
                                   labels=["model", "version", "state"])
        counters = {
            key: CounterMetricFamily(f"serving_batch_{key}", text, labels=["model", "version", "signature"])
            for key, text in (("requests", "requests queued for batching"),
                              ("batches", "batches run"),
                              ("rows", "rows run in batches"),
                              ("rejected", "requests refused because the queue was full"),
                              ("expired", "requests dropped uncomputed past their deadline"),
                              ("inline_batches", "batches run on the event-loop thread (--inline_batch_micros)"))
        }
        depth = GaugeMetricFamily("serving_batch_queue_depth", "requests waiting in a batch queue",
                                  labels=["model", "version", "signature"])
        in_flight = GaugeMetricFamily("serving_batch_in_flight", "batches running",
                                      labels=["model", "version", "signature"])
        cost = GaugeMetricFamily("serving_batch_compute_average_seconds",
                                 "moving average of a batch's compute time (what --inline_batch_micros is held to)",
                                 labels=["model", "version", "signature"])
        load = GaugeMetricFamily("serving_model_load_seconds", "how long a version's load took",
                                 labels=["model", "version"])
        warmup = GaugeMetricFamily("serving_model_warmup_seconds", "how long a version's warm-up took",
                                   labels=["model", "version"])
        failures = CounterMetricFamily("serving_model_load_failures", "loads that failed (warm-up included)",
                                       labels=["model"])
        for name, model in sorted(self.manager.models.items()):
            for version, status in sorted(model.versions.items()):
                for state in State:
                    states.add_metric([name, str(version), state.value], 1.0 if status.state is state else 0.0)
                if status.load_seconds:
                    load.add_metric([name, str(version)], status.load_seconds)
                if status.warmup_seconds:
                    warmup.add_metric([name, str(version)], status.warmup_seconds)
        for name, n in sorted(self.manager.load_failures.items()):
            failures.add_metric([name], float(n))
        fetch_failures = CounterMetricFamily("serving_model_fetch_failures", "fetches of a remote base path (URL, "
                                             "archive, object store) that failed", labels=["model"])
        for name, n in sorted(self.manager.fetch_failures.items()):
            fetch_failures.add_metric([name], float(n))
        for servable in self.manager.loaded():
            for stats in servable.stats():
                labels = [servable.model, str(servable.version), stats.signature]
                for key, family in counters.items():
                    family.add_metric(labels, float(getattr(stats.counters, key)))
                depth.add_metric(labels, float(stats.waiting))
                in_flight.add_metric(labels, float(stats.in_flight))
                cost.add_metric(labels, stats.compute_seconds)
        responses = CounterMetricFamily("serving_http_responses", "HTTP answers by status code", labels=["code"])
        for code, count in sorted(HTTP_RESPONSES.items()):
            responses.add_metric([str(code)], float(count))
        dropped = CounterMetricFamily("serving_access_log_dropped", "access log lines dropped: the sink stalled")
        dropped.add_metric([], float(ACCESS_LOG_DROPPED[0]))
        yield from (states, load, warmup, failures)
        yield fetch_failures
        yield from counters.values()
        yield depth
        yield in_flight
        yield cost
        yield responses
        yield dropped
        if self.requests is not None:
            yield from self.requests.collect()


class GpuMemoryCollector(Collector):  # type: ignore[misc]
    """GPU memory per device, through the frameworks' own APIs, for those a loaded processor imported (torch,
    TensorFlow); nothing at all where no CUDA device is in use."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("serving_gpu_memory_bytes", "GPU memory in use by a framework, per device",
                                   labels=["framework", "device", "kind"])
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            for index in range(torch.cuda.device_count()):
                device = f"cuda:{index}"
                family.add_metric(["torch", device, "allocated"], float(torch.cuda.memory_allocated(index)))
                family.add_metric(["torch", device, "reserved"], float(torch.cuda.memory_reserved(index)))
        tf = sys.modules.get("tensorflow")
        if tf is not None:
            for index, _ in enumerate(tf.config.list_logical_devices("GPU")):
                info = tf.config.experimental.get_memory_info(f"GPU:{index}")
                family.add_metric(["tensorflow", f"cuda:{index}", "current"], float(info["current"]))
                family.add_metric(["tensorflow", f"cuda:{index}", "peak"], float(info["peak"]))
        if family.samples:
            yield family


class RequestLogCollector:
    """The request log's records written and dropped (its writer's queue was full, or its disk failed)."""

    def __init__(self, request_log: Any) -> None:
        self.request_log = request_log

    def collect(self) -> Iterable[Metric]:
        written = CounterMetricFamily("serving_request_log_records", "request log records written")
        written.add_metric([], float(self.request_log.written))
        dropped = CounterMetricFamily("serving_request_log_dropped", "request log records dropped: the writer's "
                                      "queue was full, or its disk failed (full, read-only, gone)")
        dropped.add_metric([], float(self.request_log.dropped))
        yield written
        yield dropped


class Metrics:
    """The server's registry: the engine's collector, the process and platform collectors of
    prometheus-client (CPU, memory, open fds, threads...), GPU memory."""

    def __init__(self, manager: ModelManager, requests: RequestMetrics | None = None,
                 request_log: Any = None, shadow: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(manager, requests))
        if request_log is not None:
            self.registry.register(RequestLogCollector(request_log))
        if shadow is not None:  # serving/ops/shadow.py's ShadowRunner collects its own families
            self.registry.register(shadow)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(GpuMemoryCollector())

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    async def render_tree(self, peers: Peers) -> bytes:
        """The whole process tree under a supervisor: this worker's families merged with its siblings', with
        what restarted workers counted before (Peers.tally: summed counters never go back)."""
        own = metric_state(self.registry.collect())
        answers = await peers.ask("GET", "/_worker/metrics")
        states = {peers.index: own, **{i: orjson.loads(body) for i, (status, body) in answers.items() if status == 200}}
        return bytes(generate_latest(MergedRegistry(merge_metrics(peers.tally(states)))))  # type: ignore[arg-type]
