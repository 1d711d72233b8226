"""The queue service over HTTP and WebSocket on a real server: an embedded async service (`--async_service`)
that answers its input into its sink, and `serving queue` alone; limits, the token, SIGTERM and kill -9."""

import json
import signal
import subprocess
import sys
import urllib.parse

import pytest
import websocket

from serving._proto.eas.queueservice_pb2 import DataFrameListProto, DataFrameProto
from tests.helpers import ROOT, Server, free_port, make_linear, wait_until

TOKEN = "q-token"


def embedded(root, *extra, delay_ms=0):
    if not (root / "lin").exists():
        make_linear(root / "lin", 1, delay_ms=delay_ms)  # y = 0.5x + 2
    return Server(f"--model_base_path={root / 'lin'}", "--model_name=lin", "--async_service",
                  f"--queue_store=sqlite:{root / 'q.db'}", *extra, env={"SERVING_TOKEN": TOKEN})


def call(server, method, path, body=None):
    return server.request(method, path, body, headers={"Authorization": TOKEN})


def attrs(server, queue):
    return call(server, "GET", f"/api/predict/{queue}?_attrs_=true")[1]


def sink_items(server, **params):
    query = urllib.parse.urlencode({"_auto_delete_": "false", "_length_": 100, **params})
    status, body = call(server, "GET", f"/api/predict/lin/sink?{query}")
    assert status == 200
    return list(DataFrameListProto.FromString(body).index)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with embedded(tmp_path_factory.mktemp("queue")) as s:
        yield s


def test_a_put_answers_its_index_and_request_id_and_the_answer_reaches_the_sink_with_that_id(server):
    server.request("PUT", "/api/predict/lin/sink")  # warm the connection
    server.conn.request("POST", "/api/predict/lin?user=ann", body=b"[[1.0], [2.0]]", headers={"Authorization": TOKEN})
    resp = server.conn.getresponse()
    index, request_id = int(resp.read()), resp.getheader("X-Eas-Queueservice-Request-Id")
    assert resp.status == 200 and index >= 1 and request_id
    status, body = call(server, "GET", f"/api/predict/lin/sink?requestId={request_id}&_timeout_=10s&_raw_=true")
    assert status == 200 and body == [2.5, 3.0]
    assert sink_items(server, requestId=request_id) == []  # _auto_delete_ defaults to true
    assert int(attrs(server, "lin")["stream.length"]) == 0  # answered and committed


def test_a_failed_request_is_answered_with_the_routes_error_body_and_a_status_tag(server):
    status, index = call(server, "POST", "/api/predict/lin?requestId=bad-1", b"[[1.0, 2.0]]")
    assert status == 200
    wait_until(lambda: sink_items(server, requestId="bad-1"), 10, "the error answer")
    (item,) = sink_items(server, requestId="bad-1")
    assert item.tags["status"] == "400" and "expects shape" in json.loads(item.data)["error"]


def test_get_delete_truncate_and_commit(server):
    indexes = [int(call(server, "POST", "/api/predict/lin/sink", f"item{i}".encode())[1]) for i in range(4)]
    got = sink_items(server, _index_=indexes[1], _length_=2)
    assert [i.index for i in got] == indexes[1:3] and got[0].data == b"item1"
    assert call(server, "DELETE", f"/api/predict/lin/sink?_indexes_={indexes[0]}")[0] == 200
    assert call(server, "PUT", f"/api/predict/lin/sink?_indexes_={indexes[1]}")[0] == 200  # commit
    assert [i.index for i in sink_items(server, _index_=indexes[0])] == indexes[2:]
    assert call(server, "DELETE", f"/api/predict/lin/sink?_index_={indexes[3] + 1}&_trunc_=true")[0] == 200
    assert attrs(server, "lin/sink")["stream.length"] == "0"
    assert attrs(server, "lin/sink")["stream.lastEntry"] == str(indexes[3])


def test_the_token_the_limits_and_other_models_routes(server):
    status, body = server.request("POST", "/api/predict/lin/sink", b"x")
    assert status == 401
    status, body = call(server, "POST", "/api/predict/lin/sink", b"x" * (8 * 1024 * 1024 + 1))
    assert status == 413 and "larger than the queue lin/sink's limit" in body["error"]
    status, body = call(server, "POST", "/v1/models/lin:predict", {"instances": [[2.0]]})
    assert status == 200 and body == {"predictions": [3.0]}  # the synchronous routes stay


