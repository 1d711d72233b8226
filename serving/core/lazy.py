"""Models loaded on their first request (--model_control_mode=lazy), and the last use the memory budget reads.

`LazyLoads` is one load per model at a time: the first request for a known model that is not loaded starts
it, the requests that come meanwhile wait for the same one. A load that fails is answered to each of them
(UNAVAILABLE, 503, with the load's error) and to the requests of its back-off (1 s after the first failure,
twice as long after each next one, at most 5 minutes: `FetchBackoff`); the first request after it tries again.

`ResidentPipeline` is the request pipeline of a server with a budget or lazy loading: it notes each call's
model as used (`ManagedModel.last_used`: the budget unloads the least recently used first) and, in lazy mode,
holds a call for a model that is not loaded until its load ends, then goes on as any call. Each call waits at
most until its deadline and `--lazy_load_timeout_seconds` (504 past the first, 503 past the second); the load
goes on. A loaded model costs a call one dict read and a clock read more than the plain pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..errors import Code, ServingError, unavailable
from .dataplane import DataPlane, Outputs
from .pipeline import Call, Pipeline, notify
from .remote import FailingFetch, FetchBackoff
from .repository import ManagedModel, ModelManager

log = logging.getLogger(__name__)


class LazyLoads:
    """The lazy loads under way and those that failed, by model name."""

    def __init__(self, manager: ModelManager, timeout_s: float = 60.0, backoff: FetchBackoff | None = None) -> None:
        self.manager, self.timeout_s = manager, timeout_s
        self.backoff = backoff or FetchBackoff()
        self.pending: dict[str, asyncio.Future[None]] = {}
        #: A model whose last load failed: its failures in a row and the error its requests get meanwhile.
        self.failing: dict[str, tuple[FailingFetch, ServingError]] = {}

    def load(self, name: str) -> asyncio.Future[None]:
        """The load of `name` under way, else a new one; while a failed load's back-off runs, its error."""
        pending = self.pending.get(name)
        if pending is not None:
            return pending
        failing = self.failing.get(name)
        if failing is not None and not self.backoff.due(failing[0], name):
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_exception(failing[1])
            return refused
        pending = self.pending[name] = asyncio.ensure_future(self._load(name))
        pending.add_done_callback(_retrieved)
        return pending

    async def _load(self, name: str) -> None:
        try:
            await self.manager.load_lazily(name)
        except ServingError as e:
            if name not in self.manager.models:  # gone from the config meanwhile
                raise
            failing = self.backoff.failed(self.failing.get(name, (None,))[0], name)
            error = unavailable(f"model {name} failed to load: {e.message} (tried again after {failing.delay:g} s)")
            self.failing[name] = (failing, error)
            raise error from None
        finally:
            del self.pending[name]
        self.failing.pop(name, None)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Every waiter may have given up: the load's outcome is read once, so asyncio logs nothing of it."""
    if not future.cancelled():
        future.exception()


class ResidentPipeline(Pipeline):
    """The pipeline that notes each model's last use and, given `loads`, loads a known model on its first
    request."""

    def __init__(self, manager: ModelManager, dataplane: DataPlane, loads: LazyLoads | None = None) -> None:
        super().__init__(manager, dataplane)
        self.loads = loads

    def infer(self, call: Call) -> asyncio.Future[Outputs]:
        model = self.manager.models.get(call.model)
        if model is not None:
            if model.latest is None and self.loads is not None:
                return _Waiting(self, call, model).answer
            model.last_used = time.monotonic()
        return super().infer(call)


