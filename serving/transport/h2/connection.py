"""One HTTP/2 connection of the native gRPC server, as an asyncio.Protocol: cleartext with prior knowledge
(h2c, what gRPC clients speak), the stream state machine, flow control both ways and the limits that keep a
client from hurting the server (RFC 9113; the safety list of the gRPC transport note).

What a call does is not here: each new stream's request headers go to the `Application` (the gRPC server,
serving/transport/rpc/native.py), which gets the stream's DATA as it comes (`Call.receive`), its reset
(`Call.cancel`), and answers through `respond` (a unary answer in one piece), `send_headers`, `send_data`,
`send_trailers`, `reset`, and says when its handler stopped (`finished`).

Writes: everything one `data_received` produces is joined into one `transport.write`; what answers produce
later is gathered and written once per loop turn (call_soon). A stream counts against MAX_CONCURRENT_STREAMS
from its HEADERS until it is closed AND its handler has stopped, so a client resetting streams (rapid reset,
CVE-2023-44487) cannot have more handlers running than the limit; resets, PINGs, SETTINGS and frames that do
nothing are counted and past their budgets the connection ends with GOAWAY(ENHANCE_YOUR_CALM).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import hpack

from ...core.batching.outbox import OUTBOX
from . import frames as f
from .headers import CallHeaders, HeaderDecoder, Malformed, table_size_update

log = logging.getLogger(__name__)

#: After a connection error's GOAWAY, how long the client's bytes are still read (and dropped) before closing.
LINGER_S = 1.0
#: PING payload of the drain's first GOAWAY: its ACK says the client has seen that GOAWAY.
DRAIN_PING = b"drain\x00\x00\x00"


@dataclass(frozen=True)
class H2Limits:
    """What one connection allows (every default is what the gRPC transport note measured or grpc does)."""

    max_concurrent_streams: int = 1000
    initial_window: int = 1 << 20  # per stream, advertised
    connection_window: int = 16 << 20  # opened with a WINDOW_UPDATE on connect
    max_header_list_size: int = 16384  # decoded (RFC 7541 sizes), advertised
    max_header_block_bytes: int = 32768  # raw, HEADERS + CONTINUATION, checked before decoding
    max_table_size: int = 4096  # HPACK dynamic table (the default, not advertised)
    max_blocked_bytes: int = 64 << 20  # answers waiting for the client's windows; more: new streams refused
    reset_burst: int = 1000  # client resets (and refused streams) allowed at once ...
    reset_rate: float = 200.0  # ... and per second after
    settings_burst: int = 100
    settings_rate: float = 20.0
    idle_frame_burst: int = 1000  # frames that do nothing: empty DATA, PRIORITY, unknown types, closed streams
    idle_frame_rate: float = 200.0
    ping_min_interval_s: float = 1.0  # PINGs closer than this while we send nothing are strikes (grpc's policy)
    max_ping_strikes: int = 2
    header_timeout_s: float = 30.0  # preface, and a header block split over CONTINUATIONs, must arrive in it
    idle_timeout_s: float = 300.0  # no stream open this long: GOAWAY and close (0: never)
    max_age_s: float = 0.0  # a connection older than this is drained (0: never)
    drain_ping_timeout_s: float = 1.0  # the drain's PING unanswered this long: the final GOAWAY all the same


class H2Error(Exception):
    """A connection error (RFC 9113 5.4.1): GOAWAY with `code`, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Call(Protocol):
    """What the application hands back for a stream it accepted."""

    def receive(self, data: bytes, end_stream: bool) -> None: ...

    def cancel(self) -> None:
        """The stream was reset (by the client, or by us for its error) or the connection closed."""

    def writable(self) -> None:
        """Output that waited for the client's flow-control windows is all sent."""


class Application(Protocol):
    def begin(self, conn: H2Connection, stream: Stream, headers: CallHeaders) -> Call: ...

    def closed(self, conn: H2Connection) -> None:
        """The connection is gone (its counters are final)."""


