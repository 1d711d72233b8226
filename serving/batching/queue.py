"""The dynamic-batching scheduler: one queue per loaded (model, version, signature).

Event-driven and adaptive, with `time.monotonic()` deadlines and no polling:
- a request is queued with its deadline; a request larger than `max_batch_size` rows is split into
  chunks that are reassembled in order;
- when nothing of the queue is running, whatever is queued (up to `max_batch_size` rows) is dispatched
  at once: no batching delay at low load;
- while batches run, a new batch is dispatched to a free slot only once it is full or its oldest
  request has waited `batch_timeout`; otherwise requests accumulate, and every finished batch
  dispatches the next one at once; at most `max_in_flight` batches run per queue;
- the queue is bounded (`max_queue_size` requests): past it a request is refused at once (UNAVAILABLE);
- a request whose deadline passed, or whose future was cancelled (client gone, front-end time-out), is
  dropped without being computed; a batch already running finishes and nobody else waits for it;
- requests whose non-batch dims differ are not mixed, unless `pad_variable_length_inputs` pads them;
  `allowed_batch_sizes` pads a batch up to the next allowed size;
- a processor exception fails only the requests of its batch;
- a queue whose batches take less than `inline_batch_micros` of compute on average runs them on the
  event-loop thread itself, at the end of the loop iteration that queued them (everything that arrived
  in that iteration is one batch): for a model of tens of microseconds, handing each batch to a thread
  (wake-up, GIL hand-offs, the way back) costs more than the model. The cost is a moving average of
  the batches (CPU time of the worker thread, so waits for the GIL do not count; wall time inline); a
  queue goes back to the threads when the average passes twice the limit (a model that waits on a
  device or the network uses little CPU on a worker but must not hold the loop), or when the loop is
  busy and inline costs more than the workers did. That is measured, not guessed: over windows of 32
  batches the queue takes the process's CPU time per row served, in each mode (on the workers it
  includes the hand-offs and GIL traffic, inline the model on the loop); when an inline window finds
  the loop thread busy (> 70% CPU) and the process paying more per row than in the last worker window,
  the workers win (requests that trickle in one by one, as gRPC delivers them, make one-row batches, and a
  costly model then does better on a worker, where rows pile up while it runs). A queue moves onto the
  loop only after a worker window has been measured, and tries again after twice as many worker
  batches as the time before (16, 32, ... up to 1024).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import Code, ServingError, invalid_argument

log = logging.getLogger(__name__)
Outputs = dict[str, np.ndarray]
#: Batches in one measuring window (process CPU per row, loop thread busy share).
WINDOW = 32
#: "Busy": the loop thread used more than this share of a window's wall time.
BUSY_LOOP = 0.7
DEADLINE_MESSAGE = "request deadline exceeded before it was computed"


@dataclass(frozen=True)
class BatchingOptions:
    """How one queue batches; units in the names."""

    enabled: bool = True
    #: Most rows in one batch (requests are split above it).
    max_batch_size: int = 16
    #: Longest wait of a queued request for a fuller batch while other batches run.
    batch_timeout_micros: int = 50_000
    #: Most requests waiting in one queue; more are refused at once.
    max_queue_size: int = 64
    #: Most batches running at once per queue.
    max_in_flight: int = 5
    #: Pad a batch up to the next of these sizes (the last must equal max_batch_size).
    allowed_batch_sizes: tuple[int, ...] = ()
    #: Pad inputs whose non-batch dims differ to the largest (zeros) so they share a batch.
    pad_variable_length_inputs: bool = False
    #: Run batches on the event-loop thread while they average under this many µs of compute (0: never).
    inline_batch_micros: int = 1000

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue_size < 1 or self.max_in_flight < 1:
            raise ValueError("max_queue_size and worker threads must be at least 1")
        if self.inline_batch_micros < 0:
            raise ValueError("inline_batch_micros must be 0 or more")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be positive and strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"The last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                    f"{sizes[-1]}; expected {self.max_batch_size}"
                )


class _Parent:
    """A request split into chunks: completes its future when every chunk has come back."""

    __slots__ = ("future", "parts", "left")

    def __init__(self, future: asyncio.Future[Outputs], n: int) -> None:
        self.future, self.left = future, n
        self.parts: list[Outputs | None] = [None] * n

    def chunk_done(self, index: int, outputs: Outputs | None, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
            return
        self.parts[index] = outputs
        self.left -= 1
        if self.left == 0:
            parts = [p for p in self.parts if p is not None]
            self.future.set_result({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


class _Item:
    __slots__ = ("inputs", "rows", "key", "deadline", "enqueued", "future", "parent", "index")

    def __init__(self, inputs: dict[str, np.ndarray], rows: int, key: tuple[object, ...], deadline: float,
                 future: asyncio.Future[Outputs] | None, parent: _Parent | None, index: int) -> None:
        self.inputs, self.rows, self.key, self.deadline = inputs, rows, key, deadline
        self.enqueued = time.monotonic()
        self.future, self.parent, self.index = future, parent, index

    def abandoned(self) -> bool:
        target = self.parent.future if self.parent is not None else self.future
        return target is None or target.done()

    def fail(self, error: BaseException) -> None:
        if self.parent is not None:
            self.parent.chunk_done(self.index, None, error)
        elif self.future is not None and not self.future.done():
            self.future.set_exception(error)

    def succeed(self, outputs: Outputs) -> None:
        if self.parent is not None:
            self.parent.chunk_done(self.index, outputs, None)
        elif self.future is not None and not self.future.done():
            self.future.set_result(outputs)


RunBatch = Callable[[dict[str, np.ndarray]], Outputs]


@dataclass
class QueueStats:
    batches: int = 0
    rows: int = 0
    requests: int = 0
    rejected: int = 0
    expired: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    inline_batches: int = 0


class BatchQueue:
    """The queue of one (model, version, signature); lives on the event loop thread."""

    def __init__(self, run: RunBatch, options: BatchingOptions, executor: concurrent.futures.Executor,
                 name: str = "") -> None:
        self.run, self.options, self.executor, self.name = run, options, executor, name
        self.loop = asyncio.get_running_loop()
        self.queue: collections.deque[_Item] = collections.deque()
        self.in_flight = 0
        self.rows_queued = 0  # rows of the requests in `queue` (abandoned ones until they are skipped)
        self.timer: asyncio.TimerHandle | None = None
        self.timeout_s = options.batch_timeout_micros / 1e6
        self.stats = QueueStats()
        self._idle: asyncio.Event | None = None
        self.inline_limit = options.inline_batch_micros / 1e6
        self.inline = False  # batches run on the loop thread (see the module doc)
        self.cost = 0.0  # moving average of a batch's compute, seconds
        self._observed = 0
        self._backoff = 8  # worker batches before the next move onto the loop; doubles on each move back
        self._inline_after = 8
        # [wall start, loop thread CPU start, process CPU start, rows, batches, inline (1.0/0.0)]
        self._window: list[float] = []
        self._worker_row_cpu: float | None = None  # process CPU seconds per row in the last worker window
        self._inline_pending = False

    # ---- submitting ----

    def submit(self, inputs: dict[str, np.ndarray], deadline: float) -> asyncio.Future[Outputs]:
        """Queue one request (arrays already validated, all with the same batch size)."""
        opts = self.options
        if len(self.queue) >= opts.max_queue_size:
            self.stats.rejected += 1
            raise ServingError(Code.UNAVAILABLE, f"{self.name}: the request queue is full "
                                                 f"({opts.max_queue_size} requests waiting); retry later")
        rows = _rows(inputs)
        key = _shape_key(inputs, opts.pad_variable_length_inputs)
        future: asyncio.Future[Outputs] = self.loop.create_future()
        self.stats.requests += 1
        if rows <= opts.max_batch_size:
            self.queue.append(_Item(inputs, rows, key, deadline, future, None, 0))
            self.rows_queued += rows
        else:
            size = opts.max_batch_size
            n = -(-rows // size)
            parent = _Parent(future, n)
            for i in range(n):
                chunk = {k: v[i * size:(i + 1) * size] for k, v in inputs.items()}
                self.queue.append(_Item(chunk, min(size, rows - i * size), key, deadline, None, parent, i))
            self.rows_queued += rows
        self._schedule()
        return future

    # ---- dispatching ----

    def _schedule(self) -> None:
        if self.inline:
            if self.queue and not self._inline_pending:
                self._inline_pending = True
                self.loop.call_soon(self._run_inline)
            return
        opts = self.options
        while self.queue and self.in_flight < opts.max_in_flight:
            if self.in_flight:
                head = self.queue[0]
                wait = head.enqueued + self.timeout_s - time.monotonic()
                if wait > 0 and self.rows_queued < opts.max_batch_size:
                    if self.timer is None:
                        self.timer = self.loop.call_later(wait, self._on_timer)
                    return
            if not self._dispatch():
                break

    def _on_timer(self) -> None:
        self.timer = None
        self._schedule()

    def _take(self) -> list[_Item]:
        """Pop the next batch: the head's shape group, in order, up to max_batch_size rows."""
        now = time.monotonic()
        limit = self.options.max_batch_size
        batch: list[_Item] = []
        kept: list[_Item] = []
        rows = 0
        queue = self.queue
        while queue:
            item = queue.popleft()
            self.rows_queued -= item.rows
            if item.abandoned():
                continue
            if item.deadline <= now:
                self.stats.expired += 1
                item.fail(ServingError(Code.DEADLINE_EXCEEDED, DEADLINE_MESSAGE))
                continue
            if batch and (item.key != batch[0].key or rows + item.rows > limit):
                kept.append(item)
                self.rows_queued += item.rows
                if rows + item.rows > limit and item.key == batch[0].key:
                    break
                continue
            batch.append(item)
            rows += item.rows
            if rows >= limit:
                break
        queue.extendleft(reversed(kept))
        return batch

    def _dispatch(self) -> bool:
        batch = self._take()
        if not batch:
            return False
        prepared = self._prepare(batch)
        if prepared is None:
            return True
        inputs, rows = prepared
        self.in_flight += 1
        job = self.executor.submit(_timed, self.run, inputs)
        job.add_done_callback(lambda j: self.loop.call_soon_threadsafe(self._finish, batch, rows, j))
        return True

    def _prepare(self, batch: list[_Item]) -> tuple[dict[str, np.ndarray], int] | None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            inputs, rows = self._assemble(batch)
        except ServingError as e:
            for item in batch:
                item.fail(e)
            return None
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.batch_sizes[rows] += 1
        return inputs, rows

    def _run_inline(self) -> None:
        """Run what is queued on this (the loop) thread, batch after batch."""
        self._inline_pending = False
        if self.in_flight:  # a batch from before the switch still runs on a thread; its finish comes back here
            return
        while self.queue and self.inline:
            batch = self._take()
            if not batch:
                break
            prepared = self._prepare(batch)
            if prepared is None:
                continue
            inputs, rows = prepared
            self.stats.inline_batches += 1
            outputs: Outputs | None = None
            error: BaseException | None = None
            start = time.perf_counter()
            try:
                outputs = self.run(inputs)
            except Exception as e:  # noqa: BLE001 - a processor failure fails its batch only
                error = e
            cost = time.perf_counter() - start
            self._observe(cost, wall=True)
            self._complete(batch, rows, outputs, error)
            self._account(rows, True)
        if not self.inline:
            self._schedule()  # back to the workers for what is left
        if self._idle is not None and not self.in_flight and not self.queue:
            self._idle.set()

    def _account(self, rows: int, inline: bool) -> None:
        """After each batch, on the loop thread: CPU per row over windows of WINDOW batches."""
        if not self.inline_limit:  # never inline: nothing to decide, so nothing to measure
            return
        now, loop_cpu, cpu = time.perf_counter(), time.thread_time(), time.process_time()
        window = self._window
        if not window or window[5] != inline:
            self._window = [now, loop_cpu, cpu, 0.0, 0.0, float(inline)]
            return
        window[3] += rows
        window[4] += 1
        if window[4] < WINDOW:
            return
        self._window = [now, loop_cpu, cpu, 0.0, 0.0, float(inline)]
        per_row = (cpu - window[2]) / window[3]
        if not inline:
            self._worker_row_cpu = per_row
            return
        elapsed = now - window[0]
        busy = (loop_cpu - window[1]) / elapsed if elapsed > 0 else 1.0
        if self.inline and busy > BUSY_LOOP and self._worker_row_cpu is not None and per_row > self._worker_row_cpu:
            self._back_to_workers()

    def _back_to_workers(self) -> None:
        log.debug("%s: batches go back to the worker threads (average batch %.0f us)", self.name, self.cost * 1e6)
        self.inline = False
        self._window = []
        self._backoff = min(2 * self._backoff, 1024)
        self._inline_after = self._observed + self._backoff

    def _observe(self, cost: float, wall: bool = False) -> None:
        """Average the batch cost; move the queue onto the loop thread, or back to the workers, on it."""
        self._observed += 1
        self.cost = cost if self._observed == 1 else self.cost + 0.1 * (cost - self.cost)
        if not self.inline_limit:
            return
        if wall:
            if self.cost > 2 * self.inline_limit:
                self._back_to_workers()
        elif (self._observed >= self._inline_after and self.cost < self.inline_limit
                and self._worker_row_cpu is not None):
            log.debug("%s: batches now run on the event-loop thread (average batch %.0f us)", self.name,
                      self.cost * 1e6)
            self.inline = True

    def _assemble(self, batch: Sequence[_Item]) -> tuple[dict[str, np.ndarray], int]:
        rows = sum(item.rows for item in batch)
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {}
            for name in batch[0].inputs:
                arrays = [item.inputs[name] for item in batch]
                if self.options.pad_variable_length_inputs:
                    arrays = _pad_to_common(arrays)
                inputs[name] = np.concatenate(arrays)
        sizes = self.options.allowed_batch_sizes
        if sizes:
            target = next((s for s in sizes if s >= rows), rows)
            if target > rows:
                inputs = {k: _pad_rows(v, target) for k, v in inputs.items()}
        return inputs, rows

    def _finish(self, batch: list[_Item], rows: int, job: concurrent.futures.Future[tuple[Outputs, float]]) -> None:
        self.in_flight -= 1
        error = job.exception()
        outputs = None
        if error is None:
            outputs, cost = job.result()
            self._observe(cost)
        self._complete(batch, rows, outputs, error)
        self._account(rows, False)
        self._schedule()
        if self._idle is not None and not self.in_flight and not self.queue:
            self._idle.set()

    def _complete(self, batch: list[_Item], rows: int, outputs: Outputs | None, error: BaseException | None) -> None:
        if error is None and outputs is not None:
            try:
                _check_outputs(outputs, rows, self.name)
            except ServingError as e:
                error = e
        if error is not None or outputs is None:
            for item in batch:
                item.fail(error or ServingError(Code.INTERNAL, f"{self.name}: the batch gave no outputs"))
        elif len(batch) == 1:
            batch[0].succeed(_trim(outputs, rows) if self.options.allowed_batch_sizes else outputs)
        else:
            start = 0
            for item in batch:
                end = start + item.rows
                item.succeed({k: v[start:end] for k, v in outputs.items()})
                start = end

    async def drained(self) -> None:
        """Wait until nothing is queued or running."""
        while self.in_flight or self.queue:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def close(self, error: ServingError) -> None:
        """Fail everything still queued (the version is going away)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.queue:
            self.queue.popleft().fail(error)
        self.rows_queued = 0


def _timed(run: RunBatch, inputs: dict[str, np.ndarray]) -> tuple[Outputs, float]:
    """On a worker: the batch's outputs and the CPU time this thread spent on them (GIL waits excluded)."""
    start = time.thread_time()
    outputs = run(inputs)
    return outputs, time.thread_time() - start


