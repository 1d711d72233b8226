"""The express lanes: the common inference request of a protocol, from the HTTP connection straight to the
batch queue and back, with no `Request`, `Call`, future, `Deferred` or loop turn between.

A lane takes a request only when everything the general path would do for it is what the lane does: a model
whose servable has a lane (one plain batched input, no `validate` of its own: serving/core/servable.py), no
observer but the request metrics (no tracing, no request log, no shadow), no rate limit, no token to check, no
compressed body or answer, a body the lane decodes whole. Everything else, every error included, goes the
general way (serving/protocols/router.py), which answers it in the protocol's format and counts it; a request
the lane declines costs the lane's checks and nothing else. What the lane answers is byte for byte what the
general path answers (tests/unit/protocols/test_express.py sends both).

The connection's slot (serving/transport/http.py `_Slot`) stands for the request's future, its timing and its
call: the batch's completion answers it at once (`set_result` -> `encode` -> the write), then `finished` counts it
into the version's record as the request metrics would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..codecs.jsonutil import dumps, loads
from ..core.pipeline import Pipeline, Timings
from ..core.repository import ModelManager
from ..core.signature import TensorSpec
from ..errors import ServingError
from ..transport.http import JSON, HttpConnection, Response, _Slot
from .cloud import codec as cloud_codec
from .cloud import proto as cloud_proto
from .cloud.rest import PREDICT_PATH as CLOUD_PATH
from .cloud.rest import _Answer as CloudAnswer
from .cloud.rest import error_response as cloud_error
from .kserve import codec as kserve
from .kserve.rest import OCTET_STREAM
from .kserve.rest import parse_model_path as kserve_path
from .tfserving import codec
from .tfserving.rest import Answer, error_response, instances, parse_model_path

log = logging.getLogger(__name__)

#: URLs looked at, by their bytes: clients repeat a few. Bounded (emptied when full).
ROUTES_MAX, ROUTE_MAX_BYTES = 1024, 256


class Router(Protocol):
    """What a lane reads of the router (serving/protocols/router.py `RestApi`): the token it checks, if any, and
    an asynchronous service's queues."""

    auth: Any
    queues: Any


class TfRestLane:
    """TF Serving's REST predict `POST /v1/models/<name>:predict` with `{"instances": [[...], ...]}` (perhaps naming
    the lane's signature; the latest version, or the traffic split's pick) answered `{"predictions": ...}`."""

    protocol = "tfserving_rest"

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    @staticmethod
    def route(path: str) -> str | None:
        """The model a URL predicts with on this lane, None when it is not the lane's."""
        model, version, label, verb, _ = parse_model_path(path)
        return model if model is not None and version is None and label is None and verb == "predict" else None

    @staticmethod
    def decode(body: bytes, headers: Any, spec: TensorSpec, sig: Any, servable: Any) -> tuple[Any, Any] | None:
        array = instances(body, spec, sig.name)
        return None if array is None else (array, None)

    @staticmethod
    def encode(slot: _Slot, outputs: Any) -> Response:
        return Response(200, codec.encode_predict(outputs, True), JSON, slot.servable.version_header)

    @staticmethod
    def bodies(outputs: Any, rows: int) -> list[bytes] | None:
        """`encode`'s bodies of the rows of one numeric output, from one JSON dump of the whole batch, cut at its
        commas (1-D) or `],[` (2-D): orjson writes each number as it writes it alone."""
        if len(outputs) != 1:
            return None
        (array,) = outputs.values()
        if array.dtype.kind not in "fiub" or not array.flags.c_contiguous or array.ndim > 2 or array.shape[0] != rows:
            return None
        text = dumps(array)
        if b"null" in text:  # NaN or Inf: encode_predict's own way, one by one
            return None
        if array.ndim == 1:
            return [b'{"predictions":[%s]}' % value for value in text[1:-1].split(b",")]
        return [b'{"predictions":[[%s]]}' % row for row in text[2:-2].split(b"],[")]

    @staticmethod
    def error(slot: _Slot, error: ServingError) -> Response:
        response = error_response(error)
        response.headers += slot.servable.version_header  # as the general path's answer names its version
        return response

    @staticmethod
    def on_timeout() -> Response:
        return error_response(Answer.TIMEOUT)

    def finished(self, slot: _Slot, error: ServingError | None) -> None:
        """Told once the batch queue is done with the request: the request metrics' record of it."""
        tell(self.pipeline, slot, error, self.protocol)

    def answered(self, slots: list[_Slot]) -> bool:
        """`finished` of the one-row requests of one batch, all answered OK, when the request metrics are the one
        observer: one record update for them all (their access log lines were drawn as they were written). False,
        with nothing counted, when other observers are told (each then goes through `finished`)."""
        return answered_batch(self.pipeline, slots, self.protocol)