class _Waiting:
    """One call waiting for its model's load: the future its adapter answers from, the load, its timer."""

    __slots__ = ("pipeline", "call", "model", "answer", "load", "timer", "inner", "waits")

    def __init__(self, pipeline: ResidentPipeline, call: Call, model: ManagedModel) -> None:
        assert pipeline.loads is not None
        loop = asyncio.get_running_loop()
        self.pipeline, self.call, self.model = pipeline, call, model
        model.waiting += 1  # in use: the budget does not unload it between its load and this call's turn
        self.waits = True
        self.answer: asyncio.Future[Outputs] = loop.create_future()
        self.inner: asyncio.Future[Outputs] | None = None
        self.load = pipeline.loads.load(call.model)
        limit = min(call.deadline, time.monotonic() + pipeline.loads.timeout_s)
        self.timer = loop.call_at(loop.time() + max(limit - time.monotonic(), 0.0), self._timed_out)
        self.load.add_done_callback(self._loaded)
        self.answer.add_done_callback(self._answered)

    def _loaded(self, load: asyncio.Future[None]) -> None:
        self.timer.cancel()
        self._release()
        if self.answer.done():
            return
        error = None if load.cancelled() else load.exception()
        if error is not None:
            self._fail(error if isinstance(error, ServingError) else ServingError(Code.INTERNAL, str(error)))
            return
        try:
            self.inner = inner = Pipeline.infer(self.pipeline, self.call)  # observers are told by it from here
        except ServingError as e:
            self.answer.set_exception(e)
            return
        inner.add_done_callback(self._finished)

    def _finished(self, inner: asyncio.Future[Outputs]) -> None:
        if self.answer.done():
            return
        if inner.cancelled():
            self.answer.cancel()
        elif (error := inner.exception()) is not None:
            self.answer.set_exception(error)
        else:
            self.answer.set_result(inner.result())

    def _timed_out(self) -> None:
        if self.answer.done():
            return
        self.load.remove_done_callback(self._loaded)
        self._release()
        timeout_s = self.pipeline.loads.timeout_s if self.pipeline.loads is not None else 0.0
        if time.monotonic() >= self.call.deadline:
            self._fail(ServingError(Code.DEADLINE_EXCEEDED, f"model {self.call.model} was still loading at the "
                                                            f"request's deadline"))
        else:
            self._fail(unavailable(f"model {self.call.model} is still loading after {timeout_s:g} s "
                                   f"(--lazy_load_timeout_seconds)"))

    def _release(self) -> None:
        """No longer waiting: once the call is queued it holds its version itself (or it failed, or gave up)."""
        if self.waits:
            self.waits = False
            self.model.waiting -= 1

    def _fail(self, error: ServingError) -> None:
        """Answer `error`; the pipeline's observers are told of the call as of any that failed."""
        pipeline, call = self.pipeline, self.call
        if pipeline.observers:
            call.received = call.received or time.perf_counter()
            call.observers = pipeline.observers
            notify(call, error)
        self.answer.set_exception(error)

    def _answered(self, answer: asyncio.Future[Outputs]) -> None:
        """The adapter gave up (its deadline, the client gone): the call no longer waits, nor is computed."""
        if answer.cancelled():
            self.timer.cancel()
            self.load.remove_done_callback(self._loaded)
            self._release()
            if self.inner is not None:
                self.inner.cancel()


async def wait_loaded(pipeline: Pipeline, name: str) -> None:
    """A request that needs `name` loaded but is no inference (its metadata, Triton's model config): in lazy
    mode, a known model not loaded yet is loaded first, as its first inference would load it, waiting at most
    --lazy_load_timeout_seconds (503 past it; the load goes on). Returns at once otherwise."""
    loads = getattr(pipeline, "loads", None)
    if loads is None or not needs_load(pipeline, name):
        return
    try:
        await asyncio.wait_for(asyncio.shield(loads.load(name)), loads.timeout_s)
    except TimeoutError:
        raise unavailable(f"model {name} is still loading after {loads.timeout_s:g} s "
                          "(--lazy_load_timeout_seconds); the load goes on") from None


def needs_load(pipeline: Pipeline, name: str) -> bool:
    """Whether `name` is a known model that a request would load first (lazy mode, nothing loaded yet)."""
    model = pipeline.manager.models.get(name)
    return getattr(pipeline, "loads", None) is not None and model is not None and model.latest is None
