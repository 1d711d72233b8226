"""The native gRPC server: our servicers on our own HTTP/2 (serving/transport/h2/), on the server's event loop,
instead of grpc.aio's (see ../shared/notes/grpc-transport.md: grpc.aio costs 155-207 us of CPU a call; this
costs a few tens).

It takes the servicer objects grpc.aio's server takes (`new_server`: their class's `SERVICE` descriptor
names the methods, each `async def M(self, request, context)`) and the grpc.health.v1 servicer, and hands
each method a `Context`, a shim with what our servicers use of grpc.aio's context: `invocation_metadata()`,
`time_remaining()`, `set_trailing_metadata()`, `abort()`, `peer()`, and for the streaming kinds `write()`
and `read()`. Around the methods: the token check of interceptors.py, undecodable messages answered
INVALID_ARGUMENT as decode.py does, `grpc-timeout` deadlines (DEADLINE_EXCEEDED, the handler cancelled),
compressed messages both ways, the message size limit, the access log (written by `grpc_errors`, and here
for the calls refused UNAUTHENTICATED).

A unary call runs its handler's first step at once, inside the read that completed its request, in a
context of its own (as a task would): a method that does not wait (a status, a health check, metadata)
is answered in the same write as the read's other answers, without a task. A method that waits (an
inference waiting for its batch) goes on in a task from the future it waits on. Streaming calls run as
tasks from the start.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from ...core.batching.queue import one_row_each, settle_answered
from ...errors import Code, ServingError
from ...ops.accesslog import AccessLog, request_id_of
from ..auth import TokenAuth
from ..h2.connection import H2Connection, H2Limits, Stream
from ..h2.headers import (
    ACCEPT_ENCODING,
    RESPONSE_HEADERS,
    TRAILERS_OK,
    CallHeaders,
    literal,
    metadata_block,
    status_block,
    trailers_only,
)
from ..http import COMPRESSION_LEVEL, DeadlineWheel, zlib_wrapped
from ..listener import SWEEP_S, close_listeners
from .decode import Undecodable, _tolerant_decoder
from .interceptors import OPEN_SERVICES, is_control

log = logging.getLogger(__name__)

OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAUTHENTICATED = 8, 12, 13, 16
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_ACCEPT_TRAILER = literal(b"grpc-accept-encoding", ACCEPT_ENCODING)


class AbortError(Exception):
    """What `Context.abort` raises: the call ends with this status."""

    def __init__(self, code: int, details: str, metadata: bytes) -> None:
        super().__init__(details)
        self.code, self.details, self.metadata = code, details, metadata


@dataclass(frozen=True)
class Method:
    path: str
    handler: Callable[..., Any]  # the servicer's bound method
    decode: Callable[[bytes], Any]  # tolerant: an Undecodable for a bad message
    encode: Callable[[Any], bytes]
    client_streaming: bool
    server_streaming: bool
    auth: TokenAuth | None  # the token the call needs (None: open)
    #: The servicer's express lane of a unary method (`express_<Method>(request, context) -> bool`: it took the
    #: call, queued with the context as its future; serving/protocols/express.py); None: none.
    express: Callable[[Any, Any], bool] | None = None
    #: The same for the message's bytes, before protobuf decodes them (`express_raw_<Method>(data, context) ->
    #: bool`): the common message read by hand (serving/codecs/predict_wire.py); False: decoded, and on as above.
    express_raw: Callable[[bytes, Any], bool] | None = None


@dataclass
class NativeOptions:
    max_message_bytes: int = 64 << 20
    compression_level: int = 0  # server.answer_compression's levels: 0 none, 1 gzip first, 3 deflate first
    max_connections: int = 0  # 0: no limit
    max_buffered_bytes: int = 0  # request bytes held per connection for calls not started; 0: message + 64 MiB
    limits: H2Limits = field(default_factory=H2Limits)
    eager: bool = True  # a unary handler's first step at once (False: a task per call)


@functools.lru_cache(maxsize=64)
def answer_coding(level: int, accepted: bytes) -> str | None:
    """The coding of a call's answers at server compression `level` for a client's grpc-accept-encoding."""
    if not level:
        return None
    names = {name.strip().lower() for name in accepted.split(b",")}
    order = ("gzip", "deflate") if level < 3 else ("deflate", "gzip")
    return next((name for name in order if name.encode() in names), None)


def _compress(data: bytes, coding: str) -> bytes:
    return zlib.compress(data, COMPRESSION_LEVEL, _WBITS[coding])


def method_table(servicers: list[Any], health: Any, auth: TokenAuth | None,
                 admin_auth: TokenAuth | None) -> dict[str, Method]:
    """Every method of each servicer (its class's SERVICE) and of grpc.health.v1, by path."""
    table: dict[str, Method] = {}
    pairs = [(s, s.SERVICE) for s in servicers]
    if health is not None:
        from grpc_health.v1 import health_pb2
        pairs.append((health, health_pb2.DESCRIPTOR.services_by_name["Health"]))
    for servicer, service in pairs:
        table.update(_methods(servicer, service, auth, admin_auth))
    return table


def _methods(servicer: Any, service: ServiceDescriptor, auth: TokenAuth | None,
             admin_auth: TokenAuth | None) -> dict[str, Method]:
    methods = {}
    for m in service.methods:
        behavior = getattr(servicer, m.name, None)
        if behavior is None:
            continue
        path = f"/{service.full_name}/{m.name}"
        if path.startswith(OPEN_SERVICES):
            token = None
        else:
            token = admin_auth if admin_auth is not None and is_control(path) else auth
        request = message_factory.GetMessageClass(m.input_type)
        response = message_factory.GetMessageClass(m.output_type)
        methods[path] = Method(path, behavior, _tolerant_decoder(request), response.SerializeToString,
                               m.client_streaming, m.server_streaming, token,
                               getattr(servicer, f"express_{m.name}", None),
                               getattr(servicer, f"express_raw_{m.name}", None))
    return methods


class Context:
    """One call: what its method sees of it (grpc.aio's ServicerContext, the part our servicers use), and
    its state on the connection (a Call of h2.connection)."""

    __slots__ = ("server", "conn", "stream", "method", "headers", "chunks", "size", "deadline", "wheel_key",
                 "trailing", "task", "answered", "stopped", "headers_sent", "coding", "inbox", "read_waiter",
                 "write_waiter", "ended",
                 "code", "details", "coro", "context", "waiting",
                 # an express lane's call (take_express):
                 "express", "servable", "signature", "rows", "received", "dispatched", "computed", "error",
                 "message", "message_size", "response", "rid")

    def __init__(self, server: NativeServer, conn: H2Connection, stream: Stream, method: Method | None,
                 headers: CallHeaders) -> None:
        self.server, self.conn, self.stream, self.method, self.headers = server, conn, stream, method, headers
        self.chunks: list[bytes] = []
        self.size = 0
        self.deadline: float | None = None
        self.wheel_key = 0
        self.trailing: Any = ()
        self.task: asyncio.Task[Any] | None = None
        self.answered = self.stopped = self.headers_sent = self.ended = False
        self.coding: str | None = None
        self.inbox: collections.deque[bytes] | None = None  # a streaming request's messages, unread
        # A full-duplex stream reads in one task while another writes: each waits on its own future.
        self.read_waiter: asyncio.Future[None] | None = None
        self.write_waiter: asyncio.Future[None] | None = None
        self.code: int | None = None  # set_code / set_details (grpc.aio's, for a method that returns None)
        self.details = ""
        self.coro: Any = None  # a unary handler driven step by step (_step), in `context`
        self.context: contextvars.Context | None = None
        self.waiting: Any = None  # the future (or the loop handle of a bare yield) it waits on
        self.express: Any = None  # the express lane that took the call (take_express), else None
        self.error: ServingError | None = None  # what an express call ended in (None: answered)
        self.rid: str | None = None  # its request id, once something read it

    # ---- grpc.aio's ServicerContext, the part our servicers use ----

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.headers.metadata

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = metadata

    def peer(self) -> str:
        return self.conn.peer_name

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code.value[0]

    def set_details(self, details: str) -> None:
        self.details = details

    def cancelled(self) -> bool:
        return self.answered and not self.stopped

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise AbortError(code.value[0], details, metadata_block(trailing_metadata or self.trailing))

    async def write(self, message: Any) -> None:
        """A streaming answer's next message (waits while the client's windows are full)."""
        if self.answered:
            raise asyncio.InvalidStateError("the call is over")
        data = self._framed(message)
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.send_headers(self.stream, RESPONSE_HEADERS[self.coding])
        if not self.conn.send_data(self.stream, data):
            self.write_waiter = asyncio.get_running_loop().create_future()
            await self.write_waiter

    async def read(self) -> Any:
        """A streaming request's next message (an Undecodable for one that does not decode, as decode.py's
        decoder makes for grpc.aio); grpc.aio.EOF after the last."""
        while not self.inbox:
            if self.ended or self.answered:
                return grpc.aio.EOF
            self.read_waiter = asyncio.get_running_loop().create_future()
            await self.read_waiter
        data = self.inbox.popleft()
        self.conn.consumed(self.stream, len(data))
        return self.method.decode(self._message(data))  # type: ignore[union-attr]  # an Undecodable as grpc.aio
        # hands it through decode.py's tolerant decoder: the method answers it

    async def requests(self) -> AsyncIterator[Any]:
        """A client-streaming method's request iterator."""
        while True:
            request = await self.read()
            if request is grpc.aio.EOF:
                return
            yield request

    # ---- the connection's side (h2.connection.Call) ----

    def receive(self, data: bytes, end_stream: bool) -> None:
        if self.answered:
            return
        if self.inbox is not None:
            self._receive_messages(data, end_stream)
            return
        if data:
            self.size += len(data)
            self.conn.buffered += len(data)
            self.chunks.append(data)
            if self.size > self.server.max_message_bytes + 5:
                self._too_big(self.size - 5)
                return
            if self.conn.buffered > self.server.max_buffered_bytes:
                self._error(RESOURCE_EXHAUSTED, "the connection's unfinished requests hold too many bytes")
                return
        if end_stream:
            self._unary_request()

    def cancel(self) -> None:
        """The client reset the stream, or left: nothing more is sent; the handler is cancelled."""
        self.answered = True
        self._release_buffer()
        self._wake()
        if self.express is not None:  # the batch queue lets go of it when it looks (done() is True)
            if not self.stopped:
                self.error = ServingError(Code.CANCELLED, "request cancelled")
                self._stop()
            return
        self._cancel_handler()

    def _cancel_handler(self) -> None:
        if self.task is not None:
            self.task.cancel()
        elif self.waiting is not None:  # a unary handler we drive: its wait cancelled, CancelledError thrown in
            waiting, self.waiting = self.waiting, None
            if isinstance(waiting, asyncio.Handle):
                waiting.cancel()
            else:
                waiting.remove_done_callback(self._wake_up)
                waiting.cancel()  # a batch queue drops the work
            self._step(None, asyncio.CancelledError())

    def writable(self) -> None:
        self._wake()

    def expire(self) -> None:
        """The deadline (a DeadlineWheel slot)."""
        if self.answered:
            return
        self._error(DEADLINE_EXCEEDED, "Deadline Exceeded")
        if self.express is not None:
            self.error = ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._stop()
            return
        self._cancel_handler()

    # ---- a unary request ----

    def _unary_request(self) -> None:
        chunks, self.chunks = self.chunks, []
        self._release_buffer()
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(body) < 5:
            self._error(INTERNAL, "the call has no request message" if not body else "incomplete request message")
            return
        length = int.from_bytes(body[1:5], "big")
        if len(body) != 5 + length:
            self._error(INTERNAL, "a unary call must send exactly one message")
            return
        method: Method = self.method  # type: ignore[assignment]
        try:
            data = self._message(body)
        except AbortError as e:
            self._error(e.code, e.details, e.metadata)
            return
        raw = method.express_raw
        if raw is not None:  # the lane reads the common message from its bytes, or leaves it to protobuf
            self.message, self.message_size = None, length
            if raw(data, self):
                return
        request = method.decode(data)
        if request.__class__ is Undecodable:
            log.debug("%s: %s", self.conn.peer_name, request.reason)
            self._error(INVALID_ARGUMENT, request.reason)
            return
        express = self.method.express  # type: ignore[union-attr]
        if express is not None:
            self.message, self.message_size = request, length
            if express(request, self):
                return
        if self.method.server_streaming:  # type: ignore[union-attr]
            self._start_task(request)
        elif self.server.eager:
            self._start_eager(request)
        else:
            self._start_task(request)

    def _release_buffer(self) -> None:
        if self.size and self.inbox is None:
            self.conn.buffered -= self.size
            self.size = 0

    def _message(self, framed: bytes) -> bytes:
        """A gRPC message's bytes (framed: its 5-byte prefix first), decompressed when flagged."""
        flag = framed[0]
        data = framed[5:]
        if flag == 0:
            return data
        coding = self.headers.encoding
        if flag != 1:
            raise AbortError(INTERNAL, f"invalid message compression flag {flag}", b"")
        if coding is None:
            raise AbortError(INTERNAL, "a compressed message without grpc-encoding", b"")
        if coding not in _WBITS:
            raise AbortError(UNIMPLEMENTED, f"grpc-encoding {coding} is not supported", _ACCEPT_TRAILER)
        return self._inflate(data, coding)

    def _inflate(self, data: bytes, coding: str) -> bytes:
        wbits = _WBITS[coding] if coding == "gzip" or zlib_wrapped(data) else -zlib.MAX_WBITS
        limit = self.server.max_message_bytes
        try:
            inflater = zlib.decompressobj(wbits)
            out = inflater.decompress(data, limit + 1)  # a bomb stops at the limit
            if len(out) > limit or inflater.unconsumed_tail:
                raise AbortError(RESOURCE_EXHAUSTED, f"decompressed message larger than max ({limit})", b"")
            if not inflater.eof:
                raise AbortError(INTERNAL, f"truncated {coding} message", b"")
        except zlib.error as e:
            raise AbortError(INTERNAL, f"cannot decompress the {coding} message: {e}", b"") from e
        return out

    # ---- running the handler ----

    def _start_eager(self, request: Any) -> None:
        """Run the handler's first step now, in a context of its own; what it waits on wakes the next step.
        The steps are driven as asyncio.Task drives them (without the task: asyncio.current_task() is not
        this call's, which our unary methods do not ask)."""
        self.stream.busy = True
        self.coro = self.method.handler(request, self)  # type: ignore[union-attr]
        self.context = contextvars.copy_context()
        self._step(None, None)

    def _step(self, _: Any, error: BaseException | None) -> None:
        coro = self.coro
        try:
            if error is None:
                waited = self.context.run(coro.send, None)  # type: ignore[union-attr]
            else:
                waited = self.context.run(coro.throw, error)  # type: ignore[union-attr]
        except StopIteration as done:
            self._answer(done.value)
            self._stop()
            return
        except BaseException as e:  # noqa: BLE001 - ended by abort, an error, its cancellation: answered
            self._failed(e)
            self._stop()
            return
        if getattr(waited, "_asyncio_future_blocking", None):  # awaits a future (as Task.__step reads it)
            waited._asyncio_future_blocking = False
            self.waiting = waited
            waited.add_done_callback(self._wake_up)
        elif waited is None:  # a bare yield (asyncio.sleep(0)): the next step in the next loop turn
            self.waiting = self.server.loop.call_soon(self._step, None, None)
        else:
            self._step(None, RuntimeError(f"the handler yielded {waited!r}, not a future"))

    def _wake_up(self, _: Any) -> None:
        self.waiting = None
        self._step(None, None)  # the coroutine reads the future's result itself

    def _start_task(self, first: Any) -> None:
        self.stream.busy = True
        self.task = self.server.loop.create_task(self._run(first))

    async def _run(self, first: Any) -> None:
        method: Method = self.method  # type: ignore[assignment]
        try:
            result = method.handler(first, self)
            if inspect.isasyncgen(result):
                async for response in result:
                    await self.write(response)
                value = None
            else:
                value = await result
            if method.server_streaming:
                self._finish_stream()
            else:
                self._answer(value)
        except BaseException as e:  # noqa: BLE001 - answered (or, cancelled, nothing to answer)
            self._failed(e)
        finally:
            self._stop()

    def _failed(self, error: BaseException) -> None:
        if isinstance(error, AbortError):
            self._error(error.code, error.details, error.metadata)
        elif isinstance(error, asyncio.CancelledError):
            self._error(CANCELLED, "Cancelled")  # by the server (it drains): the client is still there
        elif isinstance(error, Exception):
            log.error("gRPC method %s failed", self.method.path if self.method else "?", exc_info=error)
            self._error(UNKNOWN, f"Unexpected error in RPC handling: {type(error).__name__}")
        else:
            raise error

    def _stop(self) -> None:
        self.stopped = True
        if self.deadline is not None:
            self.server.wheel.discard(self, self.wheel_key)  # type: ignore[arg-type]
        self.conn.finished(self.stream)

    def _wake(self) -> None:
        """Something changed for the call (a message came, the window opened, it ended): its reader and its
        writer look again (a wake that changed nothing for one of them is harmless: each checks and waits on)."""
        for waiter in (self.read_waiter, self.write_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.read_waiter = self.write_waiter = None

    # ---- an express lane's call: its future and timing in the batch queue, the call the metrics read ----

    def take_express(self, express: Any, queue: Any, inputs: Any, rows: int, servable: Any, signature: Any,
                     received: float, default_timeout_s: float) -> bool:
        """Queue the call's decoded inputs in `queue` with this context as their future (BatchQueue.enqueue);
        False, with nothing changed, when the queue is full (the general path then refuses it)."""
        deadline = self.deadline if self.deadline is not None else time.monotonic() + default_timeout_s
        self.express, self.servable, self.signature, self.rows = express, servable, signature, rows
        self.received, self.dispatched, self.computed, self.error = received, 0.0, 0.0, None
        self.response = self.rid = None
        if not queue.enqueue(inputs, rows, deadline, self):
            self.express = None
            return False
        self.stream.busy = True
        return True

    @property
    def request_id(self) -> str:
        """The client's x-request-id, else one made for the call (only when something reads it)."""
        rid = self.rid
        if rid is None:
            rid = self.rid = request_id_of(self.headers.request_id)
        return rid

    def done(self) -> bool:
        return self.answered

    def set_result(self, outputs: Any) -> None:
        if self.answered:
            return
        try:
            response = self.express.encode(self, outputs)
        except Exception as e:  # noqa: BLE001 - an encoder's refusal (or bug) answers an error, the server goes on
            self.set_exception(e)
            return
        if self.headers.request_id is not None:  # a success echoes only an id the client sent (as grpc_errors)
            self.trailing = (("x-request-id", self.request_id),)
        self.response = response
        self._answer(response)
        self._stop()

    def set_exception(self, error: BaseException) -> None:
        if self.answered:
            return
        if not isinstance(error, ServingError):
            log.error("gRPC method %s failed", self.headers.path, exc_info=error)
            error = ServingError(Code.INTERNAL, f"{type(error).__name__}: {error}")
        self.error = error
        self._error(int(error.code), error.message, literal(b"x-request-id", self.request_id.encode("latin-1")))
        self._stop()

    def finished(self, _: Any) -> None:
        self.express.finished(self, self.error)

    def answer_batch(self, batch: list[tuple[Any, int, int]], outputs: Any, rows: int) -> bool:
        """The batch queue's whole-batch answer (serving/core/batching/queue.py `BatchAnswer`): when every request of
        the batch is a one-row call of this call's lane, the lane makes all their messages at once (`bodies`, the
        serialized responses); False (nothing answered) otherwise."""
        express = self.express
        bodies_of = getattr(express, "bodies", None)
        if bodies_of is None or not one_row_each(batch, rows, Context, express):
            return False
        try:
            bodies = bodies_of([request.future for request, _, _ in batch], outputs, rows)
        except Exception:  # noqa: BLE001 - one by one, each call's own encode then answers its error
            log.exception("encoding a batch of answers failed")
            return False
        if bodies is None or len(bodies) != rows:
            return False
        answered: list[Context] = []
        settled: list[Any] = []
        for (request, _, _), body in zip(batch, bodies):  # noqa: B905 - lengths checked above
            context = request.future
            if not context.answered:
                if context.headers.request_id is not None:  # as set_result
                    context.trailing = (("x-request-id", context.request_id),)
                context.response = body
                context._answer_data(body)
                context._stop()
                if context.error is None and not context.code:  # answered OK (not refused as too large)
                    answered.append(context)
                    settled.append(request)
                    continue
            request.settle()  # expired or cancelled while it ran, or refused: counted alone
        settle_answered(settled, bool(answered) and express.answered(answered))
        return True

    # ---- answers ----

    def _framed(self, message: Any) -> bytes:
        return self._frame(self.method.encode(message))  # type: ignore[union-attr]

    def _frame(self, data: bytes) -> bytes:
        """A serialized message as gRPC frames it: compressed when that is smaller and the client takes it."""
        if len(data) > self.server.max_message_bytes:
            raise AbortError(RESOURCE_EXHAUSTED, f"response larger than max ({self.server.max_message_bytes})", b"")
        coding = self.coding
        if coding is not None:
            packed = _compress(data, coding)
            if len(packed) < len(data):
                return b"\x01" + len(packed).to_bytes(4, "big") + packed
        return b"\x00" + len(data).to_bytes(4, "big") + data

    def _answer(self, response: Any) -> None:
        """A unary answer: headers, the message, trailers, in one piece."""
        if self.answered:
            return
        if response is None or self.code:
            self._error(self.code or UNKNOWN, self.details or "the method answered no message")
            return
        self._answer_data(self.method.encode(response))  # type: ignore[union-attr]

    def _answer_data(self, message: bytes) -> None:
        """`_answer` of a message already serialized."""
        try:
            data = self._frame(message)
        except AbortError as e:
            self._error(e.code, e.details, e.metadata)
            return
        self._respond(data)

    def _respond(self, data: bytes) -> None:
        self.answered = True
        trailers = TRAILERS_OK + metadata_block(self.trailing) if self.trailing else TRAILERS_OK
        self.conn.respond(self.stream, RESPONSE_HEADERS[self.coding], data, trailers)

    def _finish_stream(self) -> None:
        if self.answered:
            return
        if self.code:
            self._error(self.code, self.details)
            return
        self.answered = True
        block = status_block(OK, "", metadata_block(self.trailing))
        if self.headers_sent:
            self.conn.send_trailers(self.stream, block)
        else:
            self.conn.send_headers(self.stream, trailers_only(OK, "", metadata_block(self.trailing)), True)

    def _error(self, code: int, message: str, metadata: bytes | None = None) -> None:
        """End the call with status `code` (trailers-only before any message)."""
        if self.answered:
            return
        self.answered = True
        self._release_buffer()
        if metadata is None:
            metadata = metadata_block(self.trailing)
        if self.headers_sent:
            self.conn.send_trailers(self.stream, status_block(code, message, metadata))
        else:
            self.conn.send_headers(self.stream, trailers_only(code, message, metadata), end_stream=True)

    def _too_big(self, size: int) -> None:
        limit = self.server.max_message_bytes
        self._error(RESOURCE_EXHAUSTED, f"Received message larger than max ({size} vs. {limit})")

    # ---- a streaming request ----

    def _receive_messages(self, data: bytes, end_stream: bool) -> None:
        """Split a streaming request's DATA into messages (held from the client's window until read); the
        chunks of a message are joined once, when it is all there."""
        if data:
            self.chunks.append(data)
            self.size += len(data)
        while self.size >= 5:
            if len(self.chunks[0]) < 5:
                self.chunks = [b"".join(self.chunks)]
            length = int.from_bytes(self.chunks[0][1:5], "big")
            if length > self.server.max_message_bytes:
                self._too_big(length)
                return
            if self.size < 5 + length:
                break
            buffered = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
            self.inbox.append(buffered[:5 + length])  # type: ignore[union-attr]
            self.stream.held += 5 + length
            rest = buffered[5 + length:]
            self.chunks, self.size = ([rest] if rest else []), len(rest)
        if end_stream:
            self.ended = True
            if self.size:
                self._error(INTERNAL, "incomplete request message")
                return
        self._wake()


class NativeServer:
    """The port: its connections, the method table, the drain (see the module docstring)."""

    loop: asyncio.AbstractEventLoop  # set by start()
    wheel: DeadlineWheel

    def __init__(self, methods: dict[str, Method], options: NativeOptions, access_log: AccessLog | None,
                 reuse_port: bool) -> None:
        self.methods, self.options, self.access_log, self.reuse_port = methods, options, access_log, reuse_port
        self.max_message_bytes = options.max_message_bytes
        self.max_buffered_bytes = options.max_buffered_bytes or options.max_message_bytes + (64 << 20)
        self.eager = options.eager
        self.connections: set[H2Connection] = set()
        self.server: asyncio.Server | None = None
        self.sweeper: asyncio.Task[None] | None = None
        self.port = 0
        self.draining = False
        self.closed_counters: collections.Counter[str] = collections.Counter()

    def connection(self) -> H2Connection:
        return H2Connection(self, self.options.limits, self.connections, self.options.max_connections)

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (every interface for 0.0.0.0 or ::); OSError when it cannot."""
        self.loop = asyncio.get_running_loop()
        self.wheel = DeadlineWheel(self.loop)
        self.server = await self.loop.create_server(self.connection, None if host in ("0.0.0.0", "::") else host,
                                                    port, backlog=1024, reuse_port=self.reuse_port)
        self.port = self.server.sockets[0].getsockname()[1]
        self.sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check_timeouts(now)

    async def stop(self, grace_s: float) -> None:
        """Drain: no new connections; each connection told GOAWAY (2^31-1 and a PING, then the last stream
        id); the calls in flight answered until `grace_s` is over; then every connection closed."""
        deadline = time.monotonic() + grace_s
        self.draining = True
        if self.server is not None:
            for sock in await close_listeners(self.server):
                try:
                    await self.loop.connect_accepted_socket(self.connection, sock)
                except OSError:
                    sock.close()
        while self.connections and time.monotonic() < deadline:
            for conn in list(self.connections):
                conn.shutdown()
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        if self.sweeper is not None:
            self.sweeper.cancel()
        await asyncio.sleep(0)

    def counters(self) -> dict[str, int]:
        """The connections' counts, those closed included (calls, resets received, streams refused, GOAWAYs,
        header cache hits, misses and clears, connections closed)."""
        total = collections.Counter(self.closed_counters)
        for conn in self.connections:
            _add(total, conn)
        return dict(total)

    def closed(self, conn: H2Connection) -> None:
        _add(self.closed_counters, conn)
        self.closed_counters["connections_closed"] += 1

    # ---- h2.connection.Application ----

    def begin(self, conn: H2Connection, stream: Stream, headers: CallHeaders) -> Context:
        method = self.methods.get(headers.path)
        context = Context(self, conn, stream, method, headers)
        if headers.http_status != 200:
            context.answered = True
            conn.send_headers(stream, trailers_only(INTERNAL if headers.http_status == 415 else UNIMPLEMENTED,
                                                    "not a gRPC request", b"", headers.http_status), True)
        elif method is None:
            context._error(UNIMPLEMENTED, f"Method not found: {headers.path}")
        elif method.auth is None or self._allowed(context, method.auth):
            if headers.problem is not None:
                context._error(INTERNAL, headers.problem)
            else:
                self._accept(context, method, headers)
        return context

    def _accept(self, context: Context, method: Method, headers: CallHeaders) -> None:
        if headers.timeout is not None:
            context.deadline = time.monotonic() + headers.timeout
            context.wheel_key = self.wheel.add(context, context.deadline)  # type: ignore[arg-type]
        if headers.accept_encoding and self.options.compression_level:
            context.coding = answer_coding(self.options.compression_level, headers.accept_encoding)
        if method.client_streaming:
            context.inbox = collections.deque()
            context._start_task(context.requests())

    def _allowed(self, context: Context, auth: TokenAuth) -> bool:
        """The token check of interceptors.TokenInterceptor: False when the call was refused."""
        try:
            auth.check(context.headers.authorization)
            return True
        except ServingError as e:
            rid = request_id_of(context.headers.request_id)
            if self.access_log is not None:
                self.access_log.grpc(context.headers.path, rid, context.conn.peer_name, None, "UNAUTHENTICATED",
                                     time.perf_counter(), 0, 0)
            context._error(UNAUTHENTICATED, e.message, literal(b"x-request-id", rid.encode("latin-1")))
            return False


def _add(total: collections.Counter[str], conn: H2Connection) -> None:
    total.update(conn.counters)
    total.update(cache_hits=conn.decoder.hits, cache_misses=conn.decoder.misses, cache_clears=conn.decoder.clears)


def new_native_server(services: list[Any], *, health: Any = None, auth: TokenAuth | None = None,
                      admin_auth: TokenAuth | None = None, access_log: AccessLog | None = None,
                      reuse_port: bool = False, max_message_bytes: int = 64 << 20, compression_level: int = 0,
                      max_connections: int = 0, limits: H2Limits | None = None, eager: bool = True) -> NativeServer:
    """The native server of `services` (and grpc.health.v1's `health` servicer): what server.new_server
    makes on grpc.aio, with the same arguments; `start(host, port)` then `stop(grace_s)`."""
    for service in services:  # read by adapters.grpc_errors
        service.access_log = access_log
    options = NativeOptions(max_message_bytes or 64 << 20, compression_level, max_connections,
                            limits=limits or H2Limits(), eager=eager)
    return NativeServer(method_table(services, health, auth, admin_auth), options, access_log, reuse_port)

