"""ONNX processor: an onnxruntime InferenceSession on `model.onnx` (or `*.onnx`).

Inputs, outputs and dtypes come from the graph (symbolic or missing dims are -1). Execution providers,
in order: CUDA (when the device asks for it and onnxruntime has it), then CPU. Session options from the
model options: `intra_op_threads` (default 1: the engine runs batches in parallel), `inter_op_threads`,
`graph_optimization_level` (disabled / basic / extended / all, default all). On CUDA, inputs and outputs
go through an IO binding (one copy each way per batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.core.processor import Processor, cuda_device_count, find_model_file, resolve_device
from serving.core.signature import DEFAULT_SIGNATURE, STRING, Signature, TensorSpec
from serving.errors import Code, ServingError
from serving.redact import load_failed

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


def _spec(node: Any) -> TensorSpec:
    kind = ONNX_TYPES.get(node.type)
    if kind is None:
        raise ServingError(Code.FAILED_PRECONDITION, f"ONNX tensor '{node.name}' has unsupported type {node.type}")
    shape = None if node.shape is None else tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, STRING if kind is object else np.dtype(kind), shape)


class ONNXProcessor(Processor):
    name = "onnx"
    devices = ("cpu", "cuda")

    def __init__(self) -> None:
        super().__init__()
        self.session: Any = None

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        path = find_model_file(version_dir, ("model.onnx", "*.onnx"), "ONNX")
        cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        self.device = resolve_device(device, cuda_device_count() if cuda else 0, "onnx")
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            index = int(self.device.partition(":")[2] or 0)
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(options.get("intra_op_threads", 1))
        so.inter_op_num_threads = int(options.get("inter_op_threads", 1))
        level = str(options.get("graph_optimization_level", "all"))
        if level not in LEVELS:
            raise ServingError(Code.INVALID_ARGUMENT, f"graph_optimization_level must be one of {', '.join(LEVELS)}")
        so.graph_optimization_level = LEVELS[level]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise load_failed("ONNX model", path, e) from e
        inputs = {n.name: _spec(n) for n in self.session.get_inputs()}
        outputs = {n.name: _spec(n) for n in self.session.get_outputs()}
        self.signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, outputs,
                                                        output_order=tuple(outputs))}

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
