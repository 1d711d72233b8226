"""benchmarks/grpc_perf_analyzer.py's extra rows (--async, --rate), its --quiet p99 (the export read, the main
thread sampled, the quiet calls chosen) and the report's optional columns."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time
import urllib.request

import numpy as np
import pytest

from benchmarks.grpc_perf_analyzer import main_thread_cpu, modes, perf_analyzer, quiet_calls, read_export
from benchmarks.report import write_report
from benchmarks.xgb_http import free_port, serve


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


def test_the_quiet_columns_follow_the_client_cpu_and_a_row_without_them_shows_a_dash(tmp_path):
    row = {"server": "a", "conc": 64, "rps": 1000.0, "p50": 1.0, "p99": 2.0, "cpu_us": 40.0, "errors": 0.0}
    text = write_report(tmp_path, "t", "T", [], [{**row, "client_us": 55.0, "quiet_p99": 1.5, "quiet_share": 0.625},
                                                 {**row, "server": "b"}], []).read_text()
    assert "| server CPU µs/req | client CPU µs/req | p99 quiet ms | quiet calls | errors |" in text
    assert "| a | 64 | 1,000 | 1.000 | 2.000 | 40 | 55 | 1.500 | 62% | 0 |" in text
    assert "| b | 64 | 1,000 | 1.000 | 2.000 | 40 | — | — | — | 0 |" in text


MS = 1_000_000  # ns


def test_quiet_calls_are_the_ones_sent_while_the_main_thread_ran_at_most_a_tenth_of_the_interval():
    # Sampled every 10 ms; the main thread ran 0.5, 8, 0 and 0 ms in the four intervals.
    samples = np.array([(0, 0), (10 * MS, MS // 2), (20 * MS, 8 * MS + MS // 2), (30 * MS, 8 * MS + MS // 2),
                        (40 * MS, 8 * MS + MS // 2)], dtype=np.int64)
    sent = np.array([5, 15, 25, 35, -1, 45, 10], dtype=np.int64) * MS
    assert quiet_calls(sent, samples).tolist() == [True, False, True, True, False, False, False]
    assert quiet_calls(sent, samples, share=0.9).tolist() == [True, True, True, True, False, False, True]
    assert not quiet_calls(sent, samples[:1]).any()  # one sample bounds no interval


def test_the_export_gives_each_answered_calls_send_and_first_answer_whatever_its_outputs_bytes(tmp_path):
    path = tmp_path / "export.json"
    path.write_bytes(b'{"experiments":[{"experiment":{"mode":"concurrency","value":64},"requests":['
                     b'{"timestamp":100,"request_inputs":{},"response_timestamps":[250,300],'
                     b'"response_outputs":[{"predictions":"\xe3\x9c?"}]},'
                     b'{"timestamp":120,"request_inputs":{},"response_timestamps":[]}],"window_boundaries":[1,2]},'
                     b'{"experiment":{"mode":"concurrency","value":1},"requests":['
                     b'{"timestamp":400,"request_inputs":{},"response_timestamps":[410]}]}],"version":"2.45.0"}')
    sent, answered = read_export(path)
    assert sent.tolist() == [100, 400] and answered.tolist() == [250, 410]


def test_the_main_threads_cpu_is_sampled_from_a_real_process_and_marks_its_busy_second_only():
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        print(time.time_ns(), flush=True)
        time.sleep(0.6)
        spin = time.time_ns()
        print(spin, flush=True)
        while time.time_ns() - spin < 600_000_000:
            pass
    """)], stdout=subprocess.PIPE, text=True)
    with child:
        samples = main_thread_cpu(child, deadline=time.monotonic() + 60, every=0.01)
        asleep, spinning = (int(line) for line in child.stdout.read().split())  # type: ignore[union-attr]
    assert child.returncode == 0 and len(samples) > 20
    assert (np.diff(samples[:, 1]) >= 0).all()  # CPU time only grows
    sent = np.array([asleep + 300 * MS, spinning + 300 * MS], dtype=np.int64)
    assert quiet_calls(sent, samples).tolist() == [True, False]


def test_a_client_that_grows_past_its_memory_bound_is_stopped(monkeypatch):
    monkeypatch.setattr("benchmarks.grpc_perf_analyzer.CLIENT_MEMORY", 64 << 20)
    child = subprocess.Popen([sys.executable, "-c", "import time; held = bytearray(256 << 20); time.sleep(60)"])
    with child:
        started = time.monotonic()
        main_thread_cpu(child, deadline=started + 60, every=0.01)
    assert child.returncode == -9 and time.monotonic() - started < 30


def test_two_reports_of_one_minute_are_both_kept(tmp_path):
    row = {"server": "a", "conc": 64, "rps": 1000.0, "p50": 1.0, "p99": 2.0, "cpu_us": 40.0, "errors": 0.0}
    first = write_report(tmp_path, "t", "T", [], [row], [])
    second = write_report(tmp_path, "t", "T", [], [{**row, "server": "b"}], [])
    if first.name[:-3] != second.name[:-5]:  # the minute turned between the two
        first = write_report(tmp_path, "u", "T", [], [row], [])
        second = write_report(tmp_path, "u", "T", [], [{**row, "server": "b"}], [])
    assert second.name == first.name[:-3] + "-2.md"
    assert "| a |" in first.read_text() and "| b |" in second.read_text()


@pytest.mark.parametrize("one_session", [False, True])
def test_the_server_gets_a_session_of_its_own_unless_one_session_and_is_stopped_with_its_group(one_session):
    port = free_port()
    server = textwrap.dedent(f"""
        import http.server, os
        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = f"{{os.getsid(0)}} {{os.getpgid(0)}} {{os.getpid()}}".encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args):
                pass
        http.server.HTTPServer(("127.0.0.1", {port}), Answer).serve_forever()
    """)
    seen = []

    def load(conc, seconds):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            seen.append([int(n) for n in answer.read().split()])
        return {"rps": 1.0, "requests": 1.0, "p50": 1.0, "p99": 1.0, "errors": 0.0}

    args = argparse.Namespace(concurrency=[1], duration=1, one_session=one_session)
    rows = serve([sys.executable, "-c", server], f"http://127.0.0.1:{port}/", dict(os.environ), [("x", load)], args,
                 warm=False)
    (sid, pgid, pid), = seen
    assert len(rows) == 1 and pgid == pid  # a group of its own either way: stopped as one
    assert (sid == os.getsid(0)) is one_session and (sid == pid) is not one_session
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped
