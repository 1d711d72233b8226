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

import collections
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..core.repository import ModelManager, State
from ..core.stats import Histogram, Series
from .accesslog import ACCESS_LOG_DROPPED

if TYPE_CHECKING:
    from ..core.pipeline import Call, Timings
    from ..core.servable import Servable
    from ..errors import ServingError

#: Failed calls kept for the status page.
RECENT_ERRORS = 50


def add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    cumulative, buckets = 0, []
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(cumulative)))
    family.add_metric(labels, buckets, histogram.sum)


class RequestMetrics:
    """The request pipeline's observer that counts every call: into its version's record
    (`Servable.record`, serving/core/stats.py), which goes when the version unloads; a call that named no
    loaded model counts under model "" (clients choose the names: no label per name)."""

    #: What an express lane tells it is enough (serving/protocols/express.py): `finished` with the slot as the call;
    #: and an answered call is only its version's record (`VersionStats.answered`), which the lane may write itself.
    express = "record"

    def __init__(self) -> None:
        #: The calls that reached no version, by (protocol, method): a handful of series at most.
        self.unrouted: dict[tuple[str, str], Series] = {}
        #: The last failed calls, newest last: (time, request id, model, version, protocol, method, code,
        #: message), for the status page. Kept on failures only: an answered call costs nothing more.
        self.recent_errors: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=RECENT_ERRORS)

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None:
        servable = call.servable
        if servable is not None:
            servable.record.finished(call, error, timings)
        else:
            key = (call.protocol, call.method)
            series = self.unrouted.get(key)
            if series is None:
                series = self.unrouted[key] = Series()
            series.finished(call, error, timings)
        if error is not None:
            self.recent_errors.append((time.time(), call.request_id, call.model if servable is None else servable.model,
                                       servable.version if servable is not None else None, call.protocol,
                                       call.method, error.code.name, error.message))

    def collect(self, servables: Iterable[Servable]) -> Iterator[Metric]:
        labels = ["model", "version", "signature", "protocol", "method"]
        count = CounterMetricFamily("serving_requests", "inference requests by outcome (a gRPC code name)",
                                    labels=[*labels, "code"])
        latency = HistogramMetricFamily("serving_request_duration_seconds",
                                        "inference requests from decoded to outputs or error", labels=labels)
        queue = HistogramMetricFamily("serving_request_queue_seconds",
                                      "time inference requests waited in a batch queue", labels=labels)
        rows = HistogramMetricFamily("serving_request_rows", "rows of answered inference requests", labels=labels)
        queue_labels = ["model", "version", "signature"]
        compute = HistogramMetricFamily("serving_batch_compute_duration_seconds", "compute time of each batch",
                                        labels=queue_labels)
        size = HistogramMetricFamily("serving_batch_size_rows", "rows of each batch", labels=queue_labels)
        # (model, version, signature, protocol, method) of each series: the unrouted calls' first
        every = [(("", "", "", protocol, method), series)
                 for (protocol, method), series in sorted(self.unrouted.items())]
        for servable in sorted(servables, key=lambda s: (s.model, s.version)):
            record, version = servable.record, str(servable.version)
            every += [((servable.model, version, *key), series) for key, series in sorted(record.series.items())]
            for signature, batches in sorted(record.batches.items()):
                add_histogram(compute, [servable.model, version, signature], batches.compute)
                add_histogram(size, [servable.model, version, signature], batches.size)
        for values, series in every:
            for code, n in sorted(series.counts().items()):
                count.add_metric([*values, code], float(n))
            add_histogram(latency, list(values), series.latency)
            add_histogram(queue, list(values), series.queue)
            add_histogram(rows, list(values), series.rows)
        yield from (count, latency, queue, rows, compute, size)


