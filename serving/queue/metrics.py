"""The queues' Prometheus families: length by kind (input or sink), items held uncommitted by watchers, the
age of the oldest item, watchers, operations, the time a put takes to be durable and the latency of each
operation. On the Redis store the length, the items held and the oldest item's age are the queue's (every
replica says the same); watchers, operations and latencies are this process's."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, SummaryMetricFamily
from prometheus_client.metrics_core import Metric

from ..ops.metrics import add_histogram
from .queue import AnyQueue


class QueueCollector:
    """Collects every queue `queues()` gives, each scrape."""

    def __init__(self, queues: Callable[[], list[AnyQueue]]) -> None:
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
        latency = HistogramMetricFamily("serving_queue_latency_seconds", "queue operations' latency: put until "
                                        "durable, get until answered (a long poll's wait included), commit until "
                                        "durable", labels=["queue", "op"])
        for queue in self.queues():
            name = queue.name
            length.add_metric([name, "sink" if name.endswith("/sink") else "input"], float(len(queue)))
            inflight.add_metric([name], float(queue.inflight()))
            oldest.add_metric([name], queue.oldest_seconds())
            watchers.add_metric([name], float(len(queue.watchers)))
            for op in ("put", "get", "commit"):
                operations.add_metric([name, op], float(queue.counts[op]))
            put.add_metric([name], queue.counts["put"], queue.put_seconds)
            for op, histogram in queue.latency.items():
                add_histogram(latency, [name, op], histogram)
        yield from (length, inflight, oldest, watchers, operations, put, latency)
