"""Prometheus metrics, computed when scraped from state the engine keeps anyway (no per-request metric
objects on the hot path): model version states, batch queue counters and depths, HTTP answers by status.

Served at `GET /metrics` and at TF Serving's `GET /monitoring/prometheus/metrics`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .repository import ModelManager, State

#: HTTP answers by status code; the connection adds one per response it writes.
HTTP_RESPONSES: collections.Counter[int] = collections.Counter()


class EngineCollector(Collector):  # type: ignore[misc]
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

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


class Metrics:
    def __init__(self, manager: ModelManager) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(manager))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
