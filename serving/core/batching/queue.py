"""The batch queue of one (model, version, signature): queueing, deadlines and dispatch.

Event-driven, with `time.monotonic()` deadlines and no polling:
- the queue counts requests, not rows or pieces, and refuses one past `max_queue_size` at once
  (UNAVAILABLE); a request settled while it waits (its client went away, its gRPC call was cancelled,
  its front end answered it at the deadline) no longer counts once the queue looks at it: it looks
  whenever it seems full (no callback per request to learn it sooner);
- a request larger than `max_batch_size` rows is served in pieces of at most `max_batch_size` rows, and
  after each piece it goes to the back of the queue: a small request behind big ones waits for one piece
  of each, not for all of them; the pieces' outputs are put back together in order;
- when nothing of the queue is running, whatever is queued (up to `max_batch_size` rows) is dispatched
  at once: no batching delay at low load;
- while batches run, a new batch is dispatched to a free slot only once it is full or its oldest
  request has waited `batch_timeout`; otherwise requests accumulate, and every finished batch
  dispatches the next one at once; at most `max_in_flight` batches run per queue;
- a request whose deadline passed, or whose future is done, is dropped without being computed; a batch
  already running finishes and nobody else waits for it;
- requests whose non-batch dims differ are not mixed, unless `pad_variable_length_inputs` pads them;
  `allowed_batch_sizes` pads a batch up to the next allowed size (serving.core.batching.assembly);
- a processor exception fails only the requests of its batch;
- where batches run, on the event-loop thread or on the workers, is the `Placement`'s decision
  (serving.core.batching.placement). Inline, the queue runs batches for about `inline_batch_micros` per turn
  of the loop, then yields: the rest runs in the next turn, after the loop has read its sockets, admitted
  or refused new requests, answered health checks and run other models' batches.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ...errors import Code, ServingError, internal
from .assembly import (
    Inputs,
    Outputs,
    check_outputs,
    concatenate,
    pad_to_allowed,
    reassemble,
    rows_of,
    shape_key,
    slice_outputs,
    take_rows,
)
from .options import BatchingOptions
from .outbox import OUTBOX
from .placement import SYSTEM_CLOCK, Clock, Placement

DEADLINE_MESSAGE = "request deadline exceeded before it was computed"
RunBatch = Callable[[Inputs], Outputs]
#: Told of every batch that ran: its rows and its compute wall time in seconds.
BatchObserver = Callable[[int, float], None]


class Timing(Protocol):
    """Where a request's batch times go (the request pipeline's call, when something observes it)."""

    dispatched: float  # perf_counter() when its (first) batch was assembled
    computed: float  # perf_counter() when its (last) batch's outputs came back

    def finished(self, future: asyncio.Future[Outputs]) -> None:
        """The queue is done with the request: its future is settled (or was, by its front end)."""


class Waiter(Timing, Protocol):
    """What an express lane queues in place of a future (`BatchQueue.enqueue`): the queue reads `done()` and
    answers it with `set_result` or `set_exception`, then tells it `finished` as it tells a Timing."""

    def done(self) -> bool: ...

    def set_result(self, outputs: Outputs) -> None: ...

    def set_exception(self, error: BaseException) -> None: ...


class BatchAnswer(Protocol):
    """What a waiter may also offer (`answer_batch`): answer every request of a batch, given as (request, first
    row, end row) with the batch's outputs and rows, and settle each (`_Request.settle`) -- or answer none and
    say False, and the queue delivers them one by one."""

    def __call__(self, batch: list[tuple[_Request, int, int]], outputs: Outputs, rows: int) -> bool: ...


def one_row_each(batch: list[tuple[_Request, int, int]], rows: int, waiter_class: type, lane: object) -> bool:
    """Whether every request of `batch` is one row whose waiter is a `waiter_class` taken by `lane` (its `express`):
    what a `BatchAnswer` checks before it answers the batch at once."""
    if rows != len(batch):
        return False
    for request, _, _ in batch:
        waiter = request.future
        if waiter.__class__ is not waiter_class or waiter.express is not lane or request.rows != 1:  # type: ignore[attr-defined]
            return False
    return True


def settle_answered(requests: list[_Request], counted: bool) -> None:
    """After a `BatchAnswer` answered `requests`: settled already when their lane `counted` them all in one update
    (their timing let go), else each settles (and is counted) alone."""
    for request in requests:
        if counted:
            request.timing = None
        else:
            request.settle()


class _Request:
    """One queued request; `taken` rows of it are in batches already."""

    __slots__ = ("inputs", "rows", "key", "deadline", "enqueued", "future", "timing", "taken", "queued", "left",
                 "parts")

    def __init__(self, inputs: Inputs, rows: int, key: tuple[object, ...], deadline: float, enqueued: float,
                 future: asyncio.Future[Outputs], timing: Timing | None) -> None:
        self.inputs, self.rows, self.key, self.deadline, self.enqueued = inputs, rows, key, deadline, enqueued
        self.future, self.timing = future, timing
        self.taken = 0
        self.queued = True  # counts against max_queue_size (rows left to take, not settled)
        self.left = rows  # rows not answered yet
        self.parts: list[tuple[int, Outputs]] | None = None  # a large request's pieces' outputs

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)
        self.settle()

    def deliver(self, start: int, outputs: Outputs, rows: int) -> None:
        """Outputs of rows [start, start + rows) of this request."""
        future = self.future
        if not future.done():
            if rows == self.rows:
                future.set_result(outputs)
            else:
                if self.parts is None:
                    self.parts = []
                self.parts.append((start, outputs))
                self.left -= rows
                if self.left:
                    return
                future.set_result(reassemble(self.parts))
        self.settle()

    def settle(self) -> None:
        """Tell the request's timing, once, that the queue is done with it."""
        timing = self.timing
        if timing is not None:
            self.timing = None
            timing.finished(self.future)


