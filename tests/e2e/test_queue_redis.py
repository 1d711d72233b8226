"""The queue service on Redis (`--store redis://...`), against Debian's redis-server started here with
`appendonly yes` and `appendfsync always`: kill -9 of the queue service and of Redis loses no put that got an
index; two `serving queue` processes on one Redis are one queue (a put on one is seen, got and watched on the
other, an index is never given twice, a commit on one is seen by the other, what a killed replica's watcher
held goes to a watcher on the other); an engine's embedded async service on Redis answers items put through a
`serving queue` replica."""

import json
import signal
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
import websocket

from serving._proto.eas.queueservice_pb2 import DataFrameListProto, DataFrameProto
from tests.e2e.test_queue_remote import TOKEN, QueueService
from tests.helpers import Server, make_linear, wait_until
from tests.redis_server import RedisServer, needs_redis

pytestmark = needs_redis


class Replica(QueueService):
    """`serving queue --store redis://...` in a subprocess on a free port, with gets by tag, watchers, kill -9."""

    def items(self, queue, **params):
        query = urllib.parse.urlencode({"_auto_delete_": "false", "_length_": 1000, **params})
        status, body = self.request("GET", f"/api/predict/{queue}?{query}")
        assert status == 200, body
        return list(DataFrameListProto.FromString(body).index)

    def watch(self, queue, window, **params):
        query = urllib.parse.urlencode({"_watch_": "true", "_window_": window, **params})
        return websocket.create_connection(f"ws://127.0.0.1:{self.port}/api/predict/{queue}?{query}",
                                           header={"Authorization": TOKEN}, timeout=10)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)


@pytest.fixture
def redis_server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def replicas(redis_server, tmp_path):
    """Two queue-service replicas on one Redis (a lease of 2 s: a killed one's items go out within 3 s)."""
    started = [Replica(redis_server.url(0, lease_seconds=2)) for _ in range(2)]
    try:
        yield started
    finally:
        for replica in started:
            replica.kill()


def test_kill_9_of_the_queue_service_and_of_redis_loses_no_put_that_got_an_index(redis_server, tmp_path):
    store = redis_server.url(0)
    replica = Replica(store)
    try:
        with ThreadPoolExecutor(8) as pool:
            answered = list(pool.map(lambda i: (i, replica.put("k", f"item{i}".encode(), requestId=f"r{i}")),
                                     range(40)))
    finally:
        replica.kill()
    redis_server.restart(signal.SIGKILL)  # Redis too: what it answered is in its fsynced append-only file
    replica = Replica(store)
    try:
        kept = {item.index: item for item in replica.items("k")}
        assert sorted(kept) == sorted(index for _, index in answered) == list(range(1, 41))
        assert all(kept[index].data == f"item{i}".encode() and kept[index].tags["requestId"] == f"r{i}"
                   for i, index in answered)
        assert replica.put("k", b"after") == 41
    finally:
        replica.stop()


def test_two_replicas_on_one_redis_are_one_queue(replicas):
    a, b = replicas
    with ThreadPoolExecutor(8) as pool:
        indexes = list(pool.map(lambda i: replicas[i % 2].put("one", f"{i}".encode()), range(30)))
    assert sorted(indexes) == list(range(1, 31))  # never given twice
    assert a.put("one", b"red one", color="red") == 31
    (item,) = b.items("one", color="red")
    request_id = item.tags["requestId"]
    assert item.data == b"red one" and item.index == 31 and request_id
    status, body = b.request("GET", f"/api/predict/one?requestId={request_id}&_raw_=true")
    assert status == 200 and body == b"red one"  # got (and deleted) on the other replica
    assert a.items("one", requestId=request_id) == []
    assert a.request("PUT", "/api/predict/one?_indexes_=1,2,3")[0] == 200  # a commit on a ...
    assert b.attrs("one")["stream.length"] == "27" and b.items("one")[0].index == 4  # ... is seen on b
    assert a.request("DELETE", "/api/predict/one?_index_=31&_trunc_=true")[0] == 200
    assert b.attrs("one")["stream.length"] == "0" and b.attrs("one")["stream.lastEntry"] == "31"
    waiting = ThreadPoolExecutor(1).submit(b.request, "GET", "/api/predict/one/sink?requestId=late&_timeout_=10s")
    watcher = b.watch("one", 5)
    put = a.put("one", b"watched", user="ann")
    got = DataFrameProto.FromString(watcher.recv())
    assert (got.index, got.data, got.tags["user"]) == (put, b"watched", "ann")
    a.put("one/sink", b"the answer", requestId="late")
    status, body = waiting.result(10)  # a long poll on b answered by a put on a
    assert status == 200 and DataFrameListProto.FromString(body).index[0].data == b"the answer"
    assert a.attrs("one")["consumers.status.total"] == "1" and a.attrs("one")["stream.inflight"] == "1"
    watcher.close()
    metrics = a.request("GET", "/metrics")[1].decode()  # a's own operations: 17 puts, one commit of three
    assert 'serving_queue_latency_seconds_count{op="put",queue="one"} 17.0' in metrics
    assert 'serving_queue_latency_seconds_count{op="commit",queue="one"} 1.0' in metrics
    assert 'serving_queue_operations_total{op="commit",queue="one"} 3.0' in metrics


def test_what_a_killed_replicas_watcher_held_goes_to_a_watcher_on_the_other(replicas):
    a, b = replicas
    indexes = [a.put("held", f"h{i}".encode()) for i in range(3)]
    first = a.watch("held", 3)
    assert sorted(DataFrameProto.FromString(first.recv()).index for _ in range(3)) == indexes
    second = b.watch("held", 10)
    second.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        second.recv()  # a's watcher holds them all
    a.kill()  # no close frame, no release: the items go when a's lease ends
    second.settimeout(10)
    taken = [DataFrameProto.FromString(second.recv()) for _ in range(3)]
    assert sorted(item.index for item in taken) == indexes and {item.data for item in taken} == {b"h0", b"h1", b"h2"}
    assert b.request("PUT", f"/api/predict/held?_indexes_={','.join(map(str, indexes))}")[0] == 200
    assert b.attrs("held")["stream.length"] == "0"
    second.close()
    first.close()


def test_an_engines_async_service_on_redis_answers_what_a_queue_replica_was_given(redis_server, tmp_path):
    make_linear(tmp_path / "lin", 1)  # y = 0.5x + 2
    store = redis_server.url(0)
    replica = Replica(store)
    try:
        with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin", "--async_service",
                    f"--queue_store={store}", "--queue_window=4", env={"SERVING_TOKEN": TOKEN}):
            for i in range(6):
                replica.put("lin", f"[[{i}.0]]".encode(), requestId=f"e{i}")
            wait_until(lambda: len(replica.items("lin/sink")) == 6, 20, "six answers in the sink")
            answers = {item.tags["requestId"]: json.loads(item.data) for item in replica.items("lin/sink")}
            assert answers == {f"e{i}": [0.5 * i + 2] for i in range(6)}
            wait_until(lambda: replica.attrs("lin")["stream.length"] == "0", 10, "every input committed")
            metrics = replica.request("GET", "/metrics")[1].decode()
            assert 'serving_queue_length{kind="sink",queue="lin/sink"} 6.0' in metrics
    finally:
        replica.stop()
