"""The dynamic-batching scheduler, in three parts: the queue (queueing, deadlines, dispatch:
`queue.BatchQueue`), the placement policy (inline on the event-loop thread or on the workers, measured over
typed windows with an injectable clock: `placement.Placement`) and pure batch assembly (`assembly`)."""

from .options import BatchingOptions, from_batching_parameters, options_from_settings
from .placement import (
    BUSY_LOOP,
    REPROBE_WINDOWS,
    SYSTEM_CLOCK,
    WINDOW,
    Clock,
    Placement,
)
from .queue import (
    DEADLINE_MESSAGE,
    BatchObserver,
    BatchQueue,
    QueueStats,
    Timing,
)

__all__ = ["BUSY_LOOP", "DEADLINE_MESSAGE", "REPROBE_WINDOWS", "SYSTEM_CLOCK", "WINDOW", "BatchObserver", "BatchQueue",
           "BatchingOptions", "Clock", "Placement", "QueueStats", "Timing", "from_batching_parameters",
           "options_from_settings"]
