"""One queue of the queue service: its items in memory (the store holds them durably), the watchers it pushes
them to, the long polls waiting for one.

A put gets the next index and is visible once its store says it is durable. An item goes to one watcher at a
time (the next with room in its window, in turn; `_priority_` items first, then by index) and stays the
watcher's until committed (deleted), or until its watcher goes: then it goes out again to another. A watcher
with `auto_commit` commits each item as it is sent. A commit, a delete, `auto_delete` of a get and a truncate
remove items; `room` listeners hear of it (a subscriber waiting for room in its sink).
"""

from __future__ import annotations

import asyncio
import heapq
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.stats import LATENCY_BUCKETS, Histogram
from ..errors import Code, ServingError
from .store import Item, Store, Stored

REQUEST_ID = "requestId"


@dataclass(frozen=True)
class QueueLimits:
    max_length: int = 10000  # items at once; a put past it is refused 429
    max_payload_bytes: int = 8 << 20  # largest item; a bigger put is refused 413


@dataclass(eq=False)
class Watcher:
    """One subscriber of a queue: at most `window` items uncommitted; `send` delivers one; `room()` says
    whether it may take more now besides its window (a subscriber whose sink is full says no)."""

    window: int
    send: Callable[[Item], None]
    start: int = 0  # items from this index on
    auto_commit: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # only items with these tags
    room: Callable[[], bool] = lambda: True
    held: set[int] = field(default_factory=set)

    def wants(self, item: Item) -> bool:
        return item.index >= self.start and all(item.tags.get(k) == v for k, v in self.tags.items())

    def free(self) -> bool:
        return len(self.held) < self.window and self.room()


@dataclass(eq=False)
class _Poll:
    start: int
    tags: dict[str, str]
    future: asyncio.Future[None]


