"""TF Serving's gRPC services: PredictionService (Predict, GetModelMetadata; Classify, Regress and
MultiInference, which answer UNIMPLEMENTED for processors without those methods) and ModelService
(GetModelStatus, HandleReloadConfigRequest)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

from .._proto.tensorflow.core.protobuf import error_codes_pb2
from .._proto.tensorflow_serving.apis import (
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
from ..codecs import examples
from ..codecs.tensors import DTYPE_ENUMS, array_to_tensor, conform_all, tensor_to_array
from ..dataplane import DataPlane, examples_input, outputs_of
from ..errors import Code, ServingError, invalid_argument, unimplemented
from ..model_config import ConfigError, ModelSpec, missing_base_paths, specs_from_proto
from ..repository import ModelManager, Servable
from ..signature import CLASSIFY_METHOD, REGRESS_METHOD, STRING, Signature

log = logging.getLogger(__name__)

EXAMPLE_VERBS = {CLASSIFY_METHOD: "classify", REGRESS_METHOD: "regress"}
STATES = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


async def abort(context: grpc.aio.ServicerContext, error: ServingError) -> NoReturn:
    await context.abort(grpc.StatusCode[error.code.name], error.message)
    raise AssertionError("unreachable")  # context.abort raises


def call_deadline(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """The call's deadline as a time.monotonic() instant: the client's, else `default_s` from now."""
    remaining = context.time_remaining()
    return time.monotonic() + (remaining if remaining is not None else default_s)


def spec_version(spec: Any) -> tuple[int | None, str | None]:
    """(version, label) a ModelSpec names; both None for the latest."""
    if not spec.name:
        raise invalid_argument("Missing ModelSpec")
    choice = spec.WhichOneof("version_choice")
    return (spec.version.value if choice == "version" else None,
            spec.version_label if choice == "version_label" else None)


def resolve(manager: ModelManager, spec: Any) -> Servable:
    """The servable a ModelSpec names: by version number, by version_label, or the latest."""
    version, label = spec_version(spec)
    return manager.get(spec.name, version, label)


def fill_model_spec(target: Any, servable: Servable, signature_name: str) -> None:
    target.name = servable.model
    target.version.value = servable.version
    target.signature_name = signature_name


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]

    def __init__(self, manager: ModelManager, dataplane: DataPlane, default_timeout_s: float) -> None:
        self.manager, self.dataplane, self.default_timeout_s = manager, dataplane, default_timeout_s

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - gRPC's name
        try:
            servable = resolve(self.manager, request.model_spec)
            sig = servable.signature(request.model_spec.signature_name)
            where = f"model {servable.model} version {servable.version} signature {sig.name}"
            raw = {name: tensor_to_array(tensor, name) for name, tensor in request.inputs.items()}
            inputs = conform_all(raw, sig, where)
            names = list(request.output_filter) or list(sig.outputs)
            unknown = [n for n in names if n not in sig.outputs]
            if unknown:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {unknown[0]} Outputs expected to be in the set "
                    f"{{{','.join(sig.outputs)}}}."
                )
            deadline = call_deadline(context, self.default_timeout_s)
            outputs = await outputs_of(self.dataplane.infer(servable, sig, inputs, deadline))
            response = predict_pb2.PredictResponse()
            fill_model_spec(response.model_spec, servable, sig.name)
            for name in names:
                array_to_tensor(outputs[name], response.outputs[name])
            return response
        except ServingError as e:
            await abort(context, e)

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
            for field in fields:
                if field != "signature_def":
                    raise invalid_argument(f"Metadata field {field} is not supported")
            servable = resolve(self.manager, request.model_spec)
            assert servable.processor is not None
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for name, sig in servable.processor.signatures.items():
                signature_def(sig, sig_map.signature_def[name])
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            fill_model_spec(response.model_spec, servable, "")
            response.metadata["signature_def"].Pack(sig_map)
            return response
        except ServingError as e:
            await abort(context, e)

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        outputs, servable, sig, n = await self._examples("classify", request, context)
        response = classification_pb2.ClassificationResponse()
        fill_model_spec(response.model_spec, servable, sig.name)
        fill_classification(response.result, outputs, n)
        return response

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        outputs, servable, sig, n = await self._examples("regress", request, context)
        response = regression_pb2.RegressionResponse()
        fill_model_spec(response.model_spec, servable, sig.name)
        fill_regression(response.result, outputs, n)
        return response

    async def _examples(self, verb: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            servable = resolve(self.manager, request.model_spec)
            sig = servable.signature(request.model_spec.signature_name)
            name = examples_input(servable, sig, verb, verb.capitalize())
            serialized = examples.examples_from_input(request.input)
            deadline = call_deadline(context, self.default_timeout_s)
            future = self.dataplane.infer(servable, sig, {name: serialized}, deadline, verb)
            outputs = await outputs_of(future)
            return outputs, servable, sig, len(serialized)
        except ServingError as e:
            await abort(context, e)

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Several classify / regress signatures of one model over the same Input, as TF Serving runs them."""
        try:
            if not request.tasks:
                raise invalid_argument("MultiInferenceRequest has no tasks")
            name = request.tasks[0].model_spec.name
            if any(task.model_spec.name != name for task in request.tasks):
                raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            servable = resolve(self.manager, request.tasks[0].model_spec)
            plan = multi_inference_plan(servable, request.tasks)
            serialized = examples.examples_from_input(request.input)
            deadline = call_deadline(context, self.default_timeout_s)
            futures = [self.dataplane.infer(servable, sig, {name: serialized}, deadline, verb)
                       for verb, sig, name in plan]
            results = await asyncio.gather(*(outputs_of(f) for f in futures))
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
        except ServingError as e:
            await abort(context, e)