class EngineCollector(Collector):  # type: ignore[misc]
    def __init__(self, manager: ModelManager, requests: RequestMetrics | None,
                 http_responses: Mapping[int, int]) -> None:
        self.manager, self.requests = manager, requests
        self.http_responses = http_responses  # what the HTTP transport answered, by status

    def collect(self) -> Iterator[Metric]:
        yield from self._versions()
        yield from self._residency()
        yield from self._queues()
        responses = CounterMetricFamily("serving_http_responses", "HTTP answers by status code", labels=["code"])
        for code, count in sorted(self.http_responses.items()):
            responses.add_metric([str(code)], float(count))
        yield responses
        dropped = CounterMetricFamily("serving_access_log_dropped", "access log lines dropped: the sink stalled")
        dropped.add_metric([], float(ACCESS_LOG_DROPPED[0]))
        yield dropped
        if self.requests is not None:
            yield from self.requests.collect(self.manager.loaded())

    def _versions(self) -> Iterator[Metric]:
        """Each version's state, load and warm-up time; each model's load and fetch failures."""
        states = GaugeMetricFamily("serving_model_version_state", "1 for the state each model version is in",
                                   labels=["model", "version", "state"])
        load = GaugeMetricFamily("serving_model_load_seconds", "how long a version's load took",
                                 labels=["model", "version"])
        warmup = GaugeMetricFamily("serving_model_warmup_seconds", "how long a version's warm-up took",
                                   labels=["model", "version"])
        for name, model in sorted(self.manager.models.items()):
            for version, status in sorted(model.versions.items()):
                for state in State:
                    states.add_metric([name, str(version), state.value], 1.0 if status.state is state else 0.0)
                if status.load_seconds:
                    load.add_metric([name, str(version)], status.load_seconds)
                if status.warmup_seconds:
                    warmup.add_metric([name, str(version)], status.warmup_seconds)
        failures = CounterMetricFamily("serving_model_load_failures", "loads that failed (warm-up included)",
                                       labels=["model"])
        for name, n in sorted(self.manager.load_failures.items()):
            failures.add_metric([name], float(n))
        fetch_failures = CounterMetricFamily("serving_model_fetch_failures", "fetches of a remote base path (URL, "
                                             "archive, object store) that failed", labels=["model"])
        for name, n in sorted(self.manager.fetch_failures.items()):
            fetch_failures.add_metric([name], float(n))
        yield from (states, load, warmup, failures, fetch_failures)

    def _residency(self) -> Iterator[Metric]:
        """Loads by reason and how long they took, the models known and loaded, their memory and its budget
        (lazy and explicit model control), the unloads made to make room and the loads over the budget."""
        manager, budget = self.manager, self.manager.budget
        loads = CounterMetricFamily("serving_model_loads", "model version loads that succeeded, by reason: lazy (a "
                                    "request), explicit (the repository API, ModelMesh), poll (the configuration)",
                                    labels=["reason"])
        durations = HistogramMetricFamily("serving_model_load_duration_seconds", "how long each successful model "
                                          "version load took, warm-up included", labels=["reason"])
        for reason, histogram in manager.loads.durations.items():
            loads.add_metric([reason], float(manager.loads.counts[reason]))
            add_histogram(durations, [reason], histogram)
        loaded = manager.loaded_models()
        gauges = [("serving_models_known", "models this process serves or may load (lazy mode: not loaded too)",
                   len(manager.models)),
                  ("serving_models_loaded", "models with a version loaded", len(loaded)),
                  ("serving_model_memory_bytes", "the memory the loaded models took, as measured at their loads",
                   sum(manager.size_of(name) for name in loaded))]
        if budget is not None:
            gauges.append(("serving_model_memory_budget_bytes", "the memory the models of this process may take "
                           "(--model_memory_capacity_bytes, its share of it under --workers)", budget.capacity))
        yield from (loads, durations, *(GaugeMetricFamily(name, text, value=float(v)) for name, text, v in gauges))
        if budget is not None:
            yield CounterMetricFamily("serving_model_evictions", "models unloaded to make room under the memory "
                                      "budget", value=float(budget.evictions))
            yield CounterMetricFamily("serving_model_over_budget_loads", "loads that went over the memory budget "
                                      "because no model could be unloaded (pinned, in use, loaded too recently)",
                                      value=float(budget.over_budget))

    def _queues(self) -> Iterator[Metric]:
        """Each loaded version's batch queues: counters, depth, batches running, average compute."""
        labels = ["model", "version", "signature"]
        counters = {
            key: CounterMetricFamily(f"serving_batch_{key}", text, labels=labels)
            for key, text in (("requests", "requests queued for batching"),
                              ("batches", "batches run"),
                              ("rows", "rows run in batches"),
                              ("rejected", "requests refused because the queue was full"),
                              ("expired", "requests dropped uncomputed past their deadline"),
                              ("inline_batches", "batches run on the event-loop thread (--inline_batch_micros)"))
        }
        depth = GaugeMetricFamily("serving_batch_queue_depth", "requests waiting in a batch queue", labels=labels)
        in_flight = GaugeMetricFamily("serving_batch_in_flight", "batches running", labels=labels)
        cost = GaugeMetricFamily("serving_batch_compute_average_seconds",
                                 "moving average of a batch's compute time (what --inline_batch_micros is held to)",
                                 labels=labels)
        for servable in self.manager.loaded():
            for stats in servable.stats():
                values = [servable.model, str(servable.version), stats.signature]
                for key, family in counters.items():
                    family.add_metric(values, float(getattr(stats.counters, key)))
                depth.add_metric(values, float(stats.waiting))
                in_flight.add_metric(values, float(stats.in_flight))
                cost.add_metric(values, stats.compute_seconds)
        yield from counters.values()
        yield from (depth, in_flight, cost)


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


#: Metric families as plain data (`metric_state`): [{"name", "type", "help", "unit", "samples": [[sample
#: name, labels, value], ...]}, ...].
Families = list[dict[str, Any]]


def metric_state(families: Iterable[Metric]) -> Families:
    """Metric families as plain data, to send to a sibling."""
    return [{"name": m.name, "type": m.type, "help": m.documentation, "unit": m.unit,
             "samples": [[s.name, s.labels, s.value] for s in m.samples]} for m in families]


class Metrics:
    """The server's registry: the engine's collector, the process and platform collectors of
    prometheus-client (CPU, memory, open fds, threads...), GPU memory."""

    def __init__(self, manager: ModelManager, requests: RequestMetrics | None = None,
                 request_log: Any = None, shadow: Any = None, tree: Tree | None = None,
                 http_responses: Mapping[int, int] | None = None) -> None:
        self.tree = tree  # under a supervisor: the siblings, whose families are merged in
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(manager, requests, {} if http_responses is None else http_responses))
        if request_log is not None:
            self.registry.register(RequestLogCollector(request_log))
        if shadow is not None:  # serving/ops/shadow.py's ShadowRunner collects its own families
            self.registry.register(shadow)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(GpuMemoryCollector())

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def state(self) -> Families:
        """This process's families as plain data, for a sibling worker to merge."""
        return metric_state(self.registry.collect())

    async def render_tree(self) -> bytes:
        """The whole process tree's families under a supervisor (`tree`), this process's without one."""
        if self.tree is None:
            return self.render()
        return await self.tree.metrics(self.state())


class Tree(Protocol):
    """The sibling workers under a supervisor (serving/platform/siblings.py `Siblings`): what the whole tree
    reports, merged."""

    async def metrics(self, own: Families) -> bytes: ...

    async def statistics(self, own: dict[str, Any], name: str, version: int | None) -> dict[str, Any]: ...
