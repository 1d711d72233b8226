"""KServe V2 gRPC: inference.GRPCInferenceService (ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata, ModelConfig, ModelStatistics, ModelInfer with typed contents or raw_input_contents; outputs
as raw_output_contents, as Triton answers; Triton's ModelStreamInfer, each message a ModelInfer: stream.py).
ModelInfer goes through the request pipeline as a `Call`."""

from __future__ import annotations

import math
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from ... import __version__
from ..._proto.inference import grpc_predict_v2_pb2 as pb
from ..._proto.inference import grpc_predict_v2_pb2_grpc
from ...codecs.infer_wire import RAW_PATH, TYPED_PATHS, Layouts
from ...codecs.tensors import little_endian
from ...core.control import ModelControl
from ...core.dataplane import Outputs, outputs_of
from ...core.lazy import wait_loaded
from ...core.pipeline import Call, Inputs, Pipeline
from ...core.repository import ModelManager
from ...core.servable import Servable
from ...core.signature import STRING, Signature
from ...errors import Code, ServingError
from ...ops.statistics import Statistics, extensions
from ..adapters import MODEL_ID_KEYS, GrpcExchange, grpc_call, grpc_errors
from ..express import GrpcExpress, Made, SpecViews, one_output, row_bytes
from . import codec
from .stream import InferStream


def _decode(call: Call[pb.ModelInferRequest], servable: Servable) -> tuple[Signature, Inputs]:
    request = call.context
    param = request.parameters.get("signature_name")
    sig = servable.signature(param.string_param if param is not None else None)
    return sig, codec.decode_grpc(request, sig)


