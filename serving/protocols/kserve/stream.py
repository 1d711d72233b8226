"""Triton's streaming inference, `ModelStreamInfer` (bidirectional): what tritonclient's `start_stream` /
`async_stream_infer` and `perf_analyzer --streaming` speak.

Each request message is one inference, made into a `Call` and answered exactly as a unary ModelInfer (the
servicer's `infer_call` and `fill_answer`): the same decoding, errors, deadline, stats record and access
log line (route `/inference.GRPCInferenceService/ModelStreamInfer`). The stream is one gRPC call with one
request id (the client's `x-request-id`, else a new one), which every message's Call and log line carry,
as the messages' Calls carry the model its `mm-model-id` names (ModelMesh). Its answer is one
ModelStreamInferResponse: `infer_response` echoing the request's `id`, or on an error `error_message` with
only the id, model name and version in `infer_response` (as Triton answers), and the stream goes on.

Each message goes into the batch queue as it is read (a reader task per stream), so the messages in flight
on one stream batch together; the answers are written in the order the messages came (Triton's order for a
model that is not decoupled). A client's half-close ends the stream once the answers in flight are written;
a client's cancel (or the stream's deadline) cancels the inferences in flight. A message that does not
decode ends the stream INVALID_ARGUMENT, after the answers to the messages before it (which message was
that is unknown: it has no id, and the stream's framing is no longer trusted). Past MAX_IN_FLIGHT
messages unanswered the stream stops reading until answers are written: HTTP/2 flow control then holds
back a client that sends without reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from ..._proto.inference import grpc_predict_v2_pb2 as pb
from ...core.dataplane import Outputs, error_of
from ...core.pipeline import Call, Pipeline
from ...errors import ServingError, encodable, internal
from ...ops.accesslog import GRPC_REQUEST_ID, AccessLog
from ...transport.rpc.decode import Undecodable
from ..adapters import GrpcExchange, open_exchange

log = logging.getLogger(__name__)

ROUTE = "/inference.GRPCInferenceService/ModelStreamInfer"
#: Messages of one stream read and not yet answered past which it stops reading until answers are written.
MAX_IN_FLIGHT = 1024
_clock = time.perf_counter


class Inferer(Protocol):
    """What a stream needs of its servicer: the unary ModelInfer's own steps."""

    pipeline: Pipeline

    def infer_call(self, request: Any, exchange: GrpcExchange) -> Call[Any]: ...

    def fill_answer(self, response: Any, call: Call[Any], request: Any, outputs: Outputs) -> None: ...


class _Message:
    """One request message: its exchange (request id, Call), then its future or the error that refused it."""

    __slots__ = ("request", "exchange", "started", "future", "error")

    def __init__(self, request: Any, exchange: GrpcExchange, started: float) -> None:
        self.request, self.exchange, self.started = request, exchange, started
        self.future: asyncio.Future[Outputs] | None = None
        self.error: ServingError | None = None


