"""What every protocol adapter shares: the HTTP completion of a call and the gRPC error decorator.

An HTTP adapter answers a call with `answer_later(call, future, codec)`: one completion turns the future
into the protocol's response (`codec.encode`) or its error (`codec.error`), and a call past its deadline
into `codec.error(codec.timeout)`. A gRPC method decorated with `@grpc_errors` raises ServingError and the
client gets that status code and message.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from ..dataplane import Outputs, error_of
from ..errors import ServingError, invalid_argument
from ..http.protocol import Deferred, Response
from ..pipeline import Call


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
            return codec.encode(call, future.result())
        except ServingError as e:
            error = e
    return codec.error(error)


Servicer = TypeVar("Servicer")
Method = Callable[[Servicer, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def grpc_errors(method: Method[Servicer]) -> Method[Servicer]:
    """A gRPC method whose ServingError becomes the call's status code and message."""

    @functools.wraps(method)
    async def guarded(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except ServingError as e:
            await context.abort(grpc.StatusCode[e.code.name], e.message)

    return guarded


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
