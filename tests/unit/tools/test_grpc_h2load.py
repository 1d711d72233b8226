"""benchmarks/grpc_h2load.py reads p50/p99 from h2load's per-request log: the third column (µs to the end of
the response) of the rows whose status is not -1 (a failed stream), which are counted apart."""

from __future__ import annotations

from benchmarks.grpc_h2load import latencies


def test_percentiles_come_from_the_third_column_in_milliseconds_and_failed_streams_are_counted_apart():
    rows = [f"1765000000{i:06d}\t200\t{(i + 1) * 100}" for i in range(100)]  # 100 µs .. 10,000 µs
    rows += ["1765000000999999\t-1\t99999999", "1765000001000000\t-1\t5"]
    p50, p99, failed = latencies("\n".join(rows) + "\n")
    assert failed == 2
    assert abs(p50 - 5.05) < 1e-9  # the median of 0.1 .. 10.0 ms, the failed streams' times left out
    assert abs(p99 - 9.901) < 1e-9


def test_a_log_of_only_failed_streams_has_no_latency_and_counts_them_all():
    assert latencies("1\t-1\t10\n2\t-1\t20\n") == (0.0, 0.0, 2)
