"""The gRPC servers (grpc.aio): the inference port and ModelMesh's runtime port are each one of these, with
the token checks, our tolerant registration of the services (serving/transport/rpc/decode.py) and their access log."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from ...ops.accesslog import AccessLog
from ..auth import TokenAuth
from .decode import add_services
from .interceptors import TokenInterceptor

log = logging.getLogger("serving")

#: --grpc_compression -> grpc's compression level (grpc_compression_level: none, low, medium, high). A level, not
#: an algorithm: per call, grpc then picks an algorithm the client named in its `grpc-accept-encoding` (low:
#: gzip, else deflate; high: deflate, else gzip), and none for a client that names neither. A server-wide
#: algorithm (grpc.aio.server's `compression=`) is sent to every client, and one that does not accept it fails
#: the call ("Compression algorithm 'gzip' is disabled"). Compressed requests (`grpc-encoding`) are read either way.
COMPRESSION_LEVELS = {"none": 0, "gzip": 1, "deflate": 3}


def answer_compression(name: str) -> int:
    """--grpc_compression's grpc compression level (0: none); a ValueError for a name it does not know."""
    try:
        return COMPRESSION_LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"--grpc_compression: expected none, gzip or deflate, got {name!r}") from None


def new_server(services: list[Any], *, auth: TokenAuth | None, admin_auth: TokenAuth | None,
               access_log: AccessLog | None, reuse_port: bool, max_message_bytes: int = 0,
               compression_level: int = 0) -> grpc.aio.Server:
    """A server holding `services` (each writes its calls to `access_log`), checking the token of every call
    but health's and the admin token of control calls (none: open), on a port shared with sibling workers
    when `reuse_port`, compressing its answers at `compression_level` (answer_compression) for the clients
    that accept it."""
    options: list[tuple[str, int]] = [("grpc.so_reuseport", 1 if reuse_port else 0)]
    if max_message_bytes:
        options += [("grpc.max_receive_message_length", max_message_bytes),
                    ("grpc.max_send_message_length", max_message_bytes)]
    if compression_level:
        options.append(("grpc.default_compression_level", compression_level))
    checks = [TokenInterceptor(auth, access_log, admin_auth)] if auth is not None or admin_auth is not None else []
    server = grpc.aio.server(interceptors=checks, options=options)
    for service in services:  # read by adapters.grpc_errors
        service.access_log = access_log
    add_services(server, *services)
    return server


async def listen(server: grpc.aio.Server, host: str, port: int, name: str, serves: str) -> None:
    """Start `server` on `host:port` (every interface for 0.0.0.0 or ::); OSError when it cannot listen."""
    host = "[::]" if host in ("0.0.0.0", "::") else host
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {name} {host}:{port}")
    await server.start()
    log.info("gRPC (%s) listening on %s:%d", serves, host, port)
