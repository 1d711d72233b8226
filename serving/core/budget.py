"""The memory budget of the models one process holds (--model_memory_capacity_bytes, with lazy or explicit
model control): which loaded model goes to make room for a load.

Policy only, on plain data: the repository (serving/core/repository.py) measures the sizes, keeps each
model's last use and load time, does the unloads and counts what happened here. A model may go when it is
not pinned, has no request in flight or queued, and was loaded at least `min_residency_s` ago (against load /
unload thrash); of those, the least recently used goes first.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .stats import Histogram

#: Seconds a model load takes (the processor's load and the warm-up): from 10 ms to 5 minutes.
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: What a load is for, in `serving_model_loads_total{reason}`: a request (lazy), the repository API or
#: ModelMesh (explicit), the configuration (poll: start-up, polls, reloads, pinned models).
REASONS = ("lazy", "explicit", "poll")


@dataclass(frozen=True)
class Resident:
    """What the budget reads of one loaded model."""

    name: str
    size: int  # bytes, as measured at its load
    last_used: float  # the clock's time of its last request (of its load, before any)
    loaded_at: float  # the clock's time its load ended
    pinned: bool
    busy: bool  # a request in flight or queued


class LoadStats:
    """Loads that made a version AVAILABLE, by reason (REASONS), and how long they took."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.durations = {reason: Histogram(LOAD_BUCKETS) for reason in REASONS}

    def observe(self, reason: str, seconds: float) -> None:
        self.counts[reason] += 1
        self.durations[reason].observe(seconds)


class Budget:
    """The bytes the models of this process may take, the unloads and over-budget loads it caused, and what
    the repository keeps while it makes room (all by model name): each model's last measured size (its
    estimate at its next load), the estimated bytes of the loads under way, the unloads under way."""

    def __init__(self, capacity: int, min_residency_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.min_residency_s, self.clock = capacity, min_residency_s, clock
        self.evictions = 0  # models unloaded to make room
        self.over_budget = 0  # loads that went over the budget because nothing could go
        self.sizes: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.evicting: dict[str, asyncio.Future[None]] = {}

    def movable(self, resident: Resident, now: float) -> bool:
        return not resident.pinned and not resident.busy and now - resident.loaded_at >= self.min_residency_s

    def victim(self, residents: Iterable[Resident]) -> Resident | None:
        """The least recently used model that may go; None when none may."""
        now = self.clock()
        return min((r for r in residents if self.movable(r, now)), key=lambda r: (r.last_used, r.loaded_at),
                   default=None)

    def why_none(self, residents: Iterable[Resident]) -> str:
        """Why no model may go, for the log line of a load over the budget."""
        now = self.clock()
        residents = list(residents)
        pinned = sum(r.pinned for r in residents)
        busy = sum(r.busy and not r.pinned for r in residents)
        young = sum(not r.pinned and not r.busy and now - r.loaded_at < self.min_residency_s for r in residents)
        return (f"of the other {len(residents)} loaded models {pinned} are pinned, {busy} have requests in flight "
                f"and {young} were loaded less than {self.min_residency_s:g} s ago")
