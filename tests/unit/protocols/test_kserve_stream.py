"""ModelStreamInfer's stream mechanics below the process boundary: an InferStream driven by a fake servicer
whose inferences the test completes, in the order it likes, and a fake grpc.aio context that collects the
answers (test_kserve_stream.py in tests/e2e keeps the real server and tritonclient)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from serving._proto.inference import grpc_predict_v2_pb2 as pb
from serving.errors import not_found
from serving.protocols.kserve import stream as stream_module
from serving.protocols.kserve.stream import InferStream
from serving.transport.rpc.decode import Undecodable
from tests.helpers import in_loop
from tests.unit.protocols.test_grpc_adapters import Aborted, FakeContext


class StreamContext(FakeContext):
    def __init__(self, metadata: tuple[tuple[str, Any], ...] = ()) -> None:
        super().__init__(metadata)
        self.written: list[Any] = []

    async def write(self, message: Any) -> None:
        self.written.append(message)


class Call:
    def __init__(self, request: Any) -> None:
        self.request = request


class Servicer:
    """Each message's inference is a future the test settles (`futures[id]`); model "nope" is refused."""

    access_log = None

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[Any]] = {}
        self.pipeline = self

    def infer_call(self, request: Any, exchange: Any) -> Any:
        exchange.call = Call(request)
        return exchange.call

    def infer(self, call: Call) -> asyncio.Future[Any]:
        if call.request.model_name == "nope":
            raise not_found("Servable not found for request: Latest(nope)")
        future = self.futures[call.request.id] = asyncio.get_running_loop().create_future()
        return future

    def fill_answer(self, response: Any, call: Call, request: Any, outputs: Any) -> None:
        response.id, response.model_name = request.id, request.model_name
        response.raw_output_contents.append(outputs)


class Client:
    """The client's side of the stream: messages sent, half-close (None)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def send(self, request_id: str, model: str = "m") -> None:
        self.queue.put_nowait(pb.ModelInferRequest(id=request_id, model_name=model))

    async def requests(self) -> Any:
        while (message := await self.queue.get()) is not None:
            yield message


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def ids(context: StreamContext) -> list[tuple[str, str]]:
    return [(m.infer_response.id, m.error_message) for m in context.written]


def start(servicer: Servicer, client: Client, context: StreamContext) -> asyncio.Task[None]:
    return asyncio.ensure_future(InferStream(servicer, context).serve(client.requests()))


@in_loop
async def test_every_message_is_queued_as_it_comes_and_answered_in_the_order_it_came():
    servicer, client, context = Servicer(), Client(), StreamContext()
    task = start(servicer, client, context)
    for i in range(3):
        client.send(f"m{i}")
    await settle()
    assert sorted(servicer.futures) == ["m0", "m1", "m2"] and context.written == []  # all in flight at once
    servicer.futures["m2"].set_result(b"2")
    servicer.futures["m1"].set_result(b"1")
    await settle()
    assert context.written == []  # m0 comes first
    servicer.futures["m0"].set_result(b"0")
    await settle()
    assert ids(context) == [("m0", ""), ("m1", ""), ("m2", "")]
    assert [m.infer_response.raw_output_contents[0] for m in context.written] == [b"0", b"1", b"2"]
    assert all(m.infer_response.parameters["triton_final_response"].bool_param for m in context.written)
    client.queue.put_nowait(None)
    await asyncio.wait_for(task, 1)


@in_loop
async def test_an_error_is_an_answer_with_the_requests_id_and_the_stream_goes_on():
    servicer, client, context = Servicer(), Client(), StreamContext()
    task = start(servicer, client, context)
    client.send("refused", "nope")
    client.send("failed")
    client.send("ok")
    await settle()
    servicer.futures["failed"].set_exception(ValueError("boom"))
    servicer.futures["ok"].set_result(b"ok")
    client.queue.put_nowait(None)
    await asyncio.wait_for(task, 1)
    assert ids(context) == [("refused", "Servable not found for request: Latest(nope)"),
                            ("failed", "ValueError: boom"), ("ok", "")]
    assert context.written[0].infer_response.model_name == "nope" and not context.written[0].infer_response.outputs


@in_loop
async def test_a_half_close_ends_the_stream_once_the_answers_in_flight_are_written():
    servicer, client, context = Servicer(), Client(), StreamContext()
    task = start(servicer, client, context)
    client.send("a")
    client.queue.put_nowait(None)
    await settle()
    assert not task.done()
    servicer.futures["a"].set_result(b"a")
    await asyncio.wait_for(task, 1)
    assert ids(context) == [("a", "")] and context.aborted is None


@in_loop
async def test_a_cancelled_stream_cancels_its_inferences_in_flight():
    servicer, client, context = Servicer(), Client(), StreamContext()
    task = start(servicer, client, context)
    client.send("a")
    client.send("b")
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(f.cancelled() for f in servicer.futures.values()) and context.written == []


@in_loop
async def test_a_message_that_does_not_decode_ends_the_stream_after_the_answers_before_it():
    servicer, client, context = Servicer(), Client(), StreamContext((("x-request-id", "rid-1"),))
    task = start(servicer, client, context)
    client.send("a")
    client.queue.put_nowait(Undecodable("cannot decode the inference.ModelInferRequest message (4 bytes): x"))
    client.send("never read")
    await settle()
    servicer.futures["a"].set_result(b"a")
    with pytest.raises(Aborted):
        await asyncio.wait_for(task, 1)
    assert ids(context) == [("a", "")] and list(servicer.futures) == ["a"]
    assert context.aborted == (grpc.StatusCode.INVALID_ARGUMENT,
                               "cannot decode the inference.ModelInferRequest message (4 bytes): x",
                               (("x-request-id", "rid-1"),))


@in_loop
async def test_past_max_in_flight_unanswered_messages_the_stream_stops_reading(monkeypatch):
    monkeypatch.setattr(stream_module, "MAX_IN_FLIGHT", 2)
    servicer, client, context = Servicer(), Client(), StreamContext()
    task = start(servicer, client, context)
    for name in "abc":
        client.send(name)
    await settle()
    assert list(servicer.futures) == ["a", "b"] and client.queue.qsize() == 1  # "c" waits, unread
    servicer.futures["a"].set_result(b"a")
    await settle()
    assert list(servicer.futures) == ["a", "b", "c"]
    servicer.futures["b"].set_result(b"b")
    servicer.futures["c"].set_result(b"c")
    client.queue.put_nowait(None)
    await asyncio.wait_for(task, 1)
    assert ids(context) == [("a", ""), ("b", ""), ("c", "")]
