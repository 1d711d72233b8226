"""The HTTP router: which protocol answers a path, the token check, health, readiness and metrics.

Each protocol's REST adapter (serving/protocols/*/rest.py) answers its paths with a `Response` at once
(status, metadata, errors) or a `Deferred` (inference through the request pipeline); a ServingError it
raises is answered in that protocol's error format. The HTTP connection's own errors (serving/transport/
http.py: a request it cannot parse or accept) are written by `RestApi.render_error`, in the same shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..codecs.jsonutil import dumps
from ..core.control import ModelControl
from ..core.pipeline import Pipeline
from ..core.repository import ModelManager
from ..errors import ServingError
from ..ops.metrics import Metrics
from ..ops.statistics import Statistics
from ..transport.auth import TokenAuth
from ..transport.http import Deferred, Request, Response
from .adapters import answer_when
from .cloud.rest import CloudRest
from .express import RestExpress
from .kserve.rest import KServeRest
from .tfserving.codec import encode_connection_error, encode_error
from .tfserving.rest import TfServingRest

PROMETHEUS = CONTENT_TYPE_LATEST.encode()
TEXT = b"text/plain; charset=utf-8"
#: The routes `GET /` lists for an API client (README.md's "HTTP API" has them all).
INDEX_ROUTES = """\
  POST /v1/models/<m>:predict              TF Serving REST: {"instances": [...]} or {"inputs": ...}
  GET  /v1/models/<m>[/metadata]           a model's versions; its signatures
  GET  /v1/models                          every model
  POST /v2/models/<m>/infer                KServe V2 (Open Inference Protocol)
  GET  /v2/models/<m>                      KServe V2 model metadata
  POST /api/predict/<m>                    the cloud processor protocol
  GET  /healthz, /readyz, /metrics         liveness, readiness, Prometheus"""
#: The most model names `GET /` lists.
INDEX_MODELS = 20
#: The paths that load and unload models (Triton's repository API): the admin token's, when one is set.
CONTROL_PREFIX = "/v2/repository/models/"


class QueueRoutes(Protocol):
    """The queues' HTTP API as the router sees it (serving/queue/api.py)."""

    def __call__(self, request: Request) -> Response | Deferred | None: ...

    def upgrade(self, request: Request, transport: asyncio.Transport, rest: bytes) -> Response | None: ...


def _wants_html(request: Request) -> bool:
    """A browser asking for `/` (API clients send no `Accept: text/html`: they get the routes)."""
    return b"text/html" in request.headers.get(b"accept", b"")