class V2RestLane(TfRestLane):
    """KServe V2 REST `POST /v2/models/<name>/infer` (the latest version) with its one input as JSON `data` or as
    binary data (`Inference-Header-Content-Length`, as perf_analyzer and tritonclient send it), decoded and
    answered by the general path's own codec (serving/protocols/kserve/codec.py), outputs named or not."""

    protocol = "kserve_rest"
    bodies = None  # type: ignore[assignment]

    @staticmethod
    def route(path: str) -> str | None:
        found = kserve_path(path)
        return found[0] if found is not None and found[1] is None and found[2] == "infer" else None

    @staticmethod
    def decode(body: bytes, headers: Any, spec: TensorSpec, sig: Any, servable: Any) -> tuple[Any, Any] | None:
        header = headers.get(kserve.HEADER_LENGTH)
        try:
            length = int(header) if header is not None else None
            decoded, inputs, doc = kserve.decode_rest(body, length, servable.signature)
            wanted = kserve.requested_outputs(doc)
        except (ServingError, ValueError):
            return None
        array = inputs.get(spec.name)
        if decoded.name != sig.name or len(inputs) != 1 or array is None:
            return None
        shape = array.shape
        if not shape or not shape[0] or not spec.fits(shape):
            return None
        for name in wanted:
            if name not in sig.outputs:  # the general path's unknown_output error
                return None
        return array, doc

    @staticmethod
    def encode(slot: _Slot, outputs: Any) -> Response:
        servable = slot.servable
        body, json_length = kserve.encode_rest(servable.model, servable.version, slot.state, outputs, slot.signature)
        if json_length is None:
            return Response(200, body, JSON, servable.version_header)
        return Response(200, body, OCTET_STREAM,
                        b"Inference-Header-Content-Length: %d\r\n%s" % (json_length, servable.version_header))


CLOUD_TIMEOUT = CloudAnswer.TIMEOUT


