"""TF Serving's gRPC services: PredictionService (Predict, GetModelMetadata; Classify, Regress and
MultiInference, which answer UNIMPLEMENTED for processors without those methods) and ModelService
(GetModelStatus, HandleReloadConfigRequest). Inference goes through the request pipeline as `Call`s."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from ..._proto.tensorflow.core.protobuf import error_codes_pb2
from ..._proto.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from ...codecs import examples
from ...codecs.examples import (
    EXAMPLE_ANSWERS,
    examples_input,
    fill_classification,
    fill_regression,
    multi_inference_plan,
    multi_inference_spec,
)
from ...codecs.predict_wire import read_predict
from ...codecs.tensors import (
    DTYPE_ENUMS,
    TENSOR_FIELDS,
    array_to_tensor,
    conform_all,
    little_endian,
    tensor_to_array,
)
from ...core.control import LoadRoots
from ...core.dataplane import Outputs, outputs_of
from ...core.lazy import wait_loaded
from ...core.model_config import ConfigError, ModelSpec, missing_base_paths, specs_from_proto
from ...core.pipeline import Call, Decode, Inputs, Pipeline, S, TaskGroup
from ...core.repository import ModelManager
from ...core.servable import Servable
from ...core.signature import STRING, Signature
from ...errors import Code, ServingError, invalid_argument
from ..adapters import MODEL_ID_KEYS, GrpcExchange, grpc_call, grpc_errors, spec_version
from ..express import GrpcExpress, Made, SpecViews, one_output, row_bytes

log = logging.getLogger(__name__)

STATES = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


def fill_model_spec(target: Any, servable: Servable, signature_name: str) -> None:
    target.name = servable.model
    target.version.value = servable.version
    target.signature_name = signature_name


#: A MultiInference task's state: its signature and inputs, resolved with the plan.
Planned = tuple[Signature, Inputs]


def _decode_predict(call: Call[predict_pb2.PredictRequest], servable: Servable) -> tuple[Signature, Inputs]:
    request = call.context
    sig = servable.signature(request.model_spec.signature_name)
    raw = {name: tensor_to_array(tensor, name) for name, tensor in request.inputs.items()}
    return sig, conform_all(raw, sig, f"model {servable.model} version {servable.version} signature {sig.name}")


def _decode_examples(call: Call[classification_pb2.ClassificationRequest | regression_pb2.RegressionRequest],
                     servable: Servable) -> tuple[Signature, Inputs]:
    """Classify / Regress: the request's tf.Examples into the signature's one input."""
    request = call.context
    sig = servable.signature(request.model_spec.signature_name)
    name = examples_input(servable, sig, call.method, call.method.capitalize())
    serialized = examples.examples_from_input(request.input)
    return sig, {name: serialized}


def predict_response(servable: Servable, sig: Signature, outputs: Outputs, names: Sequence[str] = ()) -> Any:
    """A PredictResponse: the version that answered and `names`' outputs (the signature's, when none)."""
    response = predict_pb2.PredictResponse()
    fill_model_spec(response.model_spec, servable, sig.name)
    for name in names or sig.outputs:
        array_to_tensor(outputs[name], response.outputs[name])
    return response


#: The numeric dtypes whose typed field a lane reads (`_values` of serving/codecs/tensors.py: np.asarray as is).
TYPED_FIELDS = {np.dtype(code): field for code, field in TENSOR_FIELDS.items() if code[0] in "fiub" and code != "f2"}


def typed_values(tensor: Any, dtype: np.dtype, shape: tuple[int, ...], size: int) -> np.ndarray | None:
    """The typed values (`float_val`, ...) of a tensor as a lane takes them, as a hand-built request sends them;
    None for one value filling the shape, too few, or a value out of range: the general path reads or refuses
    those."""
    field = TYPED_FIELDS.get(dtype)
    if field is None:
        return None
    values = getattr(tensor, field)
    if len(values) != size:
        return None
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError):
        return None


#: A lane input spec's (DataType enum, -1 for strings (no lane); its tensor_content dtype; its item size).
_wire = SpecViews(lambda spec: (-1 if spec.dtype == STRING else DTYPE_ENUMS.get(spec.dtype, -1),
                                little_endian(spec.dtype), spec.dtype.itemsize))


def _express_answer(context: Any, outputs: Outputs) -> Any:
    """The PredictResponse of an express Predict (serving/protocols/express.py)."""
    return predict_response(context.servable, context.signature, outputs)


#: (model, version, signature, output, dtype, row shape) -> the (prefix, suffix) of a one-row PredictResponse
#: around its values' bytes, or None where its values are not laid out as their bytes.
_TEMPLATES = Made()


def _express_bodies(contexts: list[Any], outputs: Outputs, rows: int) -> list[bytes] | None:
    """The serialized PredictResponses of a batch of one-row express Predicts, each the bytes `_express_answer`'s
    message serializes to: a float output's packed values are their little-endian bytes, so each answer is the
    one-row response's bytes before and after them around its row's bytes (made once per model version and output
    shape, and checked against a real serialization). None for anything else: each is then encoded alone."""
    found = one_output(contexts, outputs, rows)
    if found is None:
        return None
    servable, sig, name, array = found
    if array.dtype.kind != "f" or array.dtype.itemsize < 4:
        return None
    template = _TEMPLATES.get((servable.model, servable.version, sig.name, name, array.dtype.str, array.shape[1:]),
                              lambda: _template(servable, sig, name, np.ascontiguousarray(array[:1])))
    values = None if template is None else row_bytes(array, rows)
    if values is None:
        return None
    prefix, suffix = template
    return [prefix + row + suffix for row in values]


def _template(servable: Servable, sig: Signature, name: str, row: np.ndarray) -> tuple[bytes, bytes] | None:
    """`_express_bodies`' (prefix, suffix) for one row shaped as `row`, or None when the response does not hold
    the row's values as their bytes (checked on a zero row, a counting row and `row` itself)."""
    def body(values: np.ndarray) -> bytes:
        return predict_response(servable, sig, {name: values}).SerializeToString()  # type: ignore[no-any-return]

    zero = np.zeros_like(row)
    probe = np.arange(1, row.size + 1, dtype=row.dtype).reshape(row.shape)
    counting = body(probe)
    raw = probe.tobytes()
    at = counting.find(raw)
    if at < 0:
        return None
    prefix, suffix = counting[:at], counting[at + len(raw):]
    if body(zero) != prefix + zero.tobytes() + suffix or body(row) != prefix + row.tobytes() + suffix:
        return None
    return prefix, suffix


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]

    def __init__(self, manager: ModelManager, pipeline: Pipeline, default_timeout_s: float) -> None:
        self.manager, self.pipeline, self.default_timeout_s = manager, pipeline, default_timeout_s
        self.express = GrpcExpress("tfserving_grpc", pipeline, self, _express_answer, _express_bodies)

    def _call(self, request: Any, exchange: GrpcExchange, decode: Decode[S], method: str = "predict",
              outputs: Sequence[str] = ()) -> Call[S]:
        """The Call of a Predict, Classify or Regress request: its state is the request message."""
        version, label = spec_version(request.model_spec)
        return grpc_call(exchange, "tfserving_grpc", request.model_spec.name, version, label, decode,
                         exchange.deadline(self.default_timeout_s), request, outputs=outputs, method=method)

    @grpc_errors
    async def Predict(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802 - gRPC's name
        call = self._call(request, exchange, _decode_predict, outputs=request.output_filter)
        future = self._lane(call, request) if self.pipeline.lanes else None
        outputs = await outputs_of(future if future is not None else self.pipeline.infer(call))
        assert call.servable is not None and call.signature is not None
        return predict_response(call.servable, call.signature, outputs, call.output_names())

    def express_Predict(self, request: Any, context: Any) -> bool:  # noqa: N802 - the native transport's name
        """The native transport's express lane for the common Predict (serving/protocols/express.py): True when
        it queued the call with `context` as its future; False leaves the call to the handler above."""
        if not self.pipeline.express:
            return False
        for key, _ in context.headers.metadata:
            if key in MODEL_ID_KEYS:  # ModelMesh names the model: the general path reads it
                return False
        received = time.perf_counter()
        found = self._lane_inputs(request, request.model_spec.name, context)
        if found is None:
            return False
        servable, sig, name, array = found
        if servable.observers:
            return False
        return context.take_express(self.express, servable.lane[2], {name: array}, array.shape[0],  # type: ignore[no-any-return,index]
                                    servable, sig, received, self.default_timeout_s)

    def express_raw_Predict(self, data: bytes, context: Any) -> bool:  # noqa: N802 - the native transport's name
        """`express_Predict` for the common Predict read from its bytes (serving/codecs/predict_wire.py): a model
        name (and perhaps the lane's signature), one input in `tensor_content` or packed `float_val` /
        `double_val`, nothing else. False for anything else: protobuf then decodes the
        message and `express_Predict` or the handler takes it, as they would have."""
        if not self.pipeline.express:
            return False
        found = read_predict(data)
        if found is None:
            return False
        for key, _ in context.headers.metadata:
            if key in MODEL_ID_KEYS:  # ModelMesh names the model: the general path reads it
                return False
        received = time.perf_counter()
        model, signature, name, enum, shape, content = found
        servable = self.manager.laned(model, context)
        if servable is None or servable.observers:
            return False
        sig, want, queue = servable.lane  # type: ignore[misc]
        if name != want.name or (signature and signature != sig.name):
            return False
        wire = _wire(want)
        if (enum != wire[0] or not shape or shape[0] <= 0 or not want.fits(shape)
                or len(content) != math.prod(shape) * wire[2]):
            return False
        array = np.frombuffer(content, dtype=wire[1]).reshape(shape)
        return context.take_express(self.express, queue, {name: array}, shape[0],  # type: ignore[no-any-return]
                                    servable, sig, received, self.default_timeout_s)

    def _lane(self, call: Call[Any], request: Any) -> asyncio.Future[Outputs] | None:
        """The common Predict in one step: the latest version of a model whose servable has a lane (one plain
        input, batched; serving/core/servable.py), its one input in `tensor_content` of the signature's dtype and
        shape, no signature named but the lane's own, no output filter. Anything else, and every error, is None:
        the general path answers it (and counts it), as it would have without the lane."""
        received = time.perf_counter()
        if call.version is not None or call.label is not None or call.outputs:
            return None
        found = self._lane_inputs(request, call.model, call.carrier)
        if found is None:
            return None
        servable, sig, name, array = found
        # A full queue raises here, as the general path would: grpc_errors answers it.
        return self.pipeline.submit_decoded(call, servable, sig, {name: array}, array.shape[0], received)

    def _lane_inputs(self, request: Any, model: str, carrier: Any) -> tuple[Servable, Signature, str, Any] | None:
        """(servable, signature, input name, array) of a Predict a lane takes: the latest version (or the traffic
        split's pick) of `model` with a lane, one input of its dtype and a shape it fits, in `tensor_content` or
        its typed field holding every value, no signature named but the lane's (its servable's only one, which
        the general path would pick by that name too); None otherwise."""
        spec = request.model_spec
        if len(request.inputs) != 1 or spec.WhichOneof("version_choice") is not None:
            return None
        if request.output_filter:
            return None
        servable = self.manager.laned(model, carrier)
        if servable is None:
            return None
        sig, want, _ = servable.lane  # type: ignore[misc]
        if spec.signature_name and spec.signature_name != sig.name:
            return None
        name = want.name
        tensor = request.inputs.get(name)  # the one input, under the lane's name (not .items(): 3x the cost)
        if tensor is None:
            return None
        wire = _wire(want)
        if tensor.dtype != wire[0]:
            return None
        tensor_shape = tensor.tensor_shape
        shape = tuple([d.size for d in tensor_shape.dim])
        if (not shape or shape[0] <= 0 or tensor_shape.unknown_rank or not want.fits(shape)
                or min(shape) < 0):
            return None
        size = math.prod(shape)
        content = tensor.tensor_content
        if content:
            if len(content) != size * wire[2]:
                return None
            return servable, sig, name, np.frombuffer(content, dtype=wire[1]).reshape(shape)
        array = typed_values(tensor, want.dtype, shape, size)
        return None if array is None else (servable, sig, name, array)

    @grpc_errors
    async def GetModelMetadata(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        fields = list(request.metadata_field)
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        version, label = spec_version(request.model_spec)
        await wait_loaded(self.pipeline, exchange.model(request.model_spec.name))  # lazy mode: a first request
        servable = self.manager.get(exchange.model(request.model_spec.name), version, label)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in servable.processor.signatures.items():
            signature_def(sig, sig_map.signature_def[name])
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        fill_model_spec(response.model_spec, servable, "")
        response.metadata["signature_def"].Pack(sig_map)
        return response

    @grpc_errors
    async def Classify(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        return await self._examples("classify", request, exchange)

    @grpc_errors
    async def Regress(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        return await self._examples("regress", request, exchange)

    async def _examples(self, verb: str, request: Any, exchange: GrpcExchange) -> Any:
        """Classify / Regress: the examples through the pipeline, the results in the verb's response."""
        call = self._call(request, exchange, _decode_examples, verb)
        outputs = await outputs_of(self.pipeline.infer(call))
        assert call.servable is not None and call.signature is not None and call.inputs is not None
        make, fill = EXAMPLE_ANSWERS[verb]
        response = make()
        fill_model_spec(response.model_spec, call.servable, call.signature.name)
        fill(response.result, outputs, len(next(iter(call.inputs.values()))))
        return response

    @grpc_errors
    async def MultiInference(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        """Several classify / regress signatures of one model over the same Input, as TF Serving runs them."""
        spec = multi_inference_spec(request.tasks)
        version, label = spec_version(spec)
        name = exchange.model(spec.name)
        servable = self.manager.get(name, version, label)
        plan = multi_inference_plan(servable, request.tasks)
        serialized = examples.examples_from_input(request.input)
        deadline = exchange.deadline(self.default_timeout_s)
        calls = [grpc_call(exchange, "tfserving_grpc", name, servable.version, None, _planned, deadline,
                           (sig, {input_name: serialized}), method=verb) for verb, sig, input_name in plan]
        group = TaskGroup(len(calls))  # the request log writes the tasks as one multi_inference_log
        for index, call in enumerate(calls):
            call.task = (group, index)
        results = await asyncio.gather(*(outputs_of(self.pipeline.infer(call)) for call in calls))
        response = inference_pb2.MultiInferenceResponse()
        n = len(serialized)
        for (verb, sig, _), outputs in zip(plan, results, strict=True):
            result = response.results.add()
            fill_model_spec(result.model_spec, servable, sig.name)
            if verb == "classify":
                fill_classification(result.classification_result, outputs, n)
            else:
                fill_regression(result.regression_result, outputs, n)
        return response


def _planned(call: Call[Planned], servable: Servable) -> tuple[Signature, Inputs]:
    """A MultiInference task: its signature and inputs were resolved with the plan."""
    return call.context


def signature_def(sig: Signature, target: Any) -> None:
    for specs, out in ((sig.inputs, target.inputs), (sig.outputs, target.outputs)):
        for alias, spec in specs.items():
            info = out[alias]
            info.name = spec.tensor_name or spec.name
            info.dtype = DTYPE_ENUMS.get(STRING if spec.dtype.kind in "OSU" else spec.dtype, 0)
            if spec.shape is None:
                info.tensor_shape.unknown_rank = True
            for d in spec.shape or ():
                info.tensor_shape.dim.add().size = d
    target.method_name = sig.method_name


class ModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]

    def __init__(self, manager: ModelManager, reload: Callable[[list[ModelSpec]], Awaitable[None]],
                 roots: LoadRoots | None = None) -> None:
        self.manager, self.reload = manager, reload
        self.roots = roots or LoadRoots(())  # where the base paths of a reload may be

    @grpc_errors
    async def GetModelStatus(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        version, label = spec_version(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        for s in self.manager.status(request.model_spec.name, version, label):
            entry = response.model_version_status.add()
            entry.version = s.version
            entry.state = STATES[s.state.value]
            if s.error is not None:
                fill_status(entry.status, s.error.code, s.error.message)
        return response

    @grpc_errors
    async def HandleReloadConfigRequest(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        """Serve the given config; returns once its models are AVAILABLE or have failed.

        A base path that does not exist refuses the whole config at once (the served models stay as
        they are): TF Serving would wait for a load that cannot happen until the client's deadline.
        """
        response = model_management_pb2.ReloadConfigResponse()
        try:
            specs = specs_from_proto(request.config, "ReloadConfigRequest")
        except ConfigError as e:
            raise ServingError(Code.INVALID_ARGUMENT, str(e)) from e
        for spec in specs:
            self.roots.check(spec.base_path, f"the base path of model {spec.name}")
            self._check_request_log(spec)
        missing = missing_base_paths(specs)
        if missing:
            log.warning("ReloadConfigRequest not applied: %s", "; ".join(missing))
            fill_status(response.status, Code.INVALID_ARGUMENT, "; ".join(missing))
            return response
        try:
            await self.reload(specs)
        except ConfigError as e:
            fill_status(response.status, Code.FAILED_PRECONDITION, str(e))
        return response


    def _check_request_log(self, spec: ModelSpec) -> None:
        """A reload may keep a model's request log where the server's config put it, or drop it, but not
        write one somewhere new: which files the server writes is the operator's choice, not a client's."""
        if spec.request_log is None:
            return
        current = self.manager.models.get(spec.name)
        kept = current.spec.request_log if current is not None else None
        if kept is None or kept.prefix != spec.request_log.prefix:
            raise ServingError(Code.PERMISSION_DENIED,
                               f"model {spec.name}: a reload cannot point a request log at a new filename_prefix; "
                               f"set it in the model config file")


def fill_status(status: Any, code: Code, message: str) -> None:
    """A tensorflow.StatusProto (of a ModelVersionStatus or a ReloadConfigResponse)."""
    status.error_code = error_codes_pb2.Code.Value(code.name)
    status.error_message = message