class InferenceService(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]

    def __init__(self, manager: ModelManager, pipeline: Pipeline, default_timeout_s: float,
                 statistics: Statistics | None = None, control: ModelControl | None = None) -> None:
        self.manager, self.pipeline, self.default_timeout_s = manager, pipeline, default_timeout_s
        self.statistics = statistics  # None: the statistics extension is not served
        self.control = control  # None: the model repository extension is not served
        self.extensions = extensions(statistics)
        self.express = GrpcExpress("kserve_grpc", pipeline, self, _express_answer, _express_bodies)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.manager.ready())

    @grpc_errors
    async def ModelReady(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        try:
            self.manager.get(exchange.model(request.name), codec.parse_version(request.version))
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @grpc_errors
    async def ServerMetadata(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        return pb.ServerMetadataResponse(name="serving-engine", version=__version__, extensions=self.extensions)

    @grpc_errors
    async def ModelMetadata(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        await wait_loaded(self.pipeline, exchange.model(request.name))  # lazy mode: a first request loads it
        servable = self.manager.get(exchange.model(request.name), codec.parse_version(request.version))
        metadata = codec.model_metadata(servable, self.manager.available_versions(servable.model))
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

    @grpc_errors
    async def ModelConfig(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        await wait_loaded(self.pipeline, exchange.model(request.name))  # lazy mode: a first request loads it
        servable = self.manager.get(exchange.model(request.name), codec.parse_version(request.version))
        config = codec.triton_config(servable, self.pipeline.dataplane.batching)
        response = pb.ModelConfigResponse()
        json_format.ParseDict(config, response.config)
        return response

    @grpc_errors
    async def ModelStatistics(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        if self.statistics is None:
            raise ServingError(Code.UNIMPLEMENTED, "the statistics extension is not served")
        report = await self.statistics.report_tree(request.name, codec.parse_version(request.version))
        return json_format.ParseDict(report, pb.ModelStatisticsResponse())

    @grpc_errors
    async def ModelInfer(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        call = self.infer_call(request, exchange)
        outputs = await outputs_of(self.pipeline.infer(call))
        response = pb.ModelInferResponse()
        self.fill_answer(response, call, request, outputs)
        return response

    async def ModelStreamInfer(self, requests: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        """Triton's streaming inference: each message a ModelInfer, answered on the stream (stream.py)."""
        await InferStream(self, context).serve(requests)

    def express_raw_ModelInfer(self, data: bytes, context: Any) -> bool:  # noqa: N802 - the native transport's name
        """The native transport's express lane for the common ModelInfer (serving/protocols/express.py), from the
        message's bytes: the latest version of a model with a lane, its one input in `raw_input_contents` of the
        lane's datatype and a shape it fits, outputs named only from the signature's, no signature but the lane's
        and no ModelMesh id named (perf_analyzer names every output and sends
        `triton_enable_empty_final_response`, which a unary call ignores, as the general path does); or its values
        in the input's typed field (`fp32_contents`, ...), as KServe's SDK sends them. A message of a layout taken
        before is read from its bytes (serving/codecs/infer_wire.py; FP32 and FP64 typed values too, when they end
        the message); any other is decoded here and, when the lane takes it, its layout kept. True when it queued
        the call with `context` as its future; False leaves the call to ModelInfer above (the transport decodes the
        message again), which answers every error."""
        if not self.pipeline.express:
            return False
        found = _LAYOUTS.find(data)
        if found is not None:
            read, raw = found
            return self._take(read, raw, context)
        try:
            request = pb.ModelInferRequest.FromString(data)
        except DecodeError:
            return False  # the transport's decode answers it
        read = _lane_read(request)
        if read is None:
            return False
        if not request.raw_input_contents:  # the values in the input's typed field (KServe's SDK)
            values = getattr(request.inputs[0].contents, codec.CONTENTS[read[2]])
            path: tuple[int, ...] | None = TYPED_PATHS.get(read[2])
            if path is None or not values:
                return self._take(read, None, context, values)
            contents = np.asarray(values, dtype="<f4" if read[2] == "FP32" else "<f8").tobytes()
            if not data.endswith(contents):  # outputs named after the input, or values not of their bytes (a NaN)
                return self._take(read, None, context, values)
        else:
            contents, path = request.raw_input_contents[0], RAW_PATH
        if not self._take(read, contents, context):
            return False
        _LAYOUTS.keep(data, len(contents), read, path)
        return True

    def _take(self, read: LaneRead, data: bytes | None, context: Any, values: Any = None) -> bool:
        """Queue the call `read` (its raw contents `data`, or else the typed field's `values`) in its model's lane,
        with `context` as its future; False when the lane does not take it."""
        for key, _ in context.headers.metadata:
            if key in MODEL_ID_KEYS:
                return False
        received = time.perf_counter()
        model, name, datatype, shape, output_names, echo, signature = read
        servable = self.manager.laned(model, context)
        if servable is None or servable.observers:
            return False
        sig, want, queue = servable.lane  # type: ignore[misc]
        if signature and signature != sig.name:
            return False
        for output in output_names:
            if output not in sig.outputs:
                return False
        wire = _wire(want)
        if name != want.name or not wire[0] or datatype != wire[0] or not want.fits(shape):
            return False
        if data is not None:
            if len(data) != math.prod(shape) * wire[2]:
                return False
            array = np.frombuffer(data, dtype=wire[1]).reshape(shape)
        else:
            if len(values) != math.prod(shape):
                return False
            try:  # as decode_grpc reads them; a value out of the dtype's range: the general path answers it
                array = np.asarray(values, dtype=want.dtype).reshape(shape)
            except (OverflowError, ValueError):
                return False
        context.message = echo
        return context.take_express(self.express, queue, {want.name: array}, shape[0],  # type: ignore[no-any-return]
                                    servable, sig, received, self.default_timeout_s)

    def infer_call(self, request: Any, exchange: GrpcExchange) -> Call[Any]:
        """The Call of a ModelInferRequest, unary or one message of a stream. Its state is the request: the
        body's id is echoed in the answer (the request id is x-request-id's)."""
        return grpc_call(exchange, "kserve_grpc", request.model_name, codec.parse_version(request.model_version),
                         None, _decode, exchange.deadline(self.default_timeout_s), request,
                         outputs=[o.name for o in request.outputs], unknown_output=codec.unknown_output)

    def fill_answer(self, response: Any, call: Call[Any], request: Any, outputs: Outputs) -> None:
        """`response` (a ModelInferResponse) made the answer of `call` with its `outputs`."""
        assert call.servable is not None
        response.model_name, response.model_version = call.servable.model, str(call.servable.version)
        response.id = request.id
        codec.encode_grpc(response, outputs, call.output_names())

    @grpc_errors
    async def RepositoryIndex(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        rows = self._control().index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    @grpc_errors
    async def RepositoryModelLoad(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        parameters = {key: _parameter(value) for key, value in request.parameters.items()}
        await self._control().load(request.model_name, parameters)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        await self._control().unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _control(self) -> ModelControl:
        if self.control is None:
            raise ServingError(Code.UNIMPLEMENTED, "the model repository extension is not served")
        return self.control


#: What the lane reads of a ModelInferRequest: model name, input name, datatype, shape, the outputs named, the
#: request as the answer reads it (its `id` and outputs: `_express_answer`), its raw contents left out, and the
#: signature its `signature_name` parameter names ('' for none).
LaneRead = tuple[str, str, str, tuple[int, ...], tuple[str, ...], Any, str]

#: The layouts of the requests the lane took (serving/codecs/infer_wire.py).
_LAYOUTS = Layouts()


def _lane_read(request: Any) -> LaneRead | None:
    """What the lane reads of `request` when it is a lane's kind of ModelInfer (the latest version, a signature
    named only as a string (the lane's, checked by `_take`), one input in its one raw contents or in its
    datatype's typed field, a shape of positive rows), else None."""
    if request.model_version:
        return None
    signature = ""
    if "signature_name" in request.parameters:
        param = request.parameters["signature_name"]
        if param.WhichOneof("parameter_choice") != "string_param":
            return None  # the general path reads another kind of value as no name
        signature = param.string_param
    if len(request.raw_input_contents) > 1 or len(request.inputs) != 1:
        return None
    item = request.inputs[0]
    if not request.raw_input_contents and codec.CONTENTS.get(item.datatype, "bytes_contents") == "bytes_contents":
        return None  # strings (no lane), or a datatype with no typed field (the general path answers it)
    shape = tuple(item.shape)
    if not shape or shape[0] <= 0 or min(shape) < 0:
        return None
    echo = pb.ModelInferRequest(id=request.id, outputs=request.outputs)
    return (request.model_name, item.name, item.datatype, shape, tuple([o.name for o in request.outputs]), echo,
            signature)


#: A lane input spec's (V2 datatype, "" for strings (no lane); its raw contents' dtype; its item size).
_wire = SpecViews(lambda spec: ("" if spec.dtype == STRING else codec.datatype_of(spec.dtype),
                                little_endian(spec.dtype), spec.dtype.itemsize))


def _express_answer(context: Any, outputs: Outputs) -> Any:
    """A ModelInferResponse as `fill_answer` makes it, for an express call (`context.message`: its request)."""
    servable, request = context.servable, context.message
    response = pb.ModelInferResponse(model_name=servable.model, model_version=str(servable.version), id=request.id)
    names = [o.name for o in request.outputs] if request.outputs else list(context.signature.outputs)
    codec.encode_grpc(response, outputs, names)
    return response


#: (model, version, output, dtype, row shape) -> the (head, tail) of a one-row ModelInferResponse: the bytes before
#: its `id` and those after it, up to its row's raw bytes, which end it; None where it is not laid out so.
_TEMPLATES = Made()


def _express_bodies(contexts: list[Any], outputs: Outputs, rows: int) -> list[bytes] | None:
    """The serialized ModelInferResponses of a batch of one-row express ModelInfers, each the bytes
    `_express_answer`'s message serializes to. With one output, a response is its model name and version, the
    call's `id`, the output's name, datatype and shape, then the row's raw bytes last (raw_output_contents): so
    each answer is a head, the call's id field, a tail and its row's bytes (made once per model version and
    output shape, and checked against real serializations, with and without an id). None for anything else:
    each is then encoded alone."""
    found = one_output(contexts, outputs, rows)
    if found is None:
        return None
    servable, sig, name, array = found
    if array.dtype.kind not in "fiub" or not array.dtype.isnative:
        return None
    for context in contexts:
        if len(context.message.outputs) > 1:  # the one output named twice: answered twice, alone
            return None
    template = _TEMPLATES.get((servable.model, servable.version, name, array.dtype.str, array.shape[1:]),
                              lambda: _template(servable, sig, name, np.ascontiguousarray(array[:1])))
    values = None if template is None else row_bytes(array, rows)
    if values is None:
        return None
    head, tail = template
    bodies = []
    for context, row in zip(contexts, values):  # noqa: B905 - one row each (one_row_each)
        rid = context.message.id
        bodies.append(head + _id_field(rid) + tail + row if rid else head + tail + row)
    return bodies


def _id_field(rid: str) -> bytes:
    """ModelInferResponse's `id` (field 3) as protobuf writes it: its tag, its length as a varint, its UTF-8."""
    data = rid.encode()
    size, length = len(data), b""
    while size >= 0x80:
        length += bytes([size & 0x7F | 0x80])
        size >>= 7
    return b"\x1a" + length + bytes([size]) + data


def _template(servable: Servable, sig: Signature, name: str, row: np.ndarray) -> tuple[bytes, bytes] | None:
    """`_express_bodies`' (head, tail) for one row shaped as `row`, or None when the response is not laid out so
    (checked on a zero row, a counting row and `row` itself, with no id, a short one and a long one)."""
    class Probe:  # what _express_answer reads of a call
        def __init__(self, rid: str) -> None:
            self.servable, self.signature, self.message = servable, sig, pb.ModelInferRequest(id=rid)

    def body(values: np.ndarray, rid: str = "") -> bytes:
        return _express_answer(Probe(rid), {name: values}).SerializeToString()  # type: ignore[no-any-return]

    probe = np.arange(1, row.size + 1).astype(row.dtype).reshape(row.shape)
    counting, raw = body(probe), probe.tobytes()
    if not counting.endswith(raw):
        return None
    head = pb.ModelInferResponse(model_name=servable.model, model_version=str(servable.version)).SerializeToString()
    if not counting.startswith(head):
        return None
    tail = counting[len(head):len(counting) - len(raw)]
    for values in (np.zeros_like(row), row):
        for rid in ("", "r-1", "\u00e9" * 200):
            if body(values, rid) != head + (_id_field(rid) if rid else b"") + tail + values.tobytes():
                return None
    return head, tail


def _parameter(value: Any) -> Any:
    """A ModelRepositoryParameter's value (bytes as they are)."""
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice is not None else None
