"""The HTTP routes: TF Serving's REST API, the cloud processor JSON route, health and model listing.

Each handler turns a `Request` into a `Response` at once (status, metadata, errors) or a `Deferred`
(predictions); decoding and encoding live in `serving.codecs`, the work in the data plane.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..auth import TokenAuth
from ..codecs import eas, eas_proto, examples, kserve, tfserving
from ..codecs.jsonutil import dumps, loads
from ..dataplane import DataPlane, Outputs, error_of, examples_input
from ..errors import EAS_STATUS, HTTP_STATUS, Code, ServingError, invalid_argument, not_found
from ..metrics import Metrics
from ..repository import ModelManager, Servable
from ..signature import Signature
from .protocol import Deferred, Request, Response

ROUTE_CACHE = 4096
OCTET_STREAM = b"application/octet-stream"
PROMETHEUS = CONTENT_TYPE_LATEST.encode()
MODEL_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?/?$",
    re.IGNORECASE,
)
V2_MODEL_PATH = re.compile(
    r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]*))?(?:/(?P<verb>ready|infer|config))?$"
)
EAS_PATH = re.compile(r"/api/predict/(?P<name>[^/]+)/?$")


def _parse_model_path(path: str) -> tuple[str | None, int | None, str | None, str | None, bool]:
    """(name, version, label, verb, metadata) of a /v1/models/... path; name None when malformed.

    As TF Serving (http_rest_api_util.cc): the path matches whatever the case, but only the lower-case
    verb is dispatched (`:PREDICT` is a malformed request) and only `/metadata` is the metadata route."""
    m = MODEL_PATH.match(path)
    verb = m["verb"] if m is not None else None
    if m is None or (verb and m["metadata"]) or (verb is not None and not verb.islower()):
        return None, None, None, None, False
    version = int(m["version"]) if m["version"] is not None else None
    return m["name"], version, m["label"], verb, m["metadata"] == "/metadata"


def _tf_finish(future: asyncio.Future[Outputs], row_format: bool) -> Response:
    err = error_of(future)
    if err is not None:
        return tf_error(err)
    try:
        return Response(200, tfserving.encode_predict(future.result(), row_format))
    except ServingError as e:
        return tf_error(e)


def _v2_finish(future: asyncio.Future[Outputs], context: tuple[Servable, Signature, dict[str, Any]]) -> Response:
    err = error_of(future)
    if err is not None:
        return tf_error(err)
    servable, sig, doc = context
    try:
        body, json_length = kserve.encode_rest(servable.model, servable.version, doc, future.result(), sig)
    except ServingError as e:
        return tf_error(e)
    if json_length is None:
        return Response(200, body)
    return Response(200, body, OCTET_STREAM, b"Inference-Header-Content-Length: %d\r\n" % json_length)


def _examples_finish(future: asyncio.Future[Outputs], context: tuple[str, int]) -> Response:
    err = error_of(future)
    if err is not None:
        return tf_error(err)
    verb, n = context
    try:
        encode = examples.encode_classify if verb == "classify" else examples.encode_regress
        return Response(200, encode(future.result(), n))
    except ServingError as e:
        return tf_error(e)


def _eas_proto_finish(future: asyncio.Future[Outputs], context: tuple[Any, list[str]]) -> Response:
    err = error_of(future)
    if err is not None:
        return eas_error(err)
    encode, names = context
    return Response(200, encode(future.result(), names), OCTET_STREAM)


def _eas_finish(future: asyncio.Future[Outputs], records: bool) -> Response:
    err = error_of(future)
    if err is not None:
        return eas_error(err)
    return Response(200, eas.encode_json(future.result(), records))


def tf_error(err: ServingError) -> Response:
    return Response(HTTP_STATUS.get(err.code, 500), tfserving.encode_error(err.message))


def eas_error(err: ServingError) -> Response:
    return Response(EAS_STATUS.get(err.code, 500), tfserving.encode_error(err.message))


class RestApi:
    """Routes one HTTP request; the `__call__` is the connection's handler."""

    def __init__(
        self,
        manager: ModelManager,
        dataplane: DataPlane,
        *,
        timeout_s: float,
        keepalive_s: float = 5.0,
        default_model: Callable[[], str | None],
        auth: TokenAuth | None = None,
    ) -> None:
        self.auth = auth
        self.metrics = Metrics(manager)
        self.manager, self.dataplane = manager, dataplane
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self.default_model = default_model
        self._routes: dict[str, tuple[str | None, int | None, str | None, str | None, bool]] = {}
        self._v2_routes: dict[str, tuple[str, str | None, str | None] | None] = {}

    def __call__(self, request: Request) -> Response | Deferred:
        path = request.path
        try:
            if self.auth is not None and (request.method == "POST" or path.startswith("/api/predict")):
                self.auth.check_http(request.method, path, request.headers, request.body)
            if path.startswith("/v1/"):
                return self._tf_serving(request)
            if path.startswith("/v2"):
                return self._kserve(request)
            if path.startswith("/api/predict/") or path == "/":
                return self._eas(request)
            if request.method == "GET":
                if path == "/healthz":
                    return Response(200, b'{"status": "live"}')
                if path == "/readyz":
                    return self._ready()
                if path in ("/metrics", "/monitoring/prometheus/metrics"):
                    return Response(200, self.metrics.render(), PROMETHEUS)
            return Response(404, tfserving.encode_error(f"Not found: {request.method} {path}"))
        except ServingError as e:
            return eas_error(e) if path.startswith("/api/predict") or path == "/" else tf_error(e)

    # ---- TF Serving REST ----

    def _tf_serving(self, request: Request) -> Response | Deferred:
        path = request.path
        if path.rstrip("/") == "/v1/models" and request.method == "GET":
            return Response(200, self._list_models())
        route = self._routes.get(path)
        if route is None:
            route = self._routes[path] = _parse_model_path(path)
            if len(self._routes) > ROUTE_CACHE:
                self._routes.clear()
        name, version, label, verb, metadata = route
        if name is None or (verb is None) != (request.method == "GET") or request.method not in ("GET", "POST"):
            raise invalid_argument(f"Malformed request: {request.method} {path}")
        if verb is None:
            if metadata:
                servable = self.manager.get(name, version, label)
                return Response(200, tfserving.encode_metadata(servable))
            return Response(200, tfserving.encode_status(self.manager.status(name, version, label)))
        return self._tf_infer(request, name, version, label, verb)

    def _tf_infer(
        self, request: Request, name: str, version: int | None, label: str | None, verb: str
    ) -> Response | Deferred:
        servable = self.manager.get(name, version, label)
        doc = loads(request.body)
        sig = servable.signature(tfserving.signature_name(doc))
        if verb != "predict":
            return self._examples(servable, sig, doc, verb)
        inputs, row_format = tfserving.decode_predict(doc, sig)
        deadline = time.monotonic() + self.timeout_s
        future = self.dataplane.infer(servable, sig, inputs, deadline, verb)
        return Deferred(future, _tf_finish, row_format, deadline, self._tf_timeout)

    def _examples(self, servable: Servable, sig: Signature, doc: dict[str, Any], verb: str) -> Deferred:
        """`:classify` / `:regress`: JSON examples -> serialized tf.Examples -> the processor's method."""
        name = examples_input(servable, sig, verb, f"{verb}: it serves predict only")
        serialized = examples.examples_from_json(doc, verb)
        deadline = time.monotonic() + self.timeout_s
        future = self.dataplane.infer(servable, sig, {name: serialized}, deadline, verb)
        return Deferred(future, _examples_finish, (verb, len(serialized)), deadline, self._tf_timeout)

    def _tf_timeout(self) -> Response:
        return tf_error(ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def _list_models(self) -> bytes:
        models: list[dict[str, Any]] = []
        for name, model in sorted(self.manager.models.items()):
            models.append({
                "name": name,
                "platform": model.spec.platform or "",
                "base_path": model.spec.base_path,
                "labels": model.labels,
                "model_version_status": [
                    {"version": str(s.version), "state": s.state.value}
                    for s in sorted(model.versions.values(), key=lambda s: -s.version)
                ],
            })
        return dumps({"models": models})

    def _ready(self) -> Response:
        waiting = sorted(n for n, m in self.manager.models.items() if m.latest is None)
        if self.manager.ready():
            return Response(200, b'{"status": "ready"}')
        return Response(503, dumps({"status": "not ready", "models_without_available_version": waiting}))

    # ---- KServe V2 REST ----

    def _kserve(self, request: Request) -> Response | Deferred:
        path, method = request.path.rstrip("/"), request.method
        if method == "GET" and path == "/v2":
            return Response(200, dumps({"name": "serving-engine", "version": __version__,
                                        "extensions": ["binary_tensor_data"]}))
        if method == "GET" and path == "/v2/health/live":
            return Response(200, b"{}")
        if method == "GET" and path == "/v2/health/ready":
            return Response(200, b"{}") if self.manager.ready() else Response(400, b'{"error": "not ready"}')
        if path in self._v2_routes:
            route = self._v2_routes[path]
        else:
            m = V2_MODEL_PATH.match(path)
            route = self._v2_routes[path] = (m["name"], m["version"], m["verb"]) if m is not None else None
            if len(self._v2_routes) > ROUTE_CACHE:
                self._v2_routes.clear()
        if route is None:
            raise not_found(f"Not found: {method} {request.path}")
        name, version_text, verb = route
        version = kserve.parse_version(version_text)
        if method == "GET" and verb == "ready":
            try:
                self.manager.get(name, version)
            except ServingError:
                return Response(400, dumps({"error": f"model {name} is not ready"}))
            return Response(200, b"{}")
        servable = self.manager.get(name, version)
        if method == "GET" and verb is None:
            return Response(200, dumps(kserve.model_metadata(servable, self.manager.available_versions(name))))
        if method == "GET" and verb == "config":
            return Response(200, dumps(kserve.triton_config(servable, self.dataplane.batching)))
        if method != "POST" or verb != "infer":
            raise not_found(f"Not found: {method} {request.path}")
        header = request.headers.get(kserve.HEADER_LENGTH)
        try:
            length = int(header) if header is not None else None
        except ValueError:
            raise invalid_argument("Inference-Header-Content-Length must be an integer") from None
        sig, inputs, doc = kserve.decode_rest(request.body, length, servable.signature)
        deadline = time.monotonic() + self.timeout_s
        future = self.dataplane.infer(servable, sig, inputs, deadline)
        return Deferred(future, _v2_finish, (servable, sig, doc), deadline, self._tf_timeout)

    # ---- cloud processor (EAS) route ----

    def _eas(self, request: Request) -> Response | Deferred:
        if request.method not in ("POST", "GET") or (request.method == "GET" and request.path == "/"):
            raise ServingError(Code.NOT_FOUND, f"Not found: {request.method} {request.path} (predict with POST)")
        if request.path == "/":
            name = self.default_model()
            if name is None:
                raise not_found("no default model: name one with POST /api/predict/<model>")
        else:
            m = EAS_PATH.match(request.path)
            if m is None:
                raise not_found(f"Not found: {request.path}")
            name = m["name"]
        servable = self.manager.get(name)
        if request.method == "GET":
            return Response(200, dumps(eas.signature_json(servable.signature(None))))
        deadline = time.monotonic() + self.keepalive_s
        if eas_proto.looks_like_json(request.body):
            sig = servable.signature(None)
            inputs = eas.decode_json(loads(request.body), sig)
            future = self.dataplane.infer(servable, sig, inputs, deadline)
            return Deferred(future, _eas_finish, sig.records, deadline, self._eas_timeout)
        assert servable.processor is not None
        if servable.processor.positional_inputs:
            sig = servable.signature(None)
            inputs, names = eas_proto.decode_pytorch(request.body, sig)
            encode = eas_proto.encode_pytorch
        else:
            sig, inputs, names = eas_proto.decode_tf(request.body, servable.signature)
            encode = eas_proto.encode_tf
        future = self.dataplane.infer(servable, sig, inputs, deadline)
        return Deferred(future, _eas_proto_finish, (encode, names), deadline, self._eas_timeout)

    def _eas_timeout(self) -> Response:
        return eas_error(ServingError(Code.DEADLINE_EXCEEDED, "request timed out"))


