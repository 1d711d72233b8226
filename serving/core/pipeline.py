"""The request pipeline: every protocol's inference request is one `Call` through one shared step.

A protocol adapter (serving/protocols/<protocol>/) decodes what it can without the model (the route)
into a `Call`: the model and its version or label, a `decode` that turns the request into the
signature and named input arrays once the servable is known, the wanted outputs, the deadline, the
request id and the adapter's own state of the call (`Call.context`: a small class per protocol, the type
`S` of a `Call[S]`). `Pipeline.infer(call)` is the shared step: it resolves the
servable, refuses at once when its batch queues are full (before the body is decoded), decodes, checks
the wanted outputs against the signature, applies the rate limit and the deadline, and queues (or runs)
the call through the data plane; the adapter gets a future of the outputs.

Cross-cutting work attaches through observers: the server's (`Pipeline.observe`: metrics, tracing), and
those a model's config asks for (`Servable.observers`: its request log, its shadow; chosen when the config
is applied, so a model without them pays nothing for them). `finished(call, error, timings)` is told once
its outputs or its error are ready, with the queue wait, the compute time and the total, on the next turn
of the event loop: the answer is handed to the transport first. An observer that defines `received(call)`
is told once the call is decoded (with `call.rows` counted once for all). With no observer attached the
step reads no clock and adds no callback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import numpy as np

from ..errors import ServingError, internal, invalid_argument
from .dataplane import DataPlane, Outputs, error_of
from .repository import ModelManager
from .servable import Servable
from .signature import Signature

log = logging.getLogger(__name__)

Inputs = dict[str, np.ndarray]
#: The adapter's state of a call: what its decode reads and what the answer needs (see the adapters).
S = TypeVar("S")
C = TypeVar("C")
#: (call, servable) -> (signature, inputs); may keep what the answer needs in the call's state.
Decode = Callable[["Call[S]", Servable], tuple[Signature, Inputs]]


def unknown_output(call: Call, name: str) -> ServingError:
    """TF Serving's answer to an output filter naming an output the signature lacks."""
    assert call.signature is not None
    return invalid_argument(f"output tensor alias not found in signature: {name} Outputs expected to be in the set "
                            f"{{{','.join(call.signature.outputs)}}}.")


class TaskGroup:
    """The calls of one MultiInference: each task's (verb, signature, outputs) as it finishes; the request
    log writes one record when the last one did, none if any failed."""

    def __init__(self, tasks: int) -> None:
        self.results: list[tuple[str, str, Any] | None] = [None] * tasks
        self.left = tasks
        self.failed = False


class Call(Generic[S]):
    """One inference call, protocol-neutral. The adapter fills the first part; the pipeline the rest.
    `context` is the adapter's state of the call (`S`: its own class, which its decode and its answer read
    and fill in; the pipeline never looks at it).

    No __slots__: what is set on every call is set in __init__, and what most calls never set (the
    observers' clocks, the adapter's codec) reads the class defaults, which costs nothing per call."""

    servable: Servable | None = None  # resolved by the pipeline
    signature: Signature | None = None  # decoded
    inputs: Inputs | None = None  # decoded
    codec: Any = None  # the adapter's answer codec (answer_later)
    received = dispatched = computed = 0.0  # time.perf_counter(), set only while observers watch
    rows: int | None = None  # the request's rows, counted once it decoded, while observers watch
    result: Outputs | None = None  # its outputs, once finished, while observers watch (the request log)
    logged = False  # the request log wrote it (a shadow's answer is then logged beside it)
    task: Any = None  # (TaskGroup, index): one task of a MultiInference, logged with its siblings as one record
    observers: Sequence[Observer] = ()

    def __init__(self, protocol: str, model: str, version: int | None, label: str | None, decode: Decode[S],
                 deadline: float, *, outputs: Sequence[str] = (), method: str = "predict", request_id: str = "",
                 unknown_output: Callable[[Call[Any], str], ServingError] = unknown_output,
                 context: S = None,  # type: ignore[assignment] # None: a decode that reads no state (tests')
                 carrier: Any = None) -> None:
        self.protocol, self.model, self.version, self.label = protocol, model, version, label
        self.decode, self.deadline, self.outputs, self.method = decode, deadline, outputs, method
        self.request_id, self.unknown_output, self.context = request_id, unknown_output, context
        self.carrier = carrier  # what carries the caller's trace context: HTTP headers, or the gRPC context

    def finished(self, future: asyncio.Future[Outputs]) -> None:
        """Its outputs or error are ready (the batch queue or the executor says so): tell the observers."""
        if self.dispatched and not self.computed:  # the executor's path: done now
            self.computed = time.perf_counter()
        error = error_of(future)
        if error is None:
            self.result = future.result()
        notify(self, error, future.get_loop())

    def output_names(self) -> list[str]:
        """The outputs to answer: the wanted ones, else every output of the signature."""
        assert self.signature is not None
        return list(self.outputs) or list(self.signature.outputs)


class Timings(NamedTuple):
    """Seconds a finished call spent waiting in its batch queue, computing, and in all."""

    queue: float
    compute: float
    total: float


class Observer(Protocol):
    """What watches the pipeline. It may also define `received(call)`, called once the call decoded; most
    observers need only `finished`, and the step calls no empty hook for them."""

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None: ...


class ModelObserver(Generic[C]):
    """The observer of one model whose config asks for a feature (its request log, its shadow): the
    feature's `observe(call, error, config)` with the model's part of the config bound once, when the config
    is applied (ModelManager.observers_for)."""

    __slots__ = ("observe", "config")

    def __init__(self, observe: Callable[[Call[Any], ServingError | None, C], None], config: C) -> None:
        self.observe, self.config = observe, config

    def finished(self, call: Call[Any], error: ServingError | None, timings: Timings) -> None:
        self.observe(call, error, self.config)