def test_a_watcher_gets_at_most_its_window_and_its_uncommitted_items_go_to_the_next(server):
    indexes = [int(call(server, "POST", "/api/predict/lin/sink", f"w{i}".encode())[1]) for i in range(3)]
    url = f"ws://127.0.0.1:{server.port}/api/predict/lin/sink?_watch_=true&_window_=2&_index_={indexes[0]}"
    first = websocket.create_connection(url, header={"Authorization": TOKEN}, timeout=5)
    got = [DataFrameProto.FromString(first.recv()).index for _ in range(2)]
    assert got == indexes[:2]
    first.ping("ping")
    first.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        first.recv()  # the window is full
    call(server, "PUT", f"/api/predict/lin/sink?_indexes_={indexes[0]}")
    first.settimeout(5)
    assert DataFrameProto.FromString(first.recv()).index == indexes[2]
    first.shutdown()  # dropped, no close frame, with indexes[1:] uncommitted
    second = websocket.create_connection(url + "&_auto_commit_=true", header={"Authorization": TOKEN}, timeout=5)
    assert sorted(DataFrameProto.FromString(second.recv()).index for _ in range(2)) == indexes[1:]
    second.close()
    wait_until(lambda: attrs(server, "lin/sink")["stream.length"] == "0", 5, "auto-committed")
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(url, timeout=5)  # no token


def test_sigterm_finishes_and_commits_the_items_held_and_a_restart_serves_what_was_left(tmp_path):
    s = embedded(tmp_path, "--queue_window=2", delay_ms=300)
    for i in range(5):
        call(s, "POST", f"/api/predict/lin?requestId=t{i}", b"[[2.0]]")
    wait_until(lambda: attrs(s, "lin")["stream.inflight"] == "2", 10, "the window held")
    assert s.stop(signal.SIGTERM) == 0
    s.log.close()
    with embedded(tmp_path) as again:  # what was held was answered; the rest is served now
        wait_until(lambda: len(sink_items(again)) == 5, 20, "five answers")
        assert sorted(i.tags["requestId"] for i in sink_items(again)) == [f"t{i}" for i in range(5)]


def test_kill_9_while_holding_the_window_loses_no_request(tmp_path):
    s = embedded(tmp_path, "--queue_window=3", delay_ms=300)
    ids = [f"k{i}" for i in range(6)]
    for rid in ids:
        assert call(s, "POST", f"/api/predict/lin?requestId={rid}", b"[[2.0]]")[0] == 200
    wait_until(lambda: attrs(s, "lin")["stream.inflight"] == "3", 10, "the window held")
    s.stop(signal.SIGKILL)
    s.log.close()
    with embedded(tmp_path) as again:
        wait_until(lambda: {i.tags["requestId"] for i in sink_items(again)} >= set(ids), 20, "every answer")


def queue_service(tmp_path, port):
    return subprocess.Popen([sys.executable, "-m", "serving", "queue", "--host", "127.0.0.1", f"--port={port}",
                             f"--store=sqlite:{tmp_path / 'standalone.db'}", f"--token={TOKEN}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_serving_queue_serves_any_queue_and_keeps_every_put_answered_through_kill_9(tmp_path):
    import http.client

    port = free_port()
    proc = queue_service(tmp_path, port)

    def request(method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, body, {"Authorization": TOKEN})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def up():
        try:
            return request("GET", "/readyz")[0] == 200
        except OSError:
            return False

    try:
        wait_until(up, 20, "serving queue")
        answered = [int(request("POST", f"/api/predict/{name}", b"data")[1]) for name in ("a", "b", "b")]
        assert answered == [1, 1, 2]
        assert request("POST", "/api/predict/a/sink")[0] == 200
        assert b'serving_queue_length{kind="sink",queue="a/sink"} 1.0' in request("GET", "/metrics")[1]
        proc.kill()
        proc.wait()
        proc = queue_service(tmp_path, port)
        wait_until(up, 20, "serving queue again")
        assert json.loads(request("GET", "/api/predict/b?_attrs_=true")[1])["stream.length"] == "2"
        assert request("POST", "/api/predict/b", b"more")[1] == b"3"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
