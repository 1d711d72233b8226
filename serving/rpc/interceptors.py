"""gRPC server interceptors: the token check (every service but grpc.health.v1)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..accesslog import AccessLog, request_id_of
from ..errors import ServingError
from ..protocols.cloud.auth import TokenAuth

OPEN_SERVICES = ("/grpc.health.v1.Health/",)


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, auth: TokenAuth, access_log: AccessLog | None = None) -> None:
        self.auth, self.access_log = auth, access_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_SERVICES):
            return await continuation(details)
        token = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        try:
            self.auth.check(token.encode() if isinstance(token, str) else token)
        except ServingError as e:
            return _refuse(e.message, details, self.access_log)
        return await continuation(details)


def _refuse(message: str, details: grpc.HandlerCallDetails, access_log: AccessLog | None) -> grpc.RpcMethodHandler:
    """A handler answering UNAUTHENTICATED, with the call's request id, and its access log line."""
    rid = request_id_of(next((v for k, v in details.invocation_metadata or () if k == "x-request-id"), None))

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        if access_log is not None:
            size = len(request) if isinstance(request, bytes) else 0  # no deserializer: the raw message
            access_log.grpc(details.method, rid, context.peer(), None, "UNAUTHENTICATED", time.perf_counter(),
                            size, 0)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message, (("x-request-id", rid),))

    return grpc.unary_unary_rpc_method_handler(abort)
