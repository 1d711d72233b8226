"""HTTP/1.1 on httptools as an asyncio.Protocol: keep-alive, pipelining (answers in request order),
bounded header blocks (431, 414) and bodies (413), gzip and deflate request bodies, answers compressed when
the client's Accept-Encoding asks (`compressed`), flow control, read/idle time-outs, half-closed clients. No
ASGI layer: the connection hands each complete request to a handler that answers at once or with a future.
Every answer carries the request's `X-Request-Id` (the client's or ours); with an access log
(serving/ops/accesslog.py) each answer written is one line, else the log costs a None check.

The connection's own error answers (a request it cannot parse or accept, a handler that fails) are a status
and a message handed to the `render_error` it is given: the protocols' router writes them in their wire
format (serving/protocols/router.py); a connection built without one answers plain text.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import httptools

from ..core.batching.outbox import OUTBOX
from ..core.batching.queue import one_row_each, settle_answered
from ..errors import Code, ServingError, encodable
from ..ops.accesslog import MAX_ID_LENGTH, new_request_id, request_id_of
from ..settings import Settings, default

if TYPE_CHECKING:
    from ..ops.accesslog import AccessLog

log = logging.getLogger(__name__)

JSON = b"application/json"
PLAIN_TEXT = b"text/plain; charset=utf-8"
#: HTTP answers by status code, one per response written (serving_http_responses_total reads it).
HTTP_RESPONSES: collections.Counter[int] = collections.Counter()
STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
STATUS_LINES[414] = b"HTTP/1.1 414 URI Too Long\r\n"  # RFC 9110's name; Python 3.11 has the old one
STATUS_LINES[450] = b"HTTP/1.1 450 Queue Full\r\n"
STATUS_LINES[499] = b"HTTP/1.1 499 Client Closed Request\r\n"
MAX_PIPELINE = 64
#: Requests of one connection being computed at once; a pipelining client's further requests wait, parsed, in
#: the connection until one of them is answered: one write of 200 requests must not fill the model's queue
#: (--max_queue_size) and have the others refused 503. A full default batch (16 rows) still comes from one.
MAX_DISPATCHED = 16
#: What an express lane's request that did not finish is counted as.
CLIENT_GONE = ServingError(Code.CANCELLED, "request cancelled")  # as error_of words a cancelled future
DEADLINE = ServingError(Code.DEADLINE_EXCEEDED, "request deadline exceeded")
#: After refusing a request the client may still be sending: read and drop its bytes this long before closing.
LINGER_S = 2.0


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: bytes = b""  # extra header lines, each ending in CRLF


class Deferred:
    """A response still being computed: `future` resolves, then `finish(future, context)` makes the
    Response; past `deadline` (time.monotonic()) `on_timeout()` answers and the future is cancelled."""

    __slots__ = ("future", "finish", "context", "deadline", "on_timeout")

    def __init__(
        self,
        future: asyncio.Future[Any],
        finish: Callable[[asyncio.Future[Any], Any], Response],
        context: Any,
        deadline: float,
        on_timeout: Callable[[], Response],
    ) -> None:
        self.future, self.finish, self.context = future, finish, context
        self.deadline, self.on_timeout = deadline, on_timeout


class DeadlineWheel:
    """Time-outs for many requests with few timers: deadlines fall into `tick_s` buckets, one loop
    timer per bucket, a set per bucket so a request that completes leaves it in O(1). A request is
    answered at most `tick_s` after its deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_s: float = 0.005) -> None:
        self.loop, self.tick_s = loop, tick_s
        self.buckets: dict[int, set[_Slot]] = {}

    def add(self, slot: _Slot, deadline: float) -> int:
        key = int(deadline / self.tick_s) + 1
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = set()
            self.loop.call_at(key * self.tick_s, self._fire, key)
        bucket.add(slot)
        return key

    def discard(self, slot: _Slot, key: int) -> None:
        bucket = self.buckets.get(key)
        if bucket is not None:
            bucket.discard(slot)

    def _fire(self, key: int) -> None:
        for slot in self.buckets.pop(key, ()):
            slot.expire()


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[bytes, bytes]
    body: bytes
    request_id: str = ""  # the client's x-request-id, else ours; answered as X-Request-Id
    call: Any = None  # the pipeline Call an adapter made of it (for the access log)


