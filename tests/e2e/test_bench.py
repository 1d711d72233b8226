"""`serving bench` against a tiny server run here, whose latencies and failures the test decides: counts add
up, percentiles match a known latency distribution, open loop measures from the intended send time (a
stall shows, where a closed loop hides it), the ramp stops where the objective breaks, thresholds set the
exit status, and the report files are there and parse."""

import asyncio
import csv
import json
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import ROOT, free_port

pytest.importorskip("hdrh", reason="hdrhistogram (bench extra) is not installed")

BODY = b'{"instances": [[1.0, 2.0]]}'


class TinyServer:
    """HTTP/1.1 keep-alive on a thread's event loop. Each request waits `delay(n)` seconds (n counts the
    requests); `stall(seconds)` holds every request until then; `one_at_a_time` serves requests in turn."""

    def __init__(self, delay=lambda n: 0.0, fail=lambda n: False, one_at_a_time=False):
        self.delay, self.fail, self.port = delay, fail, free_port()
        self.received = 0
        self.stall_until = 0.0
        self.one_at_a_time = one_at_a_time
        self.writers = set()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.turn = asyncio.Lock()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()
        self.server.close()
        for writer in self.writers:
            writer.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    async def _client(self, reader, writer):
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                if not head.startswith(b"POST /p "):  # the bench asking for server statistics: none here
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
                    continue
                n = self.received
                self.received += 1
                if self.one_at_a_time:
                    async with self.turn:
                        await asyncio.sleep(self.delay(n))
                else:
                    await asyncio.sleep(max(self.delay(n), self.stall_until - time.monotonic()))
                status = b"503 Service Unavailable" if self.fail(n) else b"200 OK"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            self.writers.discard(writer)

    def stall(self, seconds):
        self.stall_until = time.monotonic() + seconds

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def bench(server, tmp_path, *args, name="out"):
    body = tmp_path / "body.json"
    body.write_bytes(BODY)
    out = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "serving", "bench", "--url", f"http://127.0.0.1:{server.port}/p",
                           "--body", str(body), "--out", str(out), "--quiet", "--processes", "2", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return done, report, out


def test_counts_add_up_and_percentiles_follow_the_latency_distribution(tmp_path):
    # Every 5th request takes 20 ms, the others 2 ms; every 10th fails with 503.
    server = TinyServer(delay=lambda n: 0.020 if n % 5 == 4 else 0.002, fail=lambda n: n % 10 == 9)
    try:
        done, report, out = bench(server, tmp_path, "--concurrency", "1,4", "--duration", "2", "--warmup", "0")
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    steps = report["steps"]
    assert [s["concurrency"] for s in steps] == [1, 4]
    assert sum(s["sent"] for s in steps) == server.received  # every request the server got is counted
    for step in steps:
        assert step["sent"] == step["ok"] + sum(step["errors"].values())
        assert set(step["errors"]) == {"http_503"} and 0.07 < step["errors"]["http_503"] / step["sent"] < 0.13
        assert sum(s["ok"] for s in step["series"]) <= step["ok"]
    lat = steps[0]["latency_ms"]  # one at a time: the server's own delays, plus the loopback
    assert 2.0 <= lat["p50"] < 6.0, lat
    assert 20.0 <= lat["p90"] < 28.0 and 20.0 <= lat["p99"] < 30.0, lat
    assert lat["min"] >= 2.0 and lat["max"] >= 20.0
    assert steps[1]["achieved_rate"] > 1.5 * steps[0]["achieved_rate"]  # four in flight go faster


def test_open_loop_counts_from_the_intended_time_so_a_stall_shows(tmp_path):
    server = TinyServer()
    try:
        threading.Timer(1.5, server.stall, (1.0,)).start()  # a one-second stall, mid-step
        open_done, open_report, _ = bench(server, tmp_path, "--mode", "open", "--rate", "200", "--duration", "4",
                                          "--warmup", "0", "--connections", "8", name="open")
        threading.Timer(1.5, server.stall, (1.0,)).start()
        closed_done, closed_report, _ = bench(server, tmp_path, "--concurrency", "1", "--duration", "4",
                                              "--warmup", "0", name="closed")
    finally:
        server.close()
    assert open_done.returncode == 0 and closed_done.returncode == 0, open_done.stderr + closed_done.stderr
    step = open_report["steps"][0]
    assert step["sent"] == step["ok"] and 780 <= step["sent"] <= 800  # 200/s for 4 s, none dropped
    # About 200 requests were due during the stall: each waited for the rest of it, from when it was due.
    assert step["latency_ms"]["p90"] > 300, step["latency_ms"]
    assert step["latency_ms"]["max"] > 800
    # A closed loop sends nothing while it waits: one slow request, the percentiles hide the stall.
    assert closed_report["steps"][0]["latency_ms"]["p90"] < 50, closed_report["steps"][0]["latency_ms"]


