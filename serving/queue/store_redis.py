"""The Redis store (`redis://host:port/db`, `rediss://` with TLS): the queues live in Redis itself, so any number
of queue-service replicas (`serving queue` processes, engines with `--queue_store redis://...`) in front of one
Redis are one queue: a put on one is seen on every one, an index is never given twice, a commit on one is seen
by all, and what a dead replica's watchers held goes to the watchers of the others.

Each queue `<name>` is five keys `serving:queue:{<name>}:...`:
- `items`: a Redis Stream whose entry ids are the indexes (`<index>-0`), fields d (data), t (tags, JSON),
  r (requestId), p (priority) and c (created, Unix seconds);
- `seq`: the last index given (INCR), kept when items go;
- `ready`: a sorted set of the indexes no watcher holds, priority items first (score index - priority * 2^40);
- `holder`: a hash index -> the replica whose watcher holds it uncommitted;
- `rid`: a hash requestId -> index; and `watchers`: a hash replica -> its watchers (the attributes).
Every change is one Lua script, atomic (a put's max_length check and index; a commit; a truncate; a take for a
watcher), that also appends an event (`put`, `removed`, `released`) to the stream `serving:queue:events`; every
replica reads it with a blocking XREAD, which wakes its long polls and watchers and tells it of commits made
elsewhere. Each replica holds a lease (`serving:queue:replica:<id>`, renewed every second, lasting
`?lease_seconds=`, default 10); a replica that finds another's lease gone gives the items that one held back to
`ready` (and says so in a `released` event), and they go out to the live watchers.

Why not consumer groups: a group hands out entries in id order to whoever reads next, while a queue here sends
priority items first, has watchers that want only items from an index on or with some tags, a window per
watcher, and reads that do not consume (`GET` with `_auto_delete_=false`). `ready` and `holder` with a lease per
replica are a group's pending-entries list with those.

A put is as durable as Redis makes it: with `appendonly yes` and `appendfsync always` it is on disk before
Redis answers the script, so before its index is answered. One Redis (or a primary with replicas), not Redis
Cluster: a reap of a dead replica touches every queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from ..errors import Code, ServingError
from .queue import REQUEST_ID, PayloadTooLarge, QueueLimits, Watcher, attributes_of, described, latency_histograms
from .store import Item, Stored

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)

PREFIX = "serving:queue:"
EVENTS = PREFIX + "events"
NAMES = PREFIX + "names"
REPLICAS = PREFIX + "replicas"
#: Events the event stream keeps (about): a replica further behind catches up at its next tick.
EVENTS_KEPT = 100_000
#: Most ready items one take for a watcher with tags or an index to start from looks at.
SCAN = 2000
#: Seconds between a replica's ticks: its lease renewed, dead replicas reaped, the queues' sizes read again.
TICK_S = 1.0
#: A long poll looks again at least this often, in case an event was lost while Redis was unreachable.
POLL_AGAIN_S = 5.0
LEASE_SECONDS = 10.0
#: Priorities go from -MAX_PRIORITY to MAX_PRIORITY (the score keeps an index exact up to 2^40).
MAX_PRIORITY = 4095

# Functions every script shares. `k` is a queue's keys; indexes travel as strings ("12").
PRELUDE = """
local function fields(entry)
  local f, kv = {}, entry[2]
  for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
  return f
end
local function entry(k, id)
  local found = redis.call('XRANGE', k.items, id .. '-0', id .. '-0')
  if #found == 0 then return nil end
  return fields(found[1])
end
local function matches(f, want)
  if want == nil then return true end
  local tags = cjson.decode(f.t)
  for key, value in pairs(want) do
    if tags[key] ~= value then return false end
  end
  return true
end
local function score(id, priority)
  return tonumber(id) - tonumber(priority) * 1099511627776
end
local function event(k, name, kept, kind, ids)
  redis.call('XADD', k.events, 'MAXLEN', '~', kept, '*', 'q', name, 'e', kind, 'i', table.concat(ids, ','),
             'n', redis.call('XLEN', k.items))
