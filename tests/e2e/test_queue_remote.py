"""Engines subscribed to a standalone `serving queue` (`--queue_endpoint`): they watch their service's input
over the WebSocket API, answer into its sink with the item's requestId and commit; kill -9 of an engine holding
its window loses no request (the queue gives what it held to the next engine)."""

import http.client
import json
import signal
import subprocess
import sys
import urllib.parse

import pytest

from serving._proto.eas.queueservice_pb2 import DataFrameListProto
from tests.helpers import ROOT, Server, free_port, make_linear, wait_until

TOKEN = "remote-token"


class QueueService:
    """`serving queue` in a subprocess on a free port."""

    def __init__(self, store: str, port: int = 0) -> None:
        self.store, self.port = store, port or free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "serving", "queue", "--host", "127.0.0.1",
                                      f"--port={self.port}", f"--store={store}", f"--token={TOKEN}"], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.up, 20, "serving queue")

    def request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body, {"Authorization": TOKEN})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"serving queue exited with {self.proc.returncode}")
        try:
            return self.request("GET", "/readyz")[0] == 200
        except OSError:
            return False

    def put(self, queue, body, **tags):
        status, answer = self.request("POST", f"/api/predict/{queue}?{urllib.parse.urlencode(tags)}", body)
        assert status == 200, answer
        return int(answer)

    def attrs(self, queue):
        return json.loads(self.request("GET", f"/api/predict/{queue}?_attrs_=true")[1])

    def items(self, queue):
        status, body = self.request("GET", f"/api/predict/{queue}?_auto_delete_=false&_length_=1000")
        assert status == 200
        return list(DataFrameListProto.FromString(body).index)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(20) == 0


@pytest.fixture
def queue_service(tmp_path):
    service = QueueService(f"sqlite:{tmp_path / 'queues.db'}")
    try:
        yield service
    finally:
        service.stop()


def engine(root, queue_service, *extra, delay_ms=0):
    if not (root / "lin").exists():
        make_linear(root / "lin", 1, delay_ms=delay_ms)  # y = 0.5x + 2
    return Server(f"--model_base_path={root / 'lin'}", "--model_name=lin",
                  f"--queue_endpoint=http://127.0.0.1:{queue_service.port}", *extra,
                  env={"SERVING_QUEUE_TOKEN": TOKEN})


def answers(queue_service):
    return {item.tags["requestId"]: item for item in queue_service.items("lin/sink")}


def test_a_subscribed_engine_answers_each_put_into_the_remote_sink_and_commits_it(tmp_path, queue_service):
    with engine(tmp_path, queue_service, "--queue_window=2") as s:
        wait_until(lambda: queue_service.attrs("lin")["consumers.status.total"] == "1", 10, "the engine watching")
        for i in range(5):
            queue_service.put("lin", f"[[{i}.0]]".encode(), requestId=f"r{i}", user="ann")
        queue_service.put("lin", b"[[1.0, 2.0]]", requestId="bad")
        wait_until(lambda: len(answers(queue_service)) == 6, 20, "six answers")
        got = answers(queue_service)
        assert [json.loads(got[f"r{i}"].data) for i in range(5)] == [[0.5 * i + 2] for i in range(5)]
        assert got["r1"].tags["user"] == "ann" and "status" not in got["r1"].tags
        assert got["bad"].tags["status"] == "400" and "expects shape" in json.loads(got["bad"].data)["error"]
        wait_until(lambda: queue_service.attrs("lin")["stream.length"] == "0", 10, "every input committed")
        status, body = s.post("/api/predict/lin", [[2.0]])  # the engine hosts no queue: its cloud route answers
        assert status == 200 and body == [3.0]
        metrics = s.get("/metrics")[1].decode()
        assert 'serving_queue_operations_total{op="commit",queue="lin"} 6.0' in metrics
        assert s.stop(signal.SIGTERM) == 0
    assert queue_service.attrs("lin")["consumers.status.total"] == "0"


def test_kill_9_of_an_engine_holding_its_window_then_another_engine_answers_every_request(tmp_path, queue_service):
    first = engine(tmp_path, queue_service, "--queue_window=3", delay_ms=400)
    ids = [f"k{i}" for i in range(7)]
    try:
        for rid in ids:
            queue_service.put("lin", b"[[2.0]]", requestId=rid)
        wait_until(lambda: queue_service.attrs("lin")["stream.inflight"] == "3", 10, "the window held")
    finally:
        first.stop(signal.SIGKILL)
        first.log.close()
    assert len(answers(queue_service)) < len(ids)
    with engine(tmp_path, queue_service, "--queue_window=3"):
        wait_until(lambda: set(answers(queue_service)) >= set(ids), 30, "every answer")
        assert all(json.loads(item.data) == [3.0] for item in answers(queue_service).values())
        wait_until(lambda: queue_service.attrs("lin")["stream.length"] == "0", 10, "every input committed")


def test_the_engine_subscribes_again_when_the_queue_service_restarts(tmp_path, queue_service):
    with engine(tmp_path, queue_service):
        wait_until(lambda: queue_service.attrs("lin")["consumers.status.total"] == "1", 10, "the engine watching")
        queue_service.stop()
        again = QueueService(queue_service.store, queue_service.port)
        queue_service.proc = again.proc  # the fixture stops this one
        wait_until(lambda: queue_service.attrs("lin")["consumers.status.total"] == "1", 20, "watching again")
        queue_service.put("lin", b"[[4.0]]", requestId="after")
        wait_until(lambda: "after" in answers(queue_service), 10, "the answer")