class Queue:
    """One named queue."""

    def __init__(self, name: str, store: Store, limits: QueueLimits, stored: Stored | None = None) -> None:
        self.name, self.store, self.limits = name, store, limits
        stored = stored or Stored()
        self.last_index = stored.last_index
        self.items: dict[int, Item] = {}
        self.by_request: dict[str, int] = {}
        self.ready: list[tuple[int, int]] = []  # heap of (-priority, index): items no watcher holds
        self.holder: dict[int, Watcher] = {}
        self.watchers: list[Watcher] = []
        self.polls: list[_Poll] = []
        self.writing = 0  # puts not yet durable: they count against max_length
        self.room_listeners: list[Callable[[], None]] = []
        self.turn = 0
        for item in stored.items:
            self._add(item)
        self.counts = {"put": 0, "get": 0, "commit": 0}
        self.put_seconds = 0.0  # the time puts took to be durable, summed
        self.latency = latency_histograms()

    # ---- reading ----

    def __len__(self) -> int:
        return len(self.items)

    def full(self) -> bool:
        return len(self.items) + self.writing >= self.limits.max_length

    def oldest_seconds(self) -> float:
        first = next(iter(self.items.values()), None)
        return max(0.0, time.time() - first.created) if first is not None else 0.0

    def inflight(self) -> int:
        """Items sent to a watcher and not yet committed."""
        return len(self.holder)

    def attributes(self) -> dict[str, str]:
        """`GET ?_attrs_=true`: the cloud queue service's attribute names, values as strings."""
        return attributes_of(self.name, self.limits, len(self.items), next(iter(self.items), 0), self.last_index,
                             len(self.watchers), len(self.holder))

    async def attrs(self) -> dict[str, str]:
        return self.attributes()

    async def search(self, index: int) -> dict[str, Any]:
        """`GET ?_search_=true&_index_=N`: the item's tags, whether a watcher holds it ({} when none)."""
        item = self.items.get(index)
        return described(item, index in self.holder) if item is not None else {}

    def find(self, start: int, length: int, tags: dict[str, str]) -> list[Item]:
        """Up to `length` items from index `start` on with these tags, in index order."""
        request_id = tags.get(REQUEST_ID)
        if request_id is not None:
            index = self.by_request.get(request_id)
            item = self.items.get(index) if index is not None else None
            return [item] if item is not None and _matches(item, start, tags) else []
        found: list[Item] = []
        for item in self.items.values():
            if len(found) >= length:
                break
            if _matches(item, start, tags):
                found.append(item)
        return found

    async def get(self, start: int, length: int, tags: dict[str, str], timeout_s: float,
                  auto_delete: bool) -> list[Item]:
        """`find`, waiting up to `timeout_s` for a put when nothing is there yet; `auto_delete` removes what it
        answers."""
        self.counts["get"] += 1
        started = time.perf_counter()
        found = self.find(start, length, tags)
        if not found and timeout_s > 0:
            poll = _Poll(start, tags, asyncio.get_running_loop().create_future())
            self.polls.append(poll)
            try:
                await asyncio.wait_for(asyncio.shield(poll.future), timeout_s)
            except TimeoutError:
                pass
            finally:
                if poll in self.polls:
                    self.polls.remove(poll)
            found = self.find(start, length, tags)
        if auto_delete and found:
            await self.remove([item.index for item in found])
        self.latency["get"].observe(time.perf_counter() - started)
        return found

    # ---- writing ----

    async def put(self, data: bytes, tags: dict[str, str], priority: int = 0) -> Item:
        if len(data) > self.limits.max_payload_bytes:
            raise PayloadTooLarge(f"item of {len(data)} bytes is larger than the queue {self.name}'s limit of "
                                  f"{self.limits.max_payload_bytes} bytes")
        if self.full():
            raise ServingError(Code.RESOURCE_EXHAUSTED, f"queue {self.name} is full: {self.limits.max_length} "
                               "items (max_length)")
        self.last_index += 1
        tags = dict(tags)
        tags.setdefault(REQUEST_ID, str(uuid.uuid4()))
        item = Item(self.last_index, data, tags, priority)
        self.writing += 1
        started = time.perf_counter()
        try:
            await self.store.put(self.name, item)
        finally:
            self.writing -= 1
        self.counts["put"] += 1
        self.put_seconds += time.perf_counter() - started
        self.latency["put"].observe(time.perf_counter() - started)
        self._add(item)
        self.dispatch()
        return item

    def _add(self, item: Item) -> None:
        if self.items and item.index < next(reversed(self.items)):  # durable out of order: keep index order
            self.items = dict(sorted([*self.items.items(), (item.index, item)]))
        else:
            self.items[item.index] = item
        self.by_request[item.tags.get(REQUEST_ID, "")] = item.index
        heapq.heappush(self.ready, (-item.priority, item.index))
        for poll in self.polls:
            if not poll.future.done() and _matches(item, poll.start, poll.tags):
                poll.future.set_result(None)

    async def remove(self, indexes: list[int]) -> int:
        """Commit / delete: the items go (those not here are passed over); how many were here."""
        here = [i for i in indexes if self._drop(i)]
        if here:
            self.counts["commit"] += len(here)
            started = time.perf_counter()
            await self.store.delete(self.name, here)
            self.latency["commit"].observe(time.perf_counter() - started)
            self._shrunk()
        return len(here)

    async def truncate(self, below: int) -> int:
        """Every item with an index under `below` goes."""
        here = [i for i in list(self.items) if i < below and self._drop(i)]
        await self.store.truncate(self.name, below)
        if here:
            self._shrunk()
        return len(here)

    def _drop(self, index: int) -> bool:
        item = self.items.pop(index, None)
        if item is None:
            return False
        if self.by_request.get(item.tags.get(REQUEST_ID, "")) == index:
            del self.by_request[item.tags.get(REQUEST_ID, "")]
        watcher = self.holder.pop(index, None)
        if watcher is not None:
            watcher.held.discard(index)
        return True

    def _shrunk(self) -> None:
        self.dispatch()
        for listener in list(self.room_listeners):
            listener()

    # ---- watchers ----

    def watch(self, watcher: Watcher) -> None:
        self.watchers.append(watcher)
        self.dispatch()

    def unwatch(self, watcher: Watcher) -> None:
        """The watcher went: what it held uncommitted goes out again."""
        if watcher in self.watchers:
            self.watchers.remove(watcher)
        for index in watcher.held:
            if self.holder.pop(index, None) is watcher and index in self.items:
                heapq.heappush(self.ready, (-self.items[index].priority, index))
        watcher.held.clear()
        self.dispatch()

    def dispatch(self) -> None:
        """Hand out ready items to the watchers with room, in turn."""
        skipped: list[tuple[int, int]] = []
        while self.ready:
            free = [w for w in self.watchers if w.free()]
            if not free:
                break
            key = heapq.heappop(self.ready)
            item = self.items.get(key[1])
            if item is None or key[1] in self.holder:
                continue  # committed or deleted meanwhile
            watcher = self._next(free, item)
            if watcher is None:
                skipped.append(key)
                continue
            self._deliver(watcher, item)
        for key in skipped:
            heapq.heappush(self.ready, key)

    def _next(self, free: list[Watcher], item: Item) -> Watcher | None:
        for i in range(len(free)):
            watcher = free[(self.turn + i) % len(free)]
            if watcher.wants(item):
                self.turn += i + 1
                return watcher
        return None

    def _deliver(self, watcher: Watcher, item: Item) -> None:
        if watcher.auto_commit:
            self._drop(item.index)
            self.counts["commit"] += 1
            self.store.delete(self.name, [item.index]).add_done_callback(_logged)
            watcher.send(item)
            for listener in list(self.room_listeners):
                listener()
            return
        watcher.held.add(item.index)
        self.holder[item.index] = watcher
        watcher.send(item)