Handler = Callable[[Request], "Response | Deferred"]
#: (request, the connection's transport, the bytes that followed the request) -> None when the handler took the
#: transport over (a WebSocket: it set its own protocol on it), else the answer refusing the switch.
Upgrade = Callable[[Request, asyncio.Transport, bytes], "Response | None"]
#: (status, message) -> the answer: how the connection's own errors are written.
RenderError = Callable[[int, str], Response]


def plain_error(status: int, message: str) -> Response:
    """An error answer as plain text: a connection's when it is given no `render_error`."""
    return Response(status, encodable(message).encode(), PLAIN_TEXT)


class Routes(Protocol):
    """A handler that also writes the connection's own error answers in its wire format (the router)."""

    def __call__(self, request: Request) -> Response | Deferred: ...

    def render_error(self, status: int, message: str) -> Response: ...


@dataclass
class HttpLimits:
    max_body_bytes: int = default("rest_api_max_body_bytes")
    read_timeout_s: float = default("rest_api_read_timeout_seconds")
    idle_timeout_s: float = default("rest_api_idle_timeout_seconds")
    max_header_bytes: int = default("rest_api_max_header_bytes")  # a longer URL alone is 414
    max_connections: int = default("max_connections")
    compression_min_bytes: int = default("http_compression_min_bytes")  # 0: answers are never compressed


def http_limits(s: Settings) -> HttpLimits:
    """The HTTP settings of serving/settings.py (their help says what each means)."""
    return HttpLimits(s.rest_api_max_body_bytes, s.rest_api_read_timeout_seconds, s.rest_api_idle_timeout_seconds,
                      s.rest_api_max_header_bytes, s.max_connections, s.http_compression_min_bytes)


KEPT_HEADERS = {b"content-encoding", b"content-type", b"authorization", b"content-md5", b"date", b"expect",
                b"inference-header-content-length", b"x-request-id", b"traceparent", b"tracestate", b"accept",
                b"accept-encoding", b"upgrade", b"sec-websocket-key", b"sec-websocket-version"}

#: A header name as sent -> how on_header treats it: its lower-case name when it is kept, CONTENT_LENGTH, or
#: DROPPED. Clients send the same few spellings: one lookup in place of lower() and a set test per header.
CONTENT_LENGTH, DROPPED = False, b""
_HEADER_NAMES: dict[bytes, bytes | bool] = {}


def _header_name(name: bytes) -> bytes | bool:
    lower = name.lower()
    kept: bytes | bool = lower if lower in KEPT_HEADERS else CONTENT_LENGTH if lower == b"content-length" else DROPPED
    if len(name) <= 64 and len(_HEADER_NAMES) < 512:  # bounded: a client inventing names fills it once
        _HEADER_NAMES[name] = kept
    return kept


#: zlib's wbits for each coding: gzip; deflate is the zlib format (RFC 9110 8.4.1.2), what tritonclient sends
#: and what it, curl and browsers expect (a raw deflate request body is read too, see `zlib_wrapped`).
WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}
#: zlib level of compressed answers. Measured on a 100 KB JSON answer of floats: level 1 takes 1.2 ms and
#: keeps 45% of the bytes, level 6 (zlib's default) 7.4 ms for 41%; the answer is compressed on the event
#: loop, so the fast level.
COMPRESSION_LEVEL = 1
#: Answers whose request offered a coding: a cache keeps them apart by Accept-Encoding.
VARY = b"Vary: Accept-Encoding\r\n"
#: A 415 for an unknown Content-Encoding names the codings read (RFC 7694 3), as Triton's does.
ACCEPTED_CODINGS = b"Accept-Encoding: gzip, deflate\r\n"


@functools.lru_cache(maxsize=256)  # clients send the same value on every request
def answer_coding(accept_encoding: bytes) -> bytes | None:
    """The coding to answer in for a request's Accept-Encoding (RFC 9110 12.5.3): gzip or deflate, the one with
    the higher q, gzip at a tie; `*` stands for a coding not named; q=0 refuses one. None: answer as is."""
    weights: dict[bytes, float] = {}
    for item in accept_encoding.lower().split(b","):
        name, _, params = item.partition(b";")
        weight = 1.0
        for param in params.split(b";") if params else ():
            key, _, value = param.partition(b"=")
            if key.strip() == b"q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0  # a weight that does not parse accepts nothing
        weights[name.strip()] = weight
    other = weights.get(b"*", 0.0)
    gzip_q = weights.get(b"gzip", weights.get(b"x-gzip", other))
    deflate_q = weights.get(b"deflate", other)
    if gzip_q > 0 and gzip_q >= deflate_q:
        return b"gzip"
    return b"deflate" if deflate_q > 0 else None


