"""The Redis store against a real redis-server (Debian's, started here): two `RedisStore`s in one process are two
replicas of the queue service in front of one Redis, and serve one queue: indexes never given twice, a put on
one found and long-polled on the other, a commit on one seen by the other's watcher, a watcher's items handed
to the other replica's watcher when it drops or its replica dies, priority, limits, and what a new replica
reads back."""

import asyncio

import pytest

from serving.errors import Code, ServingError
from serving.queue.queue import PayloadTooLarge, QueueLimits, Watcher
from serving.queue.service import QueueService, open_store
from serving.queue.store_redis import RedisStore, parse_url
from tests.helpers import in_loop
from tests.redis_server import RedisServer, needs_redis

pytestmark = needs_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


_db = iter(range(1, 16))


@pytest.fixture
def url(redis_server):
    """A database of its own per test (lease_seconds 2: a dead replica's items go out again within 3 s)."""
    return redis_server.url(next(_db), lease_seconds=2)


def replica(url, limits=None):
    store = open_store(url, None)
    assert isinstance(store, RedisStore)
    return store, QueueService(store, limits or QueueLimits())


async def until(condition, timeout_s=10.0, what="the condition"):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@in_loop
async def test_two_replicas_never_give_an_index_twice_and_each_finds_what_the_other_put(url):
    (sa, a), (sb, b) = replica(url), replica(url)
    qa, qb = a.lookup("q"), b.lookup("q")
    items = await asyncio.gather(*(q.put(f"{i}".encode(), {"n": str(i)}) for i, q in enumerate([qa, qb] * 20)))
    assert sorted(item.index for item in items) == list(range(1, 41))
    mine = await qa.put(b"mine", {"requestId": "r-1"})
    assert [i.data for i in await qb.get(0, 1, {"requestId": "r-1"}, 0, auto_delete=False)] == [b"mine"]
    assert [i.index for i in await qb.get(3, 2, {}, 0, auto_delete=False)] == [3, 4]
    assert [i.data for i in await qb.get(0, 5, {"n": "7"}, 0, auto_delete=False)] == [b"7"]
    got = await qb.get(0, 100, {}, 0, auto_delete=True)
    assert len(got) == 41 and got[-1].index == mine.index and got[-1].tags["requestId"] == "r-1"
    attrs = await qa.attrs()
    assert attrs["stream.length"] == "0" and attrs["stream.lastEntry"] == "41"
    await sa.aclose()
    await sb.aclose()


@in_loop
async def test_a_long_poll_on_one_replica_is_answered_by_a_put_on_the_other(url):
    (sa, a), (sb, b) = replica(url), replica(url)
    waiting = asyncio.ensure_future(b.lookup("q").get(0, 1, {"requestId": "r"}, 10.0, auto_delete=False))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await a.lookup("q").put(b"other", {})
    await a.lookup("q").put(b"answer", {"requestId": "r"})
    assert [i.data for i in await asyncio.wait_for(waiting, 5)] == [b"answer"]
    assert await b.lookup("q").get(0, 1, {"requestId": "none"}, 0.05, auto_delete=False) == []
    await sa.aclose()
    await sb.aclose()


@in_loop
async def test_limits_refuse_a_put_past_max_length_on_any_replica_and_a_refused_put_takes_no_index(url):
    limits = QueueLimits(max_length=2, max_payload_bytes=4)
    (sa, a), (sb, b) = replica(url, limits), replica(url, limits)
    await a.lookup("q").put(b"1", {})
    await b.lookup("q").put(b"2", {})
    with pytest.raises(ServingError) as e:
        await a.lookup("q").put(b"3", {})
    assert e.value.code is Code.RESOURCE_EXHAUSTED and "queue q is full: 2 items" in e.value.message
    await until(b.lookup("q").full, 3, "replica b to see the queue full")
    with pytest.raises(PayloadTooLarge):
        await b.lookup("q").put(b"12345", {})
    assert await b.lookup("q").remove([1, 99]) == 1
    assert (await a.lookup("q").put(b"3", {})).index == 3
    await sa.aclose()
    await sb.aclose()


@in_loop
async def test_a_commit_on_one_replica_makes_room_for_a_watcher_on_the_other(url):
    (sa, a), (sb, b) = replica(url), replica(url)
    for i in range(5):
        await a.lookup("q").put(str(i).encode(), {})
    sent = []
    b.lookup("q").watch(Watcher(2, sent.append))
    await until(lambda: len(sent) == 2, what="the window")
    await asyncio.sleep(0.2)
    assert [i.index for i in sent] == [1, 2]  # no more than the window
    assert (await a.lookup("q").attrs())["stream.inflight"] == "2"
    assert await a.lookup("q").remove([1]) == 1  # committed on the other replica
    await until(lambda: len(sent) == 3, what="the next item")
    assert sent[2].index == 3 and sent[2].data == b"2"
    await sa.aclose()
    await sb.aclose()


