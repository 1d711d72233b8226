"""TF Serving's REST API: `/v1/models/<name>[/versions/<n> | /labels/<l>][:predict | :classify | :regress]`,
`/metadata`, model status and the model list. Predict, classify and regress are `Call`s through the request
pipeline; errors are TF Serving's `{"error": ...}` with its HTTP codes."""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ...codecs import examples
from ...codecs.arrays import convert
from ...codecs.jsonutil import dumps, loads
from ...core.dataplane import Outputs
from ...core.lazy import needs_load, wait_loaded
from ...core.model_config import version_number
from ...core.pipeline import Call, Inputs, Pipeline
from ...core.repository import ModelManager
from ...core.servable import Servable
from ...core.signature import Signature, TensorSpec
from ...errors import HTTP_STATUS, Code, ServingError, invalid_argument
from ...redact import redact
from ...transport.http import Deferred, Request, Response
from ..adapters import answer_later, answer_when
from . import codec

ROUTE_CACHE = 4096
MODEL_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>-?[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?/?$",
    re.IGNORECASE,
)
Route = tuple[str | None, int | None, str | None, str | None, bool]


@functools.lru_cache(maxsize=ROUTE_CACHE)  # clients repeat a few paths: parse each once
def parse_model_path(path: str) -> Route:
    """(name, version, label, verb, metadata) of a /v1/models/... path; name None when malformed.

    As TF Serving (http_rest_api_util.cc): the path matches whatever the case, but only the lower-case
    verb is dispatched (`:PREDICT` is a malformed request) and only `/metadata` is the metadata route."""
    m = MODEL_PATH.match(path)
    verb = m["verb"] if m is not None else None
    if m is None or (verb and m["metadata"]) or (verb is not None and not verb.islower()):
        return None, None, None, None, False
    version = version_number(m["version"]) if m["version"] is not None else None
    return m["name"], version, m["label"], verb, m["metadata"] == "/metadata"


def error_response(error: ServingError) -> Response:
    return Response(HTTP_STATUS.get(error.code, 500), codec.encode_error(error.message))


def method_not_allowed(method: str, path: str, allowed: bytes, hint: str) -> Response:
    """405 with `Allow`, as `{"error": ...}` (the TF Serving and KServe V2 REST error format; TF Serving itself
    answers 400 `Malformed request`): a route that exists, asked with a method it does not take."""
    return Response(405, codec.encode_error(f"Method not allowed: {method} {path}: {hint}"),
                    headers=b"Allow: " + allowed + b"\r\n")


def _wrong_method(method: str, path: str, name: str, version: int | None, label: str | None,
                  verb: str | None) -> Response:
    """A predict, classify or regress is a POST; a model's status and metadata a GET."""
    if verb is not None:
        return method_not_allowed(method, path, b"POST", "use POST with a JSON body")
    at = f"/versions/{version}" if version is not None else f"/labels/{label}" if label is not None else ""
    return method_not_allowed(method, path, b"GET", f"use GET for the model's status or metadata; to predict, "
                                                    f"POST /v1/models/{name}{at}:predict")


class Answer:
    """The answers of TF Serving's REST API (errors, time-outs)."""

    TIMEOUT = ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def on_timeout(self) -> Response:
        return self.error(self.TIMEOUT)

    @staticmethod
    def error(error: ServingError) -> Response:
        return error_response(error)


@dataclass(slots=True)
class TfRestState:
    """A TF Serving REST call's state: its body, and once a predict body is decoded, whether it used the row
    format (`instances`), as its answer must (`predictions`)."""

    body: bytes
    row_format: bool = False


class _Predict(Answer):
    @staticmethod
    def encode(call: Call[TfRestState], outputs: Outputs) -> Response:
        return Response(200, codec.encode_predict(outputs, call.context.row_format))


class _Examples(Answer):
    @staticmethod
    def encode(call: Call[TfRestState], outputs: Outputs) -> Response:
        assert call.inputs is not None
        n = len(next(iter(call.inputs.values())))
        encode = examples.encode_classify if call.method == "classify" else examples.encode_regress
        return Response(200, encode(outputs, n))


PREDICT, EXAMPLES = _Predict(), _Examples()


def _decode_predict(call: Call[TfRestState], servable: Servable) -> tuple[Signature, Inputs]:
    state = call.context
    doc = loads(state.body)
    sig = servable.signature(codec.signature_name(doc))
    inputs, state.row_format = codec.decode_predict(doc, sig)
    return sig, inputs


def _decode_examples(call: Call[TfRestState], servable: Servable) -> tuple[Signature, Inputs]:
    """`:classify` / `:regress`: JSON examples -> serialized tf.Examples for the processor's method."""
    doc = loads(call.context.body)
    sig = servable.signature(codec.signature_name(doc))
    name = examples.examples_input(servable, sig, call.method, f"{call.method}: it serves predict only")
    return sig, {name: examples.examples_from_json(doc, call.method)}