def rows_of(inputs: Inputs) -> int:
    """A request's rows: the first batched input's dim 0 (1 when every input is a scalar)."""
    for array in inputs.values():
        if array.ndim:
            return int(array.shape[0])
    return 1


class Pipeline:
    """The shared step of every inference request; one per server."""

    def __init__(self, manager: ModelManager, dataplane: DataPlane) -> None:
        self.manager, self.dataplane = manager, dataplane
        self.observers: list[Observer] = []
        self.receivers: list[Callable[[Call], None]] = []  # the observers' `received`, where they have one
        #: Whether every observer is content with what an express lane tells it (serving/protocols/express.py:
        #: `finished` with the connection's slot as the call): the request metrics are; tracing is not.
        self.express_observers = True
        self.metrics_only = False

    def observe(self, observer: Observer) -> None:
        self.observers.append(observer)
        received = getattr(observer, "received", None)
        if received is not None:
            self.receivers.append(received)
        self.express_observers = self.express_observers and getattr(observer, "express", False) and received is None
        #: Whether the request metrics are the one observer (an express lane then writes their record itself).
        self.metrics_only = len(self.observers) == 1 and getattr(observer, "express", False) == "record"

    def infer(self, call: Call) -> asyncio.Future[Outputs]:
        """Resolve, decode, check and queue `call`; a ServingError for what fails before it is queued.
        Observed, the call is told when it is finished by what completes it (no callback of its own)."""
        if not self.observers:
            return self._infer(call)
        call.received = time.perf_counter()
        call.observers = self.observers
        try:
            return self._infer(call)
        except ServingError as e:
            notify(call, e)
            raise
        except Exception as e:  # a decoder's bug: the front end answers 500; observers still see the call
            notify(call, internal(f"{type(e).__name__}: {e}"))
            raise

    def _infer(self, call: Call) -> asyncio.Future[Outputs]:
        servable = call.servable = self.manager.get(call.model, call.version, call.label, call.carrier)
        if call.method == "predict" and (refused := servable.refusal()) is not None:
            raise refused
        if servable.observers and self.observers:
            call.observers = (*self.observers, *servable.observers)
        sig, inputs = call.decode(call, servable)
        call.signature, call.inputs = sig, inputs
        for name in call.outputs:
            if name not in sig.outputs:
                raise call.unknown_output(call, name)
        if self.observers:
            call.rows = rows_of(inputs)
            for received in self.receivers:
                received(call)
            timing: Call | None = call
        else:
            timing = None
        return self.dataplane.infer(servable, sig, inputs, call.deadline, call.method, timing=timing)


    def submit_decoded(self, call: Call, servable: Servable, sig: Signature, inputs: Inputs, rows: int,
                       received: float) -> asyncio.Future[Outputs]:
        """`infer` for a predict call its adapter resolved, decoded and checked itself against `servable.lane`
        (a lane: the common request of a protocol, e.g. serving/protocols/tfserving/rest.py): the same observers,
        told the same things, and the same batch queue; the adapter takes it only while `lanes` holds.
        `received` is the perf_counter() when the adapter began on it."""
        call.servable, call.signature, call.inputs = servable, sig, inputs
        queue = servable.lane[2]  # type: ignore[index]
        if not self.observers:
            return queue.submit(inputs, call.deadline)
        call.received, call.rows = received, rows
        call.observers = (*self.observers, *servable.observers) if servable.observers else self.observers
        for hook in self.receivers:
            hook(call)
        try:
            return queue.submit(inputs, call.deadline, call)
        except ServingError as e:  # the queue is full
            notify(call, e)
            raise

    @property
    def express(self) -> bool:
        """Whether express lanes may take calls: lanes may, and every observer is content with them."""
        return self.express_observers and self.dataplane.limiter is None

    @property
    def lanes(self) -> bool:
        """Whether adapters may take their lanes: no rate limit to apply (the data plane's)."""
        return self.dataplane.limiter is None


def notify(call: Call, error: ServingError | None, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Tell the call's observers it is finished, with its timings as of now, on the loop's next turn: what
    answers the call (a future's callback, the adapter's raise) goes first. The calls finished in one turn
    (a batch's) are told in one callback, not one each."""
    end = time.perf_counter()
    if call.dispatched:  # it reached a batch (or a worker)
        timings = Timings(call.dispatched - call.received, (call.computed or end) - call.dispatched,
                          end - call.received)
    else:
        timings = Timings(0.0, 0.0, end - call.received)
    _NOTICES.append((call, error, timings))
    loop = loop or asyncio.get_running_loop()
    if _TELLING[0] is not loop:  # the first of this turn: one callback tells them all
        _TELLING[0] = loop
        loop.call_soon(_tell)


#: The finished calls whose observers are told on the loop's next turn (the loop's thread appends, `_tell`
#: empties; one list for the process: one event loop serves its calls), and the loop that will tell them
#: (None: none scheduled; another loop, e.g. a test's closed one: schedule again).
_NOTICES: list[tuple[Call, ServingError | None, Timings]] = []
_TELLING: list[asyncio.AbstractEventLoop | None] = [None]


def _tell() -> None:
    _TELLING[0] = None
    notices = _NOTICES[:]
    _NOTICES.clear()
    for call, error, timings in notices:
        try:
            for observer in call.observers:
                observer.finished(call, error, timings)
        except Exception:  # an observer's bug costs its own record, not the other calls' (free when none raises)
            log.exception("an observer of a %s call failed", call.protocol)