class RestApi:
    """Routes one HTTP request; the `__call__` is the connection's handler."""

    def __init__(
        self,
        manager: ModelManager,
        pipeline: Pipeline,
        *,
        timeout_s: float,
        keepalive_s: float = 5.0,
        default_model: Callable[[], str | None],
        auth: TokenAuth | None = None,
        metrics: Metrics | None = None,
        statistics: Statistics | None = None,
        workers_ready: Callable[[], str] | None = None,
        control: ModelControl | None = None,
        pages: Callable[[Request], Response | Deferred] | None = None,
        admin_auth: TokenAuth | None = None,
    ) -> None:
        self.manager, self.auth = manager, auth
        self.workers_ready = workers_ready  # under a supervisor: "ready/count" of the workers, for /readyz
        #: The token of the calls that load and unload (the repository API), when it is not `auth`'s.
        self.admin_auth = admin_auth
        self.timeout_s = timeout_s
        self.metrics = metrics or Metrics(manager)
        self.tfserving = TfServingRest(manager, pipeline, timeout_s)
        self.kserve = KServeRest(manager, pipeline, timeout_s, statistics, control)
        self.cloud = CloudRest(manager, pipeline, keepalive_s, default_model)
        #: The connections take the common predict of TF Serving's REST API, KServe V2's REST infer and the cloud
        #: processor protocol from here (serving/protocols/express.py).
        self.express = RestExpress(self, manager, pipeline, timeout_s, keepalive_s)
        self.pages = pages  # the status page (serving/tools/ui `StatusApi.route`)
        #: Set by the server on SIGTERM: readiness answers not ready while requests are still served.
        self.draining = False
        #: An async service's queues (serving/queue/api.py `QueueApi`): they answer the `/api/predict/` paths
        #: naming a queue (None: not one of theirs), and their WebSocket watchers (`upgrade`).
        self.queues: QueueRoutes | None = None

    def upgrade(self, request: Request, transport: asyncio.Transport, rest: bytes) -> Response | None:
        """A request to switch protocols (the HTTP connection's hook): a queue watcher's WebSocket, with the
        token of the predict routes; anything else is refused 400."""
        if self.queues is None or not request.path.startswith("/api/predict/"):
            return Response(400, encode_connection_error("protocol upgrades are not supported"))
        try:
            if self.auth is not None:
                self.auth.check_http(request.method, request.path, request.headers, request.body)
        except ServingError as e:
            return self.cloud.error(e)
        return self.queues.upgrade(request, transport, rest)

    @staticmethod
    def render_error(status: int, message: str) -> Response:
        """An error of the HTTP connection itself (the listener hands it to every connection)."""
        return Response(status, encode_connection_error(message))

    def __call__(self, request: Request) -> Response | Deferred:
        path = request.path
        if path.startswith("/v1/"):
            adapter: TfServingRest | KServeRest | CloudRest = self.tfserving
        elif path.startswith("/v2"):
            if self.draining and path == "/v2/health/ready":
                return Response(400, b'{"error": "not ready: draining"}')
            adapter = self.kserve
        elif path.startswith("/ui") or path == "/" and request.method == "GET":
            return self._page(request)
        elif path.startswith("/api/predict/") or path == "/":
            adapter = self.cloud
        elif request.method == "GET" and path in ("/healthz", "/readyz", "/metrics", "/monitoring/prometheus/metrics"):
            return self._server_route(path)
        else:
            return Response(404, encode_error(f"Not found: {request.method} {path}"))
        try:
            auth = self.auth
            if self.admin_auth is not None and path.startswith(CONTROL_PREFIX):
                auth = self.admin_auth
            if auth is not None and (request.method == "POST" or path.startswith("/api/predict")):
                auth.check_http(request.method, path, request.headers, request.body)
            if self.queues is not None and adapter is self.cloud:
                answer = self.queues(request)
                if answer is not None:
                    return answer
            return adapter(request)
        except ServingError as e:
            return adapter.error(e)

    def _page(self, request: Request) -> Response | Deferred:
        """The status page (/ui...); `GET /`: the page for a browser, the routes for an API client (curl)."""
        if request.path == "/" and (self.pages is None or not _wants_html(request)):
            return Response(200, self._index(), TEXT)
        if self.pages is None:
            return Response(404, encode_error(f"Not found: {request.method} {request.path}"))
        return self.pages(request)

    def _index(self) -> bytes:
        """`GET /` from an API client: the models, where the status page is and the main routes."""
        names = sorted(self.manager.models)
        more = f" and {len(names) - INDEX_MODELS} more" if len(names) > INDEX_MODELS else ""
        lines = [f"serving-engine {__version__}: {len(names)} model(s)"
                 + (f": {', '.join(names[:INDEX_MODELS])}{more}" if names else "")]
        if self.pages is not None:
            lines.append("status page: /ui (open it in a browser); documentation: /ui/docs")
        lines += ["", "routes:", INDEX_ROUTES]
        default = self.cloud.default_model()
        if default is not None:
            lines.append(f"  {'POST /':<41}the cloud processor protocol, model {default}")
        return "\n".join(lines).encode() + b"\n"

    def _server_route(self, path: str) -> Response | Deferred:
        if path == "/healthz":
            return Response(200, b'{"status": "live"}')
        if path == "/readyz":
            if self.draining:
                return Response(503, b'{"status": "draining"}')
            if self.manager.ready():
                return Response(200, b'{"status": "ready"}')
            waiting = sorted(n for n, m in self.manager.models.items() if m.latest is None)
            doc: dict[str, object] = {"status": "not ready", "models_without_available_version": waiting}
            if self.workers_ready is not None:
                doc["workers_ready"] = self.workers_ready()
            return Response(503, dumps(doc))
        if self.metrics.tree is None:
            return Response(200, self.metrics.render(), PROMETHEUS)
        return answer_when(self.metrics.render_tree(), lambda text: Response(200, text, PROMETHEUS),
                           lambda e: Response(e.http_status, encode_error(e.message)), self.timeout_s)