@in_loop
async def test_a_put_on_one_replica_goes_to_a_watcher_on_the_other_priority_first(url):
    (sa, a), (sb, b) = replica(url), replica(url)
    await a.lookup("q").put(b"normal", {})
    await a.lookup("q").put(b"urgent", {}, priority=1)
    sent = []
    b.lookup("q").watch(Watcher(1, sent.append, auto_commit=True))
    await until(lambda: len(sent) == 2, what="both items")
    assert [i.data for i in sent] == [b"urgent", b"normal"]
    await a.lookup("q").put(b"later", {"color": "red"})
    await until(lambda: len(sent) == 3, what="a put made after the watch")
    assert sent[2].data == b"later"
    await until(lambda: a.lookup("q").full() is False and len(a.lookup("q")) == 0, what="auto-commits")
    assert (await a.lookup("q").attrs())["stream.length"] == "0"
    await sa.aclose()
    await sb.aclose()


@in_loop
async def test_a_dropped_watchers_items_go_to_a_watcher_on_the_other_replica(url):
    (sa, a), (sb, b) = replica(url), replica(url)
    for i in range(3):
        await a.lookup("q").put(str(i).encode(), {})
    first, second = [], []
    dropped = Watcher(3, first.append)
    a.lookup("q").watch(dropped)
    await until(lambda: len(first) == 3, what="the first watcher's window")
    b.lookup("q").watch(Watcher(5, second.append))
    await asyncio.sleep(0.2)
    assert second == []
    a.lookup("q").unwatch(dropped)
    await until(lambda: len(second) == 3, what="the dropped watcher's items")
    assert sorted(i.index for i in second) == [1, 2, 3]
    await sa.aclose()
    await sb.aclose()


@in_loop
async def test_what_a_dead_replica_held_goes_to_a_watcher_on_a_live_one_once_its_lease_ends(url):
    (sa, a), (sb, b) = replica(url), replica(url)
    for i in range(4):
        await a.lookup("q").put(str(i).encode(), {})
    held, taken = [], []
    a.lookup("q").watch(Watcher(3, held.append))
    await until(lambda: len(held) == 3, what="the window held")
    b.lookup("q").watch(Watcher(10, taken.append))
    await until(lambda: len(taken) == 1, what="the item the first window left")
    for task in sa.tasks:  # replica a dies: no release, no more lease renewals
        task.cancel()
    await asyncio.gather(*sa.tasks, return_exceptions=True)
    await sa.client.aclose()
    await until(lambda: len(taken) == 4, 8, what="the dead replica's items")
    assert sorted(i.index for i in taken) == [1, 2, 3, 4]
    assert (await b.lookup("q").attrs())["consumers.status.total"] == "1"
    await sb.aclose()


@in_loop
async def test_a_new_replica_reads_back_the_queue_and_truncate_keeps_the_last_index(url):
    sa, a = replica(url)
    q = a.lookup("q")
    for i in range(4):
        await q.put(str(i).encode(), {"requestId": f"r{i}"})
    assert await q.truncate(3) == 2
    await q.remove([3])
    assert await q.search(4) == {"index": 4, "tags": {"requestId": "r3"}, "consumer": "", "priority": 0,
                                 "created": pytest.approx((await q.get(4, 1, {}, 0, False))[0].created)}
    await sa.aclose()
    sb, b = replica(url)
    assert list(b.queues) == ["q"]  # the queues Redis has are served from the start
    again = b.lookup("q")
    assert [i.data for i in await again.get(0, 10, {}, 0, False)] == [b"3"]
    assert await again.get(0, 1, {"requestId": "r3"}, 0, False) and not await again.get(0, 1, {"requestId": "r0"},
                                                                                         0, False)
    assert (await again.put(b"next", {})).index == 5
    attrs = await again.attrs()
    assert (attrs["stream.length"], attrs["stream.firstEntry"], attrs["stream.lastEntry"]) == ("2", "4", "5")
    await sb.aclose()


def test_the_url_takes_lease_seconds_and_a_redis_that_does_not_answer_stops_the_start(redis_server):
    assert parse_url("redis://h:1/2?lease_seconds=5&socket_timeout=3") == ("redis://h:1/2?socket_timeout=3", 5.0)
    with pytest.raises(ValueError, match="lease_seconds must be more than 1"):
        parse_url("redis://h:1/2?lease_seconds=0.5")
    store = RedisStore("redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="queue store redis://127.0.0.1:1/0: Redis does not answer"):
        store.load()
