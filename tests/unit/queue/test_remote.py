"""The remote subscriber (`--queue_endpoint`) against the queue service's API served in process on a loopback
port: its window, a full sink (429) that holds it until there is room, SIGTERM's finish-and-commit, and the
endpoint's form."""

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from serving.protocols.adapters import answer_when
from serving.queue.api import QueueApi
from serving.queue.client import endpoint_address
from serving.queue.queue import QueueLimits
from serving.queue.remote import RemoteSubscriber
from serving.queue.service import QueueService
from serving.queue.standalone import QueueRoutes
from serving.queue.store import SqliteStore
from serving.transport.auth import TokenAuth
from serving.transport.http import HttpLimits, Response
from serving.transport.listener import HttpListener
from tests.helpers import free_port, in_loop

TOKEN = "t"


async def serve(tmp_path, sink_max_length=100):
    service = QueueService(SqliteStore(tmp_path / "q.db"), QueueLimits(), QueueLimits(max_length=sink_max_length))
    api = QueueApi(service.lookup)
    listener = HttpListener(QueueRoutes(api, CollectorRegistry(), TokenAuth(TOKEN)), HttpLimits())
    port = free_port()
    await listener.listen("127.0.0.1", port, reuse_port=False)
    return service, api, listener, port


async def close(service, api, listener):
    api.close()
    await listener.close()
    await listener.finish(time.monotonic() + 2)
    service.close()


def slow_route(delay_s, seen):
    def route(request):
        seen.append(request.body)

        async def work():
            await asyncio.sleep(delay_s)
            return request.body.upper()
        return answer_when(work(), lambda body: Response(200, body), lambda e: Response(500, b"error"), 10)
    return route


async def until(predicate, timeout_s=5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@in_loop
async def test_the_window_bounds_what_is_held_and_a_full_sink_holds_the_subscriber_until_it_has_room(tmp_path):
    service, api, listener, port = await serve(tmp_path, sink_max_length=1)
    source, sink = service.lookup("m"), service.lookup("m/sink")
    seen = []
    subscriber = RemoteSubscriber(f"http://127.0.0.1:{port}", "m", 2, TOKEN, slow_route(0.01, seen),
                                  lambda e: Response(400, b"bad"))
    for i in range(4):
        await source.put(f"x{i}".encode(), {"requestId": f"r{i}"})
    subscriber.start()  # the first items come with the handshake's answer
    await until(lambda: len(sink) == 1 and len(seen) == 3)  # one answer in; one waits for room; one more taken
    await asyncio.sleep(0.2)
    assert len(sink) == 1 and len(seen) == 3 and len(source.holder) == 2  # the full sink holds the window
    answers = {}
    while len(answers) < 4:
        (item,) = await sink.get(0, 1, {}, 5.0, auto_delete=True)
        answers[item.tags["requestId"]] = item.data
    assert answers == {f"r{i}": f"X{i}".encode() for i in range(4)}
    await until(lambda: len(source) == 0)  # each committed
    await subscriber.stop(5.0)
    await close(service, api, listener)


@in_loop
async def test_stop_takes_nothing_more_and_finishes_and_commits_what_it_holds(tmp_path):
    service, api, listener, port = await serve(tmp_path)
    source, sink = service.lookup("m"), service.lookup("m/sink")
    seen = []
    subscriber = RemoteSubscriber(f"http://127.0.0.1:{port}", "m", 2, TOKEN, slow_route(0.3, seen),
                                  lambda e: Response(400, b"bad"))
    subscriber.start()
    for i in range(3):
        await source.put(b"x", {"requestId": f"r{i}"})
    await until(lambda: len(seen) == 2)
    await subscriber.stop(5.0)
    assert len(sink) == 2 and len(source) == 1 and len(seen) == 2  # the two held: answered and committed
    await until(lambda: not source.watchers)  # the WebSocket closed: the third goes to the next watcher
    assert not source.holder
    await close(service, api, listener)


def test_the_endpoint_is_http_host_and_port():
    assert endpoint_address("http://queue.local:8081") == ("queue.local", 8081)
    assert endpoint_address("10.0.0.1:80") == ("10.0.0.1", 80)
    with pytest.raises(ValueError, match="expected http://host:port"):
        endpoint_address("https://queue.local")
