"""A client of a remote queue service (`serving queue`, or the cloud's) on asyncio: its HTTP API (put, commit)
over kept-alive HTTP/1.1 connections (h11, which wsproto is built on), and a watcher's WebSocket (wsproto,
sans-IO on an asyncio connection) that yields each item pushed to it, answering pings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import Request as WsRequest
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .._proto.eas import queueservice_pb2
from .store import Item

log = logging.getLogger(__name__)

#: Bytes read from a socket at once.
READ_BYTES = 1 << 16
#: The largest message a watcher takes (an item with its tags); a larger one drops the connection.
MAX_MESSAGE_BYTES = 64 << 20


class QueueClientError(Exception):
    """The queue service refused a request (`status`, its body) or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


def endpoint_address(endpoint: str) -> tuple[str, int]:
    """`http://host:port` (or `host:port`) -> (host, port); the port defaults to 80."""
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"queue endpoint {endpoint!r}: expected http://host:port")
    return url.hostname, url.port or 80


class _Connection:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    async def exchange(self, request: h11.Request, body: bytes) -> tuple[int, bytes]:
        sent = [self.h11.send(request), self.h11.send(h11.Data(data=body)), self.h11.send(h11.EndOfMessage())]
        self.writer.write(b"".join(data for data in sent if data))
        await self.writer.drain()
        status, parts = 0, []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.reader.read(READ_BYTES))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the queue service closed the connection")

    def reusable(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        self.writer.close()


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.wait_closed()
    except (OSError, RuntimeError):
        pass  # it ended badly: it is closed all the same


class QueueHttp:
    """Requests to one queue service, each on an idle kept-alive connection or a new one."""

    def __init__(self, host: str, port: int, token: str = "", timeout_s: float = 30.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.headers = [("host", f"{host}:{port}"), ("user-agent", "serving-engine")]
        if token:
            self.headers.append(("authorization", token))
        self.idle: list[_Connection] = []
        self.closed: list[asyncio.StreamWriter] = []

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        """(status, body); raises QueueClientError(0, ...) when the service cannot be reached."""
        for attempt in range(2):
            reused = bool(self.idle)
            connection = self.idle.pop() if reused else None
            try:
                if connection is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                            self.timeout_s)
                    connection = _Connection(reader, writer)
                request = h11.Request(method=method, target=target,
                                      headers=[*self.headers, ("content-length", str(len(body)))])
                status, answer = await asyncio.wait_for(connection.exchange(request, body), self.timeout_s)
            except (OSError, TimeoutError, h11.ProtocolError) as e:
                if connection is not None:
                    connection.close()
                    self.closed.append(connection.writer)
                if reused and attempt == 0:
                    continue  # a kept-alive connection the service had closed meanwhile: once more on a new one
                raise QueueClientError(0, f"queue service {self.host}:{self.port}: {e or type(e).__name__}") from e
            except BaseException:
                if connection is not None:
                    connection.close()
                raise
            if connection.reusable():
                self.idle.append(connection)
            else:
                connection.close()
            return status, answer
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close the idle connections (and wait until they and those closed before are)."""
        for connection in self.idle:
            connection.close()
        writers = [*self.closed, *(connection.writer for connection in self.idle)]
        self.idle.clear()
        self.closed.clear()
        await asyncio.gather(*(_wait_closed(writer) for writer in writers))


class Watch:
    """A watcher's WebSocket on `target` (`/api/predict/<name>?_watch_=true&_window_=N`): `items()` yields each
    item pushed, until the connection ends; `close()` ends it with a close frame."""

    def __init__(self, host: str, port: int, target: str, token: str = "", timeout_s: float = 30.0) -> None:
        self.host, self.port, self.target, self.token, self.timeout_s = host, port, target, token, timeout_s
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None

    async def open(self) -> None:
        """Connect and shake hands; QueueClientError when the service refuses or cannot be reached."""
        try:
            self.reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                         self.timeout_s)
            self.writer = writer
            headers = [(b"authorization", self.token.encode())] if self.token else []
            writer.write(self.ws.send(WsRequest(host=f"{self.host}:{self.port}", target=self.target,
                                                     extra_headers=headers)))
            await asyncio.wait_for(self._handshake(), self.timeout_s)
        except (OSError, TimeoutError, RemoteProtocolError, LocalProtocolError) as e:
            self.close()
            raise QueueClientError(0, f"queue service {self.host}:{self.port}: {e or type(e).__name__}") from e
        except BaseException:
            self.close()
            raise

    async def _handshake(self) -> None:
        assert self.reader is not None
        status, parts = 0, []
        while True:
            data = await self.reader.read(READ_BYTES)
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise QueueClientError(status, "WebSocket refused")
                elif isinstance(event, RejectData):
                    parts.append(event.data)
                    if event.body_finished:
                        raise QueueClientError(status, b"".join(parts).decode("utf-8", "replace"))
            if not data:
                raise ConnectionError("the queue service closed the connection during the handshake")

    async def items(self) -> AsyncIterator[Item]:
        """Each item pushed, in turn; ends when the connection does (a close frame, EOF, a broken frame)."""
        assert self.reader is not None
        parts: list[bytes] = []
        size, ended = 0, False
        try:
            while True:
                # Events first: what came with the handshake's answer (the first items) is parsed already.
                for event in self.ws.events():
                    if isinstance(event, Message):
                        size += len(event.data)
                        if size > MAX_MESSAGE_BYTES:
                            raise ConnectionError(f"a message larger than {MAX_MESSAGE_BYTES} bytes")
                        parts.append(event.data.encode() if isinstance(event, TextMessage) else event.data)
                        if event.message_finished:
                            message, parts, size = b"".join(parts), [], 0
                            yield decode_item(message)
                    elif isinstance(event, Ping):
                        self._write(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self._write(self.ws.send(event.response()))
                        return
                if ended:
                    return
                data = await self.reader.read(READ_BYTES)
                ended = not data
                self.ws.receive_data(data or None)
        except (OSError, RemoteProtocolError, LocalProtocolError) as e:
            log.info("queue watcher connection ended: %s", e)
        finally:
            self.close(send=False)

    def _write(self, data: bytes) -> None:
        if self.writer is not None and data and not self.writer.is_closing():
            self.writer.write(data)

    def close(self, send: bool = True) -> None:
        """End the connection (with a close frame when it is open and `send`)."""
        if send:
            try:
                self._write(self.ws.send(CloseConnection(code=1000, reason="the subscriber is stopping")))
            except LocalProtocolError:
                pass  # not open
        if self.writer is not None:
            self.writer.close()

    async def wait_closed(self) -> None:
        if self.writer is not None:
            await _wait_closed(self.writer)


def decode_item(message: bytes) -> Item:
    frame = queueservice_pb2.DataFrameProto.FromString(message)
    return Item(frame.index, frame.data, dict(frame.tags))
