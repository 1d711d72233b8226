"""KServe V2 gRPC: inference.GRPCInferenceService (ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata, ModelInfer with typed contents or raw_input_contents; outputs as raw_output_contents,
as Triton answers)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format

from .. import __version__
from .._proto.inference import grpc_predict_v2_pb2 as pb
from .._proto.inference import grpc_predict_v2_pb2_grpc
from ..codecs import kserve
from ..dataplane import DataPlane, outputs_of
from ..errors import ServingError, invalid_argument
from ..repository import ModelManager, Servable
from .tfserving import abort, call_deadline


class InferenceService(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]

    def __init__(self, manager: ModelManager, dataplane: DataPlane, default_timeout_s: float) -> None:
        self.manager, self.dataplane, self.default_timeout_s = manager, dataplane, default_timeout_s

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.manager.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        try:
            self.manager.get(request.name, kserve.parse_version(request.version))
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerMetadataResponse(name="serving-engine", version=__version__, extensions=["binary_tensor_data"])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        try:
            servable = self.manager.get(request.name, kserve.parse_version(request.version))
            metadata = kserve.model_metadata(servable, self.manager.available_versions(request.name))
            return json_format.ParseDict(metadata, pb.ModelMetadataResponse())
        except ServingError as e:
            await abort(context, e)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        try:
            servable = self.manager.get(request.name, kserve.parse_version(request.version))
            config = kserve.triton_config(servable, self.dataplane.batching)
            response = pb.ModelConfigResponse()
            json_format.ParseDict(config, response.config)
            return response
        except ServingError as e:
            await abort(context, e)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        try:
            servable: Servable = self.manager.get(request.model_name, kserve.parse_version(request.model_version))
            param = request.parameters.get("signature_name")
            sig = servable.signature(param.string_param if param is not None else None)
            inputs = kserve.decode_grpc(request, sig)
            names = [o.name for o in request.outputs] or list(sig.outputs)
            unknown = [n for n in names if n not in sig.outputs]
            if unknown:
                raise invalid_argument(f"unexpected inference output '{unknown[0]}' for model '{request.model_name}'")
            deadline = call_deadline(context, self.default_timeout_s)
            outputs = await outputs_of(self.dataplane.infer(servable, sig, inputs, deadline))
            response = pb.ModelInferResponse(model_name=servable.model, model_version=str(servable.version),
                                             id=request.id)
            kserve.encode_grpc(response, outputs, names)
            return response
        except ServingError as e:
            await abort(context, e)