class CloudLane(TfRestLane):
    """The cloud processor protocol's `POST /api/predict/<model>` with a JSON body (rows, or a TF Serving style
    object) or a `tf_predict.proto` / `pytorch_predict.proto` body, decoded and answered by the general path's own
    codecs (serving/protocols/cloud/), with its keepalive deadline and its status codes."""

    protocol = "cloud"
    bodies = None  # type: ignore[assignment]

    @staticmethod
    def route(path: str) -> str | None:
        found = CLOUD_PATH.match(path)
        return found["name"] if found is not None else None

    @staticmethod
    def decode(body: bytes, headers: Any, spec: TensorSpec, sig: Any, servable: Any) -> tuple[Any, Any] | None:
        try:
            if cloud_proto.looks_like_json(body):
                decoded, state = servable.signature(None), None
                inputs = cloud_codec.decode_json(loads(body), decoded)
            elif servable.processor.positional_inputs:
                decoded = servable.signature(None)
                inputs, names = cloud_proto.decode_pytorch(body, decoded)
                state = (cloud_proto.encode_pytorch, names)
            else:
                decoded, inputs, names = cloud_proto.decode_tf(body, servable.signature)
                state = (cloud_proto.encode_tf, names)
        except (ServingError, ValueError):
            return None
        array = inputs.get(spec.name)
        if decoded.name != sig.name or len(inputs) != 1 or array is None or array.dtype != spec.dtype:
            return None
        shape = array.shape
        if not shape or not shape[0] or not spec.fits(shape):
            return None
        if state is not None:
            for name in state[1]:
                if name not in sig.outputs:  # the encoder's KeyError on the general path: its own answer
                    return None
        return array, state

    @staticmethod
    def encode(slot: _Slot, outputs: Any) -> Response:
        state, servable = slot.state, slot.servable
        if state is None:
            return Response(200, cloud_codec.encode_json(outputs, slot.signature.records), JSON,
                            servable.version_header)
        encode, names = state
        return Response(200, encode(outputs, names), OCTET_STREAM, servable.version_header)

    @staticmethod
    def error(slot: _Slot, error: ServingError) -> Response:
        response = cloud_error(error)
        response.headers += slot.servable.version_header
        return response

    @staticmethod
    def on_timeout() -> Response:
        return cloud_error(CLOUD_TIMEOUT)


class RestExpress:
    """The connections' express lanes (`HttpConnection.express`): TF Serving REST predict and KServe V2 REST
    infer, by URL (a cache of the URLs seen)."""

    def __init__(self, router: Router, manager: ModelManager, pipeline: Pipeline, timeout_s: float,
                 keepalive_s: float) -> None:
        self.router, self.manager, self.pipeline, self.timeout_s = router, manager, pipeline, timeout_s
        self.keepalive_s = keepalive_s  # the cloud processor protocol's deadline
        self.tfserving, self.kserve, self.cloud = TfRestLane(pipeline), V2RestLane(pipeline), CloudLane(pipeline)
        #: URL -> (its lane, the model it names); (None, "") for a URL no lane takes.
        self.routes: dict[bytes, tuple[TfRestLane | None, str]] = {}

    def _route(self, url: bytes) -> tuple[TfRestLane | None, str]:
        route: tuple[TfRestLane | None, str] = (None, "")
        if b"?" not in url and b"%" not in url:
            lane = self.tfserving if url.startswith(b"/v1/models/") else \
                self.kserve if url.startswith(b"/v2/models/") else \
                self.cloud if url.startswith(b"/api/predict/") else None
            name = lane.route(url.decode("latin-1")) if lane is not None else None
            if lane is not None and name:
                route = (lane, name)
        if len(url) <= ROUTE_MAX_BYTES:
            if len(self.routes) >= ROUTES_MAX:
                self.routes.clear()
            self.routes[url] = route
        return route

    def take(self, conn: HttpConnection, slot: _Slot, body: bytes) -> bool:
        url = conn.url
        route = self.routes.get(url)
        lane, name = route if route is not None else self._route(url)
        if lane is None or not self.pipeline.express or lane is self.cloud and self.router.queues is not None:
            return False  # (an asynchronous service's queues answer some /api/predict/ paths: the router's)
        auth = self.router.auth
        if auth is not None:  # the router's check (a refusal: the general path answers it 401)
            try:
                auth.check_http("POST", url.decode("latin-1"), conn.headers, body)
            except ServingError:
                return False
        received = time.perf_counter()
        servable = self.manager.laned(name, conn.headers)
        if servable is None or servable.observers:
            return False
        sig, spec, queue = servable.lane  # type: ignore[misc]
        decoded = lane.decode(body, conn.headers, spec, sig, servable)
        if decoded is None:
            return False
        array, slot.state = decoded
        rows = array.shape[0]
        slot.express, slot.open, slot.url, slot.servable, slot.signature = lane, True, url, servable, sig
        slot.rows, slot.received, slot.dispatched, slot.computed, slot.error = rows, received, 0.0, 0.0, None
        deadline = time.monotonic() + (self.keepalive_s if lane is self.cloud else self.timeout_s)
        if not queue.enqueue({spec.name: array}, rows, deadline, slot):  # full: the general path refuses it
            slot.express = None
            return False
        conn.defer_express(slot, deadline)
        return True


