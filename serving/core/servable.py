"""A loaded version of a model, as one handle: what a successful load produced.

TF Serving holds a served version through one non-null `ServableHandle` and wraps its session in a
batching session at load; here a `Servable` is built by the load and owns its execution: a non-null
processor, one batch queue per signature (for batchable processors with batching on), the count of
calls that bypass the queues, `close()` / `drained()` for the unload, typed `stats()` of its queues and the
record of what it did (`record`, serving/core/stats.py). Its
status (state, error, files) is a separate record in the repository (`serving.core.repository.VersionStatus`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Code, ServingError
from ..redact import without_native_trace
from .batching import BatchingOptions, BatchQueue, QueueStats
from .processor import Processor
from .signature import Signature, TensorSpec
from .stats import VersionStats

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


class Runtime:
    """What every loaded version shares: the batching options and the worker threads that run batches, and
    whether those threads have a core to themselves (`spare_core`: more cores than server processes)."""

    def __init__(self, batching: BatchingOptions | None = None, spare_core: bool = False) -> None:
        self.spare_core = spare_core
        self.batching = batching or BatchingOptions()
        self.batching.validate()
        workers = max(self.batching.max_in_flight, 1)
        self.executor = concurrent.futures.ThreadPoolExecutor(workers * 2, thread_name_prefix="predict")

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass(frozen=True)
class SignatureStats:
    """One batch queue's counters and gauges, read by metrics."""

    signature: str
    counters: QueueStats
    waiting: int
    in_flight: int
    compute_seconds: float


class Servable:
    """One loaded version; live on the event-loop thread (its queues are made there)."""

    __slots__ = ("model", "version", "path", "platform", "processor", "queues", "runtime", "inflight", "_idle",
                 "version_header", "record", "observers", "signature", "validates", "lane")

    def __init__(self, model: str, version: int, path: Path, platform: str, processor: Processor,
                 runtime: Runtime) -> None:
        self.model, self.version, self.path = model, version, path  # path: the version directory it loaded
        self.version_header = b"x-model-version: %d\r\n" % version  # on every HTTP answer it makes, made once
        self.platform, self.processor = platform, processor
        #: The signature called `name` ('' or None: the default one): the processor's, bound once.
        self.signature: Callable[[str | None], Signature] = processor.signature
        #: Whether its processor checks requests itself (a `validate` of its own): else nobody calls the default.
        self.validates = type(processor).validate is not Processor.validate
        self.runtime = runtime
        self.inflight = 0
        self._idle: asyncio.Event | None = None
        self.record = VersionStats()  # what it did: every call and batch (serving/core/stats.py)
        #: The per-call observers its model's config asks for (request log, shadow), besides the server's.
        self.observers: tuple[Any, ...] = ()
        options = runtime.batching
        self.queues: dict[str, BatchQueue] = {}
        if options.enabled and processor.batchable:
            for name in processor.signatures:
                where = f"model {model} version {version} signature {name}"
                self.queues[name] = BatchQueue(self._runner(name), options, runtime.executor, where,
                                               on_batch=self.record.batch_observer(name),
                                               spare_core=runtime.spare_core)
        #: (signature, its sole input, its batch queue) when the common predict request can skip the general
        #: steps: a default signature of one plain input, batched, and a processor without a `validate` of its own
        #: (the protocols' lanes: serving/protocols/tfserving/rest.py); None otherwise.
        self.lane: tuple[Signature, TensorSpec, BatchQueue] | None = None
        if not self.validates and len(processor.signatures) == 1:
            sig = next(iter(processor.signatures.values()))
            sole = sig.sole_input()
            queue = self.queues.get(sig.name)
            if sole is not None and queue is not None and not sig.records and sole.shape is not None:
                self.lane = (sig, sole, queue)

    def refusal(self) -> ServingError | None:
        """When every batch queue is full, the error that refuses a predict request before it is even
        decoded (a large body costs more to decode than to refuse); None otherwise."""
        for queue in self.queues.values():
            if queue.waiting < queue.options.max_queue_size or not queue.full:
                return None
        return next(iter(self.queues.values())).refusal() if self.queues else None

    def run(self, method: str, inputs: dict[str, np.ndarray], signature_name: str) -> Outputs:
        """Blocking: call the processor (in an executor thread); framework errors become INTERNAL."""
        try:
            return getattr(self.processor, method)(inputs, signature_name)  # type: ignore[no-any-return]
        except ServingError:
            raise
        except Exception as e:
            text = str(e)
            message = without_native_trace(text)
            if message != text:  # the whole of it for the operator
                log.error("model %s version %d failed in %s", self.model, self.version, method, exc_info=e)
            raise ServingError(
                Code.INTERNAL, f"model {self.model} version {self.version} failed in {method}: "
                f"{type(e).__name__}: {message}"
            ) from e

    def _runner(self, signature_name: str) -> Callable[[dict[str, np.ndarray]], Outputs]:
        def run(inputs: dict[str, np.ndarray]) -> Outputs:
            return self.run("predict", inputs, signature_name)

        return run

    # ---- holding it during a call ----

    def hold(self, future: asyncio.Future[Outputs]) -> None:
        """Keep this version loaded until `future` is done (calls that do not go through a queue; a queue
        keeps it loaded while it has requests or batches)."""
        self.inflight += 1
        future.add_done_callback(self._release)

    def _release(self, _: asyncio.Future[Outputs]) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    def busy(self) -> bool:
        """Whether a request uses this version now: one held, queued or in a running batch."""
        if self.inflight:
            return True
        for queue in self.queues.values():
            queue.purge()  # requests settled while they waited are not waiting
            if queue.waiting or queue.in_flight:
                return True
        return False

    async def drained(self) -> None:
        """Wait until no request uses this version: none held, every batch queue empty and idle."""
        while self.inflight:
            self._idle = asyncio.Event()
            await self._idle.wait()
        for queue in self.queues.values():
            await queue.drained()

    def close(self, error: ServingError) -> None:
        """Fail what is still queued (a load that failed after the queues were made, e.g. in warm-up)."""
        for queue in self.queues.values():
            queue.close(error)

    def stats(self) -> list[SignatureStats]:
        for queue in self.queues.values():
            queue.purge()  # requests settled while they waited are not waiting
        return [SignatureStats(name, q.stats, q.waiting, q.in_flight, q.placement.cost)
                for name, q in sorted(self.queues.items())]
