"""Prometheus metrics, computed when scraped from state the engine keeps anyway (no per-request metric
objects on the hot path): model version states, batch queue counters and depths, HTTP answers by status,
and the inference requests the request pipeline's `RequestMetrics` observer counts (by model, version,
protocol, method and outcome, with the seconds they spent queued, computing and in all).

Served at `GET /metrics` and at TF Serving's `GET /monitoring/prometheus/metrics`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .repository import ModelManager, State

if TYPE_CHECKING:
    from .errors import ServingError
    from .pipeline import Call, Timings

#: HTTP answers by status code; the connection adds one per response it writes.
HTTP_RESPONSES: collections.Counter[int] = collections.Counter()


class _Series:
    __slots__ = ("ok", "codes", "queue", "compute", "total")

    def __init__(self) -> None:
        self.ok = 0  # answered (the common case, counted apart from the error codes)
        self.codes: collections.Counter[str] = collections.Counter()
        self.queue = self.compute = self.total = 0.0

    def counts(self) -> collections.Counter[str]:
        """Calls by outcome code ("OK" included)."""
        return self.codes + collections.Counter({"OK": self.ok})


class RequestMetrics:
    """A request pipeline observer: inference calls by (model, version, protocol, method) and outcome code.
    A call that named no loaded model counts under model "" (clients choose the names: no label per name)."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, int, str, str], _Series] = {}

    def received(self, call: Call) -> None:
        pass

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None:
        servable = call.servable
        key = (servable.model, servable.version, call.protocol, call.method) if servable is not None else (
            "", -1, call.protocol, call.method)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        if error is None:
            series.ok += 1
        else:
            series.codes[error.code.name] += 1
        queue, compute, total = timings
        series.queue += queue
        series.compute += compute
        series.total += total

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version", "protocol", "method"]
        count = CounterMetricFamily("serving_requests", "inference requests by outcome (a gRPC code name)",
                                    labels=[*labels, "code"])
        seconds = {part: CounterMetricFamily(f"serving_request_{part}_seconds", text, labels=labels)
                   for part, text in (("queue", "seconds inference requests waited in a batch queue"),
                                      ("compute", "seconds of the batches of inference requests"),
                                      ("total", "seconds from decoded request to outputs or error"))}
        for (model, version, protocol, method), series in sorted(self.series.items()):
            values = [model, str(version) if version >= 0 else "", protocol, method]
            for code, n in sorted(series.counts().items()):
                count.add_metric([*values, code], float(n))
            seconds["queue"].add_metric(values, series.queue)
            seconds["compute"].add_metric(values, series.compute)
            seconds["total"].add_metric(values, series.total)
        yield count
        yield from seconds.values()


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
        cost = GaugeMetricFamily("serving_batch_compute_seconds", "moving average of a batch's compute time",
                                 labels=["model", "version", "signature"])
        for name, model in sorted(self.manager.models.items()):
            for version, status in sorted(model.versions.items()):
                for state in State:
                    states.add_metric([name, str(version), state.value], 1.0 if status.state is state else 0.0)
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
        yield states
        yield from counters.values()
        yield depth
        yield in_flight
        yield cost
        yield responses
        if self.requests is not None:
            yield from self.requests.collect()


class Metrics:
    def __init__(self, manager: ModelManager, requests: RequestMetrics | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(manager, requests))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
