"""What every protocol adapter shares: the HTTP completion of a call and the gRPC error decorator.

An HTTP adapter answers a call with `answer_later(call, future, codec)`: one completion turns the future
into the protocol's response (`codec.encode`) or its error (`codec.error`), and a call past its deadline
into `codec.error(codec.timeout)`. A gRPC method decorated with `@grpc_errors` raises ServingError and the
client gets that status code and message; the decorator also answers the call's request id (trailing
metadata `x-request-id`) and writes its access log line; the method makes its `Call`s with `grpc_call`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from ..core.dataplane import Outputs, error_of
from ..core.pipeline import Call
from ..errors import Code, ServingError, invalid_argument
from ..ops.accesslog import GRPC_EXCHANGE, AccessLog, GrpcExchange, request_id_of
from ..transport.http import Deferred, Response


class RestCodec(Protocol):
    """How one protocol answers a call over HTTP."""

    def encode(self, call: Call, outputs: Outputs) -> Response: ...

    def error(self, error: ServingError) -> Response: ...

    def on_timeout(self) -> Response:
        """The answer to a call past its deadline."""


def answer_later(call: Call, future: asyncio.Future[Outputs], codec: RestCodec) -> Deferred:
    """The HTTP connection's pending answer to `call`."""
    call.codec = codec
    return Deferred(future, _answer, call, call.deadline, codec.on_timeout)


def _answer(future: asyncio.Future[Outputs], call: Call) -> Response:
    codec: RestCodec = call.codec
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


Servicer = TypeVar("Servicer")
#: The gRPC metadata keys by which ModelMesh names the model of an inference call (the `-bin` one binary).
MODEL_ID_KEYS = frozenset({"mm-model-id", "mm-model-id-bin"})
Method = Callable[[Servicer, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def grpc_errors(method: Method[Servicer]) -> Method[Servicer]:
    """A gRPC method whose ServingError becomes the call's status code and message, answered with its
    request id (an error always; a success when the client sent one) and written to the servicer's
    `access_log` (an attribute the server sets; None: off)."""

    @functools.wraps(method)
    async def guarded(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        sent = model_id = None
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id":
                sent = value
            elif key in MODEL_ID_KEYS:  # ModelMesh routes by id: it names the model, whatever the body says
                model_id = value.decode(errors="replace") if isinstance(value, bytes) else value
        rid = request_id_of(sent)
        trailing = (("x-request-id", rid),)
        if sent is not None:  # a success echoes only an id the client sent: trailing metadata costs grpc.aio
            context.set_trailing_metadata(trailing)  # 100-150 µs of CPU a call, a fifth of a batch-1 call's
        exchange = GrpcExchange(rid, context, model_id)
        token = GRPC_EXCHANGE.set(exchange)
        access_log: AccessLog | None = getattr(self, "access_log", None)
        started = time.perf_counter() if access_log is not None else 0.0
        code, response = "UNKNOWN", None  # what grpc answers a method that raised anything else
        try:
            response = await method(self, request, context)
            code = "OK"
            return response
        except ServingError as e:
            code = e.code.name
            await context.abort(grpc.StatusCode[code], e.message, trailing)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            GRPC_EXCHANGE.reset(token)
            if access_log is not None:
                service = getattr(self, "SERVICE", None)
                route = f"/{service.full_name}/{method.__name__}" if service is not None else method.__name__
                access_log.grpc(route, rid, context.peer(), exchange.call, code, started, request.ByteSize(),
                                response.ByteSize() if response is not None else 0)

    return guarded


def grpc_call(protocol: str, model: str, *args: Any, **kwargs: Any) -> Call:
    """A `Call(protocol, model, *args, **kwargs)` of the gRPC method running now (see grpc_errors): it gets
    the method's request id, the model its `mm-model-id` metadata names (ModelMesh) over `model`, and the
    access log line its model, version, signature and rows."""
    exchange = GRPC_EXCHANGE.get()
    if exchange is None:
        return Call(protocol, model, *args, request_id="", **kwargs)
    call = Call(protocol, exchange.model_id or model, *args, request_id=exchange.request_id, **kwargs)
    exchange.call = call
    call.carrier = exchange.context  # its metadata carries the caller's trace context
    return call


def routed_model(model: str) -> str:
    """The model a gRPC method running now is for: its `mm-model-id` metadata's, else `model`."""
    exchange = GRPC_EXCHANGE.get()
    return exchange.model_id or model if exchange is not None else model


def call_deadline(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """The call's deadline as a time.monotonic() instant: the client's, else `default_s` from now."""
    remaining = context.time_remaining()
    return time.monotonic() + (remaining if remaining is not None else default_s)


def spec_version(spec: Any) -> tuple[int | None, str | None]:
    """(version, label) a gRPC ModelSpec names; both None for the latest."""
    if not spec.name:
        raise invalid_argument("Missing ModelSpec")
    choice = spec.WhichOneof("version_choice")
    return (spec.version.value if choice == "version" else None,
            spec.version_label if choice == "version_label" else None)
