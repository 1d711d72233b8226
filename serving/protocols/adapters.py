"""What every protocol adapter shares: the HTTP completion of a call and the gRPC error decorator.

An HTTP adapter answers a call with `answer_later(call, future, codec)`: one completion turns the future
into the protocol's response (`codec.encode`) or its error (`codec.error`), and a call past its deadline
into `codec.error(codec.timeout)`. A gRPC method decorated with `@grpc_errors` is handed its call's
`GrpcExchange` (the grpc.aio context, the request id, the model ModelMesh names) where grpc.aio passes the
context; it raises ServingError and the client gets that status code and message; the decorator also
answers the call's request id (trailing metadata `x-request-id`) and writes its access log line; the
method makes its `Call`s with `grpc_call(exchange, ...)`, which gives them the request id.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc

from ..core.dataplane import Outputs, error_of
from ..core.pipeline import Call, Decode, S, unknown_output
from ..errors import Code, ServingError, invalid_argument
from ..ops.accesslog import GRPC_REQUEST_ID, AccessLog, request_id_of
from ..transport.http import Deferred, Response


class RestCodec(Protocol[S]):
    """How one protocol answers a call over HTTP (its calls' state is an `S`)."""

    def encode(self, call: Call[S], outputs: Outputs) -> Response: ...

    def error(self, error: ServingError) -> Response: ...

    def on_timeout(self) -> Response:
        """The answer to a call past its deadline."""


def answer_later(call: Call[S], future: asyncio.Future[Outputs], codec: RestCodec[S]) -> Deferred:
    """The HTTP connection's pending answer to `call`."""
    call.codec = codec
    return Deferred(future, _answer, call, call.deadline, codec.on_timeout)


def _answer(future: asyncio.Future[Outputs], call: Call[Any]) -> Response:
    codec: RestCodec[Any] = call.codec
    error = error_of(future)
    if error is None:
        try:
            response = codec.encode(call, future.result())
        except ServingError as e:
            error = e
    if error is not None:
        response = codec.error(error)
    if call.servable is not None:  # which version answered (a traffic split may have picked it)
        response.headers += call.servable.version_header
    return response


def answer_when(awaitable: Awaitable[Any], ok: Callable[[Any], Response], error: Callable[[ServingError], Response],
                timeout_s: float, timeout_message: str = "the other workers did not answer in time") -> Deferred:
    """The HTTP answer to a request whose result takes a coroutine that is not an inference call (what the
    sibling workers say, under a supervisor; a model load): `ok(result)`, or `error(...)` of its failure or
    time-out."""

    def finish(future: asyncio.Future[Any], _: Any) -> Response:
        failure = error_of(future)
        return ok(future.result()) if failure is None else error(failure)

    def on_timeout() -> Response:
        return error(ServingError(Code.DEADLINE_EXCEEDED, timeout_message))

    return Deferred(asyncio.ensure_future(awaitable), finish, None, time.monotonic() + timeout_s, on_timeout)


class GrpcExchange:
    """One gRPC call as its method sees it: the grpc.aio context, the request id, the model ModelMesh names
    (its `mm-model-id` metadata), and the method's (last) Call, for the access log line."""

    __slots__ = ("context", "request_id", "model_id", "call")

    def __init__(self, context: grpc.aio.ServicerContext, request_id: str, model_id: str | None = None) -> None:
        self.context, self.request_id, self.model_id = context, request_id, model_id
        self.call: Call[Any] | None = None

    def model(self, name: str) -> str:
        """The model the call is for: the one ModelMesh names, else `name` (the request's)."""
        return self.model_id or name

    def deadline(self, default_s: float) -> float:
        """The call's deadline as a time.monotonic() instant: the client's, else `default_s` from now."""
        remaining = self.context.time_remaining()
        return time.monotonic() + (remaining if remaining is not None else default_s)


#: The gRPC metadata keys by which ModelMesh names the model of an inference call (the `-bin` one binary).
MODEL_ID_KEYS = frozenset({"mm-model-id", "mm-model-id-bin"})


def open_exchange(context: grpc.aio.ServicerContext) -> GrpcExchange:
    """The exchange of the gRPC call `context` is of: the client's `x-request-id` (echoed in the trailing
    metadata) else a new one, and the model its `mm-model-id` metadata names (ModelMesh routes by id: the
    id names the model, whatever the body says)."""
    sent = model_id = None
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            sent = value
        elif key in MODEL_ID_KEYS:
            model_id = value.decode(errors="replace") if isinstance(value, bytes) else value
    exchange = GrpcExchange(context, request_id_of(sent), model_id)
    if sent is not None:  # a success echoes only an id the client sent: trailing metadata costs grpc.aio
        # 100-150 µs of CPU a call, a fifth of a batch-1 call's
        context.set_trailing_metadata((("x-request-id", exchange.request_id),))
    return exchange


Servicer = TypeVar("Servicer")
#: A servicer method as its adapter writes it: handed its call's exchange where grpc.aio passes the context.
Method = Callable[[Servicer, Any, GrpcExchange], Awaitable[Any]]
#: The same method as grpc.aio calls it.
GrpcMethod = Callable[[Servicer, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def grpc_errors(method: Method[Servicer]) -> GrpcMethod[Servicer]:
    """The gRPC method of `method`: handed its call's GrpcExchange; its ServingError becomes the call's status
    code and message, answered with its request id (an error always; a success when the client sent one);
    and the call is written to the servicer's `access_log` (an attribute the server sets; None: off) when the
    log selects it (a failure, a slow call, the sample)."""

    @functools.wraps(method)
    async def guarded(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        exchange = open_exchange(context)
        token = GRPC_REQUEST_ID.set(exchange.request_id)  # for the log records written meanwhile only
        access_log: AccessLog | None = getattr(self, "access_log", None)
        started = time.perf_counter() if access_log is not None else 0.0
        code, response = "UNKNOWN", None  # what grpc answers a method that raised anything else
        try:
            response = await method(self, request, exchange)
            code = "OK"
            return response
        except ServingError as e:
            code = e.code.name
            await context.abort(grpc.StatusCode[code], e.message, (("x-request-id", exchange.request_id),))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            GRPC_REQUEST_ID.reset(token)
            if access_log is not None and access_log.selects(code != "OK", time.perf_counter() - started):
                access_log.grpc(_route(self, method.__name__), exchange.request_id, context.peer(), exchange.call,
                                code, started, request.ByteSize(), response.ByteSize() if response is not None else 0)

    return guarded


def _route(servicer: Any, name: str) -> str:
    """The access log's route of a method: `/<service>/<method>` as gRPC names it."""
    service = getattr(servicer, "SERVICE", None)
    return f"/{service.full_name}/{name}" if service is not None else name


def grpc_call(exchange: GrpcExchange, protocol: str, model: str, version: int | None, label: str | None,
              decode: Decode[S], deadline: float, context: S, *, outputs: Sequence[str] = (),
              method: str = "predict",
              unknown_output: Callable[[Call[Any], str], ServingError] = unknown_output) -> Call[S]:
    """A `Call` of the gRPC call of `exchange` (the `Call` arguments otherwise): it gets the exchange's
    request id, the model its `mm-model-id` metadata names (ModelMesh) over `model`, its metadata as the
    carrier of the caller's trace context; and the access log line gets its model, version, signature, rows."""
    call = Call(protocol, exchange.model(model), version, label, decode, deadline, outputs=outputs, method=method,
                request_id=exchange.request_id, unknown_output=unknown_output, context=context,
                carrier=exchange.context)
    exchange.call = call
    return call


def spec_version(spec: Any) -> tuple[int | None, str | None]:
    """(version, label) a gRPC ModelSpec names; both None for the latest."""
    if not spec.name:
        raise invalid_argument("Missing ModelSpec")
    choice = spec.WhichOneof("version_choice")
    return (spec.version.value if choice == "version" else None,
            spec.version_label if choice == "version_label" else None)
