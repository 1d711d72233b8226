"""gRPC server interceptors: the token check (every service but grpc.health.v1; the admin token on control calls)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ...errors import ServingError
from ...ops.accesslog import AccessLog, request_id_of
from ..auth import TokenAuth

OPEN_SERVICES = ("/grpc.health.v1.Health/",)
#: The methods that load, unload or reconfigure models: they take the admin token when one is set.
CONTROL_METHODS = frozenset({
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
})
#: Services all of whose methods control (ModelMesh's runtime API: even runtimeStatus unloads every model).
CONTROL_SERVICES = ("/mmesh.ModelRuntime/",)


def is_control(method: str) -> bool:
    return method in CONTROL_METHODS or method.startswith(CONTROL_SERVICES)


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every call but health needs `auth`'s token; a control call (is_control) the `admin` token instead
    when there is one. None for either: those calls are open."""

    def __init__(self, auth: TokenAuth | None, access_log: AccessLog | None = None,
                 admin: TokenAuth | None = None) -> None:
        self.auth, self.access_log, self.admin = auth, access_log, admin

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(details)
        auth = self.admin if self.admin is not None and is_control(method) else self.auth
        if auth is None:
            return await continuation(details)
        token = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        try:
            auth.check(token.encode() if isinstance(token, str) else token)
        except ServingError as e:
            handler = await continuation(details)  # only to learn whether the client sends a stream
            return _refuse(e.message, details, self.access_log, handler is not None and handler.request_streaming)
        return await continuation(details)


def _refuse(message: str, details: grpc.HandlerCallDetails, access_log: AccessLog | None,
            streaming: bool = False) -> grpc.RpcMethodHandler:
    """A handler answering UNAUTHENTICATED, with the call's request id, and its access log line. For a method
    the client streams to (ModelStreamInfer) it answers at once, without waiting for a message: a unary
    handler would wait for one, and a client that sends none would hang until its deadline."""
    rid = request_id_of(next((v for k, v in details.invocation_metadata or () if k == "x-request-id"), None))

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        if access_log is not None:
            size = len(request) if isinstance(request, bytes) else 0  # no deserializer: the raw message
            access_log.grpc(details.method, rid, context.peer(), None, "UNAUTHENTICATED", time.perf_counter(),
                            size, 0)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message, (("x-request-id", rid),))

    return (grpc.stream_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler)(abort)
