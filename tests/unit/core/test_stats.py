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
