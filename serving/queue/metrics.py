"""The queues' Prometheus families: length by kind (input or sink), items held uncommitted by watchers, the
age of the oldest item, watchers, operations and the time a put takes to be durable."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.metrics_core import Metric

from .queue import Queue


class QueueCollector:
    """Collects every queue `queues()` gives, each scrape."""

    def __init__(self, queues: Callable[[], list[Queue]]) -> None:
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        length = GaugeMetricFamily("serving_queue_length", "items in a queue", labels=["queue", "kind"])
        inflight = GaugeMetricFamily("serving_queue_inflight", "items sent to a watcher and not yet committed",
                                     labels=["queue"])
        oldest = GaugeMetricFamily("serving_queue_oldest_seconds", "age of a queue's oldest item", labels=["queue"])
        watchers = GaugeMetricFamily("serving_queue_watchers", "watchers (subscribers) of a queue", labels=["queue"])
        operations = CounterMetricFamily("serving_queue_operations", "queue operations: items put, get requests, "
                                         "items committed or deleted", labels=["queue", "op"])
        put = SummaryMetricFamily("serving_queue_put_seconds", "time from a put's arrival until it is durable",
                                  labels=["queue"])
        for queue in self.queues():
            name = queue.name
            length.add_metric([name, "sink" if name.endswith("/sink") else "input"], float(len(queue)))
            inflight.add_metric([name], float(len(queue.holder)))
            oldest.add_metric([name], queue.oldest_seconds())
            watchers.add_metric([name], float(len(queue.watchers)))
            for op in ("put", "get", "commit"):
                operations.add_metric([name, op], float(queue.counts[op]))
            put.add_metric([name], queue.counts["put"], queue.put_seconds)
        yield from (length, inflight, oldest, watchers, operations, put)