#: A batch: (request, first row, end row) of each request's piece in it, in order.
Batch = list[tuple[_Request, int, int]]


@dataclass
class QueueStats:
    """Counters of one queue since it was made."""

    batches: int = 0
    rows: int = 0
    requests: int = 0
    rejected: int = 0
    expired: int = 0
    inline_batches: int = 0


class BatchQueue:
    """The queue of one (model, version, signature); lives on the event loop thread."""

    def __init__(self, run: RunBatch, options: BatchingOptions, executor: concurrent.futures.Executor,
                 name: str = "", clock: Clock = SYSTEM_CLOCK, on_batch: BatchObserver | None = None,
                 spare_core: bool = False) -> None:
        self.run, self.options, self.executor, self.name, self.clock = run, options, executor, name, clock
        self.on_batch = on_batch
        self.loop = asyncio.get_running_loop()
        self.queue: collections.deque[_Request] = collections.deque()
        self.waiting = 0  # requests counting against max_queue_size
        self.rows_queued = 0  # rows of those requests not taken into a batch yet
        self.in_flight = 0  # batches running on the workers
        self.timer: asyncio.TimerHandle | None = None
        self.timeout_s = options.batch_timeout_micros / 1e6
        self.slice_s = options.inline_batch_micros / 1e6
        self.stats = QueueStats()
        self.placement = Placement(self.slice_s, clock, name, spare_core)
        self._idle: asyncio.Event | None = None
        self._inline_pending = False

    @property
    def inline(self) -> bool:
        return self.placement.inline

    # ---- submitting ----

    def submit(self, inputs: Inputs, deadline: float, timing: Timing | None = None) -> asyncio.Future[Outputs]:
        """Queue one request (arrays already validated, all with the same batch size); `timing`, if any, gets
        the instants its (first) batch was dispatched and its (last) batch computed."""
        opts = self.options
        if self.waiting >= opts.max_queue_size and self.full:
            raise self.refusal()
        rows = rows_of(inputs)
        future: asyncio.Future[Outputs] = self.loop.create_future()
        request = _Request(inputs, rows, shape_key(inputs, opts.pad_variable_length_inputs), deadline,
                           self.clock.monotonic(), future, timing)
        self.queue.append(request)
        self.waiting += 1
        self.rows_queued += rows
        self.stats.requests += 1
        self._schedule()
        return future

    def enqueue(self, inputs: Inputs, rows: int, deadline: float, waiter: Waiter) -> bool:
        """`submit` for an express lane (serving/transport/http.py): `waiter` is the request's future and its
        timing in one, answered from the batch's completion on this thread with no loop turn between. False,
        with nothing counted, when the queue is full: the caller's general path then refuses it as `submit` does."""
        opts = self.options
        if self.waiting >= opts.max_queue_size and self.full:
            return False
        self.queue.append(_Request(inputs, rows, shape_key(inputs, opts.pad_variable_length_inputs), deadline,
                                   self.clock.monotonic(), waiter, waiter))  # type: ignore[arg-type]
        self.waiting += 1
        self.rows_queued += rows
        self.stats.requests += 1
        self._schedule()
        return True

    @property
    def full(self) -> bool:
        """No room for another request, once the requests settled while they waited are let go."""
        if self.waiting < self.options.max_queue_size:
            return False
        self.purge()
        return self.waiting >= self.options.max_queue_size

    def purge(self) -> None:
        """Let go of the requests settled while they waited (O(queue length), only when it matters)."""
        queue = self.queue  # in place, in order: a batch being taken may hold it
        for _ in range(len(queue)):
            request = queue.popleft()
            if request.queued and request.future.done():
                self._leave(request)
                request.settle()
            if request.queued:
                queue.append(request)

    def refusal(self) -> ServingError:
        """The error of a request refused because the queue is full (counted as rejected)."""
        self.stats.rejected += 1
        return ServingError(Code.UNAVAILABLE, f"{self.name}: the request queue is full "
                                              f"({self.options.max_queue_size} requests waiting); retry later")

    def _leave(self, request: _Request) -> None:
        request.queued = False
        self.waiting -= 1
        self.rows_queued -= request.rows - request.taken

    # ---- dispatching ----

    def _schedule(self) -> None:
        if self.placement.inline:
            if self.queue and not self._inline_pending:
                self._inline_pending = True
                self.loop.call_soon(self._run_inline)
            return
        opts = self.options
        while self.queue and self.in_flight < opts.max_in_flight:
            if self.in_flight:
                wait = self.queue[0].enqueued + self.timeout_s - self.clock.monotonic()
                if wait > 0 and self.rows_queued < opts.max_batch_size:
                    if self.timer is None:
                        self.timer = self.loop.call_later(wait, self._on_timer)
                    return
            if not self._dispatch():
                break

    def _on_timer(self) -> None:
        self.timer = None
        self._schedule()

    def _take(self) -> tuple[Batch, int]:
        """The next batch: the head's shape group, in order, up to max_batch_size rows; a request larger
        than that gives one piece and goes to the back."""
        now = self.clock.monotonic()
        limit = self.options.max_batch_size
        queue = self.queue
        batch: Batch = []
        kept: list[_Request] = []  # other shape groups, and a request that waits for the next batch
        again: list[_Request] = []  # large requests with rows left
        rows = 0
        key = None
        while queue and rows < limit:
            request = queue.popleft()
            if not request.queued:  # let go of already
                continue
            if request.future.done() or request.deadline <= now:  # settled while it waited, or expired: rare
                self._drop(request)
                continue
            if key is None:
                key = request.key
            elif request.key != key:
                kept.append(request)
                continue
            left, room = request.rows - request.taken, limit - rows
            if left > room and request.rows <= limit:  # a small request is not split: next batch
                kept.append(request)
                break
            n = min(left, room)
            batch.append((request, request.taken, request.taken + n))
            request.taken += n
            rows += n
            self.rows_queued -= n
            if request.taken == request.rows:
                request.queued = False
                self.waiting -= 1
            else:
                again.append(request)
        queue.extendleft(reversed(kept))
        queue.extend(again)
        return batch, rows

    def _drop(self, request: _Request) -> None:
        """Let go of a request taken off the queue that will not be computed: settled while it waited, or
        past its deadline (failed with DEADLINE_EXCEEDED, counted as expired)."""
        self._leave(request)
        if request.future.done():
            request.settle()
        else:
            self.stats.expired += 1
            request.fail(ServingError(Code.DEADLINE_EXCEEDED, DEADLINE_MESSAGE))

    def _assemble(self, batch: Batch, rows: int) -> Inputs | None:
        """The batch's inputs; None (its requests failed) when they cannot be put together."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        opts = self.options
        try:
            inputs = concatenate([take_rows(r.inputs, start, end, r.rows) for r, start, end in batch],
                                 opts.pad_variable_length_inputs)
            if opts.allowed_batch_sizes:
                inputs = pad_to_allowed(inputs, rows, opts.allowed_batch_sizes)
        except (ServingError, ValueError) as e:
            error = e if isinstance(e, ServingError) else internal(f"{self.name}: cannot assemble a batch: {e}")
            for request, _, _ in batch:
                request.fail(error)
            return None
        now = 0.0
        for request, _, _ in batch:
            if request.timing is not None and not request.timing.dispatched:
                request.timing.dispatched = now = now or self.clock.wall()
        stats = self.stats
        stats.batches += 1
        stats.rows += rows
        return inputs

    def _dispatch(self) -> bool:
        batch, rows = self._take()
        if not batch:
            return False
        inputs = self._assemble(batch, rows)
        if inputs is None:
            return True
        self.in_flight += 1
        job = self.executor.submit(_timed, self.run, inputs, self.clock)
        job.add_done_callback(lambda j: self.loop.call_soon_threadsafe(self._finish, batch, rows, j))
        return True

    def _run_inline(self) -> None:
        """Run what is queued on this (the loop) thread, batch after batch, for about one slice."""
        self._inline_pending = False
        if self.in_flight:  # a batch from before the switch still runs on a thread; its finish comes back here
            return
        placement, clock = self.placement, self.clock
        started = clock.wall()
        while self.queue and placement.inline:
            batch, rows = self._take()
            if not batch:
                break
            inputs = self._assemble(batch, rows)
            if inputs is None:
                continue
            self.stats.inline_batches += 1
            outputs: Outputs | None = None
            error: BaseException | None = None
            start = clock.wall()
            try:
                outputs = self.run(inputs)
            except Exception as e:  # noqa: BLE001 - a processor failure fails its batch only
                error = e
            end = clock.wall()
            placement.observe(end - start, inline=True)
            self._ran(rows, end - start)
            self._complete(batch, rows, outputs, error)
            placement.account(rows, True)
            if end - started >= self.slice_s:
                break  # yield: the loop reads sockets, answers health checks, runs other models
        self._schedule()  # what is left: in the next turn, or on the workers
        self._check_idle()

    def _finish(self, batch: Batch, rows: int,
                job: concurrent.futures.Future[tuple[Outputs, float, float]]) -> None:
        self.in_flight -= 1
        error = job.exception()
        outputs = None
        if error is None:
            outputs, cost, wall = job.result()
            self.placement.observe(cost, inline=False)
            self._ran(rows, wall)
        # The next batch goes to the workers before this one's answers are made: an express lane encodes and writes
        # them right here, and the workers would wait for that (the model and the answers then never overlap).
        self._schedule()
        self._complete(batch, rows, outputs, error)
        self.placement.account(rows, False)
        self._check_idle()

    def _complete(self, batch: Batch, rows: int, outputs: Outputs | None, error: BaseException | None) -> None:
        now = 0.0
        for request, _, _ in batch:
            if request.timing is not None:
                request.timing.computed = now = now or self.clock.wall()
        if error is None:
            if outputs is None:
                error = internal(f"{self.name}: the batch gave no outputs")
            else:
                try:
                    check_outputs(outputs, rows, self.name)
                except ServingError as e:
                    error = e
        if error is not None or outputs is None:
            for request, _, _ in batch:
                request.fail(error or internal(f"{self.name}: the batch gave no outputs"))
            return
        if len(batch) == 1 and not self.options.allowed_batch_sizes:
            request, start, end = batch[0]
            request.deliver(start, outputs, end - start)
            return
        offset = 0
        outbox = OUTBOX
        held: list[Callable[[], None]] | None = None
        if outbox.held is None:  # an express lane's answers are written together once all are made (.outbox)
            outbox.held = held = []
        try:
            # A waiter that can answer the whole batch at once (an express lane's: one encode for all) is let.
            whole = getattr(batch[0][0].future, "answer_batch", None)
            if whole is None or self.options.allowed_batch_sizes or not whole(batch, outputs, rows):
                for request, start, end in batch:
                    n = end - start
                    request.deliver(start, slice_outputs(outputs, offset, offset + n, rows), n)
                    offset += n
        finally:
            if held is not None:
                outbox.release(held)

    def _ran(self, rows: int, seconds: float) -> None:
        if self.on_batch is not None:
            self.on_batch(rows, seconds)

    def _check_idle(self) -> None:
        if self._idle is not None and not self.in_flight and not self.waiting:
            self._idle.set()

    # ---- lifetime ----

    async def drained(self) -> None:
        """Wait until nothing is queued or running."""
        self.purge()
        while self.in_flight or self.waiting:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def close(self, error: ServingError) -> None:
        """Fail everything still queued (the version is going away)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.queue:
            request = self.queue.popleft()
            if request.queued:
                self._leave(request)
                request.fail(error)


def _timed(run: RunBatch, inputs: Inputs, clock: Clock) -> tuple[Outputs, float, float]:
    """On a worker: the batch's outputs, the CPU time this thread spent on them (GIL waits excluded) and
    the wall time."""
    wall, cpu = clock.wall(), clock.thread_cpu()
    outputs = run(inputs)
    return outputs, clock.thread_cpu() - cpu, clock.wall() - wall
