"""The protocol-neutral core: validate named input arrays against a signature and run them, batched.

Codecs call `DataPlane.infer()` with a resolved servable, arrays in the signature's dtypes and an
absolute `time.monotonic()` deadline; they get an `asyncio.Future` of the named outputs (callbacks, no
Task per request). The processor's `validate()` sees every request before it is queued. Predict calls
go through the servable's batch queue for that signature where it has one (built at load); other calls
run on the executor directly, the servable held until the future is done, so an unload waits for them.
Cancelling the future (client gone, front-end time-out) drops a queued request without computing it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..errors import Code, ServingError, invalid_argument
from .batching import BatchingOptions, Timing
from .servable import Runtime, Servable
from .signature import Signature

Outputs = dict[str, np.ndarray]


def validate_inputs(servable: Servable, sig: Signature, inputs: dict[str, np.ndarray]) -> None:
    """Every declared input present with the right rank and fixed dims; no unknown inputs; one batch size."""
    sole = sig.sole_input()
    if sole is not None and len(inputs) == 1:  # the common case in one step
        array = inputs.get(sole.name)
        if array is not None and array.ndim and array.shape[0]:
            try:
                sole.check(array, "")
            except ServingError as e:
                raise invalid_argument(_where(servable, sig) + e.message) from None
            return
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

    def __init__(self, runtime: Runtime, rate_limit: float = 0.0) -> None:
        self.runtime = runtime
        self.limiter = RateLimiter(rate_limit) if rate_limit > 0 else None

    @property
    def batching(self) -> BatchingOptions:
        return self.runtime.batching

    def infer(
        self,
        servable: Servable,
        sig: Signature,
        inputs: dict[str, np.ndarray],
        deadline: float,
        method: str = "predict",
        *,
        rate_limited: bool = True,
        timing: Timing | None = None,
    ) -> asyncio.Future[Outputs]:
        """Queue (or run) one request; `rate_limited=False` for the server's own warm-up traffic; `timing`
        gets the perf_counter() instants its batch was dispatched and computed."""
        if rate_limited and self.limiter is not None and not self.limiter.allow():
            raise ServingError(Code.RESOURCE_EXHAUSTED,
                               f"rate limit of {self.limiter.rate:g} requests/s exceeded; retry later")
        validate_inputs(servable, sig, inputs)
        if servable.validates:
            servable.processor.validate(inputs, sig)
        if method == "predict":
            queue = servable.queues.get(sig.name)
            if queue is not None:
                return queue.submit(inputs, deadline, timing)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.runtime.executor, servable.run, method, inputs, sig.name)
        servable.hold(future)
        if timing is not None:
            timing.dispatched = time.perf_counter()
            future.add_done_callback(timing.finished)
        return future


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
