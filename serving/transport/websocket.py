"""WebSocket connections (RFC 6455) on the HTTP port: an HTTP/1.1 connection that asks to switch (http.py's
`upgrade` hook) hands its transport to a `WebSocket`, whose framing, handshake answer, pings and close are
wsproto's (sans-IO: it turns bytes into events and events into bytes; the asyncio transport stays ours).

The owner of a WebSocket is told of each whole message (`on_message`) and of its end (`on_close`, once, on a
close frame, a broken frame or a dropped connection); it sends with `send()` and ends it with `close()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .http import Request as HttpRequest

log = logging.getLogger(__name__)

#: The largest message a peer may send (its fragments together); a larger one closes the connection (1009).
MAX_MESSAGE_BYTES = 1 << 20


def wants_websocket(request: HttpRequest) -> bool:
    return request.method == "GET" and request.headers.get(b"upgrade", b"").lower() == b"websocket"


class WebSocket(asyncio.Protocol):
    """One WebSocket connection, server side."""

    def __init__(self, on_message: Callable[[bytes], None], on_close: Callable[[], None]) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.on_message, self.on_close = on_message, on_close
        self.transport: asyncio.Transport | None = None
        self.parts: list[bytes] = []
        self.size = 0
        self.closed = False

    def accept(self, request: HttpRequest, transport: asyncio.Transport, rest: bytes) -> bool:
        """Answer the handshake of `request` (101) and take `transport` over; False when the request is no
        valid WebSocket handshake (nothing was written: the caller answers it)."""
        key = request.headers.get(b"sec-websocket-key", b"")
        version = request.headers.get(b"sec-websocket-version", b"")
        handshake = (b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n\r\n" % (key, version))
        try:
            self.ws.receive_data(handshake)
            if not any(isinstance(e, Request) for e in self.ws.events()):
                return False
            answer = self.ws.send(AcceptConnection())
        except (RemoteProtocolError, LocalProtocolError):
            return False
        transport.write(answer)
        transport.set_protocol(self)
        self.transport = transport
        if rest:
            self.data_received(rest)
        return True

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.ws.receive_data(data)
        try:
            for event in self.ws.events():
                self._event(event)
        except RemoteProtocolError as e:
            log.info("WebSocket closed: %s", e)
            hint = e.event_hint
            try:
                self._write(self.ws.send(hint if isinstance(hint, CloseConnection) else CloseConnection(code=1002)))
            except LocalProtocolError:
                pass  # the close frame cannot be sent in this state: the connection just closes
            self._end()

    def _event(self, event: object) -> None:
        if isinstance(event, Message):
            self.size += len(event.data)
            if self.size > MAX_MESSAGE_BYTES:
                self.close(1009, f"message larger than {MAX_MESSAGE_BYTES} bytes")
                return
            self.parts.append(event.data.encode() if isinstance(event, TextMessage) else event.data)
            if event.message_finished:
                message, self.parts, self.size = b"".join(self.parts), [], 0
                self.on_message(message)
        elif isinstance(event, Ping):
            self._write(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self._write(self.ws.send(event.response()))
            self._end()

    def send(self, data: bytes) -> None:
        """One binary message."""
        if not self.closed:
            self._write(self.ws.send(BytesMessage(data=data)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
            self._end()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and data:
            self.transport.write(data)

    def _end(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed:
            self.closed = True
            self.on_close()