def instances(body: bytes, spec: TensorSpec, signature: str) -> Any:
    """The array of `{"instances": [[...], ...]}` (and perhaps `"signature_name"`, '' or `signature`: the
    lane's, which the general path would pick by that name too) as `spec` takes it; None for any other body (the
    general path answers it, errors included)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if doc.__class__ is not dict:
        return None
    if len(doc) != 1 and (len(doc) != 2 or doc.get("signature_name") not in ("", signature)):
        return None
    rows = doc.get("instances")
    if rows.__class__ is not list or not rows or rows[0].__class__ is not list:
        return None
    try:
        array = convert(rows, spec.dtype, spec.name)
    except ServingError:
        return None
    shape = array.shape
    return array if shape and shape[0] and spec.fits(shape) else None


class TfServingRest:
    """Routes /v1/... requests."""

    error = staticmethod(error_response)

    def __init__(self, manager: ModelManager, pipeline: Pipeline, timeout_s: float) -> None:
        self.manager, self.pipeline, self.timeout_s = manager, pipeline, timeout_s

    def __call__(self, request: Request) -> Response | Deferred:
        path = request.path
        if path.rstrip("/") == "/v1/models" and request.method == "GET":
            return Response(200, self._list_models())
        name, version, label, verb, metadata = parse_model_path(path)
        if name is None or (verb is None) != (request.method == "GET") or request.method not in ("GET", "POST"):
            if name is not None:  # a route that exists, asked with another method
                return _wrong_method(request.method, path, name, version, label, verb)
            raise invalid_argument(f"Malformed request: {request.method} {path}")
        if verb is None:
            if metadata:
                return self._metadata(name, version, label)
            return Response(200, codec.encode_status(self.manager.status(name, version, label)))
        deadline = time.monotonic() + self.timeout_s
        if verb == "predict":
            if version is None and label is None and self.pipeline.lanes:
                answer = self._lane(request, name, deadline)
                if answer is not None:
                    return answer
            request.call = call = Call("tfserving_rest", name, version, label, _decode_predict, deadline,
                                       request_id=request.request_id, carrier=request.headers,
                                       context=TfRestState(request.body))
            return answer_later(call, self.pipeline.infer(call), PREDICT)
        request.call = call = Call("tfserving_rest", name, version, label, _decode_examples, deadline, method=verb,
                                   request_id=request.request_id, carrier=request.headers,
                                   context=TfRestState(request.body))
        return answer_later(call, self.pipeline.infer(call), EXAMPLES)

    def _lane(self, request: Request, name: str, deadline: float) -> Deferred | None:
        """The common predict in one step: `{"instances": [[...], ...]}` for a model whose servable has a lane
        (one plain input, batched; serving/core/servable.py). Anything else, and every error, is None: the
        general path answers it (and counts it), as it would have without the lane."""
        received = time.perf_counter()
        servable = self.manager.laned(name, request.headers)
        if servable is None:
            return None
        sig, spec, _ = servable.lane  # type: ignore[misc]
        array = instances(request.body, spec, sig.name)
        if array is None:
            return None
        shape = array.shape
        request.call = call = Call("tfserving_rest", name, None, None, _decode_predict, deadline,
                                   request_id=request.request_id, carrier=request.headers,
                                   context=TfRestState(request.body, True))
        # A full queue raises here, as the general path would: the router answers it.
        future = self.pipeline.submit_decoded(call, servable, sig, {spec.name: array}, shape[0], received)
        return answer_later(call, future, PREDICT)

    def _metadata(self, name: str, version: int | None, label: str | None) -> Response | Deferred:
        """A model's metadata; in lazy mode a model not loaded yet is loaded first, as its first predict would."""

        def answer(_: object = None) -> Response:
            try:
                return Response(200, codec.encode_metadata(self.manager.get(name, version, label)))
            except ServingError as e:
                return error_response(e)

        if not needs_load(self.pipeline, name):
            return answer()
        return answer_when(wait_loaded(self.pipeline, name), answer, error_response, self.timeout_s)

    def _list_models(self) -> bytes:
        models: list[dict[str, Any]] = []
        for name, model in sorted(self.manager.models.items()):
            models.append({
                "name": name,
                "platform": model.spec.platform or "",
                "base_path": redact(model.spec.base_path),
                "labels": model.labels,
                "model_version_status": [
                    {"version": str(s.version), "state": s.state.value}
                    for s in sorted(model.versions.values(), key=lambda s: -s.version)
                ],
            })
        return dumps({"models": models})
