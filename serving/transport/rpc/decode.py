"""Registering our gRPC services so that a request that does not decode is the client's error.

grpc's generated `add_*Servicer_to_server` decodes each request with `Message.FromString`; when that
raises, grpc logs a full traceback and answers UNKNOWN, so a client sending garbage fills the log. We
register the same methods ourselves, from the service descriptor, with a deserializer that hands a bad
message to the handler as an `Undecodable`, and a handler that answers it INVALID_ARGUMENT with one line
(logged at DEBUG only). Why not an interceptor: it would run a coroutine for every call to pick a handler;
this costs nothing until a message fails to decode. grpc.health.v1 is registered the same way (`add_health`):
garbage sent to a health check is the prober's error too. A method that reads a stream of messages
(KServe's ModelStreamInfer) is handed them as they come, a message that does not decode as an
`Undecodable`: the method answers it (INVALID_ARGUMENT too, once the messages before it are answered).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import ServiceDescriptor

log = logging.getLogger(__name__)

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class Undecodable:
    """What a request that does not decode becomes: the one-line reason the client will read."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def add_services(server: grpc.aio.Server, *servicers: Any) -> None:
    """Register each servicer (its class names its `SERVICE` descriptor) for every method of that service."""
    for servicer in servicers:
        _register(server, servicer, servicer.SERVICE)


def add_health(server: grpc.aio.Server, servicer: Any) -> None:
    """Register grpc.health.v1's servicer (Check, and Watch, which streams) as add_services does ours."""
    from grpc_health.v1 import health_pb2

    _register(server, servicer, health_pb2.DESCRIPTOR.services_by_name["Health"])


def _register(server: grpc.aio.Server, servicer: Any, service: ServiceDescriptor) -> None:
    handlers = {m.name: _method_handler(getattr(servicer, m.name), m) for m in service.methods
                if hasattr(servicer, m.name)}
    # The same two registrations the generated add_*Servicer_to_server makes.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _method_handler(behavior: Handler, method: Any) -> grpc.RpcMethodHandler:
    if not inspect.iscoroutinefunction(behavior):
        raise TypeError(f"{method.full_name}: the servicer method must be async")
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    # A streaming method writes its answers with context.write(): the same coroutine shape.
    kind = _KINDS[method.client_streaming, method.server_streaming]
    return kind(
        # A method reading a stream is handed the messages' iterator: it answers an Undecodable itself.
        behavior if method.client_streaming else _refusing_undecodable(behavior),
        request_deserializer=_tolerant_decoder(request),
        response_serializer=response.SerializeToString,
    )


#: (client streaming, server streaming) -> grpc's handler for that kind of method.
_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _tolerant_decoder(cls: Any) -> Callable[[bytes], Any]:
    from_string, name = cls.FromString, cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return from_string(data)
        except message.DecodeError as e:
            return Undecodable(f"cannot decode the {name} message ({len(data)} bytes): {e}")

    return decode


def _refusing_undecodable(behavior: Handler) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.__class__ is Undecodable:
            log.debug("%s: %s", context.peer(), request.reason)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await behavior(request, context)

    return handle
