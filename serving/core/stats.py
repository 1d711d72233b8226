"""What one loaded version did: one record, made with its `Servable` and dropped with it.

Updated once per finished call (`VersionStats.finished`, from the pipeline's metrics observer) and once per
batch its queues run (`batch`); Prometheus (serving/ops/metrics.py), Triton's statistics extension
(serving/ops/statistics.py) and the status page (serving/tools/ui) all read it. A version that unloads
takes its record with it, so the server keeps nothing per model it no longer serves, however many models
ModelMesh or the repository API load and unload over its life.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..errors import ServingError
    from .batching import BatchObserver
    from .signature import Signature

#: Seconds: from 50 µs (a small model inline) to 30 s.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0)
#: Rows of a request or a batch.
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384)


class Call(Protocol):
    """What a record reads of a finished call (serving/core/pipeline.py `Call`)."""

    signature: Signature | None
    protocol: str
    method: str
    rows: int | None
    received: float
    dispatched: float


#: (queue wait, compute, total) seconds of a finished call (serving/core/pipeline.py `Timings`).
Timings = tuple[float, float, float]


class Histogram:
    """Bucket counts and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class Series:
    """The calls of one (signature, protocol, method): outcomes and histograms."""

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

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None:
        # The three histograms' observe() written out: this runs for every call.
        if error is None:
            self.ok += 1
            rows = call.rows
            if rows is not None:
                histogram = self.rows
                histogram.counts[bisect.bisect_left(ROWS_BUCKETS, rows)] += 1
                histogram.sum += rows
        else:
            self.codes[error.code.name] += 1
        queue, _, total = timings
        histogram = self.latency
        histogram.counts[bisect.bisect_left(LATENCY_BUCKETS, total)] += 1
        histogram.sum += total
        if call.dispatched:
            histogram = self.queue
            histogram.counts[bisect.bisect_left(LATENCY_BUCKETS, queue)] += 1
            histogram.sum += queue


class Batches:
    """The batches of one signature's queue: compute time and size, and by size (Triton's batch_stats)."""

    __slots__ = ("compute", "size", "by_size", "seconds_by_size")

    def __init__(self) -> None:
        self.compute = Histogram(LATENCY_BUCKETS)
        self.size = Histogram(ROWS_BUCKETS)
        self.by_size: collections.Counter[int] = collections.Counter()
        self.seconds_by_size: dict[int, float] = collections.defaultdict(float)

    def observe(self, rows: int, seconds: float) -> None:
        self.compute.observe(seconds)
        self.size.observe(rows)
        self.by_size[rows] += 1
        self.seconds_by_size[rows] += seconds


SeriesKey = tuple[str, str, str]  # (signature, protocol, method)


class VersionStats:
    """One loaded version's record: its calls by (signature, protocol, method), the predict calls' sums that
    Triton's statistics report (successes and failures with their times, queue and compute time, rows, the
    last call) and its queues' batches."""

    __slots__ = ("series", "batches", "success", "success_s", "fail", "fail_s", "queue_s", "compute_s", "rows",
                 "last")

    def __init__(self) -> None:
        self.series: dict[SeriesKey, Series] = {}
        self.batches: dict[str, Batches] = {}
        self.success = self.fail = self.rows = 0
        self.success_s = self.fail_s = self.queue_s = self.compute_s = 0.0
        self.last: float = 0.0  # time.perf_counter() of the last predict call received, 0 before one

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None:
        sig = call.signature
        key = (sig.name if sig is not None else "", call.protocol, call.method)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        series.finished(call, error, timings)
        if call.method != "predict":
            return
        queue, compute, total = timings  # unpacked: faster than three named-field reads
        if error is None:
            self.success += 1
            self.success_s += total
            self.queue_s += queue
            self.compute_s += compute
            self.rows += call.rows or 0  # decoded: it succeeded
        else:
            self.fail += 1
            self.fail_s += total
        if call.received > self.last:
            self.last = call.received

    def answered(self, key: SeriesKey, rows: int, received: float, dispatched: float, computed: float,
                 end: float) -> None:
        """`finished` of a predict call answered with its outputs, its steps written out (the express lanes call
        this once per request: serving/protocols/express.py). `dispatched`: 0.0 when it reached no batch."""
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        series.ok += 1
        total = end - received
        histogram = series.rows
        histogram.counts[bisect.bisect_left(ROWS_BUCKETS, rows)] += 1
        histogram.sum += rows
        histogram = series.latency
        histogram.counts[bisect.bisect_left(LATENCY_BUCKETS, total)] += 1
        histogram.sum += total
        self.success += 1
        self.success_s += total
        self.rows += rows
        if dispatched:
            queue = dispatched - received
            histogram = series.queue
            histogram.counts[bisect.bisect_left(LATENCY_BUCKETS, queue)] += 1
            histogram.sum += queue
            self.queue_s += queue
            self.compute_s += (computed or end) - dispatched
        if received > self.last:
            self.last = received

    def answered_batch(self, key: SeriesKey, received: list[float], dispatched: float, computed: float,
                       end: float) -> None:
        """`answered` for one-row calls answered together from one batch (dispatched and computed at the same
        instants, one `received` each): one call for the batch (serving/transport/http.py `answer_batch`)."""
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        n = len(received)
        series.ok += n
        rows_histogram, latency, queue_histogram = series.rows, series.latency, series.queue
        rows_histogram.counts[bisect.bisect_left(ROWS_BUCKETS, 1)] += n
        rows_histogram.sum += n
        counts, buckets, queue_counts = latency.counts, LATENCY_BUCKETS, queue_histogram.counts
        total_s = queue_s = 0.0
        for start in received:
            total = end - start
            counts[bisect.bisect_left(buckets, total)] += 1
            total_s += total
            if dispatched:
                queue = dispatched - start
                queue_counts[bisect.bisect_left(buckets, queue)] += 1
                queue_s += queue
        latency.sum += total_s
        self.success += n
        self.success_s += total_s
        self.rows += n
        if dispatched:
            queue_histogram.sum += queue_s
            self.queue_s += queue_s
            self.compute_s += ((computed or end) - dispatched) * n
        last = max(received)
        if last > self.last:
            self.last = last

    def batch_observer(self, signature: str) -> BatchObserver:
        """What the signature's batch queue tells of each batch it runs (warm-up batches included)."""
        return self.batches.setdefault(signature, Batches()).observe
