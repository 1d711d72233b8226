"""The cloud processor protocol over HTTP: `POST /api/predict/<model>` (and `POST /` for the default model)
with a JSON body, a `tf_predict.proto` or a `pytorch_predict.proto` body, as a `Call` through the request
pipeline; `GET /api/predict/<model>` answers the signature. Errors use the protocol's own status codes
(408 past the keepalive deadline, 450 queue full, 429 rate limit)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...codecs.jsonutil import dumps, loads
from ...core.dataplane import Outputs
from ...core.pipeline import Call, Inputs, Pipeline
from ...core.repository import ModelManager
from ...core.servable import Servable
from ...core.signature import Signature
from ...errors import CLOUD_STATUS, Code, ServingError, not_found
from ...transport.http import Deferred, Request, Response
from ..adapters import answer_later
from ..tfserving.codec import encode_error
from . import codec, proto

OCTET_STREAM = b"application/octet-stream"
PREDICT_PATH = re.compile(r"/api/predict/(?P<name>[^/]+)/?$")


def error_response(error: ServingError) -> Response:
    return Response(CLOUD_STATUS.get(error.code, 500), encode_error(error.message))


#: The answer's protobuf encoder: (outputs, output names) -> body.
Encoder = Callable[[Outputs, list[str]], bytes]


@dataclass(slots=True)
class CloudState:
    """A cloud call's state: its body, then for a protobuf body the answer's encoder (tf_predict or
    pytorch_predict, as the request was) and output names."""

    body: bytes
    encode: Encoder | None = None
    names: list[str] | None = None


class _Answer:
    TIMEOUT = ServingError(Code.DEADLINE_EXCEEDED, "request timed out")

    def on_timeout(self) -> Response:
        return self.error(self.TIMEOUT)
    error = staticmethod(error_response)


class _Json(_Answer):
    @staticmethod
    def encode(call: Call[CloudState], outputs: Outputs) -> Response:
        assert call.signature is not None
        return Response(200, codec.encode_json(outputs, call.signature.records))


class _Proto(_Answer):
    @staticmethod
    def encode(call: Call[CloudState], outputs: Outputs) -> Response:
        encode, names = call.context.encode, call.context.names
        assert encode is not None and names is not None  # the decode chose them
        return Response(200, encode(outputs, names), OCTET_STREAM)


JSON, PROTO = _Json(), _Proto()


def _decode_json(call: Call[CloudState], servable: Servable) -> tuple[Signature, Inputs]:
    sig = servable.signature(None)
    return sig, codec.decode_json(loads(call.context.body), sig)


def _decode_proto(call: Call[CloudState], servable: Servable) -> tuple[Signature, Inputs]:
    """tf_predict for signature models, pytorch_predict for processors with positional inputs; the state
    gets the answer's encoder and output names."""
    state = call.context
    if servable.processor.positional_inputs:
        sig = servable.signature(None)
        inputs, state.names = proto.decode_pytorch(state.body, sig)
        state.encode = proto.encode_pytorch
    else:
        sig, inputs, state.names = proto.decode_tf(state.body, servable.signature)
        state.encode = proto.encode_tf
    return sig, inputs


class CloudRest:
    """Routes /api/predict/... and POST / requests."""

    error = staticmethod(error_response)

    def __init__(self, manager: ModelManager, pipeline: Pipeline, keepalive_s: float,
                 default_model: Callable[[], str | None]) -> None:
        self.manager, self.pipeline, self.keepalive_s = manager, pipeline, keepalive_s
        self.default_model = default_model

    def __call__(self, request: Request) -> Response | Deferred:
        if request.method not in ("POST", "GET") or (request.method == "GET" and request.path == "/"):
            raise ServingError(Code.NOT_FOUND, f"Not found: {request.method} {request.path} (predict with POST)")
        if request.path == "/":
            name = self.default_model()
            if name is None:
                raise not_found("no default model: name one with POST /api/predict/<model>")
        else:
            m = PREDICT_PATH.match(request.path)
            if m is None:
                raise not_found(f"Not found: {request.path}")
            name = m["name"]
        if request.method == "GET":
            return Response(200, dumps(codec.signature_json(self.manager.get(name).signature(None))))
        deadline = time.monotonic() + self.keepalive_s
        if proto.looks_like_json(request.body):
            request.call = call = Call("cloud", name, None, None, _decode_json, deadline,
                                       request_id=request.request_id, carrier=request.headers,
                                       context=CloudState(request.body))
            return answer_later(call, self.pipeline.infer(call), JSON)
        request.call = call = Call("cloud", name, None, None, _decode_proto, deadline,
                                   request_id=request.request_id, carrier=request.headers,
                                   context=CloudState(request.body))
        return answer_later(call, self.pipeline.infer(call), PROTO)