class Budget:
    """A token bucket: `burst` at once, `rate` more per second."""

    __slots__ = ("tokens", "burst", "rate", "stamp")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.tokens, self.burst, self.rate, self.stamp = float(burst), burst, rate, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Stream:
    """One stream's HTTP/2 state; its call's state is the application's (`call`)."""

    __slots__ = ("id", "call", "remote_open", "local_open", "busy", "counted", "recv_window", "recv_unacked",
                 "send_window", "outq", "out_bytes", "out_trailers", "held")

    def __init__(self, stream_id: int, recv_window: int, send_window: int) -> None:
        self.id = stream_id
        self.call: Call | None = None
        self.remote_open = self.local_open = True
        self.busy = False  # the application's handler runs (set by it; `finished` clears it)
        self.counted = True  # counts against MAX_CONCURRENT_STREAMS
        self.recv_window, self.send_window = recv_window, send_window
        self.recv_unacked = 0  # bytes received and not yet given back with a WINDOW_UPDATE
        self.held = 0  # bytes the application keeps unread: not given back until `consumed`
        self.outq: list[memoryview] | None = None  # DATA waiting for the windows
        self.out_bytes = 0
        self.out_trailers: bytes | None = None  # the trailers after outq

    @property
    def closed(self) -> bool:
        return not (self.remote_open or self.local_open)


