"""`serving queue`: the queue service alone, serving any number of queues by name (`/api/predict/<name>` and
`/api/predict/<name>/sink`, made on first use) on one store, with `/healthz`, `/readyz` and `/metrics`.
Engines subscribe to it over its WebSocket API; on SIGTERM it closes its watchers' WebSockets (what they held
goes to the next watcher), answers the requests it has and exits 0."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..errors import ServingError
from ..protocols.tfserving.codec import encode_connection_error, encode_error
from ..transport.auth import TokenAuth, read_token_file
from ..transport.http import Deferred, HttpLimits, Request, Response
from ..transport.listener import HttpListener
from .api import QueueApi, error_response
from .metrics import QueueCollector
from .queue import QueueLimits
from .service import QueueService, open_store

log = logging.getLogger("serving.queue")


class QueueRoutes:
    """The standalone service's routes: the queues (with the token), health, readiness, metrics."""

    def __init__(self, api: QueueApi, registry: CollectorRegistry, auth: TokenAuth | None) -> None:
        self.api, self.registry, self.auth = api, registry, auth
        self.draining = False

    def __call__(self, request: Request) -> Response | Deferred:
        path = request.path
        if request.method == "GET" and path in ("/healthz", "/readyz", "/metrics"):
            if path == "/metrics":
                return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())
            if path == "/readyz" and self.draining:
                return Response(503, b'{"status": "draining"}')
            return Response(200, b'{"status": "ready"}' if path == "/readyz" else b'{"status": "live"}')
        try:
            if self.auth is not None and path.startswith("/api/predict/"):
                self.auth.check_http(request.method, path, request.headers, request.body)
        except ServingError as e:
            return error_response(e)
        answer = self.api(request)
        return answer if answer is not None else Response(404, encode_error(f"Not found: {request.method} {path}"))

    def upgrade(self, request: Request, transport: asyncio.Transport, rest: bytes) -> Response | None:
        try:
            if self.auth is not None:
                self.auth.check_http(request.method, request.path, request.headers, request.body)
        except ServingError as e:
            return error_response(e)
        return self.api.upgrade(request, transport, rest)

    @staticmethod
    def render_error(status: int, message: str) -> Response:
        return Response(status, encode_connection_error(message))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="serving queue", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    ap.add_argument("--port", type=int, default=8080, help="HTTP port (default: 8080)")
    ap.add_argument("--store", default="sqlite:queues.db",
                    help="sqlite:PATH (default: sqlite:queues.db) or redis://host:port/db (Redis: every replica in "
                    "front of one Redis serves the same queues); a put is durable before its index is answered")
    ap.add_argument("--token", default="", help="Authorization token of every queue request (default: none)")
    ap.add_argument("--token_file", default="", help="read the token from the first line of this file")
    ap.add_argument("--max_length", type=int, default=10000, help="items an input queue holds (default: 10000)")
    ap.add_argument("--sink_max_length", type=int, default=10000, help="items a sink holds (default: 10000)")
    ap.add_argument("--max_payload_bytes", type=int, default=8 << 20, help="largest item (default: 8 MiB)")
    ap.add_argument("--termination_grace_period_seconds", type=float, default=30.0,
                    help="on SIGTERM, the longest drain (default: 30)")
    return ap


async def serve(args: argparse.Namespace) -> int:
    token = read_token_file(args.token_file) if args.token_file else args.token
    service = QueueService(open_store(args.store, Path("queues.db")),
                           QueueLimits(args.max_length, args.max_payload_bytes),
                           QueueLimits(args.sink_max_length, args.max_payload_bytes))
    api = QueueApi(service.lookup)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(lambda: list(service.queues.values())))
    routes = QueueRoutes(api, registry, TokenAuth(token) if token else None)
    listener = HttpListener(routes, HttpLimits())
    await listener.listen(args.host, args.port, reuse_port=False)
    log.info("queue service listening on %s:%d, store %s", args.host, args.port, args.store)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    sweep = asyncio.create_task(listener.sweep())
    await stopping.wait()
    routes.draining = True
    api.close()
    await listener.close()
    await listener.finish(time.monotonic() + args.termination_grace_period_seconds)
    sweep.cancel()
    service.close()
    log.info("stopped")
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))
