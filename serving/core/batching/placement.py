"""Where a queue's batches run: on the event-loop thread (inline) or on the worker threads.

For a model of tens of microseconds, handing each batch to a thread (wake-up, GIL hand-offs, the way
back) costs more than the model. So each queue measures, and decides:
- a moving average of a batch's compute: the worker thread's CPU time (waits for the GIL do not count),
  wall time inline;
- windows of WINDOW batches, each giving the process's CPU time per row served in one mode (on the workers
  it includes the hand-offs and GIL traffic, inline the model on the loop) and how busy the loop thread was.
A queue moves onto the loop once a worker window has been measured and the average batch is under the
limit. It goes back to the workers when the inline average passes twice the limit (a model that waits on
a device or the network uses little CPU on a worker but must not hold the loop), or when an inline window
finds the loop thread busy (> BUSY_LOOP) and the process paying more CPU per row than in the last worker
window (requests that trickle in one by one, as gRPC delivers them, make one-row batches, and a costly
model then does better on a worker, where rows pile up while it runs). With a core to spare for the worker
threads (`spare_core`: more cores than server processes) a busy loop whose batches hold more than a row
on average (requests wait while it computes) also goes back when the loop thread itself pays more per row
inline than in the last worker window: then the loop is what bounds the requests served, and the model
can run beside it (measured: xgb batch-1 over HTTP at 64 connections on 2 cores served 1.5x the requests
with its batches on a worker, though the process spent 12% more CPU a request). One-row batches on a
busy loop (one client waiting for each answer) stay inline: nothing would run beside the model, and the
hand-off would only add its latency. After going back it tries again only
after twice as many worker batches as the time before (16, 32, ... up to 1024). The worker figure it compares
with ages: measured at warm-up, one-row batches made it look dear, and under load a worker's batches grow.
So every REPROBE_WINDOWS inline windows the queue runs one window on the workers again, to compare with
a fresh figure (measured: a gRPC load kept inline on a warm-up figure ran at 0.65x the pool's rate).

All readings come through a `Clock`, so tests charge CPU time to it instead of patching `time`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Batches in one measuring window.
WINDOW = 32
#: "Busy": the loop thread used more than this share of a window's wall time.
BUSY_LOOP = 0.7
#: Inline windows between two worker windows that refresh the worker figure (every 64: one batch in 65 on
#: the workers; every 16 cost an HTTP loop 1-1.5 µs a request in benchmarks/hot_path.py).
REPROBE_WINDOWS = 64
#: Worker batches before the first move onto the loop; doubles at each move back, up to MAX_BACKOFF.
FIRST_BACKOFF = 8
MAX_BACKOFF = 1024


@dataclass(frozen=True)
class Clock:
    """The time sources of the scheduler: monotonic deadlines, wall time of a batch, CPU times."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.perf_counter
    thread_cpu: Callable[[], float] = time.thread_time
    process_cpu: Callable[[], float] = time.process_time


SYSTEM_CLOCK = Clock()


@dataclass
class Window:
    """One measuring window: readings at its start, and what was served in it."""

    inline: bool
    wall: float
    loop_cpu: float
    process_cpu: float
    rows: int = 0
    batches: int = 0


class Placement:
    """The inline-or-worker decision of one queue (lives on the event-loop thread)."""

    def __init__(self, limit_s: float, clock: Clock = SYSTEM_CLOCK, name: str = "", spare_core: bool = False) -> None:
        self.limit_s, self.clock, self.name = limit_s, clock, name
        #: A core is free for the worker threads while the loop runs: judge a busy loop by its own CPU a row.
        self.spare_core = spare_core
        self.inline = False
        self.cost = 0.0  # moving average of a batch's compute, seconds
        self.observed = 0  # batches observed
        self.backoff = FIRST_BACKOFF
        self.inline_after = FIRST_BACKOFF  # no move onto the loop before this many batches
        self.window: Window | None = None
        self.worker_row_cpu: float | None = None  # process CPU per row in the last worker window
        self.worker_row_loop = 0.0  # the loop thread's CPU per row in the last worker window
        self.inline_windows = 0  # inline windows judged since the last worker window

    def observe(self, cost: float, inline: bool) -> None:
        """One batch's cost (worker CPU time, or inline wall time): average it, and move on it."""
        self.observed += 1
        self.cost = cost if self.observed == 1 else self.cost + 0.1 * (cost - self.cost)
        if not self.limit_s:
            return
        if inline:
            if self.cost > 2 * self.limit_s:
                self.back_to_workers()
        elif (not self.inline and self.observed >= self.inline_after and self.cost < self.limit_s
              and self.worker_row_cpu is not None):
            log.debug("%s: batches now run on the event-loop thread (average batch %.0f us)", self.name,
                      self.cost * 1e6)
            self.inline = True

    def account(self, rows: int, inline: bool) -> None:
        """After each batch, on the loop thread: close a window every WINDOW batches and judge it."""
        if not self.limit_s:  # never inline: nothing to decide, so nothing to measure
            return
        clock = self.clock
        window = self.window
        if window is None or window.inline != inline:
            self.window = Window(inline, clock.wall(), clock.thread_cpu(), clock.process_cpu())
            return
        window.rows += rows
        window.batches += 1
        if window.batches < WINDOW:
            return
        now, loop_cpu, cpu = clock.wall(), clock.thread_cpu(), clock.process_cpu()
        self.window = Window(inline, now, loop_cpu, cpu)
        per_row = (cpu - window.process_cpu) / window.rows
        loop_row = (loop_cpu - window.loop_cpu) / window.rows
        if not inline:
            self.worker_row_cpu, self.worker_row_loop = per_row, loop_row
            self.inline_windows = 0
            return
        elapsed = now - window.wall
        busy = (loop_cpu - window.loop_cpu) / elapsed if elapsed > 0 else 1.0
        if self.inline and busy > BUSY_LOOP and self.worker_row_cpu is not None and (
                per_row > self.worker_row_cpu
                or self.spare_core and window.rows > window.batches and loop_row > self.worker_row_loop):
            self.back_to_workers()
            return
        self.inline_windows += 1
        if self.inline and self.inline_windows >= REPROBE_WINDOWS:
            self.reprobe()

    def reprobe(self) -> None:
        """One window on the workers, then back inline (as long as the batches stay cheap) with a fresh
        worker figure to judge the inline windows by."""
        log.debug("%s: one window on the worker threads to measure them again", self.name)
        self.inline = False
        self.window = None
        self.inline_windows = 0
        self.inline_after = self.observed + WINDOW + 2  # the window opens on the next batch, then WINDOW more

    def back_to_workers(self) -> None:
        log.debug("%s: batches go back to the worker threads (average batch %.0f us)", self.name, self.cost * 1e6)
        self.inline = False
        self.window = None
        self.backoff = min(2 * self.backoff, MAX_BACKOFF)
        self.inline_after = self.observed + self.backoff
