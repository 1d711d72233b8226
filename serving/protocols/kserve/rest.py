"""KServe V2 REST (Open Inference Protocol): server and model health, metadata, Triton's model config and
statistics, and `POST /v2/models/<name>[/versions/<v>]/infer` (JSON, or JSON + binary tensors) as a `Call`
through the request pipeline. Errors are `{"error": ...}` with the same HTTP codes as TF Serving's, but
for the statistics of a model that is not ready, which answer 400 as Triton's do."""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from ... import __version__
from ...codecs.jsonutil import dumps
from ...core.control import ModelControl
from ...core.dataplane import Outputs
from ...core.lazy import needs_load, wait_loaded
from ...core.pipeline import Call, Inputs, Pipeline
from ...core.repository import ModelManager
from ...core.servable import Servable
from ...core.signature import Signature
from ...errors import ServingError, invalid_argument, not_found
from ...ops.statistics import Statistics, extensions
from ...transport.http import Deferred, Request, Response
from ..adapters import answer_later, answer_when
from ..tfserving.rest import ROUTE_CACHE, Answer, error_response, method_not_allowed
from . import codec

OCTET_STREAM = b"application/octet-stream"
REPOSITORY_PATH = re.compile(r"/v2/repository/models/(?P<name>[^/]+)/(?P<verb>load|unload)$")
V2_MODEL_PATH = re.compile(
    r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]*))?(?:/(?P<verb>ready|infer|config|stats))?$"
)


@dataclass(slots=True)
class KServeRestState:
    """A KServe V2 REST infer call's state: its request (the body, the Inference-Header-Content-Length), then
    the request's JSON document, whose "id" and output parameters the answer follows."""

    request: Request
    doc: dict[str, Any] | None = None


class _Infer(Answer):
    """KServe V2 errors and time-outs are TF Serving's `{"error": ...}` with the same codes."""

    @staticmethod
    def encode(call: Call[KServeRestState], outputs: Outputs) -> Response:
        doc = call.context.doc
        assert call.servable is not None and call.signature is not None and doc is not None
        body, json_length = codec.encode_rest(call.servable.model, call.servable.version, doc, outputs,
                                              call.signature)
        if json_length is None:
            return Response(200, body)
        return Response(200, body, OCTET_STREAM, b"Inference-Header-Content-Length: %d\r\n" % json_length)


INFER = _Infer()


@functools.lru_cache(maxsize=ROUTE_CACHE)  # clients repeat a few paths: parse each once
def parse_model_path(path: str) -> tuple[str, str | None, str | None] | None:
    """(name, version text, verb) of a /v2/models/... path; None when it is not one."""
    m = V2_MODEL_PATH.match(path)
    return (m["name"], m["version"], m["verb"]) if m is not None else None


def _decode(call: Call[KServeRestState], servable: Servable) -> tuple[Signature, Inputs]:
    state = call.context
    header = state.request.headers.get(codec.HEADER_LENGTH)
    try:
        length = int(header) if header is not None else None
    except ValueError:
        raise invalid_argument("Inference-Header-Content-Length must be an integer") from None
    sig, inputs, state.doc = codec.decode_rest(state.request.body, length, servable.signature)
    call.outputs = codec.requested_outputs(state.doc)  # the body's "id" is echoed, not the request id
    return sig, inputs


def _wrong_method(method: str, asked: str, path: str, verb: str | None) -> Response:
    """405 with `Allow`: an inference is a POST; a model's metadata, readiness, config and statistics a GET."""
    if verb == "infer":
        return method_not_allowed(method, asked, b"POST", "use POST with a JSON body (or JSON and binary tensors)")
    infer = f"{path[:-len(verb)]}infer" if verb is not None else f"{path}/infer"
    return method_not_allowed(method, asked, b"GET", f"to infer, POST {infer}")