def compressed(response: Response, coding: bytes, min_bytes: int) -> Response:
    """`response` for a client that accepts `coding`: its body in that coding when it is a 200 of at least
    `min_bytes` that shrinks, with `Vary: Accept-Encoding` either way. Errors stay as they are: they are small,
    and tritonclient reads an error's body without decompressing it. The headers (KServe's binary
    `Inference-Header-Content-Length` among them) still describe the body before compression, as Triton's do."""
    if response.status == 200 and len(response.body) >= min_bytes:
        body = zlib.compress(response.body, COMPRESSION_LEVEL, WBITS[coding])
        if len(body) < len(response.body):
            return Response(200, body, response.content_type,
                            response.headers + b"Content-Encoding: %s\r\n%s" % (coding, VARY))
    return Response(response.status, response.body, response.content_type, response.headers + VARY)


def zlib_wrapped(body: bytes) -> bool:
    """Whether a deflate body starts with a zlib header (RFC 1950: method 8, window <= 32K, check bits), else it
    is taken as a raw deflate stream, as some clients send. No encoder writes a raw stream that starts so: it
    would be a stored block with padding bits set."""
    return len(body) >= 2 and body[0] & 0x0F == 8 and body[0] >> 4 <= 7 and (body[0] << 8 | body[1]) % 31 == 0


#: The methods clients send, as str: one lookup in place of a decode per request.
METHOD_NAMES = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}


#: URLs parsed, by their bytes: clients repeat a few. Bounded in entries and length (emptied when full).
_TARGETS: dict[bytes, tuple[str, str] | None] = {}
_TARGETS_MAX, _TARGET_MAX_BYTES = 1024, 256


def _target(url: bytes) -> tuple[str, str] | None:
    """(path, query) of a request URL, the path percent-decoded; None when it does not parse."""
    target = _TARGETS.get(url, False)
    if target is not False:
        return target  # type: ignore[return-value]
    target = _parse_target(url)
    if len(url) <= _TARGET_MAX_BYTES:
        if len(_TARGETS) >= _TARGETS_MAX:
            _TARGETS.clear()
        _TARGETS[url] = target
    return target


def _parse_target(url: bytes) -> tuple[str, str] | None:
    if b"?" in url or b"%" in url or not url.startswith(b"/"):
        try:
            parsed = httptools.parse_url(url) if url else None
        except httptools.HttpParserError:
            return None
        path = unquote(parsed.path.decode("latin-1")) if parsed and parsed.path else "/"
        return path, parsed.query.decode("latin-1") if parsed and parsed.query else ""
    return url.decode("latin-1"), ""


class Express(Protocol):
    """The express lanes of a handler (serving/protocols/express.py): the common inference request of a route
    taken from the connection straight to a batch queue, the slot itself standing for the future, the timing and
    the call (`_Slot`'s second half). Anything they do not take goes the general way, which answers every error."""

    def take(self, conn: HttpConnection, slot: _Slot, body: bytes) -> bool:
        """Queue the request of `slot` (its URL is `conn.url`, its headers `conn.headers`), its lane in
        `slot.express`, and return True; or return False and leave everything as it was."""


class ExpressLane(Protocol):
    """What a slot taken by an express lane asks of its protocol's lane."""

    protocol: str

    def encode(self, slot: _Slot, outputs: Any) -> Response: ...

    @property
    def bodies(self) -> Any:
        """(outputs, rows) -> the answer bodies of a batch of one-row requests, each what `encode` makes of its row,
        in one go, or None when the lane has no such shortcut for these outputs (each is then encoded alone); or
        None: the lane has none."""

    def error(self, slot: _Slot, error: Any) -> Response: ...

    def on_timeout(self) -> Response: ...

    def finished(self, slot: _Slot, error: Any) -> None:
        """The batch queue is done with the slot's request (answered, expired or dropped): count it."""

    def answered(self, slots: list[_Slot]) -> bool:
        """`finished` of a batch's one-row requests, all answered OK, in one go; False: nothing counted."""


