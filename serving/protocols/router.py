"""The HTTP router: which protocol answers a path, the token check, health, readiness and metrics.

Each protocol's REST adapter (serving/protocols/*/rest.py) answers its paths with a `Response` at once
(status, metadata, errors) or a `Deferred` (inference through the request pipeline); a ServingError it
raises is answered in that protocol's error format.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from ..codecs.jsonutil import dumps
from ..core.control import ModelControl
from ..core.pipeline import Pipeline
from ..core.repository import ModelManager
from ..errors import ServingError
from ..ops.metrics import Metrics
from ..ops.statistics import Statistics
from ..platform.workers import Peers
from ..tools import ui
from ..tools.ui import StatusApi
from ..transport.auth import TokenAuth
from ..transport.http import Deferred, Request, Response
from .adapters import answer_when
from .cloud.rest import CloudRest
from .kserve.rest import KServeRest
from .tfserving.codec import encode_error
from .tfserving.rest import TfServingRest

PROMETHEUS = CONTENT_TYPE_LATEST.encode()
HTML = b"text/html; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"
NO_STORE = b"Cache-Control: no-store\r\n"
#: The paths that load and unload models (Triton's repository API): the admin token's, when one is set.
CONTROL_PREFIX = "/v2/repository/models/"


def _wants_html(request: Request) -> bool:
    """A browser asking for `/` (API clients, which send no `Accept: text/html`, keep today's answer)."""
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
        peers: Peers | None = None,
        control: ModelControl | None = None,
        status: StatusApi | None = None,
        admin_auth: TokenAuth | None = None,
    ) -> None:
        self.manager, self.auth, self.peers = manager, auth, peers
        #: The token of the calls that load and unload (the repository API), when it is not `auth`'s.
        self.admin_auth = admin_auth
        self.timeout_s = timeout_s
        self.metrics = metrics or Metrics(manager)
        self.tfserving = TfServingRest(manager, pipeline, timeout_s)
        self.kserve = KServeRest(manager, pipeline, timeout_s, statistics, control)
        self.cloud = CloudRest(manager, pipeline, keepalive_s, default_model)
        self.status = status  # the status page's JSON (serving/ui)
        #: Set by the server on SIGTERM: readiness answers not ready while requests are still served.
        self.draining = False

    def __call__(self, request: Request) -> Response | Deferred:
        path = request.path
        if path.startswith("/v1/"):
            adapter: TfServingRest | KServeRest | CloudRest = self.tfserving
        elif path.startswith("/v2"):
            if self.draining and path == "/v2/health/ready":
                return Response(400, b'{"error": "not ready: draining"}')
            adapter = self.kserve
        elif path.startswith("/ui") or path == "/" and request.method == "GET" and _wants_html(request):
            return self._ui_route(request)
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
            return adapter(request)
        except ServingError as e:
            return adapter.error(e)

    def _ui_route(self, request: Request) -> Response | Deferred:
        """The status page (`/`, `/ui`), its JSON (`/ui/api/status`, behind the token when there is one) and
        the README it links to (`/ui/docs`)."""
        path = request.path.rstrip("/") or "/"
        if request.method != "GET":
            return Response(405, encode_error(f"Method not allowed: {request.method} {request.path}"))
        if path in ("/", "/ui"):
            return Response(200, ui.page(), HTML, ui.PAGE_HEADERS)
        if path == "/ui/docs":
            return Response(200, ui.readme(), TEXT)
        if path != "/ui/api/status" or self.status is None:
            return Response(404, encode_error(f"Not found: GET {request.path}"))
        try:
            if self.auth is not None:
                self.auth.check_http("GET", path, request.headers, b"")
            since = ui.since_of(request.query)
        except ServingError as e:
            return Response(e.http_status, encode_error(e.message))
        return answer_when(self.status.document(since), lambda doc: Response(200, dumps(doc), headers=NO_STORE),
                           lambda e: Response(e.http_status, encode_error(e.message)), self.timeout_s)

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
            if self.peers is not None:
                doc["workers_ready"] = f"{self.peers.count_ready()}/{self.peers.count}"
            return Response(503, dumps(doc))
        if self.peers is None:
            return Response(200, self.metrics.render(), PROMETHEUS)
        return answer_when(self.metrics.render_tree(self.peers), lambda text: Response(200, text, PROMETHEUS),
                           lambda e: Response(e.http_status, encode_error(e.message)), self.timeout_s)