class H2Connection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, app: Application, limits: H2Limits, registry: set[H2Connection],
                 max_connections: int = 0, clock: Callable[[], float] | None = None) -> None:
        self.app, self.limits, self.registry, self.max_connections = app, limits, registry, max_connections
        self.loop = asyncio.get_running_loop()
        self.clock = clock or self.loop.time
        self.transport: asyncio.Transport | None = None
        self.peer_name = ""
        self.decoder = HeaderDecoder(limits.max_header_list_size, limits.max_table_size)
        self.streams: dict[int, Stream] = {}
        self.active = 0  # streams counting against the limit (open, or reset with a handler still running)
        self.last_stream_id = 0
        self.pending: list[bytes] = []  # a frame's first bytes, not all there yet
        self.pending_size, self.need = 0, 0
        self.preface = False  # the client's preface and first SETTINGS arrived
        self.continuation: tuple[int, int, list[bytes], int] | None = None  # (stream, flags, fragments, size)
        self.out: list[bytes] = []
        self.refills: list[Stream] = []  # streams whose windows are given back after this read
        self.buffered = 0  # request bytes the application holds for calls not started yet (it bounds them)
        self.reading = self.flush_scheduled = False
        self.read_paused = self.closing = False
        self.recv_window, self.recv_unacked = limits.connection_window, 0
        self.send_window = f.DEFAULT_WINDOW
        self.peer_initial_window, self.peer_max_frame = f.DEFAULT_WINDOW, f.DEFAULT_MAX_FRAME
        self.table_update = b""  # starts our next header block after the client lowered its table size
        self.blocked: dict[int, Stream] = {}  # streams with output waiting for a window
        self.blocked_bytes = 0
        self.goaway_sent = self.final_goaway = self.peer_goaway = False
        self.drain_timer: asyncio.TimerHandle | None = None
        self.linger: asyncio.TimerHandle | None = None  # a connection error's GOAWAY is written: closing soon
        now = self.clock()
        self.created = self.idle_since = self.header_started = now
        self.resets = Budget(limits.reset_burst, limits.reset_rate, now)
        self.settings_budget = Budget(limits.settings_burst, limits.settings_rate, now)
        self.idle_frames = Budget(limits.idle_frame_burst, limits.idle_frame_rate, now)
        self.last_ping, self.ping_strikes, self.sent_since_ping = -1e9, 0, True
        self.counters = {"calls": 0, "resets_received": 0, "refused": 0, "goaway": 0}
        self.handlers = self._frame_handlers()

    def _frame_handlers(self) -> dict[int, Callable[[int, int, bytes], None]]:
        """The frames other than DATA and HEADERS (which _parse calls at once), by type."""
        return {f.PRIORITY: self._priority, f.RST_STREAM: self._rst_stream, f.SETTINGS: self._settings,
                f.PUSH_PROMISE: self._push_promise, f.PING: self._ping, f.GOAWAY: self._goaway,
                f.WINDOW_UPDATE: self._window_update, f.CONTINUATION: self._continuation}

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_name = f"ipv6:[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"ipv4:{peer[0]}:{peer[1]}"
        limits = self.limits
        self._emit(f.settings({f.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                               f.INITIAL_WINDOW_SIZE: limits.initial_window,
                               f.MAX_HEADER_LIST_SIZE: limits.max_header_list_size, f.ENABLE_PUSH: 0}))
        if limits.connection_window > f.DEFAULT_WINDOW:
            self._emit(f.window_update(0, limits.connection_window - f.DEFAULT_WINDOW))
        if self.max_connections and len(self.registry) >= self.max_connections:
            self._connection_error(H2Error(f.REFUSED_STREAM, "too many connections"))
            return
        self.registry.add(self)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        if self in self.registry:
            self.registry.discard(self)
            self.app.closed(self)
        if self.drain_timer is not None:
            self.drain_timer.cancel()
        if self.linger is not None:
            self.linger.cancel()
        streams, self.streams = self.streams, {}
        self.blocked.clear()
        for stream in streams.values():
            stream.remote_open = stream.local_open = False
            if stream.call is not None:
                stream.call.cancel()

    def pause_writing(self) -> None:
        """The client does not read: stop reading it (no more answers, no more control frames to write)."""
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.pending:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size < self.need:  # a frame still incomplete: no join, no parse
                return
            data = b"".join(self.pending)
            self.pending.clear()
        self.reading = True
        try:
            used = self._parse(data) if self.preface else self._preface(data)
            if used < len(data) and not self.closing:
                self._keep(data, used)
            self._refill()
        except H2Error as e:
            self._connection_error(e)
        finally:
            self.reading = False
            self._flush()

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: close ours (what it was owed is already written)

    # ---- reading ----

    def _keep(self, data: bytes, used: int) -> None:
        """The start of a frame that is not all there yet: kept until `need` bytes are."""
        rest = data[used:]
        self.pending = [rest]
        self.pending_size = len(rest)
        if len(rest) < 9:
            self.need = 9
        else:
            self.need = 9 + (f.FRAME_HEAD.unpack_from(rest)[0] >> 8)

    def _preface(self, data: bytes) -> int:
        """The client's preface and the header of its first frame, which must be SETTINGS."""
        n = len(f.PREFACE)
        if not (data.startswith(f.PREFACE) if len(data) >= n else f.PREFACE.startswith(data)):
            raise H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 client preface (h2c with prior knowledge)")
        if len(data) < n + 9:
            self.pending, self.pending_size, self.need = [data], len(data), n + 9
            return len(data)
        if data[n + 3] != f.SETTINGS:
            raise H2Error(f.PROTOCOL_ERROR, "the client preface must be followed by SETTINGS")
        self.preface = True
        return n + self._parse(data[n:])

    def _parse(self, data: bytes) -> int:
        """Handle every whole frame in `data`; how many bytes they were."""
        pos, end = 0, len(data)
        unpack = f.FRAME_HEAD.unpack_from
        while end - pos >= 9 and not self.closing:
            type_length, flags, stream_id = unpack(data, pos)
            length = type_length >> 8
            if length > f.DEFAULT_MAX_FRAME:
                raise H2Error(f.FRAME_SIZE_ERROR, f"frame of {length} bytes, more than SETTINGS_MAX_FRAME_SIZE")
            stop = pos + 9 + length
            if stop > end:
                break
            kind = type_length & 0xFF
            payload = data[pos + 9:stop]
            pos = stop
            stream_id &= 0x7FFFFFFF
            if self.continuation is not None and kind != f.CONTINUATION:
                raise H2Error(f.PROTOCOL_ERROR, "a header block was interrupted by another frame")
            if kind == f.DATA:
                self._data(stream_id, flags, payload)
            elif kind == f.HEADERS:
                self._headers(stream_id, flags, payload)
            else:
                self.handlers.get(kind, self._unknown)(stream_id, flags, payload)
        return pos

    def _idle_frame(self) -> None:
        """A frame that makes the server work and does nothing: bounded (the 2019 floods)."""
        if not self.idle_frames.take(self.clock()):
            raise H2Error(f.ENHANCE_YOUR_CALM, "too many frames that do nothing")

    def _unknown(self, stream_id: int, flags: int, payload: bytes) -> None:
        self._idle_frame()  # an unknown type is ignored (RFC 9113 4.1), but counted

    # ---- frames ----

    def _received(self, size: int) -> None:
        """DATA of `size` bytes against the connection's window."""
        self.recv_window -= size
        if self.recv_window < 0:
            raise H2Error(f.FLOW_CONTROL_ERROR, "DATA beyond the connection's flow-control window")
        self.recv_unacked += size

    def _refill(self) -> None:
        """After a read: the windows given back (a quarter of the connection's, half a stream's at a time).
        Not during the read: what the client sent in it was sent before it could see them."""
        if self.recv_unacked >= self.limits.connection_window >> 2:
            self._emit(f.window_update(0, self.recv_unacked))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0
        refills, self.refills = self.refills, []
        for stream in refills:
            if stream.remote_open:
                self._give_back(stream)

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2Error(f.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._received(size)
        if flags & f.PADDED:
            payload = _unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise H2Error(f.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            self._idle_frame()  # closed: sent before the client saw our end of it, or a flood
            return
        if not stream.remote_open:
            self._stream_error(stream, f.STREAM_CLOSED)  # DATA after END_STREAM
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._stream_error(stream, f.FLOW_CONTROL_ERROR)
            return
        end = bool(flags & f.END_STREAM)
        if not payload and not end:
            self._idle_frame()
        stream.recv_unacked += size
        if end:
            stream.remote_open = False
        stream.call.receive(payload, end)  # type: ignore[union-attr]
        if stream.remote_open and stream.recv_unacked - stream.held >= self.limits.initial_window >> 1:
            self.refills.append(stream)

    def _give_back(self, stream: Stream) -> None:
        increment = stream.recv_unacked - stream.held
        if increment > 0:
            self._emit(f.window_update(stream.id, increment))
            stream.recv_window += increment
            stream.recv_unacked -= increment

    def consumed(self, stream: Stream, size: int) -> None:
        """The application read `size` bytes it had been holding (`stream.held`): the client may send them
        again (a streaming call's messages are held until its handler reads them)."""
        stream.held -= size
        if stream.remote_open and stream.recv_unacked - stream.held >= self.limits.initial_window >> 1:
            self._give_back(stream)
            self._write_soon()

    def _headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2Error(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & f.PADDED:
            payload = _unpad(payload)
        if flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise H2Error(f.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if f.u32(payload) & 0x7FFFFFFF == stream_id:
                flags |= 0x100  # depends on itself: a stream error once the block is decoded
            payload = payload[5:]
        if flags & f.END_HEADERS:
            self._header_block(stream_id, flags, payload)
            return
        if len(payload) > self.limits.max_header_block_bytes:
            raise H2Error(f.ENHANCE_YOUR_CALM, "header block larger than the limit")
        if not payload:
            self._idle_frame()
        self.continuation = (stream_id, flags, [payload], len(payload))
        self.header_started = self.clock()

    def _continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self.continuation is None or self.continuation[0] != stream_id:
            raise H2Error(f.PROTOCOL_ERROR, "CONTINUATION without the header block it continues")
        _, first_flags, fragments, size = self.continuation
        size += len(payload)
        if size > self.limits.max_header_block_bytes:  # before any decoding: the CONTINUATION flood
            raise H2Error(f.ENHANCE_YOUR_CALM, "header block larger than the limit")
        fragments.append(payload)
        if not flags & f.END_HEADERS:
            if not payload:
                self._idle_frame()
            self.continuation = (stream_id, first_flags, fragments, size)
            return
        self.continuation = None
        self._header_block(stream_id, first_flags, b"".join(fragments))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        if len(block) > self.limits.max_header_block_bytes:
            raise H2Error(f.ENHANCE_YOUR_CALM, "header block larger than the limit")
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._trailers(stream, flags, block)
        elif stream_id <= self.last_stream_id:
            raise H2Error(f.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}: closed, or an id not increasing")
        elif not stream_id & 1:
            raise H2Error(f.PROTOCOL_ERROR, f"HEADERS on even stream {stream_id}: clients open odd ones")
        else:
            self._open(stream_id, flags, block)

    def _decode(self, block: bytes) -> CallHeaders | None:
        """The block's call headers; None when malformed (a stream error); H2Error when it does not decode."""
        try:
            return self.decoder.request(block)
        except Malformed:
            return None
        except (hpack.HPACKError, IndexError, ValueError) as e:  # the table is lost with it
            raise H2Error(f.COMPRESSION_ERROR, f"header block does not decode: {e}") from e

    def _open(self, stream_id: int, flags: int, block: bytes) -> None:
        self.last_stream_id = stream_id
        headers = self._decode(block)  # decoded even for a stream refused: the table must stay in step
        if headers is None or flags & 0x100:
            self._emit(f.rst_stream(stream_id, f.PROTOCOL_ERROR))
            return
        if (self.active >= self.limits.max_concurrent_streams or self.final_goaway
                or self.blocked_bytes > self.limits.max_blocked_bytes):
            self.counters["refused"] += 1
            self._emit(f.rst_stream(stream_id, f.REFUSED_STREAM))
            self._count_reset()
            return
        stream = Stream(stream_id, self.limits.initial_window, self.peer_initial_window)
        self.streams[stream_id] = stream
        self.active += 1
        self.counters["calls"] += 1
        end = bool(flags & f.END_STREAM)
        stream.remote_open = not end
        stream.call = call = self.app.begin(self, stream, headers)
        if end and stream.local_open:  # not answered at once (an error): the request is all there
            call.receive(b"", True)

    def _trailers(self, stream: Stream, flags: int, block: bytes) -> None:
        """HEADERS on an open stream: the request's trailers, which must end it."""
        try:
            self.decoder.fields(block)
        except (hpack.HPACKError, IndexError, ValueError) as e:
            raise H2Error(f.COMPRESSION_ERROR, f"header block does not decode: {e}") from e
        if not stream.remote_open:
            self._stream_error(stream, f.STREAM_CLOSED)  # HEADERS after END_STREAM
        elif not flags & f.END_STREAM:
            self._stream_error(stream, f.PROTOCOL_ERROR)
        else:
            stream.remote_open = False
            stream.call.receive(b"", True)  # type: ignore[union-attr]

    def _priority(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2Error(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._emit(f.rst_stream(stream_id, f.FRAME_SIZE_ERROR))
        self._idle_frame()  # deprecated (RFC 9113 5.3.2): read and ignored

    def _rst_stream(self, stream_id: int, flags: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(f.FRAME_SIZE_ERROR, "RST_STREAM of other than 4 bytes")
        if stream_id == 0 or stream_id > self.last_stream_id:
            raise H2Error(f.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        self.counters["resets_received"] += 1
        self._count_reset()
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._drop(stream)

    def _count_reset(self) -> None:
        if not self.resets.take(self.clock()):
            raise H2Error(f.ENHANCE_YOUR_CALM, "too many streams reset")

    def _settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            raise H2Error(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise H2Error(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2Error(f.FRAME_SIZE_ERROR, "SETTINGS of a length not a multiple of 6")
        if not self.settings_budget.take(self.clock()):
            raise H2Error(f.ENHANCE_YOUR_CALM, "too many SETTINGS")
        for key, value in f.parse_settings(payload):
            self._setting(key, value)
        self._emit(f.SETTINGS_ACK)

    def _setting(self, key: int, value: int) -> None:
        if key == f.INITIAL_WINDOW_SIZE:
            if value > f.MAX_WINDOW:
                raise H2Error(f.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
            delta, self.peer_initial_window = value - self.peer_initial_window, value
            for stream in self.streams.values():  # RFC 9113 6.9.2: every open stream's window moves
                stream.send_window += delta
                if stream.send_window > f.MAX_WINDOW:
                    raise H2Error(f.FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            if delta > 0:
                self._pump()
        elif key == f.MAX_FRAME_SIZE:
            if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                raise H2Error(f.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
            self.peer_max_frame = value
        elif key in (f.ENABLE_PUSH, f.ENABLE_CONNECT_PROTOCOL):
            if value > 1:
                raise H2Error(f.PROTOCOL_ERROR, "a boolean SETTINGS value other than 0 or 1")
        elif key == f.HEADER_TABLE_SIZE and value < self.limits.max_table_size:
            self.table_update = table_size_update(value)  # we never index, but must say so (RFC 7541 4.2)

    def _push_promise(self, stream_id: int, flags: int, payload: bytes) -> None:
        raise H2Error(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            raise H2Error(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2Error(f.FRAME_SIZE_ERROR, "PING of other than 8 bytes")
        if flags & f.ACK:
            if payload == DRAIN_PING and self.goaway_sent:
                self._final_goaway()
            return
        now = self.clock()
        if not self.sent_since_ping and now - self.last_ping < self.limits.ping_min_interval_s:
            self.ping_strikes += 1
            if self.ping_strikes > self.limits.max_ping_strikes:
                raise H2Error(f.ENHANCE_YOUR_CALM, "too_many_pings")
        elif self.sent_since_ping:
            self.ping_strikes = 0
        self.last_ping, self.sent_since_ping = now, False
        self._emit(f.ping(payload, ack=True))

    def _goaway(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            raise H2Error(f.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise H2Error(f.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        self.peer_goaway = True  # the client opens no more streams: close once those open are done
        if not self.active:
            self._close_soon()

    def _window_update(self, stream_id: int, flags: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 bytes")
        increment = f.u32(payload) & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise H2Error(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise H2Error(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            if self.blocked:
                self._pump()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise H2Error(f.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # closed: allowed (RFC 9113 5.1)
        if increment == 0:
            self._stream_error(stream, f.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            self._stream_error(stream, f.FLOW_CONTROL_ERROR)
        elif stream.outq is not None or stream.out_trailers is not None:
            self._pump()

    # ---- answers (the application's side) ----

    def respond(self, stream: Stream, head: bytes, message: bytes, trailers: bytes) -> None:
        """A whole unary answer: response headers, one DATA payload (the gRPC-framed message), trailers."""
        if not stream.local_open:
            return
        size = len(message)
        limit = self.peer_max_frame
        if (size <= stream.send_window and size <= self.send_window and size <= limit and len(head) <= limit
                and len(trailers) <= limit and not self.table_update):
            stream.send_window -= size
            self.send_window -= size
            sid = stream.id
            self._emit_many((f.head(f.HEADERS, f.END_HEADERS, sid, len(head)), head,
                             f.head(f.DATA, 0, sid, size), message,
                             f.head(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, len(trailers)), trailers))
            self._end_local(stream)
            return
        self.send_headers(stream, head)
        self.send_data(stream, message)
        self.send_trailers(stream, trailers)

    def send_headers(self, stream: Stream, block: bytes, end_stream: bool = False) -> None:
        if not stream.local_open:
            return
        if self.table_update:
            block, self.table_update = self.table_update + block, b""
        self._emit(f.header_frames(stream.id, block, end_stream, self.peer_max_frame))
        if end_stream:
            self._end_local(stream)
        else:
            self._write_soon()

    def send_data(self, stream: Stream, payload: bytes) -> bool:
        """DATA within the windows, the rest queued; True when all of it went out now."""
        if not stream.local_open:
            return True
        if stream.outq is None:
            sent = self._send_within_windows(stream, memoryview(payload))
            self._write_soon()
            if sent == len(payload):
                return True
            stream.outq, stream.out_bytes = [memoryview(payload)[sent:]], len(payload) - sent
        else:
            stream.outq.append(memoryview(payload))
            stream.out_bytes += len(payload)
        self.blocked[stream.id] = stream
        self.blocked_bytes += len(payload)
        return False

    def send_trailers(self, stream: Stream, block: bytes) -> None:
        """The trailers, with END_STREAM: after the DATA still queued."""
        if stream.outq is not None:
            stream.out_trailers = block
        else:
            self.send_headers(stream, block, end_stream=True)

    def _send_within_windows(self, stream: Stream, view: memoryview) -> int:
        size = min(len(view), stream.send_window, self.send_window)
        if size <= 0:
            return 0
        stream.send_window -= size
        self.send_window -= size
        self.sent_since_ping = True
        self._emit_many(f.data_frames(stream.id, view[:size], self.peer_max_frame, False))
        return size

    def _pump(self) -> None:
        """Send what waited for the windows, stream by stream, while the connection window lasts."""
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                break
            queue = stream.outq or []
            while queue and stream.send_window > 0 and self.send_window > 0:
                sent = self._send_within_windows(stream, queue[0])
                stream.out_bytes -= sent
                self.blocked_bytes -= sent
                queue[0] = queue[0][sent:]
                if not queue[0]:
                    queue.pop(0)
            if not queue:
                self._unblocked(stream)
        self._write_soon()

    def _unblocked(self, stream: Stream) -> None:
        stream.outq = None
        self.blocked.pop(stream.id, None)
        if stream.out_trailers is not None:
            trailers, stream.out_trailers = stream.out_trailers, None
            self.send_headers(stream, trailers, end_stream=True)
        if stream.call is not None:
            stream.call.writable()

    def reset(self, stream: Stream, code: int = f.CANCEL) -> None:
        """End the stream with RST_STREAM (the application gave up on it)."""
        if stream.local_open or stream.remote_open:
            self._emit(f.rst_stream(stream.id, code))
            self._write_soon()
        self._forget(stream)
        if not stream.busy:
            self._release(stream)

    def finished(self, stream: Stream) -> None:
        """The stream's handler stopped."""
        stream.busy = False
        if stream.closed:
            self._release(stream)

    # ---- stream ends ----

    def _end_local(self, stream: Stream) -> None:
        stream.local_open = False
        self.sent_since_ping = True
        if stream.remote_open:  # answered before the request ended: it needs no more (RFC 9113 8.1)
            self._emit(f.rst_stream(stream.id, f.NO_ERROR))
            stream.remote_open = False
        self._close(stream)
        self._write_soon()

    def _stream_error(self, stream: Stream, code: int) -> None:
        """RFC 9113 5.4.2: RST_STREAM, and the call is cancelled."""
        self._emit(f.rst_stream(stream.id, code))
        self._drop(stream)

    def _drop(self, stream: Stream) -> None:
        self._forget(stream)
        if stream.call is not None:
            stream.call.cancel()
        if stream.counted and not stream.busy:
            self._release(stream)

    def _forget(self, stream: Stream) -> None:
        stream.remote_open = stream.local_open = False
        if stream.outq is not None:
            self.blocked_bytes -= stream.out_bytes
            stream.outq, stream.out_trailers = None, None
        self.blocked.pop(stream.id, None)
        self.streams.pop(stream.id, None)

    def _close(self, stream: Stream) -> None:
        """Both sides ended: the stream is closed; it stops counting once its handler has stopped too."""
        self.streams.pop(stream.id, None)
        if not stream.busy:
            self._release(stream)

    def _release(self, stream: Stream) -> None:
        if not stream.counted:
            return
        stream.counted = False
        self.active -= 1
        if not self.active:
            self.idle_since = self.clock()
            if self.final_goaway or self.peer_goaway:
                self._close_soon()

    # ---- writing ----

    def _emit(self, data: bytes) -> None:
        self.out.append(data)

    def _emit_many(self, parts: Any) -> None:
        self.out += parts

    def _write_soon(self) -> None:
        """Output made outside data_received (an answer computed later): one write at the end of this turn, or
        at the end of the batch whose answers are being made (serving/core/batching/outbox.py: written together)."""
        if not self.reading and not self.flush_scheduled and self.out:
            self.flush_scheduled = True
            held = OUTBOX.held
            if held is not None:
                held.append(self._flush)
            else:
                self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and self.linger is None:
            data = b"".join(self.out)
            self.out.clear()
            self.transport.write(data)
        elif self.out:
            self.out.clear()

    def _connection_error(self, error: H2Error) -> None:
        if self.linger is not None:
            return
        """GOAWAY, then close gently: closing with the client's bytes unread would reset the connection, which
        can destroy the GOAWAY before the client reads it; so stop writing, drop what still comes, close later."""
        if error.code != f.NO_ERROR:
            log.debug("HTTP/2 connection %s ends: %s", self.peer_name, error.message)
        self.counters["goaway"] += 1
        self._emit(f.goaway(self.last_stream_id, error.code, error.message.encode()[:256]))
        self._flush()
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
            self.linger = self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()

    def _close_soon(self) -> None:
        """Nothing left to answer after a GOAWAY (ours or the client's): close once the output is written."""
        self.closing = True
        self._flush()
        if self.transport is not None:
            self.transport.close()

    # ---- drain and time-outs ----

    def shutdown(self) -> None:
        """Graceful drain (RFC 9113 6.8): GOAWAY(2^31-1) and a PING; on its ACK (or after
        drain_ping_timeout_s) GOAWAY(the last stream id): streams up to it are answered, later ones refused."""
        if self.linger is not None and self.transport is not None:
            self.transport.close()  # it ended in error: its GOAWAY is out, no need to wait
        if self.goaway_sent or self.transport is None or self.closing:
            return
        self.goaway_sent = True
        self._emit(f.goaway(f.MAX_WINDOW, f.NO_ERROR))
        self._emit(f.ping(DRAIN_PING))
        self.drain_timer = self.loop.call_later(self.limits.drain_ping_timeout_s, self._final_goaway)
        self._flush()

    def _final_goaway(self) -> None:
        if self.final_goaway or self.transport is None:
            return
        self.final_goaway = True
        if self.drain_timer is not None:
            self.drain_timer.cancel()
        self._emit(f.goaway(self.last_stream_id, f.NO_ERROR))
        if not self.active:
            self._close_soon()
        else:
            self._write_soon()

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the server."""
        if self.transport is None or self.closing:
            return
        limits = self.limits
        if (not self.preface or self.continuation is not None) and now - self.header_started > limits.header_timeout_s:
            self._connection_error(H2Error(f.ENHANCE_YOUR_CALM, "headers did not arrive in time"))
        elif limits.idle_timeout_s and not self.active and now - self.idle_since > limits.idle_timeout_s:
            self._connection_error(H2Error(f.NO_ERROR, "idle"))
        elif limits.max_age_s and now - self.created > limits.max_age_s:
            self.shutdown()

    def abort(self) -> None:
        """The grace period is over: close now (the calls still running are cancelled)."""
        if self.transport is not None:
            self._flush()
            self.transport.abort()


def _unpad(payload: bytes) -> bytes:
    """A PADDED frame's content (RFC 9113 6.1): padding as long as the frame or longer is PROTOCOL_ERROR."""
    if not payload or payload[0] >= len(payload):
        raise H2Error(f.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1:len(payload) - payload[0]]
