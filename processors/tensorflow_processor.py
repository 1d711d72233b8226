"""TensorFlow SavedModel processor (`tensorflow`, processor codes `tensorflow_cpu_*` / `tensorflow_gpu_*`).

Loads `<version>/saved_model.pb` + `variables/` (TF2 and TF1-style SavedModels, tag `serve`) with
`tf.saved_model.load`. Every signature def is servable by `signature_name` (default `serving_default`);
names, dtypes, shapes and method names come from the SavedModel's own signature defs, so the metadata
routes answer as TF Serving does. Signatures of method `tensorflow/serving/classify` / `regress` take
serialized tf.Example strings (`inputs`) and serve `:classify` / `:regress` (and their gRPC forms).

CUDA: used when the processor code or `--device` says so and a GPU is present (memory growth on);
otherwise the load fails with a message unless `auto` was asked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from serving.core.processor import Processor, resolve_device
from serving.core.signature import (
    CLASSIFY_METHOD,
    PREDICT_METHOD,
    REGRESS_METHOD,
    STRING,
    Signature,
    TensorSpec,
)
from serving.errors import Code, ServingError, invalid_argument
from serving.redact import load_failed

log = logging.getLogger(__name__)

# tensorflow.DataType numbers -> numpy
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 7: object,
          9: np.int64, 10: np.bool_, 14: tf.bfloat16.as_numpy_dtype, 17: np.uint16, 19: np.float16, 22: np.uint32,
          23: np.uint64}


def _spec(alias: str, info: Any) -> TensorSpec:
    kind = DTYPES.get(info.dtype)
    if kind is None:
        raise ServingError(Code.FAILED_PRECONDITION, f"tensor '{alias}' has a data type ({info.dtype}) this server "
                                                     "cannot carry")
    shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
    return TensorSpec(alias, STRING if kind is object else np.dtype(kind), shape, tensor_name=info.name or alias)


def read_signatures(version_dir: Path) -> dict[str, Signature]:
    """The signature defs of the `serve` meta graph, as TF Serving reports them."""
    path = version_dir / "saved_model.pb"
    if not path.is_file():
        raise ServingError(Code.FAILED_PRECONDITION, f"no saved_model.pb in {version_dir}")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError
        raise load_failed("SavedModel", path, e) from e
    graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags] or list(saved.meta_graphs)
    if not graphs:
        raise ServingError(Code.FAILED_PRECONDITION, f"{path} has no meta graph tagged 'serve'")
    out = {}
    for name, sig in graphs[0].signature_def.items():
        if name == "__saved_model_init_op":
            continue
        inputs = {a: _spec(a, i) for a, i in sig.inputs.items()}
        outputs = {a: _spec(a, i) for a, i in sig.outputs.items()}
        out[name] = Signature(name, inputs, outputs, sig.method_name or PREDICT_METHOD, tuple(outputs))
    return out


def _configure_runtime(options: Mapping[str, Any], gpus: list[Any]) -> None:
    """Threads and GPU memory: process-wide in TensorFlow, settable only before its runtime starts, so
    the first model's options win and later ones are logged if they differ."""
    try:
        if "intra_op_threads" in options:
            tf.config.threading.set_intra_op_parallelism_threads(int(options["intra_op_threads"]))
        if "inter_op_threads" in options:
            tf.config.threading.set_inter_op_parallelism_threads(int(options["inter_op_threads"]))
        for gpu in gpus:
            if "gpu_memory_limit_mb" in options:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(options["gpu_memory_limit_mb"]))])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as e:  # the runtime is already initialised by an earlier model
        log.info("TensorFlow runtime options already fixed for this process: %s", e)


class TensorFlowProcessor(Processor):
    name = "tensorflow"
    devices = ("cpu", "cuda")

    def __init__(self) -> None:
        super().__init__()
        self.loaded: Any = None
        self.tf_device = "/CPU:0"

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        gpus = tf.config.list_physical_devices("GPU")
        self.device = resolve_device(device, len(gpus), "tensorflow")
        _configure_runtime(options, gpus if self.device.startswith("cuda") else [])
        if self.device.startswith("cuda"):
            self.tf_device = f"/GPU:{self.device.partition(':')[2] or 0}"
        self.signatures = read_signatures(version_dir)
        try:
            with tf.device(self.tf_device):
                self.loaded = tf.saved_model.load(str(version_dir), tags=["serve"])
        except Exception as e:  # noqa: BLE001 - TensorFlow raises many error types
            raise load_failed("SavedModel", version_dir, e) from e
        missing = [n for n in self.signatures if n not in self.loaded.signatures]
        for name in missing:  # a signature the loader cannot call is not offered
            del self.signatures[name]
        if not self.signatures:
            raise ServingError(Code.FAILED_PRECONDITION, f"SavedModel {version_dir} has no servable signature")

    def _call(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fn = self.loaded.signatures[signature_name]
        with tf.device(self.tf_device):
            result = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        assert self.loaded is not None, "predict before load"
        return self._call(signature_name, inputs)

    def _examples_call(self, inputs: dict[str, np.ndarray], signature_name: str, method: str) -> dict[str, np.ndarray]:
        sig = self.signature(signature_name)
        if sig.method_name != method:
            kind = "classification" if method == CLASSIFY_METHOD else "regression"
            raise invalid_argument(f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}")
        return self._call(sig.name, inputs)

    def classify(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        return self._examples_call(inputs, signature_name, CLASSIFY_METHOD)

    def regress(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        return self._examples_call(inputs, signature_name, REGRESS_METHOD)

    def unload(self) -> None:
        self.loaded = None
