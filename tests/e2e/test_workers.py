"""`--workers`: the supervisor, its workers sharing the ports, and what the tree reports as one. What runs
in process (worker counts, merging the workers' reports): tests/unit/platform/test_workers.py."""

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
