"""The native gRPC transport against a client that breaks the rules: raw HTTP/2 frames (hyperframe, an hpack
Encoder) sent over a real socket to a server on 127.0.0.1 in the test's event loop, or fed to one connection
through a fake transport where the test needs to say exactly what arrives in one read. Each test checks the
answer RFC 9113 asks for, and that the server still serves a good call after it."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from serving._proto.inference import grpc_predict_v2_pb2 as pb
from serving.protocols.adapters import GrpcExchange, grpc_errors
from serving.transport.h2 import frames as f
from serving.transport.h2.connection import H2Limits
from serving.transport.rpc.native import NativeServer, new_native_server
from tests.helpers import in_loop

SERVICE = "/inference.GRPCInferenceService/"
LIVE = SERVICE + "ServerLive"
INFER = SERVICE + "ModelInfer"
READY = SERVICE + "ModelReady"


class Servicer:
    """KServe's service, as a test double: ServerLive answers, ModelInfer echoes raw_input_contents,
    ModelReady does what the model name says (`slow`: waits, and records that it was cancelled; `stubborn`:
    waits 0.3 s more after its cancellation; `fail`: raises; `abort`: aborts NOT_FOUND), ModelMetadata (under
    grpc_errors) answers the request id, ModelStreamInfer echoes each message's id."""

    SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    access_log = None

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.metadata: list[Any] = []
        self.remaining: list[float | None] = []

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's names
        return pb.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.metadata.append(context.invocation_metadata())
        if request.id == "later":
            await asyncio.sleep(0.01)
        return pb.ModelInferResponse(id=request.id, raw_output_contents=request.raw_input_contents)

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.started.append(request.name)
        self.remaining.append(context.time_remaining())
        try:
            if request.name in ("slow", "stubborn"):
                await asyncio.sleep(float(request.version or 30))
            elif request.name == "fail":
                raise RuntimeError("the handler broke")
            elif request.name == "abort":
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such model «x»", (("x-request-id", "rid"),))
        except asyncio.CancelledError:
            self.cancelled.append(request.name)
            if request.name == "stubborn":
                await asyncio.sleep(0.3)
            raise
        return pb.ModelReadyResponse(ready=True)

    @grpc_errors
    async def ModelMetadata(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        if request.name == "later":  # its context (grpc_errors' request id variable) lives across the wait
            await asyncio.sleep(0.01)
        return pb.ModelMetadataResponse(name=exchange.request_id)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802 - a control method
        return pb.RepositoryModelLoadResponse()

    async def ModelStreamInfer(self, requests: Any, context: Any) -> None:  # noqa: N802
        async for request in requests:
            await context.write(pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id=request.id)))


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[NativeServer, Servicer]]:
    servicer = Servicer()
    server = new_native_server([servicer], **options)
    await server.start("127.0.0.1", 0)
    try:
        yield server, servicer
    finally:
        await server.stop(0.5)
        while Client.opened:
            Client.opened.pop().close()
        await asyncio.sleep(0)


def framed(message: Any, flag: int = 0) -> bytes:
    data = message if isinstance(message, bytes) else message.SerializeToString()
    return bytes((flag,)) + len(data).to_bytes(4, "big") + data


