"""ONNX processor: an onnxruntime InferenceSession on `model.onnx` (or `*.onnx`).

Inputs, outputs and dtypes come from the graph (symbolic or missing dims are -1). The model options come
from the server-wide flags (`intra_op_threads`, `inter_op_threads`, `graph_optimization_level`) and, per
model and winning over them, the `onnx` options of model_config.pbtxt or the service JSON:

- `providers`: execution providers in order (CUDA, TensorRT, OpenVINO, CPU, ...). Without it: CUDA first
  when the device asks for it, then CPU. A provider this onnxruntime lacks fails the load with the pip
  package that has it; one ONNX Runtime could not start (it falls back to CPU on its own) fails it too.
- `graph_optimization_level` (disabled / basic / extended / all, default all), `intra_op_threads`
  (default 1: the engine runs batches in parallel; 0: ONNX Runtime's default), `inter_op_threads`.
- `optimized_model_cache`: the optimized graph is written under the model cache dir, keyed by the model
  file's sha256, the onnxruntime version, the level and the providers; a later load (a restart) reads it
  with optimization off.
- `trt_fp16_enable`, `trt_engine_cache_enable`, `trt_engine_cache_path` for the TensorRT provider.

On CUDA (a CUDA or TensorRT provider), inputs and outputs go through an IO binding (one copy each way per
batch).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.core.processor import Processor, cuda_device_count, find_model_file, resolve_device
from serving.core.remote import default_cache_dir
from serving.core.signature import DEFAULT_SIGNATURE, STRING, Signature, TensorSpec
from serving.errors import Code, ServingError
from serving.redact import load_failed

log = logging.getLogger(__name__)

ONNX_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": object,
}
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
CPU, CUDA, TENSORRT, OPENVINO = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
                                 "OpenVINOExecutionProvider")
#: The pip package whose onnxruntime has each provider (they all install the one module `onnxruntime`).
PACKAGES = {CUDA: "onnxruntime-gpu", TENSORRT: "onnxruntime-gpu", OPENVINO: "onnxruntime-openvino"}
#: Providers that run on a CUDA device (the session gets the device's id and an IO binding).
GPU_PROVIDERS = (CUDA, TENSORRT)
#: Providers that compile the graph into their own nodes, which ONNX Runtime cannot write back to a file.
COMPILING = (TENSORRT, OPENVINO)
TRT_KEYS = ("trt_fp16_enable", "trt_engine_cache_enable", "trt_engine_cache_path")


def _spec(node: Any) -> TensorSpec:
    kind = ONNX_TYPES.get(node.type)
    if kind is None:
        raise ServingError(Code.FAILED_PRECONDITION, f"ONNX tensor '{node.name}' has unsupported type {node.type}")
    shape = None if node.shape is None else tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, STRING if kind is object else np.dtype(kind), shape)


def model_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The server-wide options overlaid with the model's own `onnx` ones (which win)."""
    flat = {k: options[k] for k in ("intra_op_threads", "inter_op_threads", "graph_optimization_level")
            if k in options}
    return {**flat, **dict(options.get("onnx") or {})}


def installed_onnxruntime() -> str:
    """The distribution that installed the module `onnxruntime` and its version, e.g. `onnxruntime 1.23.2`."""
    names = metadata.packages_distributions().get("onnxruntime") or ["onnxruntime"]
    return f"{names[0]} {ort.__version__}"


def not_installed(provider: str, available: list[str]) -> ServingError:
    package = PACKAGES.get(provider)
    fix = (f"pip install {package} (in place of the onnxruntime package installed: they share the module)"
           if package else "install an onnxruntime build that has it")
    return ServingError(Code.FAILED_PRECONDITION,
                        f"ONNX Runtime execution provider {provider} is not installed ({installed_onnxruntime()} "
                        f"has {', '.join(available)}): {fix}")


def level_of(onnx: Mapping[str, Any]) -> str:
    level = str(onnx.get("graph_optimization_level") or "all")
    if level not in LEVELS:
        raise ServingError(Code.INVALID_ARGUMENT, f"graph_optimization_level must be one of {', '.join(LEVELS)}")
    return level


def session_options(onnx: Mapping[str, Any], level: str) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(onnx.get("intra_op_threads", 1))
    so.inter_op_num_threads = int(onnx.get("inter_op_threads", 1))
    so.graph_optimization_level = LEVELS[level]
    return so


def optimized_model_path(path: Path, level: str, providers: list[str], cache_root: Path) -> Path:
    """Where the graph optimized from `path` at `level` for `providers` is kept: a name made of the file's
    sha256, the onnxruntime version, the level and the providers, so any change of them is a new file."""
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    tag = "-".join(p.removesuffix("ExecutionProvider").lower() for p in providers)
    return cache_root / "onnx" / "optimized" / f"{digest[:32]}.ort{ort.__version__}.{level}.{tag}.onnx"


def keep(partial: Path, cached: Path) -> None:
    """Move the optimized graph ONNX Runtime wrote into its place in the cache, whole or not at all (a load
    racing this one reads the old file or the new)."""
    try:
        os.replace(partial, cached)
    except OSError as e:  # the cache saves time, it never stops a load
        log.warning("could not keep the optimized ONNX graph in %s: %s", cached, e)


