"""benchmarks/grpc_perf_analyzer.py's extra rows (--async, --rate) and the report's client CPU column."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.grpc_perf_analyzer import modes, perf_analyzer
from benchmarks.report import write_report


def test_async_and_rate_rows_follow_each_plain_load_but_not_the_stream():
    loads = [("grpc", "grpc", "h:1", ""), ("grpc stream", "grpc", "h:1", "stream"), ("http", "http", "h:2", "")]
    args = argparse.Namespace(async_rows=True, rate=12000)
    assert modes(loads, args) == [*loads, ("grpc async", "grpc", "h:1", "async"),
                                  ("http async", "http", "h:2", "async"), ("grpc rate 12000/s", "grpc", "h:1", "rate"),
                                  ("http rate 12000/s", "http", "h:2", "rate")]
    assert modes(loads, argparse.Namespace(async_rows=False, rate=0)) == loads


def test_a_rate_that_too_few_threads_cannot_offer_leaves_its_row_out(tmp_path):
    args = argparse.Namespace(rate=12000, requests=40000, duration=10)
    with pytest.raises(RuntimeError, match="1 thread"):  # before any perf_analyzer is started
        perf_analyzer("127.0.0.1:1", "grpc", 1, args, tmp_path, "rate")


def test_the_report_has_a_client_cpu_column_only_when_a_row_measured_it(tmp_path):
    row = {"server": "a", "conc": 64, "rps": 1000.0, "p50": 1.0, "p99": 2.0, "cpu_us": 40.0, "errors": 0.0}
    plain = write_report(tmp_path / "plain", "t", "T", [], [row], []).read_text()
    assert "client CPU" not in plain and "| a | 64 | 1,000 | 1.000 | 2.000 | 40 | 0 |" in plain
    both = write_report(tmp_path / "both", "t", "T", [], [{**row, "client_us": 55.0}, {**row, "server": "b"}],
                        []).read_text()
    assert "| server CPU µs/req | client CPU µs/req | errors |" in both
    assert "| a | 64 | 1,000 | 1.000 | 2.000 | 40 | 55 | 0 |" in both
    assert "| b | 64 | 1,000 | 1.000 | 2.000 | 40 | — | 0 |" in both
