"""A version's record (serving/core/stats.py): `answered`, the express lanes' way in, leaves the record exactly
as `finished` does for the same answered predict call."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from serving.core.signature import Signature
from serving.core.stats import Series, VersionStats


@dataclass
class FakeCall:
    signature: Signature
    rows: int
    received: float
    dispatched: float
    computed: float
    protocol: str = "tfserving_rest"
    method: str = "predict"


def state(record: VersionStats) -> tuple:
    def series(s: Series) -> tuple:
        return (s.ok, dict(s.codes), s.latency.counts, s.latency.sum, s.queue.counts, s.queue.sum, s.rows.counts,
                s.rows.sum)
    return ({k: series(v) for k, v in record.series.items()}, record.success, record.success_s, record.fail,
            record.queue_s, record.compute_s, record.rows, record.last)


@pytest.mark.parametrize("dispatched, computed", [(10.002, 10.0031), (0.0, 0.0), (10.002, 0.0)])
def test_answered_records_what_finished_records(dispatched: float, computed: float) -> None:
    sig = Signature("serving_default", {}, {})
    end = 10.004
    calls = [FakeCall(sig, rows, 10.0 + i * 1e-4, dispatched, computed) for i, rows in enumerate((1, 3, 70))]
    by_finished, by_answered = VersionStats(), VersionStats()
    for call in calls:
        queue = call.dispatched - call.received if call.dispatched else 0.0
        compute = (call.computed or end) - call.dispatched if call.dispatched else 0.0
        by_finished.finished(call, None, (queue, compute, end - call.received))  # type: ignore[arg-type]
        by_answered.answered(("serving_default", "tfserving_rest", "predict"), call.rows, call.received,
                             call.dispatched, call.computed, end)
    assert state(by_answered) == state(by_finished)
    assert by_answered.success == 3 and by_answered.rows == 74


def rounded(value: tuple) -> tuple:
    """The record's state with its float sums to 9 digits (a batch sums its latencies before adding them)."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(rounded(v) for v in value)
    return value


@pytest.mark.parametrize("dispatched, computed", [(10.002, 10.0031), (0.0, 0.0), (10.002, 0.0)])
def test_answered_batch_records_what_answered_records_one_by_one(dispatched: float, computed: float) -> None:
    key = ("serving_default", "tfserving_rest", "predict")
    received = [10.0 + i * 3e-4 for i in range(7)]
    end = 10.004
    one_by_one, batch = VersionStats(), VersionStats()
    for start in received:
        one_by_one.answered(key, 1, start, dispatched, computed, end)
    batch.answered_batch(key, received, dispatched, computed, end)
    assert rounded(state(batch)) == rounded(state(one_by_one))
    assert batch.series[key].ok == 7 and sum(batch.series[key].latency.counts) == 7