class InferStream:
    """One ModelStreamInfer call: `serve(requests)` reads and starts the messages in a task of its own and
    writes their answers, in order, in the call's task."""

    def __init__(self, servicer: Inferer, context: grpc.aio.ServicerContext) -> None:
        self.servicer, self.context = servicer, context
        self.access_log: AccessLog | None = getattr(servicer, "access_log", None)  # set by the server
        self.stream = open_exchange(context)  # its request id and model id; each message has an exchange of its own
        self.pending: deque[_Message] = deque()
        self.reading = True
        self.refused: str | None = None  # why a message did not decode: the stream ends INVALID_ARGUMENT
        self.wake: asyncio.Future[None] | None = None  # the writer waits on it for the oldest answer
        self.room: asyncio.Future[None] | None = None  # the reader waits on it below MAX_IN_FLIGHT

    async def serve(self, requests: AsyncIterator[Any]) -> None:
        token = GRPC_REQUEST_ID.set(self.stream.request_id)  # for the log records written meanwhile (the reader's too)
        reader = asyncio.ensure_future(self._read(requests))
        try:
            await self._write()
        finally:
            reader.cancel()
            self._cancel_pending()
            GRPC_REQUEST_ID.reset(token)
        if self.refused is not None:
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.refused,
                                     (("x-request-id", self.stream.request_id),))

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for request in requests:
                if request.__class__ is Undecodable:
                    log.debug("%s: %s", self.context.peer(), request.reason)
                    self.refused = request.reason
                    break
                self._start(request)
                if len(self.pending) >= MAX_IN_FLIGHT:
                    self.room = loop.create_future()
                    await self.room
        except Exception as e:  # noqa: BLE001 - the call broke (_start raises nothing): grpc ends the call
            log.debug("%s: reading the stream failed: %r", self.context.peer(), e)
        finally:
            self.reading = False
            self._wake()

    def _start(self, request: Any) -> None:
        """Make the message's Call and queue it, as the unary ModelInfer does; what refuses it is its answer."""
        exchange = GrpcExchange(self.context, self.stream.request_id, self.stream.model_id)
        message = _Message(request, exchange, _clock() if self.access_log is not None else 0.0)
        try:
            message.future = future = self.servicer.pipeline.infer(self.servicer.infer_call(request, exchange))
            future.add_done_callback(self._settled)
        except ServingError as e:
            message.error = e
        except Exception as e:  # a decoder's bug: this message fails (INTERNAL), the stream goes on
            log.exception("ModelStreamInfer: a message failed")
            message.error = internal(f"{type(e).__name__}: {e}")
        self.pending.append(message)
        if message.future is None:
            self._wake()

    def _settled(self, future: asyncio.Future[Outputs]) -> None:
        self._wake()

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def _write(self) -> None:
        pending, write, loop = self.pending, self.context.write, asyncio.get_running_loop()
        while True:
            while pending and (pending[0].future is None or pending[0].future.done()):
                answer = self._answer(pending.popleft())
                if self.room is not None and len(pending) < MAX_IN_FLIGHT:
                    self.room.set_result(None)
                    self.room = None
                await write(answer)
            if not pending and not self.reading:
                return
            self.wake = loop.create_future()
            await self.wake
            self.wake = None

    def _answer(self, message: _Message) -> Any:
        """The message's ModelStreamInferResponse (and its access log line)."""
        response = pb.ModelStreamInferResponse()
        error = message.error
        if error is None:
            assert message.future is not None and message.exchange.call is not None
            error = error_of(message.future)
            if error is None:
                try:
                    self.servicer.fill_answer(response.infer_response, message.exchange.call, message.request,
                                              message.future.result())
                except ServingError as e:
                    error = e
        if error is not None:
            response = _error_answer(message.request, error)
        response.infer_response.parameters["triton_final_response"].bool_param = True  # as Triton's answers
        self._log(message, "OK" if error is None else error.code.name, response.ByteSize())
        return response

    def _cancel_pending(self) -> None:
        """The stream ended with messages unanswered (the client cancelled, the deadline passed, a write
        failed): their inferences are cancelled (a queued one is dropped uncomputed) and logged CANCELLED."""
        while self.pending:
            message = self.pending.popleft()
            if message.future is not None:
                message.future.cancel()
            self._log(message, "CANCELLED", 0)

    def _log(self, message: _Message, code: str, bytes_out: int) -> None:
        access_log = self.access_log
        if access_log is not None and access_log.selects(code != "OK", _clock() - message.started):
            access_log.grpc(ROUTE, message.exchange.request_id, self.context.peer(), message.exchange.call, code,
                            message.started, message.request.ByteSize(), bytes_out)


def _error_answer(request: Any, error: ServingError) -> Any:
    """Triton's answer to a message that failed: the error's message, and only the request's id, model name
    and version in infer_response (what tritonclient's C++ client matches the answer by)."""
    response = pb.ModelStreamInferResponse(error_message=encodable(error.message))
    answer = response.infer_response
    answer.id, answer.model_name, answer.model_version = request.id, request.model_name, request.model_version
    return response

