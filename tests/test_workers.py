"""`--workers`: the supervisor, its workers sharing the ports, and what the tree reports as one."""

import http.client
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from serving._proto.inference import grpc_predict_v2_pb2 as v2
from serving._proto.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from serving._proto.tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from serving._proto.tensorflow_serving.config import model_server_config_pb2
from serving.ops.accesslog import blocks
from serving.platform.workers import (
    Peers,
    available_cores,
    cgroup_cpu_limit,
    cgroup_memory_limit,
    merge_metrics,
    merge_statistics,
    worker_count,
)
from tests.helpers import Server, make_linear, run_cli, wait_until

PREDICT = json.dumps({"instances": [[2.0]]}).encode()


def fresh_predict(port: int, model: str = "m") -> tuple[int, dict]:
    """One predict on a new connection: SO_REUSEPORT spreads new connections over the workers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", f"/v1/models/{model}:predict", body=PREDICT)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def scrape(server: Server) -> dict:
    status, text = server.request("GET", "/metrics", fresh=True)
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def worker_pids(server: Server) -> list[int]:
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    return sorted(int(p) for p in children)


# ---- how many workers ----

def test_worker_count_takes_a_number_or_the_cores():
    assert worker_count("3") == 3 and worker_count(" 1 ") == 1
    assert worker_count("auto") == worker_count("0") == available_cores() >= 1
    assert available_cores() <= len(os.sched_getaffinity(0))
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(ValueError, match="--workers: expected a number of worker processes, 0 or auto"):
            worker_count(bad)


def test_cgroup_quota_v2_of_the_group_and_those_above_it_and_v1(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    assert cgroup_cpu_limit(tmp_path, proc) is None  # no cpu.max anywhere
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None  # "max": no quota
    (tmp_path / "kubepods" / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 2.5  # the parent's quota bounds the child
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 1.5  # the smallest
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1, tmp_path / "none") == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1, tmp_path / "none") is None


def test_cgroup_memory_limit_v2_up_the_tree_and_v1(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    assert cgroup_memory_limit(tmp_path, proc) is None
    (tmp_path / "kubepods" / "pod1" / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(tmp_path, proc) is None
    (tmp_path / "kubepods" / "memory.max").write_text("2147483648\n")
    assert cgroup_memory_limit(tmp_path, proc) == 2 << 30
    (tmp_path / "kubepods" / "pod1" / "memory.max").write_text("1073741824\n")
    assert cgroup_memory_limit(tmp_path, proc) == 1 << 30
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    assert cgroup_memory_limit(v1, tmp_path / "none") is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("536870912\n")
    assert cgroup_memory_limit(v1, tmp_path / "none") == 512 << 20


# ---- merging what the workers report ----

def test_counters_and_histograms_add_up_and_gauges_stay_per_worker():
    def state(requests, bucket, inf, rss, created):
        return [
            {"name": "reqs", "type": "counter", "help": "requests", "unit": "", "samples": [
                ["reqs_total", {"model": "m"}, requests], ["reqs_created", {"model": "m"}, created]]},
            {"name": "lat", "type": "histogram", "help": "latency", "unit": "", "samples": [
                ["lat_bucket", {"le": "0.1"}, bucket], ["lat_bucket", {"le": "+Inf"}, inf],
                ["lat_count", {}, inf], ["lat_sum", {}, 0.5 * inf]]},
            {"name": "rss", "type": "gauge", "help": "memory", "unit": "", "samples": [["rss", {}, rss]]},
        ]

    merged = {m.name: m for m in merge_metrics([(0, state(3, 1, 3, 100.0, 50.0)), (1, state(4, 4, 5, 200.0, 40.0))])}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in merged.values() for s in m.samples}
    assert samples[("reqs_total", (("model", "m"),))] == 7
    assert samples[("reqs_created", (("model", "m"),))] == 40.0  # the earliest
    assert samples[("lat_bucket", (("le", "0.1"),))] == 5 and samples[("lat_bucket", (("le", "+Inf"),))] == 8
    assert samples[("lat_count", ())] == 8 and samples[("lat_sum", ())] == 4.0
    assert samples[("rss", (("worker", "0"),))] == 100.0 and samples[("rss", (("worker", "1"),))] == 200.0
    assert merged["lat"].type == "histogram" and merged["rss"].type == "gauge"


def test_a_restarted_workers_earlier_counts_stay_in_the_sum_and_a_dead_ones_last_counts_too(tmp_path):
    (tmp_path / "ready").write_bytes(bytes(2))
    first, second = Peers(0, 2, tmp_path), Peers(1, 2, tmp_path)

    def state(life, requests, rss=1.0):
        return [
            {"name": "process_start_time_seconds", "type": "gauge", "help": "", "unit": "",
             "samples": [["process_start_time_seconds", {}, life]]},
            {"name": "reqs", "type": "counter", "help": "", "unit": "", "samples": [["reqs_total", {}, requests]]},
            {"name": "lat", "type": "histogram", "help": "", "unit": "", "samples": [
                ["lat_bucket", {"le": "+Inf"}, requests], ["lat_count", {}, requests], ["lat_sum", {}, requests / 2]]},
            {"name": "rss", "type": "gauge", "help": "", "unit": "", "samples": [["rss", {}, rss]]},
        ]

    def scrape_of(peers, states):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for m in merge_metrics(peers.tally(states)) for s in m.samples}

    assert scrape_of(first, {0: state(10.0, 5), 1: state(10.0, 7)})[("reqs_total", ())] == 12
    gone = scrape_of(first, {0: state(10.0, 6)})  # worker 1 died: what it counted stays, its gauges go
    assert gone[("reqs_total", ())] == 13 and gone[("lat_count", ())] == 13 and gone[("lat_sum", ())] == 6.5
    assert ("rss", (("worker", "1"),)) not in gone and gone[("rss", (("worker", "0"),))] == 1.0
    back = scrape_of(second, {1: state(11.5, 2), 0: state(10.0, 6)})  # restarted, and it answers the scrape
    assert back[("reqs_total", ())] == 6 + 7 + 2 and back[("lat_bucket", (("le", "+Inf"),))] == 15
    # An answer of its earlier life that comes late adds nothing; the next scrape, from the other worker,
    # still has everything.
    assert scrape_of(first, {0: state(10.0, 6), 1: state(10.0, 8)})[("reqs_total", ())] == 15
    assert scrape_of(first, {0: state(10.0, 9), 1: state(11.5, 4)})[("reqs_total", ())] == 9 + 7 + 4


def test_the_tree_is_ready_while_a_worker_that_was_ready_restarts_and_not_before_every_worker_loaded(tmp_path):
    (tmp_path / "ready").write_bytes(bytes(2))
    first, second = Peers(0, 2, tmp_path), Peers(1, 2, tmp_path)
    first.mark(True)
    second.mark(False, starting=True)
    assert not first.all_ready() and first.count_ready() == 1  # start-up: worker 1 is still loading
    second.mark(True)
    assert first.all_ready()
    second.leave()  # draining alone, or killed (the supervisor marks it so): the supervisor restarts it
    assert first.all_ready()
    second.mark(False, starting=True)  # its successor loading
    assert first.all_ready()
    second.mark(False)  # it started, and its models are not all available: not ready
    assert not first.all_ready()
    second.mark(True)
    first.leave()
    second.leave()
    assert not first.all_ready()  # none serves


def test_statistics_reports_add_up_per_version_and_batch_size():
    def stat(version, success, ns, last, batches):
        return {"name": "m", "version": version, "last_inference": last, "inference_count": success,
                "execution_count": sum(n for _, n in batches),
                "inference_stats": {"success": {"count": success, "ns": ns}, "fail": {"count": 0, "ns": 0}},
                "batch_stats": [{"batch_size": size, "compute_infer": {"count": n, "ns": 10 * n}}
                                for size, n in batches]}

    merged = merge_statistics([{"model_stats": [stat("1", 3, 300, 1000, [(1, 3)])]},
                               {"model_stats": [stat("1", 5, 500, 2000, [(1, 1), (4, 1)]), stat("2", 1, 9, 5, [])]}])
    one, two = merged["model_stats"]
    assert (one["name"], one["version"], two["version"]) == ("m", "1", "2")
    assert one["inference_count"] == 8 and one["execution_count"] == 5 and one["last_inference"] == 2000
    assert one["inference_stats"]["success"] == {"count": 8, "ns": 800}
    assert one["batch_stats"] == [{"batch_size": 1, "compute_infer": {"count": 4, "ns": 40}},
                                  {"batch_size": 4, "compute_infer": {"count": 1, "ns": 10}}]
    assert two["inference_count"] == 1


def test_access_log_blocks_are_whole_lines_of_at_most_pipe_buf():
    lines = [b"x" * 100 + b"\n"] * 100 + [b"y" * 5000 + b"\n", b"z\n"]
    out = list(blocks(lines, 4096))
    assert b"".join(out) == b"".join(lines)
    assert all(len(b) <= 4096 or b.count(b"\n") == 1 for b in out)  # a longer block is one long line
    assert all(b.endswith(b"\n") for b in out)


# ---- the process tree ----

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    make_linear(root / "m", 1, bias=1.0)
    make_linear(root / "other", 1, bias=5.0)
    config = root / "c.pbtxt"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{root / "m"}" '
                      'model_platform: "linear" } }')
    return root


@pytest.fixture(scope="module")
def two(models):
    # The reload test names a model beside m, outside the configured base paths.
    with Server(f"--model_config_file={models / 'c.pbtxt'}", "--workers=2", "--access_log=off",
                f"--model_load_roots={models}") as s:
        yield s


def test_two_workers_answer_and_report_as_one(two):
    assert len(worker_pids(two)) == 2
    for _ in range(40):
        assert fresh_predict(two.port) == (200, {"predictions": [2.0]})
    families = scrape(two)
    total = sum(s.value for s in families["serving_requests"].samples
                if s.name == "serving_requests_total" and s.labels["model"] == "m")
    assert total == 40  # every worker's requests, whichever worker answered the scrape
    rss = {s.labels["worker"] for s in families["process_resident_memory_bytes"].samples}
    assert rss == {"0", "1"}
    status, report = two.request("GET", "/v2/models/m/stats", fresh=True)
    assert status == 200 and report["model_stats"][0]["inference_stats"]["success"]["count"] == 40
    with grpc.insecure_channel(f"127.0.0.1:{two.grpc_port}") as channel:
        stats = v2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(v2.ModelStatisticsRequest(name="m"))
        assert stats.model_stats[0].inference_stats.success.count == 40
        assert v2_grpc.GRPCInferenceServiceStub(channel).ServerReady(v2.ServerReadyRequest()).ready
        # Each worker's gRPC health follows its siblings' readiness within a poll (0.2 s).
        wait_until(lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
                   == health_pb2.HealthCheckResponse.SERVING, timeout=5, what="gRPC health SERVING")


def test_a_reload_reaching_one_worker_is_applied_by_all_before_it_answers(models, two):
    config = model_server_config_pb2.ModelServerConfig()
    for name in ("m", "other"):
        config.model_config_list.config.add(name=name, base_path=str(models / name), model_platform="linear")
    with grpc.insecure_channel(f"127.0.0.1:{two.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        response = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
    assert response.status.error_code == 0, response
    # At once, every worker serves the new model: a worker that had not applied it would answer 404.
    assert [fresh_predict(two.port, "other")[0] for _ in range(30)] == [200] * 30
    # A worker that dies and is restarted serves the reloaded config too, not the file it started from.
    victim = worker_pids(two)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in worker_pids(two) and len(worker_pids(two)) == 2, what="worker restarted")
    wait_until(lambda: two.request("GET", "/readyz", fresh=True)[0] == 200, what="ready again")
    assert [fresh_predict(two.port, "other")[0] for _ in range(30)] == [200] * 30


class FreshLoad(threading.Thread):
    """Predicts on a new connection each time, `pause_s` apart, until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port, self.stopped, self.pause_s = port, threading.Event(), 0.0
        self.statuses: list[int | str] = []

    def run(self) -> None:
        while not self.stopped.wait(self.pause_s):
            try:
                self.statuses.append(fresh_predict(self.port)[0])
            except (http.client.HTTPException, OSError) as e:  # queued on the killed worker
                self.statuses.append(type(e).__name__)