def raw(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """A frame as bytes, whatever it says (hyperframe refuses to write some of the bad ones)."""
    return struct.pack(">IBI", len(payload) << 8 | kind, flags, stream_id) + payload


class Client:
    """A raw HTTP/2 client: frames out, frames in."""

    opened: list[Client] = []  # closed when the test's server stops

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        if writer is not None:
            Client.opened.append(self)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.server_settings: dict[int, int] = {}
        self.held: list[Frame] = []  # frames read while looking for another

    @classmethod
    async def connect(cls, port: int, settings: dict[int, int] | None = None) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        settings_frame = SettingsFrame(0)
        settings_frame.settings = settings or {}
        writer.write(f.PREFACE + settings_frame.serialize())
        return client

    def send(self, *frames: bytes | Frame) -> None:
        self.writer.write(b"".join(x if isinstance(x, bytes) else x.serialize() for x in frames))

    async def read(self, timeout: float = 5.0) -> Frame | None:
        """The next frame; None at the end of the connection."""
        if self.held:
            return self.held.pop(0)
        return await self._from_socket(timeout)

    async def _from_socket(self, timeout: float) -> Frame | None:
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
            frame, length = Frame.parse_frame_header(memoryview(head))
            frame.parse_body(memoryview(await self.reader.readexactly(length)))
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.server_settings.update(frame.settings)
        return frame

    async def expect(self, kind: type, stream_id: int | None = None, timeout: float = 5.0) -> Any:
        """The next frame of `kind` (on `stream_id`), the others before it kept for later reads."""
        skipped: list[Frame] = []
        held, self.held = self.held, []
        try:
            while True:
                frame = held.pop(0) if held else await self._from_socket(timeout)
                assert frame is not None, f"the connection ended before a {kind.__name__}"
                if isinstance(frame, kind) and (stream_id is None or frame.stream_id == stream_id):
                    return frame
                skipped.append(frame)
        finally:
            self.held = skipped + held + self.held

    async def goaway(self) -> GoAwayFrame:
        frame = await self.expect(GoAwayFrame)
        return frame

    async def ended(self, timeout: float = 5.0) -> None:
        """Read to the end of the connection (what the server still writes is dropped)."""
        deadline = time.monotonic() + timeout
        while await self.read(max(deadline - time.monotonic(), 0.01)) is not None:
            assert time.monotonic() < deadline, "the server did not close the connection"

    def headers(self, stream_id: int, path: str = LIVE, *metadata: tuple[str, str], end_stream: bool = False,
                end_headers: bool = True) -> HeadersFrame:
        frame = HeadersFrame(stream_id)
        frame.data = self.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                          (":authority", "localhost"), ("content-type", "application/grpc"),
                                          ("te", "trailers"), *metadata])
        for flag in (["END_HEADERS"] if end_headers else []) + (["END_STREAM"] if end_stream else []):
            frame.flags.add(flag)
        return frame

    def request(self, stream_id: int, path: str = LIVE, message: Any = b"", *metadata: tuple[str, str],
                flag: int = 0) -> list[Frame]:
        body = framed(message, flag)
        data = [DataFrame(stream_id, body[i:i + 16384]) for i in range(0, len(body), 16384)]
        data[-1].flags.add("END_STREAM")
        return [self.headers(stream_id, path, *metadata), *data]

    async def response(self, stream_id: int, timeout: float = 5.0) -> dict[str, Any]:
        """A stream's answer: {"headers": ..., "data": bytes, "trailers": {...}} or {"reset": code}."""
        answer: dict[str, Any] = {"data": b"", "headers": None, "trailers": {}}
        held, self.held = self.held, []
        try:
            while True:
                frame = held.pop(0) if held else await self._from_socket(timeout)
                assert frame is not None, "the connection ended before the answer"
                if getattr(frame, "stream_id", 0) != stream_id:
                    self.held.append(frame)
                    continue
                if isinstance(frame, RstStreamFrame):
                    answer["reset"] = frame.error_code
                    return answer
                if isinstance(frame, DataFrame):
                    answer["data"] += frame.data
                elif isinstance(frame, HeadersFrame):
                    fields = dict(self.decoder.decode(frame.data))
                    answer["trailers" if answer["headers"] is not None or "grpc-status" in fields
                           else "headers"] = fields
                if "END_STREAM" in frame.flags:
                    return answer
        finally:
            self.held = held + self.held

    async def call(self, stream_id: int, path: str = LIVE, message: Any = b"", *metadata: tuple[str, str]
                   ) -> dict[str, Any]:
        self.send(*self.request(stream_id, path, message, *metadata))
        return await self.response(stream_id)

    async def good_call(self, stream_id: int) -> None:
        """ServerLive answers live=True on this connection."""
        answer = await self.call(stream_id)
        assert answer["trailers"].get("grpc-status") == "0", answer
        assert pb.ServerLiveResponse.FromString(answer["data"][5:]).live

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def serves_another(port: int) -> None:
    """A new connection to the server gets a good answer."""
    client = await Client.connect(port)
    await client.good_call(1)
    client.close()


def status(answer: dict[str, Any]) -> tuple[str | None, str | None]:
    trailers = answer["trailers"]
    return trailers.get("grpc-status"), trailers.get("grpc-message")


# ---- a fake transport: one read says exactly what the test writes ----


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = self.reading_paused = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def frames(self) -> list[Frame]:
        out, data, pos = [], bytes(self.written), 0
        while pos + 9 <= len(data):
            frame, length = Frame.parse_frame_header(memoryview(data[pos:pos + 9]))
            frame.parse_body(memoryview(data[pos + 9:pos + 9 + length]))
            out.append(frame)
            pos += 9 + length
        self.written.clear()
        return out


def fake_connection(server: NativeServer) -> tuple[Any, FakeTransport]:
    conn = server.connection()
    transport = FakeTransport()
    conn.connection_made(transport)
    settings_frame = SettingsFrame(0)
    conn.data_received(f.PREFACE + settings_frame.serialize())
    transport.frames()
    return conn, transport


def goaway_of(frames: list[Frame]) -> GoAwayFrame:
    return next(x for x in frames if isinstance(x, GoAwayFrame))


# ---- SETTINGS ----