def multi_inference_plan(servable: Servable, tasks: Any) -> list[tuple[str, Signature, str]]:
    """(verb, signature, input name) of each MultiInference task, with TF Serving's checks."""
    plan: list[tuple[str, Signature, str]] = []
    tensors = set()
    for task in tasks:
        sig = servable.signature(task.model_spec.signature_name)
        if any(sig.name == s.name for _, s, _ in plan):
            raise invalid_argument(f"Duplicate evaluation of signature: {sig.name}")
        verb = EXAMPLE_VERBS.get(task.method_name)
        if verb is None:
            raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
        name = examples_input(servable, sig, verb, "MultiInference")
        tensors.add(sig.inputs[name].tensor_name or name)
        if len(tensors) > 1:
            raise invalid_argument("Input tensor must be the same for all Signatures.")
        plan.append((verb, sig, name))
    return plan


def fill_classification(result: Any, outputs: dict[str, Any], n: int) -> None:
    """A ClassificationResult: per example, its (label, score) classes."""
    for pairs in examples.classification_pairs(outputs, n):
        entry = result.classifications.add()
        for label, score in pairs:
            entry.classes.add(label=label, score=score)


def fill_regression(result: Any, outputs: dict[str, Any], n: int) -> None:
    for value in examples.regression_values(outputs, n):
        result.regressions.add(value=value)


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

    def __init__(self, manager: ModelManager, reload: Callable[[list[ModelSpec]], Awaitable[None]]) -> None:
        self.manager, self.reload = manager, reload

    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        try:
            version, label = spec_version(request.model_spec)
            servables = self.manager.status(request.model_spec.name, version, label)
            response = get_model_status_pb2.GetModelStatusResponse()
            for s in servables:
                entry = response.model_version_status.add()
                entry.version = s.version
                entry.state = STATES[s.state.value]
                if s.error is not None:
                    fill_status(entry.status, s.error.code, s.error.message)
            return response
        except ServingError as e:
            await abort(context, e)

    async def HandleReloadConfigRequest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Serve the given config; returns once its models are AVAILABLE or have failed.

        A base path that does not exist refuses the whole config at once (the served models stay as
        they are): TF Serving would wait for a load that cannot happen until the client's deadline.
        """
        response = model_management_pb2.ReloadConfigResponse()
        try:
            specs = specs_from_proto(request.config, "ReloadConfigRequest")
        except ConfigError as e:
            await abort(context, ServingError(Code.INVALID_ARGUMENT, str(e)))
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


def fill_status(status: Any, code: Code, message: str) -> None:
    """A tensorflow.StatusProto (of a ModelVersionStatus or a ReloadConfigResponse)."""
    status.error_code = error_codes_pb2.Code.Value(code.name)
    status.error_message = message