class AnyQueue(Protocol):
    """What the API, the subscriber and the metrics ask of a queue: a `Queue` (this process's, over SQLite) or
    a `RedisQueue` (serving/queue/store_redis.py: in Redis, one queue for every replica)."""

    name: str
    limits: QueueLimits
    watchers: list[Watcher]
    room_listeners: list[Callable[[], None]]
    counts: dict[str, int]
    put_seconds: float
    latency: dict[str, Histogram]

    def __len__(self) -> int: ...

    def full(self) -> bool: ...

    def inflight(self) -> int: ...

    def oldest_seconds(self) -> float: ...

    async def attrs(self) -> dict[str, str]: ...

    async def search(self, index: int) -> dict[str, Any]: ...

    async def get(self, start: int, length: int, tags: dict[str, str], timeout_s: float,
                  auto_delete: bool) -> list[Item]: ...

    async def put(self, data: bytes, tags: dict[str, str], priority: int = 0) -> Item: ...

    async def remove(self, indexes: list[int]) -> int: ...

    async def truncate(self, below: int) -> int: ...

    def watch(self, watcher: Watcher) -> None: ...

    def unwatch(self, watcher: Watcher) -> None: ...

    def dispatch(self) -> None: ...


def latency_histograms() -> dict[str, Histogram]:
    """A queue's latencies by operation: put until durable, get until answered (a long poll's wait included),
    commit (or delete) until durable."""
    return {op: Histogram(LATENCY_BUCKETS) for op in ("put", "get", "commit")}


def attributes_of(name: str, limits: QueueLimits, length: int, first: int, last: int, watchers: int,
                  inflight: int) -> dict[str, str]:
    """The cloud queue service's attributes of a queue, values as strings."""
    return {"meta.name": name, "meta.maxPayloadBytes": str(limits.max_payload_bytes),
            "meta.header.group": "X-EAS-QueueService-Gid", "meta.header.user": "X-EAS-QueueService-Uid",
            "stream.length": str(length), "stream.approxMaxLength": str(limits.max_length),
            "stream.maxLength": str(limits.max_length), "stream.firstEntry": str(first),
            "stream.lastEntry": str(last), "consumers.status.total": str(watchers), "stream.inflight": str(inflight)}


def described(item: Item, held: bool) -> dict[str, Any]:
    """An item as `_search_` answers it."""
    return {"index": item.index, "tags": item.tags, "consumer": "held" if held else "", "priority": item.priority,
            "created": item.created}


class PayloadTooLarge(ServingError):
    """An item over the queue's payload limit: answered 413."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.OUT_OF_RANGE, message)


def _logged(future: asyncio.Future[None]) -> None:
    """A write nobody awaits: its failure is logged (by the store), not left unretrieved."""
    if not future.cancelled():
        future.exception()


def _matches(item: Item, start: int, tags: dict[str, str]) -> bool:
    return item.index >= start and all(item.tags.get(k) == v for k, v in tags.items())