class ONNXProcessor(Processor):
    name = "onnx"
    devices = ("cpu", "cuda")

    def __init__(self) -> None:
        super().__init__()
        self.session: Any = None
        #: The file the session was made from: the model's, or its optimized graph in the cache.
        self.session_path: Path | None = None

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        path = find_model_file(version_dir, ("model.onnx", "*.onnx"), "ONNX")
        onnx = model_options(options)
        level = level_of(onnx)
        names = self._providers(onnx, device)
        cache_root = Path(str(options.get("model_cache_dir") or default_cache_dir()))
        providers = [(name, self._provider_options(name, onnx, cache_root)) for name in names]
        cached = None
        if onnx.get("optimized_model_cache"):
            if compiling := [p for p in names if p in COMPILING]:
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"optimized_model_cache cannot keep a graph that {', '.join(compiling)} compiles "
                                   "(TensorRT has trt_engine_cache_enable)")
            cached = optimized_model_path(path, level, names, cache_root)
        self.session, self.session_path = self._session(path, cached, onnx, level, providers)
        started = self.session.get_providers()
        if lost := [p for p in names if p not in started]:
            self.session = None
            if cached is not None and self.session_path == path:  # optimized without them: not theirs to keep
                cached.unlink(missing_ok=True)
            raise ServingError(Code.FAILED_PRECONDITION,
                               f"ONNX Runtime could not start {', '.join(lost)} for {path.name} (it has "
                               f"{', '.join(started)}; the server log has why)")
        inputs = {n.name: _spec(n) for n in self.session.get_inputs()}
        outputs = {n.name: _spec(n) for n in self.session.get_outputs()}
        self.signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, outputs,
                                                        output_order=tuple(outputs))}

    def _providers(self, onnx: Mapping[str, Any], device: str) -> list[str]:
        """The providers in order, each installed; sets the device (CUDA when one of them runs there)."""
        available = ort.get_available_providers()
        asked = [str(p) for p in onnx.get("providers") or ()]
        if not asked:  # the device decides, as before per-model providers
            if device.strip().lower().startswith("cuda") and CUDA not in available:
                raise not_installed(CUDA, available)
            self.device = resolve_device(device, cuda_device_count() if CUDA in available else 0, "onnx")
            return [CUDA, CPU] if self.device.startswith("cuda") else [CPU]
        known = ort.get_all_providers()
        if unknown := [p for p in asked if p not in known]:
            raise ServingError(Code.INVALID_ARGUMENT, f"unknown ONNX Runtime execution provider(s) "
                                                      f"{', '.join(unknown)} (known: {', '.join(known)})")
        for provider in asked:
            if provider not in available:
                raise not_installed(provider, available)
        if any(p in GPU_PROVIDERS for p in asked):  # cuda:N keeps its N; any other device means cuda:0
            gpu = device if device.strip().lower().startswith("cuda") else "cuda"
            self.device = resolve_device(gpu, cuda_device_count(), "onnx")
        else:
            self.device = "cpu"
        if trt := [k for k in TRT_KEYS if onnx.get(k) and TENSORRT not in asked]:
            raise ServingError(Code.INVALID_ARGUMENT, f"{', '.join(trt)} asked for without {TENSORRT} in providers")
        return asked

    def _provider_options(self, name: str, onnx: Mapping[str, Any], cache_root: Path) -> dict[str, Any]:
        index = int(self.device.partition(":")[2] or 0)
        if name == CUDA:
            return {"device_id": index}
        if name != TENSORRT:
            return {}
        options: dict[str, Any] = {"device_id": index, "trt_fp16_enable": bool(onnx.get("trt_fp16_enable")),
                                   "trt_engine_cache_enable": bool(onnx.get("trt_engine_cache_enable"))}
        if options["trt_engine_cache_enable"]:
            folder = Path(str(onnx.get("trt_engine_cache_path") or cache_root / "onnx" / "tensorrt"))
            folder.mkdir(parents=True, exist_ok=True)
            options["trt_engine_cache_path"] = str(folder)
        return options

    def _session(self, path: Path, cached: Path | None, onnx: Mapping[str, Any], level: str,
                 providers: list[Any]) -> tuple[Any, Path]:
        """A session on the cached optimized graph when there is one (optimization off: it is done), else on
        the model file, writing the optimized graph to the cache when asked to."""
        if cached is not None and cached.is_file():
            try:
                session = self._open(cached, session_options(onnx, "disabled"), providers)
                log.info("ONNX model %s: the optimized graph %s from the cache", path, cached)
                return session, cached
            except ServingError:
                log.warning("ONNX model %s: the cached optimized graph %s does not load; optimizing again",
                            path, cached)
                cached.unlink(missing_ok=True)
        so = session_options(onnx, level)
        partial = None
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                partial = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.partial")
                so.optimized_model_filepath = str(partial)
            except OSError as e:  # the cache saves time, it never stops a load
                log.warning("ONNX model %s: no optimized-graph cache in %s: %s", path, cached.parent, e)
        try:
            session = self._open(path, so, providers)
            if partial is not None and cached is not None:
                keep(partial, cached)
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)
        return session, path

    @staticmethod
    def _open(path: Path, so: Any, providers: list[Any]) -> Any:
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise load_failed("ONNX model", path, e) from e

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        assert self.session is not None, "predict before load"
        names = list(self.signatures[DEFAULT_SIGNATURE].outputs)
        if self.device.startswith("cuda"):
            binding = self.session.io_binding()
            for name, array in inputs.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            for name in names:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            results = binding.copy_outputs_to_cpu()
        else:
            results = self.session.run(names, inputs)
        return {name: np.asarray(r) for name, r in zip(names, results, strict=True)}

    def unload(self) -> None:
        self.session = None
