"""The gRPC error decorator below the process boundary: a `@grpc_errors` method called as grpc.aio calls it,
with a fake ServicerContext; the request id and ModelMesh's model id reach the method's `Call` through the
exchange it is handed (test_grpc.py and test_access_log.py keep the real-server tests)."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from serving.core.pipeline import Call
from serving.errors import not_found
from serving.ops.accesslog import RequestIdFilter
from serving.protocols.adapters import GrpcExchange, grpc_call, grpc_errors
from tests.helpers import in_loop


class Aborted(Exception):
    """What grpc.aio's context.abort raises to end the method."""


class FakeContext:
    """What a servicer method sees of a gRPC call: its metadata, its deadline, and what it answers."""

    def __init__(self, metadata: tuple[tuple[str, Any], ...] = ()) -> None:
        self.metadata = metadata
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.aborted: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self.metadata

    def set_trailing_metadata(self, trailing: tuple[tuple[str, str], ...]) -> None:
        self.trailing = trailing

    def time_remaining(self) -> float | None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    async def abort(self, code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, str], ...]) -> None:
        self.aborted = (code, message, trailing)
        raise Aborted


class Servicer:
    """One inference method that answers its Call, and one that fails; each logs a line while it runs."""

    access_log = None

    @grpc_errors
    async def Infer(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802 - gRPC's name
        logging.getLogger("test.grpc").info("inferring")
        return grpc_call(exchange, "test_grpc", request, None, None, lambda call, servable: ({}, {}),
                         exchange.deadline(5.0), request)

    @grpc_errors
    async def Fail(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        raise not_found(f"no model {request}")


@in_loop
async def test_the_call_of_a_grpc_method_carries_the_clients_request_id_which_is_echoed():
    context = FakeContext((("x-request-id", "rid-7"),))
    call: Call[str] = await Servicer().Infer("m", context)
    assert (call.request_id, call.model, call.context, call.carrier) == ("rid-7", "m", "m", context)
    assert context.trailing == (("x-request-id", "rid-7"),)


@in_loop
async def test_a_call_without_a_request_id_gets_a_new_one_which_a_success_does_not_echo():
    context = FakeContext()
    call: Call[str] = await Servicer().Infer("m", context)
    assert len(call.request_id) == 20 and context.trailing == ()


@pytest.mark.parametrize("key, value", [("mm-model-id", "mesh-1"), ("mm-model-id-bin", b"mesh-1")])
@in_loop
async def test_the_model_modelmesh_names_in_the_metadata_wins_over_the_requests(key: str, value: Any):
    call: Call[str] = await Servicer().Infer("body-model", FakeContext(((key, value),)))
    assert call.model == "mesh-1"


@in_loop
async def test_a_serving_error_aborts_with_its_code_its_message_and_the_request_id():
    context = FakeContext()
    with pytest.raises(Aborted):
        await Servicer().Fail("m", context)
    assert context.aborted is not None
    code, message, trailing = context.aborted
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "no model m")
    assert trailing[0][0] == "x-request-id" and len(trailing[0][1]) == 20


@in_loop
async def test_log_lines_written_while_a_method_runs_carry_its_request_id(caplog: pytest.LogCaptureFixture):
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="test.grpc"):
        await Servicer().Infer("m", FakeContext((("x-request-id", "rid-9"),)))
        logging.getLogger("test.grpc").info("after the call")
    assert [(r.getMessage(), getattr(r, "request_id", None)) for r in caplog.records] == [
        ("inferring", "rid-9"), ("after the call", None)]