def _rows(inputs: dict[str, np.ndarray]) -> int:
    for array in inputs.values():
        if array.ndim:
            return int(array.shape[0])
    raise invalid_argument("a batched input needs a batch dimension")


def _shape_key(inputs: dict[str, np.ndarray], pad: bool) -> tuple[object, ...]:
    """What must be equal for requests to share a batch: per input, dtype and non-batch dims (rank only
    when padding)."""
    key: list[object] = []
    for array in inputs.values():
        key.append(array.dtype)
        key.append(array.ndim if pad else array.shape[1:])
    return tuple(key)


def _pad_to_common(arrays: list[np.ndarray]) -> list[np.ndarray]:
    target = tuple(max(dims) for dims in zip(*(a.shape[1:] for a in arrays), strict=True))
    out = []
    for a in arrays:
        if a.shape[1:] != target:
            widths = [(0, 0)] + [(0, t - d) for d, t in zip(a.shape[1:], target, strict=True)]
            a = np.pad(a, widths)
        out.append(a)
    return out


def _pad_rows(array: np.ndarray, target: int) -> np.ndarray:
    pad = np.zeros((target - array.shape[0], *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, pad])


def _trim(outputs: Outputs, rows: int) -> Outputs:
    return {k: v[:rows] for k, v in outputs.items()}