class _Slot:
    """One request's place in the connection's answer order. On an express lane it is also the request's
    future in the batch queue (`done`, `set_result`, `set_exception`), its timing (`dispatched`, `computed`,
    `finished`) and the call the metrics and the access log read (`servable`, `signature`, `rows`, ...)."""

    __slots__ = ("conn", "data", "close", "deferred", "wheel_key", "request_id", "request", "started", "bytes_in",
                 "head", "coding", "express", "open", "url", "servable", "signature", "rows", "received",
                 "dispatched", "computed", "error", "state")
    # Set by an express lane when it takes the request (the rest of the time they are not read):
    open: bool  # waiting for its outputs; False once answered, expired or dropped (`done()`)
    url: bytes
    servable: Any
    signature: Any
    rows: int
    received: float  # time.perf_counter() when the lane took it
    dispatched: float  # when its batch was assembled (the batch queue sets it), 0.0 before
    computed: float  # when its batch's outputs came back
    error: ServingError | None  # what it ended in, None: answered
    state: Any  # the lane's own state of the request (KServe V2: its JSON document)

    def __init__(self, conn: HttpConnection, request_id: str, close: bool = False, started: float = 0.0,
                 bytes_in: int = 0) -> None:
        self.conn, self.request_id, self.close = conn, request_id, close
        self.data: bytes | None = None
        self.head = False  # a HEAD request: its answer has no body (RFC 9110 9.3.2), or the next one's framing breaks
        self.coding: bytes | None = None  # what the answer may be compressed in (answer_coding); None: as is
        self.deferred: Deferred | None = None
        self.express: ExpressLane | None = None  # set by the express lane that took it
        self.wheel_key = 0
        # Set only while the access log is on:
        self.request: Request | None = None
        self.started, self.bytes_in = started, bytes_in  # time.perf_counter() when it had arrived whole; its size

    def answer_deferred(self, future: asyncio.Future[Any]) -> None:
        deferred = self.deferred
        if deferred is None or self.data is not None:
            return
        self.conn.wheel.discard(self, self.wheel_key)
        try:
            response = deferred.finish(future, deferred.context)
        except Exception:  # noqa: BLE001 - an encoder bug answers 500 and the server goes on
            log.exception("encoding a response failed", extra={"request_id": self.request_id})
            response = self.conn.render_error(500, "internal server error")
        self.deferred = None
        conn = self.conn
        conn._complete(self, response)
        conn._released()

    def expire(self) -> None:
        if self.express is not None:
            self._express_expire()
            return
        deferred = self.deferred
        if deferred is None or self.data is not None:
            return
        self.deferred = None
        conn = self.conn
        conn._complete(self, deferred.on_timeout())
        deferred.future.cancel()  # a request still queued is dropped, not computed
        conn._released()

    def drop(self) -> None:
        """The client went away: drop the work, nobody will read the answer."""
        if self.express is not None:
            if self.open:  # the queue lets go of it when it looks (done() is True) and tells `finished`
                self.open = False
                self.error = CLIENT_GONE
                self.conn.wheel.discard(self, self.wheel_key)
            return
        deferred, self.deferred = self.deferred, None
        if deferred is not None:
            self.conn.wheel.discard(self, self.wheel_key)
            deferred.future.cancel()

    # ---- an express lane's request: its future and timing in the batch queue ----

    def done(self) -> bool:
        return not self.open

    def set_result(self, outputs: Any) -> None:
        if self.open:
            try:
                response = self.express.encode(self, outputs)  # type: ignore[union-attr]
            except Exception as e:  # noqa: BLE001 - an encoder's refusal (or bug) answers an error, the server goes on
                response = self._express_failure(e)
            self._express_answer(response)

    def set_exception(self, error: BaseException) -> None:
        if self.open:
            self._express_answer(self._express_failure(error))

    def answer_batch(self, batch: list[tuple[Any, int, int]], outputs: Any, rows: int) -> bool:
        """The batch queue's whole-batch answer (serving/core/batching/queue.py `BatchAnswer`): when every request of
        the batch is one row of this slot's lane, the lane encodes all their bodies at once; False (nothing
        answered) otherwise."""
        lane = self.express
        if lane is None:
            return False
        bodies_of = lane.bodies
        if bodies_of is None or not one_row_each(batch, rows, _Slot, lane):
            return False
        try:
            bodies = bodies_of(outputs, rows)
        except Exception:  # noqa: BLE001 - one by one, each request's own encode then answers its error
            return False
        if bodies is None or len(bodies) != rows:
            return False
        answered: list[_Slot] = []
        settled: list[Any] = []
        for (request, _, _), body in zip(batch, bodies):  # noqa: B905 - lengths checked above
            slot = request.future
            if slot.open:
                slot._express_answer(Response(200, body, JSON, slot.servable.version_header))
                answered.append(slot)
                settled.append(request)
            else:
                request.settle()  # expired or dropped while it ran: counted alone
        settle_answered(settled, bool(answered) and lane.answered(answered))
        return True

    def _express_expire(self) -> None:
        if self.open:
            self.error = DEADLINE
            self._express_answer(self.express.on_timeout())  # type: ignore[union-attr]
            # (the queue drops it uncomputed when it looks: done() is True)

    def _express_answer(self, response: Response) -> None:
        self.open = False
        conn = self.conn
        conn.wheel.discard(self, self.wheel_key)
        conn._complete(self, response)
        conn._released()

    def _express_failure(self, error: BaseException) -> Response:
        express: ExpressLane = self.express  # type: ignore[assignment]
        if not isinstance(error, ServingError):
            log.error("%s request failed: %s", express.protocol, error, exc_info=error,
                      extra={"request_id": self.request_id})
            error = ServingError(Code.INTERNAL, f"{type(error).__name__}: {error}")
        self.error = error
        return express.error(self, error)

    def finished(self, _: Any) -> None:
        self.express.finished(self, self.error)  # type: ignore[union-attr]

    # What the metrics and the access log read of an express slot as a call (serving/core/pipeline.py `Call`):

    @property
    def protocol(self) -> str:
        return self.express.protocol if self.express is not None else "http"

    @property
    def method(self) -> str:
        return "predict"

    @property
    def model(self) -> str:
        return self.servable.model if self.servable is not None else ""

    @property
    def version(self) -> int | None:
        return self.servable.version if self.servable is not None else None


