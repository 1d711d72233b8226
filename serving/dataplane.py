"""The protocol-neutral core: validate named input arrays against a signature and run the processor.

Codecs call `DataPlane.infer()` with a resolved servable and arrays already in the signature's dtypes;
they get an `asyncio.Future` of the named outputs (callbacks, no Task per request). The servable is
held (in-flight count) until the processor returns, so an unload waits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable

import numpy as np

from .errors import Code, ServingError, invalid_argument
from .repository import Servable
from .signature import Signature

Outputs = dict[str, np.ndarray]


def validate_inputs(servable: Servable, sig: Signature, inputs: dict[str, np.ndarray]) -> None:
    """Every declared input present with the right rank and fixed dims; no unknown inputs; one batch size."""
    where = f"model {servable.model} version {servable.version} signature {sig.name}"
    if inputs.keys() != sig.inputs.keys():
        missing = [n for n in sig.inputs if n not in inputs]
        if missing:
            raise invalid_argument(f"{where}: missing input(s) {', '.join(missing)}")
        unknown = sorted(set(inputs) - set(sig.inputs))
        raise invalid_argument(f"{where}: unknown input(s) {', '.join(unknown)}; it takes {', '.join(sig.inputs)}")
    batch = -1
    for name, spec in sig.inputs.items():
        array = inputs[name]
        spec.check(array, where)
        if array.ndim:
            if batch >= 0 and array.shape[0] != batch:
                raise invalid_argument(f"{where}: inputs have different batch sizes ({batch} and {array.shape[0]})")
            batch = array.shape[0]
    if batch == 0:
        raise invalid_argument(f"{where}: the request has no rows")


class DataPlane:
    """Runs validated requests on an executor; one instance per server."""

    def __init__(self, worker_threads: int = 4) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(worker_threads, thread_name_prefix="predict")

    def infer(
        self,
        servable: Servable,
        sig: Signature,
        inputs: dict[str, np.ndarray],
        method: str = "predict",
    ) -> asyncio.Future[Outputs]:
        validate_inputs(servable, sig, inputs)
        loop = asyncio.get_running_loop()
        servable.acquire()
        future: asyncio.Future[Outputs] = loop.run_in_executor(
            self.executor, servable.run, method, inputs, sig.name
        )
        future.add_done_callback(_releaser(servable))
        return future

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


def _releaser(servable: Servable) -> Callable[[asyncio.Future[Outputs]], None]:
    def release(_: asyncio.Future[Outputs]) -> None:
        servable.release()

    return release


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