def requests_total(server: Server) -> float:
    return sum(s.value for s in scrape(server)["serving_requests"].samples if s.name == "serving_requests_total")


def test_a_killed_worker_is_restarted_while_the_tree_stays_ready_and_its_counts_stay_summed(two):
    # Before: /readyz answered 503 ("workers_ready": "1/2") for the restart, ~3 s, so Kubernetes took a
    # serving pod out of its endpoints; and the summed counters lost the dead worker's counts.
    before = worker_pids(two)
    joined = two.output().count("HTTP (TF Serving REST API) listening")
    loads = [FreshLoad(two.port) for _ in range(2)]
    for load in loads:
        load.start()
    wait_until(lambda: sum(len(load.statuses) for load in loads) >= 400, what="load running")
    for load in loads:  # slower, so that losing the killed worker's counts would show as a fall
        load.pause_s = 0.05
    totals = [requests_total(two)]
    os.kill(before[1], signal.SIGKILL)
    ready: list[int | str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and two.output().count("HTTP (TF Serving REST API) listening") == joined:
        try:
            ready.append(two.request("GET", "/readyz", fresh=True)[0])
            if len(ready) % 5 == 0:
                totals.append(requests_total(two))
        except OSError as e:  # a connection the kernel had queued on the killed worker dies with it
            ready.append(type(e).__name__)
        time.sleep(0.05)
    for load in loads:
        load.stopped.set()
        load.join(30)
    totals.append(requests_total(two))
    assert before[1] not in worker_pids(two) and len(worker_pids(two)) == 2  # restarted, and serving
    assert ready.count(200) >= 5 and 503 not in ready, ready
    assert totals == sorted(totals) and totals[-1] > totals[0], totals
    answered = [st for load in loads for st in load.statuses]
    assert answered.count(200) >= len(answered) - 4, answered  # the other worker served on
    assert two.request("GET", "/readyz", fresh=True) == (200, {"status": "ready"})
    out = two.output()
    assert re.search(rf"worker \d \(pid {before[1]}\) was killed by SIGKILL after [\d.]+ s; restarting it in [\d.]+ s",
                     out), out[-2000:]
    assert "[worker 0]" in out and "[worker 1]" in out  # each worker's lines say whose they are


def test_a_worker_that_cannot_start_stops_the_supervisor_with_status_1(tmp_path):
    bad = tmp_path / "c.pbtxt"
    bad.write_text("model_config_list { config { name: 'm' base_path: 'relative' } }")
    done = run_cli(f"--model_config_file={bad}", "--workers=2", "--rest_api_port=0", "--port=0", timeout=60)
    assert done.returncode == 1
    assert "could not start: stopping the other workers" in done.stderr, done.stderr[-2000:]
    assert "restarting" not in done.stderr


def test_workers_drain_and_exit_when_the_supervisor_is_killed(models):
    with Server(f"--model_config_file={models / 'c.pbtxt'}", "--workers=2", "--access_log=off") as s:
        workers = worker_pids(s)
        s.proc.kill()  # SIGKILL: the supervisor cannot forward anything
        s.proc.wait(10)

        def alive(pid: int) -> bool:
            try:
                return "zombie" not in Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                return False

        def gone() -> bool:
            return not any(alive(pid) for pid in workers)

        wait_until(gone, timeout=30, what="the orphaned workers exited")