class HttpConnection(asyncio.Protocol):
    """One client connection. Per-connection state here; per-request state reset at message begin."""

    def __init__(self, handler: Handler, limits: HttpLimits, registry: set[HttpConnection],
                 wheel: DeadlineWheel, *, clock: Callable[[], float] = time.monotonic,
                 access_log: AccessLog | None = None, render_error: RenderError = plain_error,
                 upgrade: Upgrade | None = None) -> None:
        self.handler, self.limits, self.registry, self.wheel = handler, limits, registry, wheel
        self.upgrade = upgrade  # None: a protocol upgrade is refused 400
        self.upgrade_request: Request | None = None  # the request asking for one, until the parser stops at it
        self.render_error = render_error
        #: The handler's express lane for its common inference requests (the router's); None: every request the
        #: general way.
        self.express: Express | None = getattr(handler, "express", None)
        self.access_log = access_log  # None: off, one check per request
        self.peer: Any = None
        self.clock = clock  # what check_timeouts' `now` is measured with
        self.max_header_bytes = limits.max_header_bytes
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[_Slot] = collections.deque()
        self.dispatched = 0  # requests handed to the handler whose answers are still being computed
        self.waiting: collections.deque[tuple[_Slot, Request]] = collections.deque()  # past MAX_DISPATCHED
        self.reading_paused = self.writing_paused = False
        self.closing = False
        self.eof = False  # the client half-closed: close our side once the answers owed are written
        self.linger = False  # a request was refused mid-stream: close gently (see _flush)
        self.last_activity = clock()
        self.request_started: float | None = None
        self._reset()
        self.in_headers = False  # no message begun yet

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_big = False
        self.header_room = self.max_header_bytes  # less each URL piece and header as they arrive
        self.header_wire = 0  # bytes of chunks that arrived while the header block was still incomplete
        self.in_headers = True  # from on_message_begin to on_headers_complete

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.registry) >= self.limits.max_connections:  # once per connection, not per request
            self._refuse_connection()
            return
        self.registry.add(self)
        if self.access_log is not None:
            self.peer = transport.get_extra_info("peername")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.registry.discard(self)
        self.waiting.clear()
        for slot in self.pending:  # the client is gone: drop its queued work
            slot.drop()
        self.pending.clear()

    def _refuse_connection(self) -> None:
        """Over the connection limit: 503 before any request is read, then close gently (see _flush). Not in
        the access log: a flood of connections must not become a flood of lines."""
        self.access_log = None
        self._fail(503, "too many connections")

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._maybe_resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.clock()
        if self.closing:
            return
        if self.in_headers:
            self.header_wire += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._switch(data[e.args[0]:] if e.args and isinstance(e.args[0], int) else b"")
        except httptools.HttpParserError as e:
            self._fail(400, f"malformed HTTP request: {e}")
        # httptools holds a header line until it ends, so on_header alone cannot stop one endless line:
        # a header block still open after this chunk was all header bytes since the chunk it began in.
        if self.in_headers and self.header_wire > self.max_header_bytes:
            self._fail(431, self._too_big_headers())

    def eof_received(self) -> bool | None:
        """The client shut its sending side (SHUT_WR, `nc -N`, some proxies) but may still read: keep
        ours open while answers are owed (_flush closes it after the last one); nothing owed: close now."""
        if self.pending:
            self.eof = True
            return True
        self.closing = True
        return None

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self._reset()
        self.request_started = self.last_activity  # the clock of the read it began in

    def on_url(self, url: bytes) -> None:
        self.url += url  # arrives in pieces as the chunks come, so this stops an endless URL early
        self.header_room -= len(url)
        if self.header_room < 0:  # before any header: the URL alone is too long
            self._fail(414, f"request URL longer than the limit of {self.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_room -= len(name) + len(value)  # checked once, at the end of the header block
        kept = _HEADER_NAMES.get(name)
        if kept is None:
            kept = _header_name(name)
        if kept.__class__ is bytes and kept:
            self.headers[kept] = value  # type: ignore[index]
        elif kept is CONTENT_LENGTH:
            try:
                size = int(value)
            except ValueError:
                size = 0
            if size > self.limits.max_body_bytes:
                self.too_big = True

    def on_headers_complete(self) -> None:
        self.in_headers = False
        if self.header_room < 0:
            self._fail(431, self._too_big_headers())
        if self.closing:  # refused already: no 100 Continue ahead of the answers owed
            return
        if self.too_big:
            self._fail(413, self._too_big_body())
        elif self.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        if self.closing:
            return
        self.body_size += len(chunk)
        if self.body_size > self.limits.max_body_bytes:
            self._fail(413, self._too_big_body())
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        self.request_started = None
        if self.parser.should_upgrade():  # the parser stops after it: _switch() answers it
            self._hold_upgrade()
            return
        headers = self.headers
        sent_id = headers.get(b"x-request-id")
        request_id = (new_request_id() if not sent_id or len(sent_id) > MAX_ID_LENGTH  # as request_id_of
                      else sent_id.decode("latin-1"))
        access_log = self.access_log
        slot = _Slot(self, request_id, not self.parser.should_keep_alive(),
                     time.perf_counter() if access_log is not None else 0.0, self.body_size)
        pending = self.pending
        pending.append(slot)
        if len(pending) >= MAX_PIPELINE:
            self._pause_reading()
        if self.express is not None and self._took_express(slot, headers):
            return
        target = _target(self.url)
        if target is None:  # the framing is sound, so only this request fails
            self._complete(slot, self.render_error(400, "malformed request URL"))
            return
        body = self._body()
        if body is None:
            return
        method = METHOD_NAMES.get(self.parser.get_method()) or self.parser.get_method().decode("latin-1")
        accepted = headers.get(b"accept-encoding")  # without it, this lookup is all compression costs
        if accepted is not None or method == "HEAD":
            slot.head = method == "HEAD"
            if accepted is not None and self.limits.compression_min_bytes > 0 and not slot.head:
                slot.coding = answer_coding(accepted)
        request = Request(method, target[0], target[1], headers, body, request_id)
        if access_log is not None:
            slot.request = request
        if self.dispatched >= MAX_DISPATCHED or self.waiting:  # a pipelining client: in turn
            self.waiting.append((slot, request))
            return
        self._dispatch(slot, request)

    def _took_express(self, slot: _Slot, headers: dict[bytes, bytes]) -> bool:
        """Whether the express lane took the request: a POST, its body and answer not compressed, no pipelined
        request waiting before it."""
        if (self.waiting or self.dispatched >= MAX_DISPATCHED or b"content-encoding" in headers
                or b"accept-encoding" in headers or self.parser.get_method() != b"POST"):
            return False
        chunks = self.body
        return self.express.take(self, slot, chunks[0] if len(chunks) == 1 else b"".join(chunks))  # type: ignore[union-attr]

    def _hold_upgrade(self) -> None:
        target = _target(self.url)
        if target is not None:
            self.upgrade_request = Request(self.parser.get_method().decode("latin-1"), target[0], target[1],
                                           self.headers, b"", request_id_of(self.headers.get(b"x-request-id")))

    def _switch(self, rest: bytes) -> None:
        """A request asked to switch protocols (a WebSocket): handed to `upgrade` with the transport when no
        earlier answer is owed; refused (400, or upgrade's answer) otherwise, and the connection closed."""
        request, self.upgrade_request = self.upgrade_request, None
        transport = self.transport
        if self.upgrade is None or request is None or self.pending or transport is None:
            self._fail(400, "protocol upgrades are not supported")
            return
        refused = self.upgrade(request, transport, rest)
        if refused is None:  # the transport has its new protocol: this connection is done with it
            self.closing = True
            self.registry.discard(self)
            self.transport = None
            return
        slot = _Slot(self, request.request_id, close=True)
        self.pending.append(slot)
        self._complete(slot, refused)
        self.closing = True

    def _body(self) -> bytes | None:
        """The request's body, decompressed; None when it was answered instead (see _decode)."""
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        content_coding = self.headers.get(b"content-encoding")
        return body if content_coding is None else self._decode(body, content_coding)

    # ---- answers ----

    def _dispatch(self, slot: _Slot, request: Request) -> None:
        try:
            result = self.handler(request)
        except Exception:  # noqa: BLE001 - a handler bug answers 500 and the server goes on
            log.exception("handler failed for %s %s", request.method, request.path,
                          extra={"request_id": slot.request_id})
            result = self.render_error(500, "internal server error")
        if isinstance(result, Response):
            self._complete(slot, result)
        else:
            self._defer(slot, result)

    def _defer(self, slot: _Slot, deferred: Deferred) -> None:
        slot.deferred = deferred
        slot.wheel_key = self.wheel.add(slot, deferred.deadline)
        self.dispatched += 1
        deferred.future.add_done_callback(slot.answer_deferred)

    def defer_express(self, slot: _Slot, deadline: float) -> None:
        """An express lane took `slot`'s request (queued, `slot` its future): its answer is owed by `deadline`."""
        slot.wheel_key = self.wheel.add(slot, deadline)
        self.dispatched += 1

    def _released(self) -> None:
        """A deferred answer is done: hand the handler the requests that waited for room."""
        self.dispatched -= 1
        waiting = self.waiting
        while waiting and self.dispatched < MAX_DISPATCHED and self.transport is not None:
            slot, request = waiting.popleft()
            self._dispatch(slot, request)

    def _complete(self, slot: _Slot, response: Response) -> None:
        HTTP_RESPONSES[response.status] += 1
        if slot.coding is not None:
            response = compressed(response, slot.coding, self.limits.compression_min_bytes)
        extra = b"Connection: close\r\n" + response.headers if slot.close else response.headers
        slot.data = data = b"%sContent-Type: %s\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n%s\r\n%s" % (
            STATUS_LINES.get(response.status) or b"HTTP/1.1 %d Unknown\r\n" % response.status,
            response.content_type,
            len(response.body),
            slot.request_id.encode("latin-1"),
            extra,
            response.body if not slot.head else b"",
        )
        access_log = self.access_log
        if access_log is not None:
            if slot.express is None:
                access_log.http(slot.request, slot.request_id, self.peer, response.status, slot.started or
                                time.perf_counter(), slot.bytes_in, len(data))
            elif access_log.selects(response.status >= 400, time.perf_counter() - slot.received):
                request = Request("POST", slot.url.decode("latin-1"), "", {}, b"", slot.request_id, slot)
                access_log.http_line(request, slot.request_id, self.peer, response.status, slot.received,
                                     slot.bytes_in, len(data))
        held = OUTBOX.held
        if held is not None:  # a batch's answers are being made: written together at its end
            held.append(self._flush)
            return
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        pending = self.pending
        while pending and pending[0].data is not None:
            slot = pending.popleft()
            if transport is None:
                continue
            transport.write(slot.data)  # type: ignore[arg-type]
            if slot.close:
                self.closing = True
                if self.linger and transport.can_write_eof():
                    # Closing with the client's bytes unread resets the connection, which can destroy the
                    # answer before the client reads it: stop writing, drop what still comes, close later.
                    transport.write_eof()
                    self.loop.call_later(LINGER_S, transport.close)
                else:
                    transport.close()
                self.transport = transport = None
        if transport is not None:
            if self.eof and not pending:  # a half-closed client has had every answer
                self.closing = True
                transport.close()
                self.transport = None
            else:
                self._maybe_resume_reading()

    def _fail(self, status: int, message: str) -> None:
        """Answer a request that cannot be parsed or accepted, after the answers already owed; then close."""
        if self.closing:
            return
        slot = _Slot(self, request_id_of(self.headers.get(b"x-request-id")))
        slot.close = True
        self.linger = True
        self.pending.append(slot)
        self._complete(slot, self.render_error(status, message))
        self.closing = True

    def _too_big_body(self) -> str:
        return f"request body larger than the limit of {self.limits.max_body_bytes} bytes"

    def _too_big_headers(self) -> str:
        return f"request header block larger than the limit of {self.max_header_bytes} bytes"

    def _decode(self, body: bytes, content_coding: bytes) -> bytes | None:
        """The request body in `content_coding` decompressed, inflating no more than the body limit (a zip bomb is
        a 413); None when the request was answered instead (413, 400, 415)."""
        coding = content_coding.strip().lower()
        wbits = WBITS.get(coding)
        if wbits is None:
            if coding in (b"identity", b""):
                return body
            # The body was read whole, so the connection goes on.
            error = self.render_error(415, f"unsupported Content-Encoding: {coding.decode('latin-1')}")
            self._complete(self.pending[-1], Response(415, error.body, error.content_type,
                                                      error.headers + ACCEPTED_CODINGS))
            return None
        if coding == b"deflate" and not zlib_wrapped(body):
            wbits = -zlib.MAX_WBITS
        limit = self.limits.max_body_bytes
        name = coding.decode()
        try:
            inflater = zlib.decompressobj(wbits)
            data = inflater.decompress(body, limit + 1)  # never more than limit + 1 bytes in memory
            if len(data) > limit or inflater.unconsumed_tail:
                self._fail_last(413, self._too_big_body())
                return None
            if not inflater.eof:
                raise zlib.error(f"truncated {name} stream")
            return data
        except zlib.error as e:
            self._fail_last(400, f"cannot decompress the {name} request body: {e}")
            return None

    def _fail_last(self, status: int, message: str) -> None:
        slot = self.pending[-1]
        slot.close = True
        self._complete(slot, self.render_error(status, message))

    # ---- flow control and time-outs ----

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (self.reading_paused and not self.writing_paused and len(self.pending) < MAX_PIPELINE // 2
                and self.transport is not None):
            self.reading_paused = False
            self.transport.resume_reading()

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the server: 408 for a request that stalls, close idle ones."""
        if self.transport is None or self.closing:
            return
        if self.request_started is not None and now - self.request_started > self.limits.read_timeout_s:
            self._fail(408, "the request did not arrive in time")
        elif (not self.pending and self.request_started is None
              and now - self.last_activity > self.limits.idle_timeout_s):
            self.closing = True
            self.transport.close()

    def shutdown(self) -> None:
        """Close once the answers owed are written (graceful drain)."""
        if self.transport is None:
            return
        if not self.pending:
            self.closing = True
            self.transport.close()
        else:
            self.pending[-1].close = True