def repository_request(body: bytes) -> dict[str, Any]:
    """The JSON object of a repository request; an empty body is `{}` (tritonclient's index sends one)."""
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise invalid_argument(f"the request body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise invalid_argument("the request body must be a JSON object")
    return doc


class KServeRest:
    """Routes /v2... requests."""

    error = staticmethod(error_response)

    def __init__(self, manager: ModelManager, pipeline: Pipeline, timeout_s: float,
                 statistics: Statistics | None = None, control: ModelControl | None = None) -> None:
        self.manager, self.pipeline, self.timeout_s = manager, pipeline, timeout_s
        self.statistics = statistics  # None: the statistics extension is not served
        self.control = control  # None: the model repository extension is not served
        self.extensions = extensions(statistics)

    def __call__(self, request: Request) -> Response | Deferred:
        path, method = request.path.rstrip("/"), request.method
        if method == "GET" and path == "/v2":
            return Response(200, dumps({"name": "serving-engine", "version": __version__,
                                        "extensions": self.extensions}))
        if method == "GET" and path == "/v2/health/live":
            return Response(200, b"{}")
        if method == "GET" and path == "/v2/health/ready":
            return Response(200, b"{}") if self.manager.ready() else Response(400, b'{"error": "not ready"}')
        if method == "GET" and path == "/v2/models/stats" and self.statistics is not None:
            return self._statistics("", None)
        if method == "POST" and path.startswith("/v2/repository/") and self.control is not None:
            return self._repository(self.control, path, request.body)
        route = parse_model_path(path)
        if route is None:
            raise not_found(f"Not found: {method} {request.path}")
        name, version_text, verb = route
        version = codec.parse_version(version_text)
        if method == "POST" and verb == "infer":
            request.call = call = Call("kserve_rest", name, version, None, _decode, time.monotonic() + self.timeout_s,
                                       request_id=request.request_id, carrier=request.headers,
                                       context=KServeRestState(request), unknown_output=codec.unknown_output)
            return answer_later(call, self.pipeline.infer(call), INFER)
        if method == "GET" and verb == "ready":
            try:
                self.manager.get(name, version)
            except ServingError:
                return Response(400, dumps({"error": f"model {name} is not ready"}))
            return Response(200, b"{}")
        if method == "GET" and verb == "stats" and self.statistics is not None:
            return self._statistics(name, version)
        if method != "GET" or verb not in (None, "config"):
            if verb == "infer" or method != "GET" and (verb != "stats" or self.statistics is not None):
                return _wrong_method(method, request.path, path, verb)
            self.manager.get(name, version)  # an unknown model is NOT_FOUND before the route is
            raise not_found(f"Not found: {method} {request.path}")
        if needs_load(self.pipeline, name):  # lazy mode: loaded first, as its first inference would load it
            return answer_when(wait_loaded(self.pipeline, name), lambda _: self._model_doc(name, version, verb),
                               error_response, self.timeout_s)
        return self._model_doc(name, version, verb)

    def _model_doc(self, name: str, version: int | None, verb: str | None) -> Response:
        """A model's metadata (`verb` None) or Triton's model config (`config`)."""
        try:
            servable = self.manager.get(name, version)
        except ServingError as e:
            return error_response(e)
        if verb is None:
            return Response(200, dumps(codec.model_metadata(servable, self.manager.available_versions(name))))
        return Response(200, dumps(codec.triton_config(servable, self.pipeline.dataplane.batching)))

    def _repository(self, control: ModelControl, path: str, body: bytes) -> Response | Deferred:
        """Triton's model repository extension: index, load, unload (errors `{"error": ...}`)."""
        doc = repository_request(body)
        if path == "/v2/repository/index":
            ready = doc.get("ready", False)
            if not isinstance(ready, bool):
                raise invalid_argument("\"ready\" must be true or false")
            return Response(200, dumps(control.index(ready)))
        m = REPOSITORY_PATH.match(path)
        if m is None:
            raise not_found(f"Not found: POST {path}")
        name, verb = unquote(m["name"]), m["verb"]
        parameters = doc.get("parameters", {})
        if not isinstance(parameters, dict):
            raise invalid_argument("\"parameters\" must be a JSON object")
        change = control.load(name, parameters) if verb == "load" else control.unload(name)
        return answer_when(change, lambda _: Response(200, b""), self.error, control.load_timeout_s,
                           f"the model {verb} of {name} did not finish in {control.load_timeout_s:g} s")

    def _statistics(self, name: str, version: int | None) -> Response | Deferred:
        statistics = self.statistics
        assert statistics is not None
        if statistics.tree is None:
            return Response(200, dumps(statistics.report(name, version)))  # not ready: INVALID_ARGUMENT, 400
        return answer_when(statistics.report_tree(name, version), lambda report: Response(200, dumps(report)),
                           self.error, self.timeout_s)