def tell(pipeline: Pipeline, call: Any, error: ServingError | None, protocol: str) -> None:
    """The observers' (the request metrics') record of an express call the batch queue is done with, with the
    timings the pipeline's `notify` would give. An answered call whose only observer is the request metrics
    goes straight into its version's record (`VersionStats.answered`, what `RequestMetrics.finished` does)."""
    end = time.perf_counter()
    received, dispatched = call.received, call.dispatched
    if error is None and pipeline.metrics_only:
        call.servable.record.answered((call.signature.name, protocol, "predict"), call.rows, received, dispatched,
                                      call.computed, end)
        return
    if dispatched:
        timings = Timings(dispatched - received, (call.computed or end) - dispatched, end - received)
    else:
        timings = Timings(0.0, 0.0, end - received)
    try:
        for observer in pipeline.observers:
            observer.finished(call, error, timings)
    except Exception:  # noqa: BLE001 - as the pipeline's `_tell`: an observer's bug costs its own record
        log.exception("an observer of a %s call failed", protocol)


def answered_batch(pipeline: Pipeline, calls: list[Any], protocol: str) -> bool:
    """The version's record of the one-row calls of one batch answered OK, in one update, when the request metrics
    are the pipeline's one observer (False, nothing counted, otherwise): what `tell` does for each."""
    if not pipeline.metrics_only:
        return False
    first = calls[0]
    first.servable.record.answered_batch((first.signature.name, protocol, "predict"), [c.received for c in calls],
                                         first.dispatched, first.computed, time.perf_counter())
    return True


#: How many response templates and wire views a gRPC lane keeps (each cache emptied when full).
TEMPLATES_MAX = 256


class Made:
    """A cache of what a lane makes once per key (a response template, None where there is none), emptied when
    full."""

    def __init__(self, limit: int = TEMPLATES_MAX) -> None:
        self.limit = limit
        self.made: dict[Any, Any] = {}

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        made = self.made
        if key in made:
            return made[key]
        if len(made) >= self.limit:
            made.clear()
        value = made[key] = make()
        return value


class SpecViews:
    """What a gRPC lane reads of a lane input's spec (its wire datatype, dtype, item size: `make`), made once per
    spec: kept under the spec's id with the spec itself, so an entry serves only that very spec (a reused id finds
    none). Emptied when full."""

    def __init__(self, make: Callable[[TensorSpec], tuple[Any, ...]], limit: int = TEMPLATES_MAX) -> None:
        self.make, self.limit = make, limit
        self.views: dict[int, tuple[tuple[Any, ...], TensorSpec]] = {}

    def __call__(self, spec: TensorSpec) -> tuple[Any, ...]:
        found = self.views.get(id(spec))
        if found is not None and found[1] is spec:
            return found[0]
        if len(self.views) >= self.limit:
            self.views.clear()
        view = self.make(spec)
        self.views[id(spec)] = (view, spec)
        return view


def one_output(contexts: list[Any], outputs: Any, rows: int) -> tuple[Any, Any, str, np.ndarray] | None:
    """(servable, signature, name, array) of a batch of one-row express calls answering the signature's one output
    as an array of `rows` rows: what a gRPC lane's response template serves; None otherwise."""
    servable, sig = contexts[0].servable, contexts[0].signature  # one lane's calls: one servable, one signature
    if len(outputs) != 1 or len(sig.outputs) != 1:
        return None
    ((name, array),) = outputs.items()
    if name not in sig.outputs or array.__class__ is not np.ndarray or not array.ndim or array.shape[0] != rows:
        return None
    return servable, sig, name, array