def test_the_ramp_stops_where_the_objective_breaks(tmp_path):
    # At most 500 requests a second. The steps run it at 20%, 70% (held with room: the test once ran at 80% with a
    # 50 ms objective, which a neighbour's load on a 2-core machine could break) and 120% (a queue that grows by
    # 100 requests a second: 400 ms behind by the step's end).
    server = TinyServer(delay=lambda n: 0.002, one_at_a_time=True)
    try:
        done, report, out = bench(server, tmp_path, "--mode", "ramp", "--slo-p99-ms", "200", "--start", "100",
                                  "--step", "250", "--max", "900", "--duration", "2", "--warmup", "0")
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    ramp = report["verdict"]["ramp"]
    assert ramp["max_rate_held"] == 350 and ramp["broke_at"] == 600, (ramp, [s["latency_ms"] for s in report["steps"]])
    assert [s["held"] for s in report["steps"]] == [True, True, False]
    assert "the highest rate that held p99 <= 200 ms" in (out / "report.md").read_text()


def test_thresholds_set_the_exit_status_and_the_report_files_parse(tmp_path):
    server = TinyServer(delay=lambda n: 0.001)
    try:
        passed, report, out = bench(server, tmp_path, "--concurrency", "2", "--duration", "1", "--warmup", "0",
                                    "--threshold", "p99<1000ms", "--threshold", "errors<1%", name="pass")
        failed, failed_report, _ = bench(server, tmp_path, "--concurrency", "2", "--duration", "1", "--warmup",
                                         "0", "--threshold", "p50<1us", name="fail")
        usage, _, _ = bench(server, tmp_path, "--threshold", "p99 below 10", name="usage")
    finally:
        server.close()
    assert passed.returncode == 0 and report["verdict"]["passed"], passed.stderr
    assert failed.returncode == 1 and not failed_report["verdict"]["passed"]
    assert failed_report["verdict"]["thresholds"][0]["passed"] is False
    assert usage.returncode == 2 and "--threshold" in usage.stderr
    with (out / "report.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["Concurrency", "Inferences/Second", "Client Send"] and rows[1][0] == "2"
    assert "| c=2 |" in (out / "report.md").read_text()
    step = report["steps"][0]
    assert step["series"] and step["percentiles"][-1][0] == 100.0 and step["hdr"]
    assert report["host"]["cores"] >= 1 and report["command"].startswith("serving bench --url")
    for png in ("latency_vs_throughput.png", "timeline.png", "latency_spectrum.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png


def test_against_this_server_over_http_and_grpc_with_its_own_queue_and_compute_split(tmp_path):
    from tests.helpers import Server, make_linear

    make_linear(tmp_path / "lin", 1, weights=[[1.0], [1.0]], bias=0.0)
    (tmp_path / "tf.json").write_text(json.dumps({"model_spec": {"name": "lin"}, "inputs": {"inputs": {
        "dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": 1}, {"size": 2}]}, "float_val": [1.0, 2.0]}}}))
    (tmp_path / "v2.json").write_text(json.dumps({"model_name": "lin", "inputs": [
        {"name": "inputs", "datatype": "FP32", "shape": [1, 2], "contents": {"fp32_contents": [1.0, 2.0]}}]}))
    (tmp_path / "body.json").write_bytes(BODY)
    with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin") as s:
        runs = {
            "http": ["--url", f"http://127.0.0.1:{s.port}/v1/models/lin:predict",
                     "--body", str(tmp_path / "body.json")],
            "tf": ["--grpc", f"127.0.0.1:{s.grpc_port}", "--api", "tf", "--body", str(tmp_path / "tf.json")],
            "v2": ["--grpc", f"127.0.0.1:{s.grpc_port}", "--api", "v2", "--body", str(tmp_path / "v2.json")],
        }
        for name, target in runs.items():
            done = subprocess.run([sys.executable, "-m", "serving", "bench", *target, "--concurrency", "2",
                                   "--duration", "1", "--warmup", "0", "--quiet", "--processes", "1",
                                   "--out", str(tmp_path / name)], capture_output=True, text=True, cwd=ROOT,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
            step = json.loads((tmp_path / name / "report.json").read_text())["steps"][0]
            assert step["ok"] > 50 and step["errors"] == {}, (name, step["errors"])
            split = step["server"]  # read from the server's statistics extension before and after the step
            assert split is not None and 0 < split["server_us"] < step["latency_ms"]["mean"] * 1e3, (name, split)
            assert split["queue_us"] >= 0 and split["compute_us"] > 0
