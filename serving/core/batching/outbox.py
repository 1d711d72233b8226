"""Writes held while a batch's answers are made, then done one after another.

An express lane answers its request inside the batch's completion (serving/core/batching/queue.py `_complete`):
encode, then write to the client's socket. Made and written one at a time, the answers of a 64-row batch reach
the load generator a few microseconds apart, slower than it reads them, so it falls asleep between two and every
write pays for waking it on the other core (`sock_def_readable` was 3.1 µs of a request's 32 µs of server CPU
under wrk at 64 connections, against 0.6 in minimal_path). So the queue holds the writes while it makes a batch's
answers, and then writes them back to back: +12-15% requests per second in the same run
(benchmarks/results/outbox-2026-12-07-*.md).

Per thread: every loop of the process (tests run several) holds its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Outbox(threading.local):
    """`held`: the writes (a connection's flush) waiting for the end of the batch being answered; None: write now."""

    def __init__(self) -> None:
        self.held: list[Callable[[], None]] | None = None

    def release(self, held: list[Callable[[], None]]) -> None:
        """Stop holding and do the writes held, each once; one failing does not keep the others unwritten."""
        self.held = None
        for flush in held:
            try:
                flush()
            except Exception:  # noqa: BLE001 - a write's bug must not leave the other clients unanswered
                log.exception("writing an answer failed")


#: The outbox of this thread's loop.
OUTBOX = Outbox()