def row_bytes(array: np.ndarray, rows: int) -> list[bytes] | None:
    """Each row's bytes, in C order (None for rows of no bytes)."""
    data = np.ascontiguousarray(array).tobytes()
    width = len(data) // rows
    if not width:
        return None
    return [data[at:at + width] for at in range(0, len(data), width)]


class GrpcCall:
    """What the metrics and the access log read of an express gRPC call as a call (the native transport's
    Context, serving/transport/rpc/native.py, names its own `method`)."""

    __slots__ = ("context", "servable", "signature", "rows", "received", "dispatched", "computed", "protocol")
    method = "predict"

    def __init__(self, context: Any, protocol: str) -> None:
        self.context, self.servable, self.signature, self.rows = context, context.servable, context.signature, \
            context.rows
        self.received, self.dispatched, self.computed = context.received, context.dispatched, context.computed
        self.protocol = protocol

    @property
    def request_id(self) -> str:  # made only when read (an error, an access log line)
        return self.context.request_id  # type: ignore[no-any-return]

    @property
    def model(self) -> str:
        return self.servable.model  # type: ignore[no-any-return]

    @property
    def version(self) -> int:
        return self.servable.version  # type: ignore[no-any-return]


class GrpcExpress:
    """A gRPC method's express lane on the native transport (`express_<Method>` of a servicer: TF Serving's
    Predict, KServe V2's ModelInfer): the servicer checks and decodes the call and queues it with the transport's
    Context (serving/transport/rpc/native.py) as its future; `encode(context, outputs)` makes the answer."""

    def __init__(self, protocol: str, pipeline: Pipeline, servicer: Any,
                 encode: Callable[[Any, Any], Any],
                 bodies: Callable[[list[Any], Any, int], list[bytes] | None] | None = None) -> None:
        self.protocol, self.pipeline, self.servicer, self.encode = protocol, pipeline, servicer, encode
        #: (the calls of the batch, in its order; the batch's outputs; rows) -> the serialized answers of a batch of
        #: one-row calls, each what `encode` makes of its row, or None (each is then encoded alone); None: no such
        #: shortcut.
        self.bodies = bodies

    def finished(self, context: Any, error: ServingError | None) -> None:
        """The request metrics' record, and the access log's line when it selects the call (as `grpc_errors`).
        The call's view (GrpcCall) is made only for what reads more than the record: an error, an observer, a line."""
        pipeline = self.pipeline
        if error is None and pipeline.metrics_only:
            tell(pipeline, context, None, self.protocol)  # reads the context's servable, signature, rows, clocks
            call = None
        else:
            call = GrpcCall(context, self.protocol)
            tell(pipeline, call, error, self.protocol)
        access_log = getattr(self.servicer, "access_log", None)
        if access_log is not None and access_log.selects(error is not None, time.perf_counter() - context.received):
            self._line(access_log, context, call or GrpcCall(context, self.protocol), error)

    def answered(self, contexts: list[Any]) -> bool:
        """`finished` of the one-row calls of one batch, all answered OK, when the request metrics are the one
        observer: one record update for them all, and each call's access log line when the log selects it. False,
        with nothing counted, when other observers are told (each call then goes through `finished`)."""
        if not answered_batch(self.pipeline, contexts, self.protocol):
            return False
        access_log = getattr(self.servicer, "access_log", None)
        if access_log is not None:
            now = time.perf_counter()
            for context in contexts:
                if access_log.selects(False, now - context.received):
                    self._line(access_log, context, GrpcCall(context, self.protocol), None)
        return True

    @staticmethod
    def _line(access_log: Any, context: Any, call: GrpcCall, error: ServingError | None) -> None:
        response = context.response
        access_log.grpc(context.headers.path, call.request_id, context.conn.peer_name, call,
                        error.code.name if error is not None else "OK", call.received, context.message_size,
                        0 if response is None else len(response) if response.__class__ is bytes
                        else response.ByteSize())
