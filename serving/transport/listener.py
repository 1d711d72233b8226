"""The HTTP listener's life: its connections (the HTTP/1.1 protocol of `http.py`), their timeouts, and the
drain: a listener that stops taking handshakes without resetting the connections queued on it, and the
connections' last answers given with `Connection: close` before the grace period ends."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

from ..ops.accesslog import AccessLog
from .http import DeadlineWheel, Handler, HttpConnection, HttpLimits, Routes

log = logging.getLogger(__name__)

#: In a drain, an idle keep-alive connection is closed once it had no bytes for this long: a client that
#: just had an answer gets the time to send its next request, which is answered with `Connection: close`,
#: instead of finding its connection closed under it.
DRAIN_IDLE_S = 0.5
#: How often the read and idle timeouts of the open connections are looked at.
SWEEP_S = 1.0


class HttpListener:
    """One HTTP port: `listen()`, `sweep()` (a task: timeouts), `drain(deadline)`."""

    def __init__(self, routes: Routes, limits: HttpLimits, access_log: AccessLog | None = None) -> None:
        self.connections: set[HttpConnection] = set()
        self.server: asyncio.Server | None = None
        self.limits, self.access_log = limits, access_log
        self.routes = routes
        self.wheel: DeadlineWheel | None = None

    def connection(self) -> HttpConnection:
        """The protocol factory of the listener (and of the connections its drain accepts itself)."""
        assert self.wheel is not None
        return HttpConnection(self.routes, self.limits, self.connections, self.wheel, access_log=self.access_log,
                              render_error=self.routes.render_error, upgrade=getattr(self.routes, "upgrade", None))

    def sibling_connection(self, handler: Handler) -> Callable[[], HttpConnection]:
        """A factory for another socket served by `handler` (a worker's Unix socket): the same limits, deadlines
        and error answers, its connections not counted nor drained with this listener's."""
        def make() -> HttpConnection:
            assert self.wheel is not None
            return HttpConnection(handler, self.limits, set(), self.wheel, render_error=self.routes.render_error)
        return make

    async def listen(self, host: str, port: int, reuse_port: bool) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        if self.wheel is None:
            self.wheel = DeadlineWheel(loop)
        self.server = await loop.create_server(self.connection, host, port, backlog=1024, reuse_port=reuse_port)
        return self.server

    async def sweep(self) -> None:
        """Read and idle timeouts, for ever (a task)."""
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)

    async def close(self) -> None:
        """Stop accepting; the connections queued on the listener are served all the same."""
        if self.server is None:
            return
        queued = await close_listeners(self.server)
        if queued:
            log.info("draining: serving the %d connections queued on the listener", len(queued))
        loop = asyncio.get_running_loop()
        for conn in queued:  # into self.connections before finish() looks
            try:
                await loop.connect_accepted_socket(self.connection, conn)
            except OSError as e:
                log.warning("a connection queued on the listener could not be served: %s", e)
                conn.close()

    async def finish(self, deadline: float) -> None:
        """Answer what each connection was sent, the last answer with `Connection: close`, until `deadline`."""
        # A connection the listener accepted in this pass of the event loop is in self.connections once its
        # connection_made() has run, in the next one: an empty set before that would end the drain without it.
        await asyncio.sleep(0)
        while self.connections and time.monotonic() < deadline:
            now = time.monotonic()
            for conn in list(self.connections):
                # Polled, not marked once: a keep-alive client may send another request after its answer.
                if conn.pending or (conn.request_started is None and now - conn.last_activity >= DRAIN_IDLE_S):
                    conn.shutdown()
            await asyncio.sleep(0.02)
        if self.connections:
            log.warning("grace period over: closing %d HTTP connections with requests unanswered",
                        len(self.connections))
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()


#: A classic BPF socket filter that drops TCP segments with SYN set (the TCP header's flags, byte 13): on a
#: listener, new handshakes (their clients send the SYN again a second later, to a listener still open or
#: to a closed port that refuses it), while the handshakes already answered complete.
DROP_SYN = b"".join(struct.pack("HBBI", *op) for op in (
    (0x30, 0, 0, 13),           # ldb [13]
    (0x45, 0, 1, 0x02),         # jset #SYN, next, skip 1
    (0x06, 0, 0, 0),            # ret #0: drop
    (0x06, 0, 0, 0xFFFFFFFF),   # ret #-1: keep
))
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
#: After a listener stops taking new handshakes, how long those already answered (their ACK on its way, a
#: round trip) have to complete before it closes: a data centre's round trips are well under this.
HANDSHAKE_S = 0.1


def refuse_handshakes(listener: socket.socket) -> None:
    """From now on, `listener` takes no new TCP handshake (DROP_SYN); Linux only, else nothing."""
    program = ctypes.create_string_buffer(DROP_SYN)
    fprog = struct.pack("HP", len(DROP_SYN) // 8, ctypes.addressof(program))  # struct sock_fprog
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as e:  # pragma: no cover - not Linux
        log.warning("cannot stop new handshakes on %s before it closes: %s", listener.getsockname(), e)


async def close_listeners(server: asyncio.Server) -> list[socket.socket]:
    """Close `server`'s listening sockets, returning the connections still queued on them, to be served.

    Closing a listening socket resets every connection in its accept queue, and every handshake under way
    on it: the clients took them as accepted and are sending requests. With SO_REUSEPORT each worker's
    socket has a queue of its own that no other worker can empty, and on a busy machine a worker that is
    not running lets connections gather there. So each socket first stops taking new handshakes, the event
    loop accepts on for HANDSHAKE_S while those under way complete, and the loop's listener is then closed
    on a duplicate of the socket, which keeps the kernel's socket open for it to be accepted from until its
    queue is empty, and closed.
    """
    kept = [socket.socket(fileno=os.dup(sock.fileno())) for sock in server.sockets]
    for listener in kept:
        refuse_handshakes(listener)
    await asyncio.sleep(HANDSHAKE_S)
    server.close()
    taken: list[socket.socket] = []
    for listener in kept:
        with listener:
            listener.setblocking(False)
            while True:
                try:
                    taken.append(listener.accept()[0])
                except BlockingIOError:
                    break
                except ConnectionAbortedError:  # reset by its client while queued
                    continue
                except OSError as e:  # out of file descriptors: what is left is reset
                    log.warning("cannot accept the connections queued on %s: %s", listener.getsockname(), e)
                    break
    return taken

