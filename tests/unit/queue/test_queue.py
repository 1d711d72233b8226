"""One queue in process over a real SQLite store: indexes, gets and long polls, limits, watchers' windows,
commits, re-delivery of a dropped watcher's items, priority, and what a new process reads back."""

import asyncio

import pytest

from serving.errors import Code, ServingError
from serving.queue.api import duration_s, split_query
from serving.queue.queue import PayloadTooLarge, Queue, QueueLimits, Watcher
from serving.queue.service import QueueService
from serving.queue.store import SqliteStore
from tests.helpers import in_loop


def open_queue(tmp_path, limits=None, name="q"):
    store = SqliteStore(tmp_path / "q.db")
    return store, Queue(name, store, limits or QueueLimits(), store.load().get(name))


@in_loop
async def test_a_put_gets_the_next_index_and_a_request_id_and_is_found_by_either(tmp_path):
    store, q = open_queue(tmp_path)
    first = await q.put(b"a", {"user": "x"})
    second = await q.put(b"b", {"requestId": "mine"})
    assert (first.index, second.index) == (1, 2) and first.tags["requestId"] and second.tags["requestId"] == "mine"
    assert [i.data for i in q.find(2, 1, {})] == [b"b"]
    assert [i.data for i in q.find(0, 5, {"requestId": "mine"})] == [b"b"]
    assert [i.data for i in q.find(0, 5, {"user": "x"})] == [b"a"]
    got = await q.get(0, 5, {}, 0, auto_delete=True)
    assert [i.index for i in got] == [1, 2] and len(q) == 0
    store.close()


@in_loop
async def test_a_long_poll_is_answered_by_the_put_it_waits_for(tmp_path):
    store, q = open_queue(tmp_path)
    waiting = asyncio.ensure_future(q.get(0, 1, {"requestId": "r"}, 10.0, auto_delete=False))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await q.put(b"other", {})
    await q.put(b"answer", {"requestId": "r"})
    assert [i.data for i in await asyncio.wait_for(waiting, 5)] == [b"answer"]
    assert await q.get(0, 1, {"requestId": "none"}, 0.01, auto_delete=False) == []
    store.close()


@in_loop
async def test_limits_refuse_a_put_past_max_length_429_and_a_payload_past_the_limit(tmp_path):
    store, q = open_queue(tmp_path, QueueLimits(max_length=2, max_payload_bytes=4))
    await q.put(b"1", {})
    await q.put(b"2", {})
    with pytest.raises(ServingError) as e:
        await q.put(b"3", {})
    assert e.value.code is Code.RESOURCE_EXHAUSTED and "queue q is full: 2 items" in e.value.message
    with pytest.raises(PayloadTooLarge):
        await q.put(b"12345", {})
    await q.remove([1])
    assert (await q.put(b"3", {})).index == 3  # a refused put takes no index; a removed one is not given again
    store.close()


@in_loop
async def test_a_watcher_holds_at_most_its_window_and_a_commit_makes_room(tmp_path):
    store, q = open_queue(tmp_path)
    for i in range(5):
        await q.put(str(i).encode(), {})
    sent = []
    watcher = Watcher(2, sent.append)
    q.watch(watcher)
    assert [i.index for i in sent] == [1, 2]
    await q.remove([1])
    assert [i.index for i in sent] == [1, 2, 3] and len(q) == 4
    store.close()


@in_loop
async def test_a_dropped_watchers_uncommitted_items_go_to_another_watcher(tmp_path):
    store, q = open_queue(tmp_path)
    for i in range(3):
        await q.put(str(i).encode(), {})
    first, second = [], []
    dropped = Watcher(2, first.append)
    q.watch(dropped)
    q.watch(Watcher(5, second.append))
    assert [i.index for i in first] == [1, 2] and [i.index for i in second] == [3]
    q.unwatch(dropped)
    assert sorted(i.index for i in second) == [1, 2, 3]
    store.close()


@in_loop
async def test_auto_commit_removes_an_item_as_it_is_sent_and_priority_items_go_first(tmp_path):
    store, q = open_queue(tmp_path)
    await q.put(b"normal", {})
    await q.put(b"urgent", {}, priority=1)
    sent = []
    q.watch(Watcher(1, sent.append, auto_commit=True))
    assert [i.data for i in sent] == [b"urgent", b"normal"] and len(q) == 0
    store.close()


@in_loop
async def test_what_was_put_is_read_back_by_the_next_process_and_truncate_keeps_the_index(tmp_path):
    store, q = open_queue(tmp_path)
    for i in range(4):
        await q.put(str(i).encode(), {"requestId": f"r{i}"})
    await q.truncate(3)
    await q.remove([3])
    store.close()
    again = QueueService(SqliteStore(tmp_path / "q.db"), QueueLimits())
    q2 = again.lookup("q")
    assert [i.data for i in q2.find(0, 10, {})] == [b"3"] and q2.find(0, 1, {"requestId": "r3"})
    assert (await q2.put(b"next", {})).index == 5
    assert q2.attributes()["stream.length"] == "2" and q2.attributes()["stream.lastEntry"] == "5"
    again.close()


def test_the_query_splits_into_the_services_parameters_and_tags():
    assert split_query("_index_=3&requestId=r&color=red&_raw_=true") == (
        {"_index_": "3", "_raw_": "true"}, {"requestId": "r", "color": "red"})
    assert duration_s("5s") == 5 and duration_s("500ms") == 0.5 and duration_s("2") == 2 and duration_s("1m") == 60
    with pytest.raises(ServingError):
        duration_s("soon")