end
local function drop(k, id)
  local f = entry(k, id)
  if f == nil then return false end
  redis.call('XDEL', k.items, id .. '-0')
  redis.call('ZREM', k.ready, id)
  redis.call('HDEL', k.holder, id)
  if redis.call('HGET', k.rid, f.r) == id then redis.call('HDEL', k.rid, f.r) end
  return true
end
local function append(out, id, f)
  out[#out + 1] = tonumber(id)
  out[#out + 1] = f.t
  out[#out + 1] = f.p
  out[#out + 1] = f.c
  out[#out + 1] = f.d
end
local function removed(k, name, kept, gone)
  if #gone > 0 then event(k, name, kept, 'removed', gone) end
  local answer = {#gone, redis.call('XLEN', k.items)}
  for _, id in ipairs(gone) do answer[#answer + 1] = id end
  return answer
end
local function queue_keys(base)
  return {items = base .. 'items', seq = base .. 'seq', ready = base .. 'ready', holder = base .. 'holder',
          rid = base .. 'rid', watchers = base .. 'watchers', events = KEYS[1], names = KEYS[2]}
end
"""
#: A per-queue script's KEYS: the events stream, the names set, then the queue's own (named as in `queue_keys`).
HEAD = """
local k = {events = KEYS[1], names = KEYS[2], items = KEYS[3], seq = KEYS[4], ready = KEYS[5], holder = KEYS[6],
           rid = KEYS[7], watchers = KEYS[8]}
local name, kept = ARGV[1], ARGV[2]
"""
QUEUE_KEYS = ("items", "seq", "ready", "holder", "rid", "watchers")

SCRIPTS = {
    # ARGV 3..: max_length, data, tags, requestId, priority, created -> {index, length}; {-1, length}: full.
    "put": HEAD + """
local length = redis.call('XLEN', k.items)
if length >= tonumber(ARGV[3]) then return {-1, length} end
local id = string.format('%d', redis.call('INCR', k.seq))
redis.call('XADD', k.items, id .. '-0', 'd', ARGV[4], 't', ARGV[5], 'r', ARGV[6], 'p', ARGV[7], 'c', ARGV[8])
redis.call('ZADD', k.ready, score(id, ARGV[7]), id)
redis.call('HSET', k.rid, ARGV[6], id)
redis.call('SADD', k.names, name)
event(k, name, kept, 'put', {id})
return {tonumber(id), length + 1}
""",
    # ARGV 3..: indexes -> {removed, length, removed indexes...}
    "remove": HEAD + """
local gone = {}
for i = 3, #ARGV do
  if drop(k, ARGV[i]) then gone[#gone + 1] = ARGV[i] end
end
return removed(k, name, kept, gone)
""",
    # ARGV 3: below -> {removed, length, removed indexes...}
    "truncate": HEAD + """
local gone = {}
local last = string.format('%d-0', math.max(0, tonumber(ARGV[3]) - 1))
for _, e in ipairs(redis.call('XRANGE', k.items, '-', last)) do
  local id = string.match(e[1], '^(%d+)')
  if drop(k, id) then gone[#gone + 1] = id end
end
return removed(k, name, kept, gone)
""",
    # ARGV 3..: start, length, tags JSON or '', requestId or '', delete (0/1), scan -> items (5 values each)
    "find": HEAD + """
local start, length, scan = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[8])
local want = nil
if ARGV[5] ~= '' then want = cjson.decode(ARGV[5]) end
local out, ids = {}, {}
if ARGV[6] ~= '' then
  local id = redis.call('HGET', k.rid, ARGV[6])
  if id and tonumber(id) >= start then
    local f = entry(k, id)
    if f and matches(f, want) then append(out, id, f); ids[1] = id end
  end
else
  local from, seen = ARGV[3] .. '-0', 0
  while #ids < length and seen < scan do
    local chunk = redis.call('XRANGE', k.items, from, '+', 'COUNT', want and 100 or (length - #ids))
    if #chunk == 0 then break end
    for _, e in ipairs(chunk) do
      seen = seen + 1
      local f = fields(e)
      if #ids < length and matches(f, want) then
        local id = string.match(e[1], '^(%d+)')
        append(out, id, f)
        ids[#ids + 1] = id
      end
    end
    from = '(' .. chunk[#chunk][1]
  end
end
if ARGV[7] == '1' and #ids > 0 then
  for _, id in ipairs(ids) do drop(k, id) end
  event(k, name, kept, 'removed', ids)
end
return out
""",
    # ARGV 3..: replica, count, start, tags JSON or '', scan -> items (5 values each), now held by the replica
    "take": HEAD + """
local count, start, scan = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local want = nil
if ARGV[6] ~= '' then want = cjson.decode(ARGV[6]) end
local out, taken = {}, 0
local function consider(ids)
  for _, id in ipairs(ids) do
    if taken >= count then return end
    local f = entry(k, id)
    if f == nil then
      redis.call('ZREM', k.ready, id)
    elseif tonumber(id) >= start and matches(f, want) then
      redis.call('ZREM', k.ready, id)
      redis.call('HSET', k.holder, id, ARGV[3])
      append(out, id, f)
      taken = taken + 1
    end
  end
end
consider(redis.call('ZRANGEBYSCORE', k.ready, '-inf', '(0', 'LIMIT', 0, scan))
if taken < count then
  local limit = scan
  if want == nil then limit = count - taken end
  consider(redis.call('ZRANGEBYSCORE', k.ready, start, '+inf', 'LIMIT', 0, limit))
end
return out
""",
    # ARGV 3..: replica, indexes -> released (back in `ready`)
    "release": HEAD + """
local back = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', k.holder, id) == ARGV[3] then
    redis.call('HDEL', k.holder, id)
    local f = entry(k, id)
    if f then
      redis.call('ZADD', k.ready, score(id, f.p), id)
      back[#back + 1] = id
    end
  end
end
if #back > 0 then event(k, name, kept, 'released', back) end
return #back
""",
    # -> {length, first index, last index, held, created of the first, watchers}
    "stats": HEAD + """
local first = redis.call('XRANGE', k.items, '-', '+', 'COUNT', 1)
local index, created = 0, '0'
if #first > 0 then
  index = tonumber(string.match(first[1][1], '^(%d+)'))
  created = fields(first[1]).c
end
local watchers = 0
for _, n in ipairs(redis.call('HVALS', k.watchers)) do watchers = watchers + tonumber(n) end
return {redis.call('XLEN', k.items), index, tonumber(redis.call('GET', k.seq) or '0'),
        redis.call('HLEN', k.holder), created, watchers}
""",
    # KEYS: events, names, replicas; ARGV: prefix, kept, the dead replica -> items given back. Nothing while
    # its lease is there (renewed meanwhile).
    "reap": """
local prefix, kept, dead = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', prefix .. 'replica:' .. dead) == 1 then return 0 end
local total = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local k = queue_keys(prefix .. '{' .. name .. '}:')
  local held, back = redis.call('HGETALL', k.holder), {}
  for i = 1, #held, 2 do
    if held[i + 1] == dead then
      redis.call('HDEL', k.holder, held[i])
      local f = entry(k, held[i])
      if f then
        redis.call('ZADD', k.ready, score(held[i], f.p), held[i])
        back[#back + 1] = held[i]
      end
    end
  end
  redis.call('HDEL', k.watchers, dead)
  if #back > 0 then
    event(k, name, kept, 'released', back)
    total = total + #back
  end
end
redis.call('SREM', KEYS[3], dead)
return total
""",
}


def queue_keys(name: str) -> list[str]:
    """A per-queue script's KEYS (as `HEAD` names them)."""
    base = f"{PREFIX}{{{name}}}:"
    return [EVENTS, NAMES, *(base + key for key in QUEUE_KEYS)]


def lease_key(replica: str) -> str:
    return f"{PREFIX}replica:{replica}"


def parse_url(url: str) -> tuple[str, float]:
    """(the URL redis-py is given, lease seconds): our own `lease_seconds` query parameter taken out."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    lease = [value for key, value in query if key == "lease_seconds"]
    try:
        lease_s = float(lease[-1]) if lease else LEASE_SECONDS
    except ValueError as e:
        raise ValueError(f"queue store {url}: lease_seconds {lease[-1]!r} is not a number") from e
    if lease_s <= TICK_S:
        raise ValueError(f"queue store {url}: lease_seconds must be more than {TICK_S:g} (the lease is renewed "
                         "every second)")
    rest = urlencode([(key, value) for key, value in query if key != "lease_seconds"])
    return urlunsplit(parts._replace(query=rest)), lease_s


def decode_items(flat: list[Any]) -> list[Item]:
    """A script's items, 5 values each: index, tags, priority, created, data."""
    return [Item(int(flat[i]), flat[i + 4], orjson.loads(flat[i + 1]), int(flat[i + 2]), float(flat[i + 3]))
            for i in range(0, len(flat), 5)]


class RedisStore:
    """The queues of one Redis, as this replica sees them: its connection, lease, event reader and queues."""

    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio
        except ImportError as e:
            raise ValueError(f"queue store {url}: the Redis store needs the package redis: "
                             "pip install 'serving-engine[redis]'") from e
        self.url, self.lease_s = parse_url(url)
        parts = urlsplit(self.url)
        self.where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"
        self.replica = uuid.uuid4().hex
        self.errors = (redis.RedisError, OSError)  # what Redis's failure raises
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(self.url)
        self.scripts = {name: self.client.register_script(PRELUDE + body) for name, body in SCRIPTS.items()}
        self.queues: dict[str, RedisQueue] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.background: set[asyncio.Task[Any]] = set()
        self.failing = False  # Redis did not answer the last tick (logged once until it does)
        self.closing = False

    # ---- the replica ----

    def load(self) -> dict[str, Stored]:
        """The queues Redis has (so a replica serves their metrics from the start); this replica's lease taken."""
        import redis

        sync = redis.Redis.from_url(self.url)
        try:
            pipe = sync.pipeline(transaction=False)
            pipe.set(lease_key(self.replica), b"1", px=int(self.lease_s * 1000))
            pipe.sadd(REPLICAS, self.replica)
            pipe.smembers(NAMES)
            names = pipe.execute()[-1]
        except redis.RedisError as e:
            raise ValueError(f"queue store redis://{self.where}: Redis does not answer: {e}") from e
        finally:
            sync.close()
        return {name.decode(): Stored() for name in names}

    def queue(self, name: str, limits: QueueLimits) -> RedisQueue:
        queue = self.queues[name] = RedisQueue(name, self, limits)
        self.start()
        return queue

    def start(self) -> None:
        """The tick and the event reader, once an event loop runs."""
        if self.tasks:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not yet: the first queue operation starts them
        self.tasks = [loop.create_task(self._ticks()), loop.create_task(self._events())]

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `work` apart (a release, a dispatch), holding the task."""
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def call(self, script: str, name: str, *args: Any) -> Any:
        """One per-queue script; Redis's failure as UNAVAILABLE (503)."""
        self.start()
        try:
            return await self.scripts[script](keys=queue_keys(name), args=[name, EVENTS_KEPT, *args])
        except self.errors as e:
            raise self.unavailable(e) from e

    def unavailable(self, e: Exception) -> ServingError:
        return ServingError(Code.UNAVAILABLE, f"the queue store (Redis at {self.where}) failed: {e}")

    async def _ticks(self) -> None:
        while not self.closing:
            try:
                await self._tick()
                if self.failing:
                    log.info("the queue store (Redis at %s) answers again", self.where)
                self.failing = False
            except Exception as e:  # noqa: BLE001 - Redis unreachable: try again at the next tick
                if not self.failing:
                    log.warning("the queue store (Redis at %s) does not answer: %s", self.where, e)
                self.failing = True
            await asyncio.sleep(TICK_S)

    async def _tick(self) -> None:
        """Renew the lease, give back what dead replicas held, read the queues' sizes, dispatch."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(lease_key(self.replica), b"1", px=int(self.lease_s * 1000))
        pipe.sadd(REPLICAS, self.replica)
        pipe.smembers(REPLICAS)
        queues = list(self.queues.values())
        for queue in queues:
            if queue.watchers:
                pipe.hset(queue.key["watchers"], self.replica, len(queue.watchers))
            else:
                pipe.hdel(queue.key["watchers"], self.replica)
        results = await pipe.execute()
        others = [r.decode() for r in results[2] if r.decode() != self.replica]
        if others:
            pipe = self.client.pipeline(transaction=False)
            for other in others:
                pipe.exists(lease_key(other))
            for other, alive in zip(others, await pipe.execute(), strict=True):
                if not alive:
                    await self._reap(other)
        for queue in queues:
            queue.tick(await self.call("stats", queue.name))

    async def _reap(self, other: str) -> None:
        given = await self.scripts["reap"](keys=[EVENTS, NAMES, REPLICAS], args=[PREFIX, EVENTS_KEPT, other])
        if given:
            log.warning("replica %s of the queue service is gone: its watchers' %d items go out again", other,
                        given)

    async def _events(self) -> None:
        """Read the event stream: every replica's changes, told to this replica's queues."""
        last: Any = b"0-0"
        failing = False
        while not self.closing:
            try:
                if last == b"0-0":
                    newest: Any = await self.client.xrevrange(EVENTS, count=1)
                    last = newest[0][0] if newest else b"0-0"
                got: Any = await self.client.xread({EVENTS: last}, count=1000, block=int(TICK_S * 1000))
                failing = False
            except Exception as e:  # noqa: BLE001 - Redis unreachable: the ticks say so; read again soon
                if self.closing:
                    return
                if not failing:
                    log.debug("the queue store's event stream: %s", e)
                failing = True
                await asyncio.sleep(TICK_S)
                continue
            for _, entries in got or ():
                for event_id, fields in entries:
                    last = event_id
                    try:
                        self._told(fields)
                    except Exception:  # noqa: BLE001 - one bad event (or watcher) stops no other
                        log.exception("queue store event %s", fields)

    def _told(self, fields: dict[bytes, bytes]) -> None:
        queue = self.queues.get(fields[b"q"].decode())
        if queue is not None:
            ids = [int(i) for i in fields[b"i"].split(b",") if i]
            queue.on_event(fields[b"e"].decode(), ids, int(fields[b"n"]))

    def close(self) -> None:
        """Stop; what this replica's watchers still hold goes out again at once (its lease is dropped)."""
        self.closing = True  # redis-py lets a command in flight finish before a cancel: the loops end here
        for task in self.tasks:
            task.cancel()
        import redis

        sync = redis.Redis.from_url(self.url)
        try:
            sync.delete(lease_key(self.replica))
            sync.register_script(PRELUDE + SCRIPTS["reap"])(keys=[EVENTS, NAMES, REPLICAS],
                                                             args=[PREFIX, EVENTS_KEPT, self.replica])
        except redis.RedisError as e:
            log.warning("the queue store (Redis at %s) did not answer at close: %s (the items this replica held "
                        "go out again when its lease ends)", self.where, e)
        finally:
            sync.close()

    async def aclose(self) -> None:
        """`close`, then the connections closed (a blocking read among them) and the tasks ended."""
        self.close()
        await self.client.aclose()
        await asyncio.gather(*self.tasks, *self.background, return_exceptions=True)


class RedisQueue:
    """One queue in Redis as this replica serves it: the same operations as `Queue`, and this replica's
    watchers and long polls."""

    def __init__(self, name: str, store: RedisStore, limits: QueueLimits) -> None:
        self.name, self.store, self.limits = name, store, limits
        self.key = dict(zip(QUEUE_KEYS, queue_keys(name)[2:], strict=True))
        self.watchers: list[Watcher] = []
        self.holder: dict[int, Watcher] = {}  # what this replica's watchers hold
        self.polls: set[asyncio.Future[None]] = set()
        self.room_listeners: list[Callable[[], None]] = []
        self.counts = {"put": 0, "get": 0, "commit": 0}
        self.put_seconds = 0.0
        self.latency = latency_histograms()
        # The queue's size as last read (a tick, an event, an answer): for `full()` and the metrics.
        self.length = self.held = 0
        self.oldest_created = 0.0
        self.turn = 0
        self.again = False
        self.dispatching: asyncio.Task[None] | None = None

    # ---- reading ----

    def __len__(self) -> int:
        return self.length

    def full(self) -> bool:
        return self.length >= self.limits.max_length

    def inflight(self) -> int:
        return self.held

    def oldest_seconds(self) -> float:
        return max(0.0, time.time() - self.oldest_created) if self.length and self.oldest_created else 0.0

    async def attrs(self) -> dict[str, str]:
        stats = await self.store.call("stats", self.name)
        self.tick(stats)
        return attributes_of(self.name, self.limits, int(stats[0]), int(stats[1]), int(stats[2]), int(stats[5]),
                             int(stats[3]))

    async def search(self, index: int) -> dict[str, Any]:
        pipe = self.store.client.pipeline(transaction=False)
        pipe.xrange(self.key["items"], f"{index}-0", f"{index}-0")
        pipe.hexists(self.key["holder"], str(index))
        try:
            found, held = await pipe.execute()
        except self.store.errors as e:
            raise self.store.unavailable(e) from e
        if not found:
            return {}
        f = found[0][1]
        item = Item(index, b"", orjson.loads(f[b"t"]), int(f[b"p"]), float(f[b"c"]))
        return described(item, bool(held))

    async def find(self, start: int, length: int, tags: dict[str, str], delete: bool = False) -> list[Item]:
        """Up to `length` items from index `start` on with these tags, in index order (`delete`: removed)."""
        want = orjson.dumps(tags) if tags else b""
        flat = await self.store.call("find", self.name, max(0, start), length, want, tags.get(REQUEST_ID, ""),
                                     int(delete), SCAN)
        found = decode_items(flat)
        if delete and found:
            self.counts["commit"] += len(found)
            self._removed([item.index for item in found])
        return found

    async def get(self, start: int, length: int, tags: dict[str, str], timeout_s: float,
                  auto_delete: bool) -> list[Item]:
        """`find`, waiting up to `timeout_s` for a put (on any replica) when nothing is there yet."""
        self.counts["get"] += 1
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while True:
            poll = asyncio.get_running_loop().create_future()
            self.polls.add(poll)  # before the find: a put meanwhile wakes it
            try:
                found = await self.find(start, length, tags, auto_delete)
                left = deadline - time.monotonic()
                if found or left <= 0:
                    self.latency["get"].observe(time.perf_counter() - started)
                    return found
                try:
                    await asyncio.wait_for(poll, min(left, POLL_AGAIN_S))
                except TimeoutError:
                    pass
            finally:
                self.polls.discard(poll)

    # ---- writing ----

    async def put(self, data: bytes, tags: dict[str, str], priority: int = 0) -> Item:
        if len(data) > self.limits.max_payload_bytes:
            raise PayloadTooLarge(f"item of {len(data)} bytes is larger than the queue {self.name}'s limit of "
                                  f"{self.limits.max_payload_bytes} bytes")
        tags = dict(tags)
        tags.setdefault(REQUEST_ID, str(uuid.uuid4()))
        priority = max(-MAX_PRIORITY, min(priority, MAX_PRIORITY))
        created = time.time()
        started = time.perf_counter()
        index, length = await self.store.call("put", self.name, self.limits.max_length, data, orjson.dumps(tags),
                                              tags[REQUEST_ID], priority, repr(created))
        self.length = int(length)
        if index < 0:
            raise ServingError(Code.RESOURCE_EXHAUSTED, f"queue {self.name} is full: {self.limits.max_length} "
                               "items (max_length)")
        self.counts["put"] += 1
        self.put_seconds += time.perf_counter() - started
        self.latency["put"].observe(time.perf_counter() - started)
        self._wake()
        self.dispatch()
        return Item(int(index), data, tags, priority, created)

    async def remove(self, indexes: list[int]) -> int:
        """Commit / delete: the items go (those not there are passed over); how many were there."""
        if not indexes:
            return 0
        started = time.perf_counter()
        answer = await self.store.call("remove", self.name, *indexes)
        self.latency["commit"].observe(time.perf_counter() - started)
        self.counts["commit"] += int(answer[0])
        self.length = int(answer[1])
        self._removed([int(i) for i in answer[2:]])
        return int(answer[0])

    async def truncate(self, below: int) -> int:
        """Every item with an index under `below` goes."""
        answer = await self.store.call("truncate", self.name, max(0, below))
        self.length = int(answer[1])
        self._removed([int(i) for i in answer[2:]])
        return int(answer[0])

    # ---- watchers ----

    def watch(self, watcher: Watcher) -> None:
        self.watchers.append(watcher)
        self.store.spawn(self._count_watchers())
        self.dispatch()

    def unwatch(self, watcher: Watcher) -> None:
        """The watcher went: what it held uncommitted goes out again (to a watcher on any replica)."""
        if watcher in self.watchers:
            self.watchers.remove(watcher)
        held = [i for i in watcher.held if self.holder.get(i) is watcher]
        for index in held:
            del self.holder[index]
        watcher.held.clear()
        if held:
            self.store.spawn(self._release(held))
        self.store.spawn(self._count_watchers())

    async def _count_watchers(self) -> None:
        """This replica's watchers, for every replica's attributes (the tick says it again)."""
        try:
            if self.watchers:
                await self.store.client.hset(self.key["watchers"], self.store.replica, str(len(self.watchers)))
            else:
                await self.store.client.hdel(self.key["watchers"], self.store.replica)
        except Exception as e:  # noqa: BLE001 - Redis unreachable: the ticks say so
            log.debug("queue %s: cannot count the watchers: %s", self.name, e)

    async def _release(self, indexes: list[int]) -> None:
        try:
            await self.store.call("release", self.name, self.store.replica, *indexes)
        except ServingError as e:
            log.warning("queue %s: %s (the %d items go out again when this replica's lease ends)", self.name,
                        e.message, len(indexes))
        self.dispatch()

    def dispatch(self) -> None:
        """Hand out ready items to this replica's watchers with room, in turn (one take at a time)."""
        self.again = True
        if self.dispatching is None and any(w.free() for w in self.watchers):
            self.dispatching = self.store.spawn(self._dispatch())

    async def _dispatch(self) -> None:
        try:
            while self.again:
                self.again = False
                free = [w for w in self.watchers if w.free()]
                if not free:
                    break
                self.turn = (self.turn + 1) % len(free)
                for watcher in free[self.turn:] + free[:self.turn]:
                    room = watcher.window - len(watcher.held)
                    if room <= 0 or watcher not in self.watchers or not watcher.free():
                        continue
                    tags = orjson.dumps(watcher.tags) if watcher.tags else b""
                    taken = decode_items(await self.store.call("take", self.name, self.store.replica, room,
                                                               max(0, watcher.start), tags, SCAN))
                    if len(taken) == room:
                        self.again = True  # there may be more
                    self._hand(watcher, taken)
        except ServingError as e:
            log.warning("queue %s: cannot hand out items: %s (trying again at the next tick)", self.name, e.message)
        finally:
            self.dispatching = None

    def _hand(self, watcher: Watcher, items: list[Item]) -> None:
        if not items:
            return
        if watcher not in self.watchers:  # it went while they were taken
            self.store.spawn(self._release([item.index for item in items]))
            return
        for item in items:
            watcher.held.add(item.index)
            self.holder[item.index] = watcher
            watcher.send(item)
        if watcher.auto_commit:
            self.store.spawn(self._commit([item.index for item in items]))

    async def _commit(self, indexes: list[int]) -> None:
        try:
            await self.remove(indexes)
        except ServingError as e:
            log.warning("queue %s: cannot commit items sent to an auto-commit watcher: %s", self.name, e.message)

    # ---- what other replicas did ----

    def on_event(self, kind: str, indexes: list[int], length: int) -> None:
        self.length = length
        if kind == "put":
            self._wake()
            self.dispatch()
        elif kind == "removed":
            self._removed(indexes)
        elif kind == "released":
            self.dispatch()

    def tick(self, stats: list[Any]) -> None:
        """The queue's size as read; a dispatch, in case an event was missed."""
        self.length, self.held, self.oldest_created = int(stats[0]), int(stats[3]), float(stats[4])
        if self.watchers:
            self.dispatch()

    def _wake(self) -> None:
        for poll in self.polls:
            if not poll.done():
                poll.set_result(None)

    def _removed(self, indexes: list[int]) -> None:
        """Items went (here or on another replica): their watchers here have room again."""
        for index in indexes:
            watcher = self.holder.pop(index, None)
            if watcher is not None:
                watcher.held.discard(index)
        self.dispatch()
        for listener in list(self.room_listeners):
            listener()
