"""Draining on SIGTERM (readiness first, then the listener, then the requests received) and the HTTP
connection limit, on the real server process."""

import http.client
import json
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import Server, make_linear, wait_until

PREDICT = json.dumps({"instances": [[2.0]]}).encode()


def predict(conn: http.client.HTTPConnection) -> tuple[int, bytes]:
    conn.request("POST", "/v1/models/m:predict", body=PREDICT)
    resp = conn.getresponse()
    return resp.status, resp.read()


class LoadClient(threading.Thread):
    """Predicts on one keep-alive connection until a new connection is refused (the listener closed)."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.statuses: list[int] = []
        self.unanswered: list[str] = []  # a request sent on a connection that then failed

    def run(self) -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if self.conn.sock is None:  # first request, or the server answered `Connection: close`
                try:
                    self.conn.connect()
                except ConnectionRefusedError:
                    return
            try:
                self.statuses.append(predict(self.conn)[0])
            except (http.client.HTTPException, OSError) as e:
                self.unanswered.append(repr(e))
                return
        self.unanswered.append("still served 40 s later")


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_keep_alive_load_answers_every_request_and_exits_0(tmp_path, workers):
    make_linear(tmp_path / "m", 1, delay_ms=20)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", f"--workers={workers}") as s:
        clients = [LoadClient(s.port) for _ in range(16)]
        for c in clients:
            c.start()
        wait_until(lambda: sum(len(c.statuses) for c in clients) >= 200, what="load running")
        s.proc.send_signal(signal.SIGTERM)
        for c in clients:
            c.join(60)
        assert s.proc.wait(30) == 0
        assert [c.unanswered for c in clients] == [[]] * 16
        assert {st for c in clients for st in c.statuses} <= {200, 503}
        assert "draining" in s.output()


class FreshConnectionClient(threading.Thread):
    """Predicts on a new connection each time until one is refused (every listener closed); a request on a
    connection the server accepted that then fails (reset, closed unanswered) is lost."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.statuses: list[int] = []
        self.lost: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.connect()
            except ConnectionRefusedError:
                return
            try:
                self.statuses.append(predict(conn)[0])
            except (http.client.HTTPException, OSError) as e:
                self.lost.append(repr(e))
            finally:
                conn.close()
        self.lost.append("still served 20 s later")


def sigterm_under_fresh_connections(model: Path, workers: int) -> list[FreshConnectionClient]:
    """SIGTERM to a server that 8 clients send requests, each on a new connection; the clients once done."""
    with Server(f"--model_base_path={model}", "--model_name=m", f"--workers={workers}", "--access_log=off") as s:
        clients = [FreshConnectionClient(s.port) for _ in range(8)]
        for c in clients:
            c.start()
        wait_until(lambda: sum(len(c.statuses) for c in clients) >= 300, what="load running")
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0
        for c in clients:
            c.join(30)
        return clients


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_of_fresh_connections_resets_none(tmp_path, workers):
    # Closing a listener resets the connections the kernel queued on it (handshake done, request on its
    # way): 3 to 5 a run here before the drain took them (each SO_REUSEPORT worker has a queue of its own).
    # A race, so three runs.
    make_linear(tmp_path / "m", 1)
    for _ in range(3):
        clients = sigterm_under_fresh_connections(tmp_path / "m", workers)
        assert [c.lost for c in clients] == [[]] * 8
        assert {st for c in clients for st in c.statuses} == {200}


def test_during_the_drain_delay_readiness_fails_while_predicts_and_new_connections_are_served(tmp_path):
    make_linear(tmp_path / "m", 1)
    # 2 s rather than 1: the checks below must all fit in the delay on a busy test machine.
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", "--drain_delay_seconds=2") as s:
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            signalled = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: s.request("GET", "/readyz", fresh=True) == (503, {"status": "draining"}),
                       what="/readyz draining")
            assert s.request("GET", "/v2/health/ready", fresh=True) == (400, {"error": "not ready: draining"})
            assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}, fresh=True) == (200, {"predictions": [3.0]})
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert time.monotonic() - signalled < 2  # all of it inside the delay
        assert s.proc.wait(30) == 0
        assert time.monotonic() - signalled >= 2  # the listener stayed open for the delay


def test_a_second_sigterm_during_a_long_drain_exits_at_once(tmp_path):
    make_linear(tmp_path / "slow", 1, delay_ms=8000)
    with Server(f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow",
                "--termination_grace_period_seconds=60") as s:
        client = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        client.request("POST", "/v1/models/slow:predict", body=PREDICT)
        time.sleep(0.5)  # the request is sleeping in the model
        s.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "no new connections" in s.output(), what="the drain begun")
        started = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(5) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 3
        assert "SIGTERM during the drain: exiting now (status 143)" in s.output()
        client.close()


def test_a_connection_over_max_connections_gets_503_and_the_others_go_on(tmp_path):
    make_linear(tmp_path / "m", 1)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", "--max_connections=5") as s:
        # The helper's own kept-alive connection (it waited on /readyz) is the first of the five.
        others = [http.client.HTTPConnection("127.0.0.1", s.port, timeout=10) for _ in range(4)]
        for conn in others:
            assert predict(conn)[0] == 200  # answered, so accepted and counted
        sixth = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        sixth.request("POST", "/v1/models/m:predict", body=PREDICT)
        resp = sixth.getresponse()
        assert (resp.status, json.loads(resp.read())) == (503, {"error": "too many connections"})
        assert resp.getheader("Connection") == "close"
        assert sixth.sock is None  # http.client closed it, as told
        for conn in others:
            status, body = predict(conn)
            assert (status, json.loads(body)) == (200, {"predictions": [3.0]})
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}) == (200, {"predictions": [3.0]})
        # One closes: a new connection is served again.
        others.pop().close()
        wait_until(lambda: s.request("GET", "/readyz", fresh=True)[0] == 200, what="a free connection")
        for conn in others:
            conn.close()
