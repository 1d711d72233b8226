"""The protocol-neutral core: validate named input arrays against a signature and run them, batched.

Codecs call `DataPlane.infer()` with a resolved servable, arrays in the signature's dtypes and an
absolute `time.monotonic()` deadline; they get an `asyncio.Future` of the named outputs (callbacks, no
Task per request). Predict calls of batchable processors go through the servable's batch queue for
that signature; other calls run on the executor directly. The servable is held (in-flight count) until
the future is done, so an unload waits for it. Cancelling the future (client gone, front-end time-out)
drops a queued request without computing it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable

import numpy as np

from .batching import BatchingOptions, BatchQueue
from .errors import Code, ServingError, invalid_argument, unimplemented
from .processor import implements
from .repository import Servable
from .signature import Signature

Outputs = dict[str, np.ndarray]


def validate_inputs(servable: Servable, sig: Signature, inputs: dict[str, np.ndarray]) -> None:
    """Every declared input present with the right rank and fixed dims; no unknown inputs; one batch size."""
    if inputs.keys() != sig.inputs.keys():
        where = _where(servable, sig)
        missing = [n for n in sig.inputs if n not in inputs]
        if missing:
            raise invalid_argument(f"{where}: missing input(s) {', '.join(missing)}")
        unknown = sorted(set(inputs) - set(sig.inputs))
        raise invalid_argument(f"{where}: unknown input(s) {', '.join(unknown)}; it takes {', '.join(sig.inputs)}")
    batch = -1
    for name, spec in sig.inputs.items():
        array = inputs[name]
        try:
            spec.check(array, "")
        except ServingError as e:
            raise invalid_argument(_where(servable, sig) + e.message) from None
        if array.ndim:
            if batch >= 0 and array.shape[0] != batch:
                raise invalid_argument(f"{_where(servable, sig)}: inputs have different batch sizes ({batch} and "
                                       f"{array.shape[0]})")
            batch = array.shape[0]
    if batch == 0:
        raise invalid_argument(f"{_where(servable, sig)}: the request has no rows")


def _where(servable: Servable, sig: Signature) -> str:
    """Error messages' prefix (built only when there is an error)."""
    return f"model {servable.model} version {servable.version} signature {sig.name}"


def examples_input(servable: Servable, sig: Signature, verb: str, method: str) -> str:
    """The input a classify / regress call feeds its serialized tf.Examples to. UNIMPLEMENTED where the
    processor has no `verb` (`method` names the call in the message), INVALID_ARGUMENT where the signature
    does not take exactly one input."""
    assert servable.processor is not None
    if not implements(servable.processor, verb):
        raise unimplemented(f"model {servable.model} ({servable.platform}) does not implement {method}")
    if len(sig.inputs) != 1:
        raise invalid_argument(f"signature {sig.name} takes {len(sig.inputs)} inputs, not one of examples")
    return next(iter(sig.inputs))


class RateLimiter:
    """A token bucket: at most `rate` requests per second on average, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class DataPlane:
    """Runs validated requests; one instance per server."""

    def __init__(self, batching: BatchingOptions | None = None, rate_limit: float = 0.0) -> None:
        self.batching = batching or BatchingOptions()
        self.batching.validate()
        workers = max(self.batching.max_in_flight, 1)
        self.executor = concurrent.futures.ThreadPoolExecutor(workers * 2, thread_name_prefix="predict")
        self.limiter = RateLimiter(rate_limit) if rate_limit > 0 else None

    def queue(self, servable: Servable, sig: Signature) -> BatchQueue:
        queue = servable.queues.get(sig.name)
        if queue is None:
            name = f"model {servable.model} version {servable.version} signature {sig.name}"
            queue = BatchQueue(_runner(servable, sig.name), self.batching, self.executor, name)
            servable.queues[sig.name] = queue
        return queue

    def infer(
        self,
        servable: Servable,
        sig: Signature,
        inputs: dict[str, np.ndarray],
        deadline: float,
        method: str = "predict",
        *,
        rate_limited: bool = True,
    ) -> asyncio.Future[Outputs]:
        """Queue (or run) one request; `rate_limited=False` for the server's own warm-up traffic."""
        if rate_limited and self.limiter is not None and not self.limiter.allow():
            raise ServingError(Code.RESOURCE_EXHAUSTED,
                               f"rate limit of {self.limiter.rate:g} requests/s exceeded; retry later")
        validate_inputs(servable, sig, inputs)
        processor = servable.processor
        assert processor is not None
        if sig.records:
            processor.validate(inputs, sig)
        if method == "predict" and self.batching.enabled and processor.batchable:
            # The queue holds the servable: an unload waits for every queue to drain.
            return self.queue(servable, sig).submit(inputs, deadline)
        future = asyncio.get_running_loop().run_in_executor(self.executor, servable.run, method, inputs, sig.name)
        servable.acquire()
        future.add_done_callback(_releaser(servable))
        return future

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


def _runner(servable: Servable, signature_name: str) -> Callable[[dict[str, np.ndarray]], Outputs]:
    def run(inputs: dict[str, np.ndarray]) -> Outputs:
        return servable.run("predict", inputs, signature_name)

    return run


def _releaser(servable: Servable) -> Callable[[asyncio.Future[Outputs]], None]:
    def release(_: asyncio.Future[Outputs]) -> None:
        servable.release()

    return release


async def outputs_of(future: asyncio.Future[Outputs]) -> Outputs:
    """Await a data-plane future; anything but a ServingError (the servable already wraps a processor's own
    exceptions in one) comes out as an INTERNAL ServingError with its message, never as gRPC's UNKNOWN."""
    try:
        return await future
    except ServingError:
        raise
    except Exception as e:  # noqa: BLE001 - named for the client as the REST answers name it
        error = error_of(future)
        assert error is not None  # the future failed
        raise error from e


def error_of(future: asyncio.Future[Outputs]) -> ServingError | None:
    """The future's failure as a ServingError (cancellation and stray exceptions included)."""
    if future.cancelled():
        return ServingError(Code.CANCELLED, "request cancelled")
    exc = future.exception()
    if exc is None:
        return None
    if isinstance(exc, ServingError):
        return exc
    return ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
