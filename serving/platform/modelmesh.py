"""ModelMesh's model runtime API (`mmesh.ModelRuntime`, --modelmesh_port), served natively: ModelMesh (through
its storage puller, which downloads a model and passes its local path) asks this server to load, size and
unload models by id; inference for them arrives on the normal gRPC port, routed by the `mm-model-id`
metadata (serving/protocols/adapters.py), for TF Serving `Predict` and KServe V2 `ModelInfer` alike.

Loads and unloads go through the model control (serving/core/control.py), so under --workers every worker
loads its copy; the sizes reported count every copy. A load ModelMesh cancels runs to its end and is then
unloaded, so nothing stays loaded that ModelMesh does not count.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import shutil
import tempfile
from typing import Any

import orjson

from .. import __version__
from .._proto.mmesh import model_runtime_pb2 as pb
from .._proto.mmesh import model_runtime_pb2_grpc
from ..core.control import ModelControl
from ..core.model_config import ModelSpec, checked_name
from ..core.processor import ALIASES, REGISTRY, canonical_name
from ..core.repository import ModelManager, resident_bytes
from ..errors import Code, ServingError, invalid_argument, not_found
from ..protocols.adapters import GrpcExchange, grpc_errors
from ..settings import Settings
from .workers import cgroup_memory_limit

log = logging.getLogger(__name__)

#: Where the model name sits in each inference request, as field numbers: ModelMesh writes the model id
#: there (and sends `mm-model-id`). PredictRequest.model_spec(1).name(1); ModelInferRequest.model_name(1).
ID_INJECTION = {
    "tensorflow.serving.PredictionService/Predict": (1, 1),
    "tensorflow.serving.PredictionService/Classify": (1, 1),
    "tensorflow.serving.PredictionService/Regress": (1, 1),
    "tensorflow.serving.PredictionService/GetModelMetadata": (1, 1),
    "inference.GRPCInferenceService/ModelInfer": (1,),
    "inference.GRPCInferenceService/ModelMetadata": (1,),
    "inference.GRPCInferenceService/ModelReady": (1,),
}
#: A model not loaded yet is predicted to take this many times its size on disk (tree ensembles and
#: TensorFlow graphs take more memory than file); see predictModelSize.
DISK_TO_MEMORY = 2


def model_capacity(settings: Settings, copies: int = 1) -> int:
    """The memory ModelMesh may fill with models: --model_memory_capacity_bytes, else the container's memory
    (the Downward API's, the cgroup limit, the machine's) less each worker's own size and the headroom."""
    if settings.model_memory_capacity_bytes > 0:
        return settings.model_memory_capacity_bytes
    container = (settings.container_memory_bytes or cgroup_memory_limit()
                 or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    own = copies * resident_bytes()
    capacity = container - own - settings.memory_headroom_bytes
    if capacity <= 0:
        log.warning("no memory left for models: the container has %d bytes, the server takes %d and the headroom "
                    "is %d; set --model_memory_capacity_bytes", container, own, settings.memory_headroom_bytes)
    return max(capacity, 0)


def model_type(request: Any) -> str | None:
    """The processor a load names: the model key's `model_type.name`, else `modelType`; None: detect it."""
    name = request.modelType
    if request.modelKey:
        try:
            key = orjson.loads(request.modelKey)
        except orjson.JSONDecodeError as e:
            raise invalid_argument(f"modelKey is not JSON: {e}") from None
        kind = key.get("model_type") if isinstance(key, dict) else None
        if isinstance(kind, dict) and kind.get("name"):
            name = str(kind["name"])
    if not name:
        return None
    if canonical_name(name) not in REGISTRY:
        known = ", ".join(sorted({*REGISTRY, *ALIASES}))
        raise invalid_argument(f"model type {name!r} is not served by this runtime (known: {known})")
    return name


#: The largest size reported (sizes are uint64 on the wire, and multiplied by DISK_TO_MEMORY and the workers).
MAX_SIZE = 2**56


def disk_size(request: Any) -> int:
    """The model key's `disk_size_bytes` (the puller writes it), 0 when absent, at most MAX_SIZE."""
    try:
        key = orjson.loads(request.modelKey) if request.modelKey else {}
        return min(max(int(key.get("disk_size_bytes", 0)), 0), MAX_SIZE) if isinstance(key, dict) else 0
    except (orjson.JSONDecodeError, TypeError, ValueError, OverflowError):
        return 0


class ModelRuntime(model_runtime_pb2_grpc.ModelRuntimeServicer):  # type: ignore[misc]
    SERVICE = pb.DESCRIPTOR.services_by_name["ModelRuntime"]

    def __init__(self, control: ModelControl, manager: ModelManager, settings: Settings, copies: int = 1,
                 started: Any = None) -> None:
        self.control, self.manager, self.settings = control, manager, settings
        self.copies = copies  # worker processes, each with its own copy of every model
        self.started = started or (lambda: True)  # whether the server has done its start-up loads
        self.access_log: Any = None  # read by adapters.grpc_errors; set by the server
        self._folders: dict[str, str] = {}  # model id -> the folder made for its one-file model

    @grpc_errors
    async def runtimeStatus(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        if not self.started():
            return pb.RuntimeStatusResponse(status=pb.RuntimeStatusResponse.STARTING)
        # As the contract asks: whatever is loaded now ModelMesh does not know of (it restarted); unload it.
        for name in list(self.manager.models):
            log.info("ModelMesh asked for the runtime status: unloading %s, which it does not know of", name)
            await self.control.unload(name, known_only=False)
        s = self.settings
        return pb.RuntimeStatusResponse(
            status=pb.RuntimeStatusResponse.READY,
            capacityInBytes=model_capacity(s, self.copies),
            maxLoadingConcurrency=max(s.load_threads, 1),
            modelLoadingTimeoutMs=s.model_loading_timeout_ms,
            defaultModelSizeInBytes=s.default_model_size_bytes * self.copies,
            runtimeVersion=__version__,
            methodInfos={method: pb.RuntimeStatusResponse.MethodInfo(idInjectionPath=path)
                         for method, path in ID_INJECTION.items()},
        )

    @grpc_errors
    async def loadModel(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        model_id, path = request.modelId, request.modelPath
        if not model_id:
            raise invalid_argument("modelId is empty")
        checked_name(model_id)
        path = self.control.roots.check(path, "modelPath")  # before anything looks at it
        if not os.path.exists(path):
            raise ServingError(Code.FAILED_PRECONDITION, f"modelPath {path} does not exist")
        platform = model_type(request)
        if os.path.isfile(path):  # the puller hands a one-file model (`mushroom.json`) as the file itself
            path = self._folder_for_file(model_id, path, platform)
        spec = ModelSpec(name=model_id, base_path=path, platform=platform, flat=True)
        (spec,) = self.control.configure([spec])
        load = asyncio.ensure_future(self.control.load_spec(spec))
        try:
            await asyncio.shield(load)
        except asyncio.CancelledError:
            # ModelMesh gave up on the load (it will also ask for an unload): once the load ends, nothing of
            # it may stay loaded.
            log.info("the load of %s was cancelled: unloading it once it ends", model_id)
            load.add_done_callback(lambda _: asyncio.ensure_future(self._unload_quietly(model_id)))
            raise
        except Exception:
            self._drop_folder(model_id)
            raise
        return pb.LoadModelResponse(sizeInBytes=self.manager.size_of(model_id) * self.copies)

    def _folder_for_file(self, model_id: str, path: str, platform: str | None) -> str:
        """A private folder holding a link to the model file, under a name its processor looks for when
        the file's own name is not one (an XGBoost `mushroom.json` becomes `model.json`)."""
        self._drop_folder(model_id)
        name = os.path.basename(path)
        entry = REGISTRY.get(canonical_name(platform)) if platform else None
        if entry is not None and not any(fnmatch.fnmatch(name, p) for p in entry.patterns):
            name = next((p for p in entry.patterns if "*" not in p), name)
        folder = tempfile.mkdtemp(prefix="serving-mm-")
        os.symlink(path, os.path.join(folder, name))
        self._folders[model_id] = folder
        return folder

    def _drop_folder(self, model_id: str) -> None:
        folder = self._folders.pop(model_id, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    async def _unload_quietly(self, model_id: str) -> None:
        try:
            await self.control.unload(model_id, known_only=False)
        except Exception:  # noqa: BLE001 - a clean-up: logged, never raised into the loop
            log.exception("unloading %s after its cancelled load failed", model_id)
        self._drop_folder(model_id)

    @grpc_errors
    async def unloadModel(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        await self.control.unload(request.modelId, known_only=False)  # an unknown id is no error
        self._drop_folder(request.modelId)
        return pb.UnloadModelResponse()

    @grpc_errors
    async def modelSize(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        if request.modelId not in self.manager.models:
            raise not_found(f"model {request.modelId} is not loaded")
        return pb.ModelSizeResponse(sizeInBytes=self.manager.size_of(request.modelId) * self.copies)

    @grpc_errors
    async def predictModelSize(self, request: Any, exchange: GrpcExchange) -> Any:  # noqa: N802
        on_disk = disk_size(request)  # no I/O: what the puller measured, else the default
        size = on_disk * DISK_TO_MEMORY if on_disk else self.settings.default_model_size_bytes
        return pb.PredictModelSizeResponse(sizeInBytes=size * self.copies)