def _check_outputs(outputs: Outputs, rows: int, name: str) -> None:
    for key, value in outputs.items():
        if value.ndim == 0 or value.shape[0] < rows:
            raise ServingError(
                Code.INTERNAL,
                f"{name}: output '{key}' has shape {list(value.shape)}, which does not have the batch's {rows} rows",
            )


def from_batching_parameters(text: str, base: BatchingOptions, source: str = "batching parameters") -> BatchingOptions:
    """Apply a TF Serving BatchingParameters text (--batching_parameters_file) over `base`.

    `max_enqueued_batches` counts batches in TF Serving; the queue here counts requests, so it becomes
    max_enqueued_batches x max_batch_size. `num_batch_threads` is the batches run at once.
    """
    from google.protobuf import text_format

    from ._proto.tensorflow_serving.servables.tensorflow import session_bundle_config_pb2 as sb

    params = sb.BatchingParameters()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as e:
        raise ValueError(f"{source}: not a valid BatchingParameters: {e}") from e
    size = params.max_batch_size.value if params.HasField("max_batch_size") else base.max_batch_size
    options = BatchingOptions(
        enabled=True,
        max_batch_size=size,
        batch_timeout_micros=(params.batch_timeout_micros.value if params.HasField("batch_timeout_micros")
                              else base.batch_timeout_micros),
        max_queue_size=(params.max_enqueued_batches.value * size if params.HasField("max_enqueued_batches")
                        else base.max_queue_size),
        max_in_flight=(params.num_batch_threads.value if params.HasField("num_batch_threads")
                       else base.max_in_flight),
        allowed_batch_sizes=tuple(params.allowed_batch_sizes) or base.allowed_batch_sizes,
        pad_variable_length_inputs=params.pad_variable_length_inputs or base.pad_variable_length_inputs,
        inline_batch_micros=base.inline_batch_micros,
    )
    try:
        options.validate()
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    return options