@in_loop
async def test_our_settings_and_connection_window_are_advertised_and_the_clients_settings_acknowledged():
    async with serving(limits=H2Limits(max_concurrent_streams=77)) as (server, _):
        client = await Client.connect(server.port, {f.INITIAL_WINDOW_SIZE: 1 << 20})
        update = await client.expect(WindowUpdateFrame, 0)
        ack = await client.expect(SettingsFrame)
        while "ACK" not in ack.flags:
            ack = await client.expect(SettingsFrame)
        assert client.server_settings == {f.MAX_CONCURRENT_STREAMS: 77, f.INITIAL_WINDOW_SIZE: 1 << 20,
                                          f.MAX_HEADER_LIST_SIZE: 16384, f.ENABLE_PUSH: 0}
        assert update.window_increment == (16 << 20) - 65535
        await client.good_call(1)


@pytest.mark.parametrize("frame, code", [
    (raw(f.SETTINGS, 0, 0, struct.pack(">HI", f.ENABLE_PUSH, 2)), f.PROTOCOL_ERROR),
    (raw(f.SETTINGS, 0, 0, struct.pack(">HI", f.INITIAL_WINDOW_SIZE, 2**31)), f.FLOW_CONTROL_ERROR),
    (raw(f.SETTINGS, 0, 0, struct.pack(">HI", f.MAX_FRAME_SIZE, 100)), f.PROTOCOL_ERROR),
    (raw(f.SETTINGS, 0, 0, struct.pack(">HI", f.MAX_FRAME_SIZE, 2**24)), f.PROTOCOL_ERROR),
    (raw(f.SETTINGS, 0, 0, b"\x00\x04\x00\x00\x00"), f.FRAME_SIZE_ERROR),
    (raw(f.SETTINGS, f.ACK, 0, b"\x00\x04\x00\x00\x00\x01"), f.FRAME_SIZE_ERROR),
    (raw(f.SETTINGS, 0, 1), f.PROTOCOL_ERROR),
    (raw(f.PING, 0, 0, b"1234567"), f.FRAME_SIZE_ERROR),
    (raw(f.PING, 0, 1, b"12345678"), f.PROTOCOL_ERROR),
    (raw(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\x00\x00\x00\x02"), f.PROTOCOL_ERROR),
    (raw(f.DATA, 0, 0, b"x"), f.PROTOCOL_ERROR),
    (raw(f.HEADERS, f.END_HEADERS, 0, b"\x82"), f.PROTOCOL_ERROR),
    (raw(f.GOAWAY, 0, 0, b"\x00"), f.FRAME_SIZE_ERROR),
    (raw(f.WINDOW_UPDATE, 0, 0, b"\x00\x00"), f.FRAME_SIZE_ERROR),
    (raw(f.RST_STREAM, 0, 0, b"\x00\x00\x00\x08"), f.PROTOCOL_ERROR),
    (raw(f.DATA, 0, 1, b"x" * 16385), f.FRAME_SIZE_ERROR),
])
@in_loop
async def test_a_frame_that_breaks_the_rules_ends_the_connection_with_its_error(frame, code):
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        client.send(frame)
        goaway = await client.goaway()
        assert goaway.error_code == code
        await client.ended()
        await serves_another(server.port)


@in_loop
async def test_a_client_that_does_not_speak_http2_with_prior_knowledge_is_closed():
    async with serving() as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
        client = Client(reader, writer)
        assert (await client.goaway()).error_code == f.PROTOCOL_ERROR
        await client.ended()
        await serves_another(server.port)


@in_loop
async def test_the_preface_must_be_followed_by_settings():
    async with serving() as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f.PREFACE + f.ping(b"12345678"))
        client = Client(reader, writer)
        assert (await client.goaway()).error_code == f.PROTOCOL_ERROR
        await serves_another(server.port)


# ---- flow control, both ways ----


@in_loop
async def test_an_answer_waits_for_the_clients_stream_window_and_goes_on_after_its_window_update():
    async with serving() as (server, _):
        client = await Client.connect(server.port, {f.INITIAL_WINDOW_SIZE: 100})
        message = pb.ModelInferRequest(id="a", raw_input_contents=[b"x" * 1000])
        client.send(*client.request(1, INFER, message))
        await client.expect(HeadersFrame, 1)
        first = await client.expect(DataFrame, 1)
        assert len(first.data) == 100
        with pytest.raises(asyncio.TimeoutError):
            await client.expect(DataFrame, 1, timeout=0.2)
        client.send(WindowUpdateFrame(1, 5000))
        answer = await client.response(1)
        assert status(answer) == ("0", None)
        assert pb.ModelInferResponse.FromString((first.data + answer["data"])[5:]).raw_output_contents == [b"x" * 1000]
        await client.good_call(3)


@in_loop
async def test_an_answer_waits_for_the_connection_window_and_goes_on_after_its_window_update():
    async with serving() as (server, _):
        client = await Client.connect(server.port, {f.INITIAL_WINDOW_SIZE: 1 << 20})
        message = pb.ModelInferRequest(id="a", raw_input_contents=[b"x" * 100_000])
        client.send(*client.request(1, INFER, message))
        received = 0
        while received < 65535:
            received += len((await client.expect(DataFrame, 1)).data)
        assert received == 65535  # the connection's default window, not more
        with pytest.raises(asyncio.TimeoutError):
            await client.expect(DataFrame, 1, timeout=0.2)
        client.send(WindowUpdateFrame(0, 1 << 20))
        answer = await client.response(1)
        assert status(answer) == ("0", None) and received + len(answer["data"]) > 100_000
        await client.good_call(3)


@in_loop
async def test_a_new_initial_window_size_moves_the_windows_of_the_open_streams():
    async with serving() as (server, _):
        client = await Client.connect(server.port, {f.INITIAL_WINDOW_SIZE: 0})
        client.send(WindowUpdateFrame(0, 1 << 20), *client.request(1, INFER, pb.ModelInferRequest(id="z")))
        await client.expect(HeadersFrame, 1)
        with pytest.raises(asyncio.TimeoutError):
            await client.expect(DataFrame, 1, timeout=0.2)
        settings_frame = SettingsFrame(0)
        settings_frame.settings = {f.INITIAL_WINDOW_SIZE: 1 << 16}
        client.send(settings_frame)
        answer = await client.response(1)
        assert status(answer) == ("0", None) and pb.ModelInferResponse.FromString(answer["data"][5:]).id == "z"
        await client.good_call(3)


@in_loop
async def test_data_beyond_a_streams_window_resets_it_flow_control_error():
    async with serving() as (server, _):
        conn, transport = fake_connection(server)
        client = Client(None, None)  # type: ignore[arg-type]  # its encoder only
        big = DataFrame(1, b"x" * 16384)
        conn.data_received(client.headers(1, INFER).serialize() + big.serialize() * 65)  # 1 MiB + 16 KiB
        resets = [x for x in transport.frames() if isinstance(x, RstStreamFrame)]
        assert [(x.stream_id, x.error_code) for x in resets] == [(1, f.FLOW_CONTROL_ERROR)]
        conn.data_received(b"".join(x.serialize() for x in client.request(3)))
        assert any(isinstance(x, DataFrame) for x in transport.frames())


@in_loop
async def test_data_beyond_the_connection_window_ends_the_connection_flow_control_error():
    async with serving(limits=H2Limits(connection_window=65535)) as (server, _):
        conn, transport = fake_connection(server)
        client = Client(None, None)  # type: ignore[arg-type]
        data = b"".join(client.headers(i, INFER).serialize() + DataFrame(i, b"x" * 16000).serialize()
                        for i in (1, 3, 5, 7, 9))
        conn.data_received(data)  # 80,000 bytes in one read: more than 65,535
        assert goaway_of(transport.frames()).error_code == f.FLOW_CONTROL_ERROR and transport.closed
        await serves_another(server.port)


@in_loop
async def test_our_windows_are_given_back_as_a_large_request_arrives():
    async with serving() as (server, _):
        client = await Client.connect(server.port, {f.INITIAL_WINDOW_SIZE: 1 << 24})
        client.send(WindowUpdateFrame(0, 1 << 24))
        message = pb.ModelInferRequest(id="big", raw_input_contents=[b"y" * (3 << 20)])
        body = framed(message)
        client.send(client.headers(1, INFER))
        sent = 0
        while sent < len(body):  # within the windows we grant: 1 MiB a stream, 16 MiB the connection
            piece = body[sent:sent + 16384]
            frame = DataFrame(1, piece)
            if sent + len(piece) == len(body):
                frame.flags.add("END_STREAM")
            client.send(frame)
            sent += len(piece)
            if sent % (512 << 10) == 0:
                await client.expect(WindowUpdateFrame, 1)
        answer = await client.response(1)
        assert status(answer) == ("0", None) and len(answer["data"]) > 3 << 20


@pytest.mark.parametrize("stream_level", [True, False])
@in_loop
async def test_a_window_update_of_zero_is_a_protocol_error(stream_level):
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        if stream_level:
            client.send(client.headers(1, READY), raw(f.WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x00"))
            assert (await client.response(1))["reset"] == f.PROTOCOL_ERROR
            await client.good_call(3)
        else:
            client.send(raw(f.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"))
            assert (await client.goaway()).error_code == f.PROTOCOL_ERROR
            await serves_another(server.port)


@pytest.mark.parametrize("stream_level", [True, False])
@in_loop
async def test_a_window_past_2_31_minus_1_is_a_flow_control_error(stream_level):
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        if stream_level:
            client.send(client.headers(1, READY), WindowUpdateFrame(1, 2**31 - 1))
            assert (await client.response(1))["reset"] == f.FLOW_CONTROL_ERROR
            await client.good_call(3)
        else:
            client.send(WindowUpdateFrame(0, 2**31 - 1))
            assert (await client.goaway()).error_code == f.FLOW_CONTROL_ERROR
            await serves_another(server.port)


@in_loop
async def test_a_settings_change_that_pushes_a_stream_window_past_2_31_minus_1_is_a_flow_control_error():
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        client.send(client.headers(1, READY), WindowUpdateFrame(1, 2**31 - 1 - 65535))
        settings_frame = SettingsFrame(0)
        settings_frame.settings = {f.INITIAL_WINDOW_SIZE: 65536}
        client.send(settings_frame)
        assert (await client.goaway()).error_code == f.FLOW_CONTROL_ERROR
        await serves_another(server.port)


# ---- streams: the limit, the state machine ----


@in_loop
async def test_streams_past_max_concurrent_streams_are_refused_and_later_ones_served():
    async with serving(limits=H2Limits(max_concurrent_streams=2)) as (server, servicer):
        client = await Client.connect(server.port)
        slow = pb.ModelReadyRequest(name="slow", version="0.3")
        client.send(*client.request(1, READY, slow), *client.request(3, READY, slow), *client.request(5))
        assert (await client.response(5))["reset"] == f.REFUSED_STREAM
        assert status(await client.response(1)) == ("0", None)
        await client.response(3)
        await client.good_call(7)
        assert server.counters()["refused"] == 1


@in_loop
async def test_a_reset_stream_counts_against_the_limit_until_its_handler_has_stopped():
    """Rapid reset (CVE-2023-44487): resetting a stream does not make room for another while its handler runs."""
    async with serving(limits=H2Limits(max_concurrent_streams=1)) as (server, servicer):
        client = await Client.connect(server.port)
        client.send(*client.request(1, READY, pb.ModelReadyRequest(name="stubborn")))
        while not servicer.started:
            await asyncio.sleep(0.01)
        client.send(RstStreamFrame(1, f.CANCEL), *client.request(3))
        assert (await client.response(3))["reset"] == f.REFUSED_STREAM  # the handler still runs (0.3 s)
        await asyncio.sleep(0.5)
        assert servicer.cancelled == ["stubborn"]
        await client.good_call(5)


@in_loop
async def test_a_flood_of_resets_ends_the_connection_enhance_your_calm():
    async with serving(limits=H2Limits(reset_burst=50, reset_rate=1.0)) as (server, servicer):
        client = await Client.connect(server.port)
        for stream_id in range(1, 400, 2):
            client.send(client.headers(stream_id, READY), RstStreamFrame(stream_id, f.CANCEL))
        goaway = await client.goaway()
        assert goaway.error_code == f.ENHANCE_YOUR_CALM and b"reset" in goaway.additional_data
        await client.ended()
        await serves_another(server.port)


@in_loop
async def test_data_on_an_idle_stream_is_a_protocol_error():
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        client.send(DataFrame(5, b"x"))
        assert (await client.goaway()).error_code == f.PROTOCOL_ERROR
        await serves_another(server.port)


@in_loop
async def test_data_on_a_closed_stream_is_ignored_and_counted():
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        await client.good_call(1)
        client.send(DataFrame(1, b"late"))
        await client.good_call(3)


@in_loop
async def test_headers_or_data_after_end_stream_reset_the_stream_stream_closed():
    async with serving() as (server, servicer):
        client = await Client.connect(server.port)
        client.send(*client.request(1, READY, pb.ModelReadyRequest(name="slow")))
        client.send(DataFrame(1, b"more"))
        assert (await client.response(1))["reset"] == f.STREAM_CLOSED
        client.send(*client.request(3, READY, pb.ModelReadyRequest(name="slow")))
        client.send(client.headers(3, READY, end_stream=True))
        assert (await client.response(3))["reset"] == f.STREAM_CLOSED
        await client.good_call(5)
        await asyncio.sleep(0.05)
        assert servicer.cancelled == ["slow", "slow"]


@pytest.mark.parametrize("case", ["even", "not increasing", "rst on idle", "window update on idle"])
@in_loop
async def test_stream_ids_must_be_odd_and_increasing(case):
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        await client.good_call(5)
        frame = {"even": client.headers(8, end_stream=True), "not increasing": client.headers(3, end_stream=True),
                 "rst on idle": RstStreamFrame(9, f.CANCEL), "window update on idle": WindowUpdateFrame(9, 1)}[case]
        client.send(frame)
        assert (await client.goaway()).error_code == f.PROTOCOL_ERROR
        await serves_another(server.port)


@in_loop
async def test_a_header_block_interrupted_by_another_frame_is_a_protocol_error():
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        block = client.headers(1).data
        first = HeadersFrame(1, block[:5])
        client.send(first, PingFrame(0, b"12345678"))
        assert (await client.goaway()).error_code == f.PROTOCOL_ERROR
        await serves_another(server.port)


@in_loop
async def test_a_malformed_request_resets_its_stream_and_the_connection_goes_on():
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        client.send(client.headers(1, LIVE, ("connection", "close"), end_stream=True))
        assert (await client.response(1))["reset"] == f.PROTOCOL_ERROR
        await client.good_call(3)


# ---- header blocks ----


@in_loop
async def test_a_header_block_is_capped_across_continuations_before_it_is_decoded():
    async with serving(limits=H2Limits(max_header_block_bytes=4096)) as (server, _):
        client = await Client.connect(server.port)
        junk = b"\xff" * 1000  # would not decode: the cap must come first (ENHANCE_YOUR_CALM, not COMPRESSION)
        client.send(HeadersFrame(1, junk), *[ContinuationFrame(1, junk) for _ in range(10)])
        assert (await client.goaway()).error_code == f.ENHANCE_YOUR_CALM
        await serves_another(server.port)


@in_loop
async def test_a_continuation_flood_of_empty_frames_is_bounded():
    async with serving(limits=H2Limits(idle_frame_burst=20, idle_frame_rate=1.0)) as (server, _):
        client = await Client.connect(server.port)
        client.send(HeadersFrame(1, client.headers(1).data[:3]), *[ContinuationFrame(1, b"") for _ in range(50)])
        assert (await client.goaway()).error_code == f.ENHANCE_YOUR_CALM
        await serves_another(server.port)


@in_loop
async def test_a_header_list_past_max_header_list_size_ends_the_connection():
    """An HPACK bomb: one 4 KB entry in the table, then a small block that names it 20 times."""
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        fields = [(":method", "POST"), (":scheme", "http"), (":path", LIVE), ("content-type", "application/grpc")]
        plain = hpack.Encoder().encode([(k, v, True) for k, v in fields])  # never indexed: the table stays empty
        entry = hpack.Encoder().encode([("x-big", "b" * 4000)], huffman=False)  # indexed: entry 62
        bomb = plain + entry + bytes([0x80 | 62]) * 20  # 4 KB that decode to 80 KB
        client.send(raw(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, bomb))
        assert (await client.goaway()).error_code == f.COMPRESSION_ERROR
        await serves_another(server.port)


@in_loop
async def test_a_table_size_past_ours_ends_the_connection_compression_error():
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        client.encoder.header_table_size = 65536
        client.send(client.headers(1, end_stream=True))
        assert (await client.goaway()).error_code == f.COMPRESSION_ERROR
        await serves_another(server.port)


@in_loop
async def test_a_lower_table_size_from_the_client_is_acknowledged_in_our_next_block():
    async with serving() as (server, _):
        client = await Client.connect(server.port, {f.HEADER_TABLE_SIZE: 0})
        client.send(*client.request(1))
        first = await client.expect(HeadersFrame, 1)
        assert first.data[0] == 0x20  # a dynamic table size update to 0 (RFC 7541 6.3) starts it
        assert status(await client.response(1)) == ("0", None)
        client.send(*client.request(3))
        assert (await client.expect(HeadersFrame, 3)).data[0] != 0x20  # once


# ---- floods ----


@in_loop
async def test_pings_are_answered_until_they_come_too_often_while_we_send_nothing():
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        for i in range(3):
            client.send(PingFrame(0, b"ping%04d" % i))
            ack = await client.expect(PingFrame)
            assert "ACK" in ack.flags and ack.opaque_data == b"ping%04d" % i
        client.send(PingFrame(0, b"ping0004"))
        goaway = await client.goaway()
        assert goaway.error_code == f.ENHANCE_YOUR_CALM and goaway.additional_data == b"too_many_pings"
        await serves_another(server.port)


@in_loop
async def test_pings_between_answers_are_not_strikes():
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        for stream_id in range(1, 21, 2):
            client.send(PingFrame(0, b"12345678"))
            await client.good_call(stream_id)
            await client.expect(PingFrame)


@in_loop
async def test_a_settings_flood_ends_the_connection_enhance_your_calm():
    async with serving(limits=H2Limits(settings_burst=20, settings_rate=1.0)) as (server, _):
        client = await Client.connect(server.port)
        client.send(*[SettingsFrame(0) for _ in range(50)])
        assert (await client.goaway()).error_code == f.ENHANCE_YOUR_CALM
        await serves_another(server.port)


@pytest.mark.parametrize("flood", ["empty data", "priority", "unknown type"])
@in_loop
async def test_a_flood_of_frames_that_do_nothing_ends_the_connection_enhance_your_calm(flood):
    async with serving(limits=H2Limits(idle_frame_burst=100, idle_frame_rate=1.0)) as (server, _):
        client = await Client.connect(server.port)
        client.send(client.headers(1, READY))
        frame = {"empty data": raw(f.DATA, 0, 1), "priority": raw(f.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
                 "unknown type": raw(0x20, 0, 1, b"x")}[flood]
        client.send(frame * 500)
        assert (await client.goaway()).error_code == f.ENHANCE_YOUR_CALM
        await serves_another(server.port)


@in_loop
async def test_the_connection_stops_reading_a_client_that_does_not_read_its_answers():
    async with serving() as (server, _):
        client = await Client.connect(server.port, {f.INITIAL_WINDOW_SIZE: 1 << 24})
        client.send(WindowUpdateFrame(0, 2**31 - 1 - 65535))
        message = pb.ModelInferRequest(raw_input_contents=[b"z" * (1 << 20)])
        for stream_id in range(1, 101, 2):
            client.send(*client.request(stream_id, INFER, message))
        await asyncio.sleep(0.5)
        (conn,) = server.connections
        assert conn.read_paused  # the socket buffers are full: no more requests read, no more answers made
        for stream_id in range(1, 101, 2):
            assert status(await client.response(stream_id, timeout=10)) == ("0", None)
        assert not conn.read_paused
        await client.good_call(101)


@in_loop
async def test_new_streams_are_refused_while_answers_wait_for_the_clients_windows():
    async with serving(limits=H2Limits(max_blocked_bytes=1000)) as (server, _):
        client = await Client.connect(server.port, {f.INITIAL_WINDOW_SIZE: 0})
        client.send(*client.request(1, INFER, pb.ModelInferRequest(raw_input_contents=[b"q" * 5000])))
        await client.expect(HeadersFrame, 1)
        client.send(*client.request(3))
        assert (await client.response(3))["reset"] == f.REFUSED_STREAM
        client.send(WindowUpdateFrame(1, 10000))
        assert status(await client.response(1)) == ("0", None)
        settings_frame = SettingsFrame(0)
        settings_frame.settings = {f.INITIAL_WINDOW_SIZE: 65535}
        client.send(settings_frame)
        await client.good_call(5)


# ---- gRPC over the stream: sizes, deadlines, cancellation, compression ----


@in_loop
async def test_a_message_past_the_limit_is_resource_exhausted_and_the_connection_goes_on():
    async with serving(max_message_bytes=1000) as (server, _):
        client = await Client.connect(server.port)
        answer = await client.call(1, INFER, pb.ModelInferRequest(raw_input_contents=[b"x" * 2000]))
        assert answer["trailers"]["grpc-status"] == "8" and "larger than max" in answer["trailers"]["grpc-message"]
        await client.good_call(3)


@in_loop
async def test_a_deadline_answers_deadline_exceeded_and_cancels_the_handler():
    async with serving() as (server, servicer):
        client = await Client.connect(server.port)
        started = time.monotonic()
        answer = await client.call(1, READY, pb.ModelReadyRequest(name="slow"), ("grpc-timeout", "100m"))
        assert status(answer) == ("4", "Deadline Exceeded") and time.monotonic() - started < 1.0
        await asyncio.sleep(0.01)
        assert servicer.cancelled == ["slow"] and 0 < servicer.remaining[0] <= 0.1
        await client.good_call(3)


@in_loop
async def test_a_grpc_timeout_that_does_not_parse_is_internal():
    async with serving() as (server, _):
        client = await Client.connect(server.port)
        answer = await client.call(1, LIVE, b"", ("grpc-timeout", "123456789S"))
        assert answer["trailers"]["grpc-status"] == "13"
        await client.good_call(3)


@in_loop
async def test_the_clients_reset_cancels_the_handler():
    async with serving() as (server, servicer):
        client = await Client.connect(server.port)
        client.send(*client.request(1, READY, pb.ModelReadyRequest(name="slow")))
        while not servicer.started:
            await asyncio.sleep(0.01)
        client.send(RstStreamFrame(1, f.CANCEL))
        await asyncio.sleep(0.05)
        assert servicer.cancelled == ["slow"] and server.counters()["resets_received"] == 1
        await client.good_call(3)


@pytest.mark.parametrize("coding, flag, body, expected", [
    ("gzip", 1, gzip.compress(pb.ModelInferRequest(id="g").SerializeToString()), "0"),
    (None, 1, gzip.compress(b""), "13"),  # compressed flag, no grpc-encoding: INTERNAL
    ("snappy", 1, b"\x00", "12"),  # an unknown coding: UNIMPLEMENTED, with grpc-accept-encoding
    ("gzip", 1, gzip.compress(b"\x00" * 5000), "8"),  # inflates past the limit: RESOURCE_EXHAUSTED
    ("gzip", 2, b"", "13"),
])
@in_loop
async def test_compressed_messages_are_read_or_refused(coding, flag, body, expected):
    async with serving(max_message_bytes=4096) as (server, _):
        client = await Client.connect(server.port)
        metadata = [("grpc-encoding", coding)] if coding else []
        client.send(*client.request(1, INFER, body, *metadata, flag=flag))
        answer = await client.response(1)
        assert answer["trailers"]["grpc-status"] == expected, answer
        if expected == "12":
            assert answer["trailers"]["grpc-accept-encoding"] == "identity,deflate,gzip"
        if expected == "0":
            assert pb.ModelInferResponse.FromString(answer["data"][5:]).id == "g"
        await client.good_call(3)


@pytest.mark.parametrize("level, accepted, coding", [(1, "identity,deflate,gzip", "gzip"),
                                                     (3, "identity,deflate,gzip", "deflate"),
                                                     (1, "identity", None), (0, "gzip", None)])
@in_loop
async def test_answers_are_compressed_as_the_servers_level_and_the_clients_accept_encoding_allow(level, accepted,
                                                                                                 coding):
    async with serving(compression_level=level) as (server, _):
        client = await Client.connect(server.port)
        message = pb.ModelInferRequest(id="c", raw_input_contents=[b"abc" * 1000])
        answer = await client.call(1, INFER, message, ("grpc-accept-encoding", accepted))
        assert answer["headers"].get("grpc-encoding") == coding and status(answer) == ("0", None)
        data = answer["data"]
        assert data[0] == (1 if coding else 0)
        body = zlib.decompress(data[5:], 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS) \
            if coding else data[5:]
        assert pb.ModelInferResponse.FromString(body).raw_output_contents == [b"abc" * 1000]


# ---- the connection's life: idle, age, limits, drain ----


@in_loop
async def test_an_idle_connection_is_told_goaway_and_closed():
    async with serving(limits=H2Limits(idle_timeout_s=0.1)) as (server, _):
        client = await Client.connect(server.port)
        await client.good_call(1)
        (conn,) = server.connections
        conn.check_timeouts(conn.clock() + 1.0)
        goaway = await client.goaway()
        assert (goaway.error_code, goaway.last_stream_id) == (f.NO_ERROR, 1)
        await client.ended()
        await serves_another(server.port)


@in_loop
async def test_a_client_that_sends_no_preface_in_time_is_closed():
    async with serving(limits=H2Limits(header_timeout_s=0.1)) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)
        (conn,) = server.connections
        conn.check_timeouts(conn.clock() + 1.0)
        client = Client(reader, writer)
        assert (await client.goaway()).error_code == f.ENHANCE_YOUR_CALM
        await serves_another(server.port)


@in_loop
async def test_a_connection_past_its_max_age_is_drained():
    async with serving(limits=H2Limits(max_age_s=0.1)) as (server, _):
        client = await Client.connect(server.port)
        client.send(*client.request(1, READY, pb.ModelReadyRequest(name="slow", version="0.2")))
        await asyncio.sleep(0.05)
        (conn,) = server.connections
        conn.check_timeouts(conn.clock() + 1.0)
        assert (await client.goaway()).last_stream_id == 2**31 - 1
        ping = await client.expect(PingFrame)
        client.send(PingFrame(0, ping.opaque_data, flags=["ACK"]))
        assert (await client.goaway()).last_stream_id == 1
        assert status(await client.response(1)) == ("0", None)
        await client.ended()
        await serves_another(server.port)


@in_loop
async def test_connections_past_max_connections_are_told_goaway():
    async with serving(max_connections=1) as (server, _):
        first = await Client.connect(server.port)
        await first.good_call(1)
        second = await Client.connect(server.port)
        assert (await second.goaway()).last_stream_id == 0
        await second.ended()
        await first.good_call(3)


@in_loop
async def test_the_drain_answers_the_calls_in_flight_then_closes():
    async with serving() as (server, servicer):
        client = await Client.connect(server.port)
        client.send(*client.request(1, READY, pb.ModelReadyRequest(name="slow", version="0.3")))
        while not servicer.started:
            await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(server.stop(5.0))
        assert (await client.goaway()).last_stream_id == 2**31 - 1
        ping = await client.expect(PingFrame)
        assert ping.opaque_data == b"drain\x00\x00\x00"
        client.send(*client.request(3, READY, pb.ModelReadyRequest(name="slow", version="0.1")))  # before the ACK
        client.send(PingFrame(0, ping.opaque_data, flags=["ACK"]))
        assert (await client.goaway()).last_stream_id == 3
        assert status(await client.response(1)) == ("0", None)
        assert status(await client.response(3)) == ("0", None)
        await client.ended()
        await stopping
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)


@in_loop
async def test_the_drain_cancels_what_is_still_running_when_the_grace_period_ends():
    async with serving() as (server, servicer):
        client = await Client.connect(server.port)
        client.send(*client.request(1, READY, pb.ModelReadyRequest(name="slow")))
        while not servicer.started:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await server.stop(0.3)
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.01)
        assert servicer.cancelled == ["slow"]
        await client.ended()
