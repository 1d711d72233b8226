"""The processor contract and the registry that finds processors by name.

A processor follows TF Serving's Loader idea: a cheap constructor, an explicit `load()` that does the
heavy work (run off the event loop by the engine), `signatures` describing what it serves, one blocking
`predict(inputs, signature_name)` on a batch of named numpy arrays (the engine runs it in an executor
on purpose), and `unload()`. Capabilities are class attributes.

Processors are registered as lazy "module:attr" strings, so `serving` starts without any framework
installed; third-party processors add themselves through the `serving.processors` entry-point group.
"""

from __future__ import annotations

import ctypes
import fnmatch
import functools
import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import Code, ServingError, unimplemented
from .signature import DEFAULT_SIGNATURE, Signature

log = logging.getLogger(__name__)


class Processor:
    """Base class of every processor; subclasses fill `signatures` in `load()`."""

    name: ClassVar[str] = "processor"
    #: True when rows of independent requests may be concatenated along axis 0.
    batchable: ClassVar[bool] = True
    #: Devices the processor can run on ("cpu", "cuda").
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    #: Inputs are positional (TorchScript): the cloud route's protobuf body is pytorch_predict.proto.
    positional_inputs: ClassVar[bool] = False

    def __init__(self) -> None:
        self.signatures: dict[str, Signature] = {}
        self.device = "cpu"

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def validate(self, inputs: dict[str, np.ndarray], signature: Signature) -> None:
        """Check one request's inputs before it is queued (raise INVALID_ARGUMENT naming the input), so a
        bad request never fails the batch it would have joined. The default checks nothing more."""

    def classify(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        raise unimplemented(f"processor {self.name} does not implement classify")

    def regress(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        raise unimplemented(f"processor {self.name} does not implement regress")

    def unload(self) -> None:
        """Release the model; the default drops the references and lets GC free them."""

    def signature(self, name: str | None) -> Signature:
        """The signature called `name` ('' or None: the default one)."""
        key = name or DEFAULT_SIGNATURE
        sig = self.signatures.get(key)
        if sig is None:
            if not name and len(self.signatures) == 1:
                return next(iter(self.signatures.values()))
            # TF Serving's code and words (predict_util.cc): FAILED_PRECONDITION, which REST maps to 400.
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        return sig


@dataclass(frozen=True)
class ProcessorEntry:
    """A registered processor: where it lives, what extra installs its framework, which files it loads."""

    target: str  # "module:attr"
    extra: str
    framework: str
    patterns: tuple[str, ...] = ()


REGISTRY: dict[str, ProcessorEntry] = {
    "xgboost": ProcessorEntry(
        "processors.xgboost_processor:XGBoostProcessor", "xgboost", "xgboost",
        ("model.json", "model.ubj", "*.bst", "*.model", "*.ubj"),
    ),
    "lightgbm": ProcessorEntry(
        "processors.lightgbm_processor:LightGBMProcessor", "lightgbm", "lightgbm",
        ("model.txt", "*.txt", "model.lgb"),
    ),
    "linear": ProcessorEntry("processors.linear:LinearProcessor", "", "numpy", ("linear.json",)),
    "torchscript": ProcessorEntry(
        "processors.torchscript_processor:TorchScriptProcessor", "torch", "torch", ("model.pt", "*.pt", "*.pth"),
    ),
    # fnmatch matches whole names, so torchscript's "*.pt" does not take a ".pt2"
    "torch_export": ProcessorEntry(
        "processors.torch_export_processor:TorchExportProcessor", "torch", "torch", ("model.pt2", "*.pt2"),
    ),
    "tensorflow": ProcessorEntry(
        "processors.tensorflow_processor:TensorFlowProcessor", "tensorflow", "tensorflow", ("saved_model.pb",),
    ),
    "onnx": ProcessorEntry("processors.onnx_processor:ONNXProcessor", "onnx", "onnxruntime", ("model.onnx", "*.onnx")),
    "pmml": ProcessorEntry("processors.pmml_processor:PMMLProcessor", "pmml", "pypmml", ("*.pmml", "*.xml")),
}
ALIASES: dict[str, str] = {"pytorch": "torchscript", "pt2": "torch_export"}
ENTRY_POINT_GROUP = "serving.processors"


def _entry_points() -> dict[str, str]:
    try:
        return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # noqa: BLE001 - a broken third-party distribution must not stop the server
        log.exception("could not read entry points of group %s", ENTRY_POINT_GROUP)
        return {}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key)


def processor_class(name: str) -> type[Processor]:
    """Import and return the processor class registered as `name`, with a clear error otherwise."""
    key = canonical_name(name)
    entry = REGISTRY.get(key)
    target = entry.target if entry else _entry_points().get(key)
    if target is None:
        known = ", ".join(sorted({*REGISTRY, *ALIASES, *_entry_points()}))
        raise ServingError(Code.INVALID_ARGUMENT, f"unknown processor '{name}' (known: {known})")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if entry is not None and e.name and e.name.split(".")[0] == entry.framework:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                f"processor {key} needs the package {entry.framework}: "
                f"pip install serving-engine[{entry.extra}]",
            ) from e
        raise
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Processor)):
        raise ServingError(Code.INVALID_ARGUMENT, f"{target} is not a Processor subclass")
    return cls


def detect_platform(version_dir: Path) -> str | None:
    """Guess the processor from the files in a version directory (first registered match wins)."""
    try:
        names = sorted(p.name for p in version_dir.iterdir() if p.is_file())
    except OSError:
        return None
    for key, entry in REGISTRY.items():
        for pattern in entry.patterns:
            if any(fnmatch.fnmatch(n, pattern) for n in names):
                return key
    return None


def find_model_file(version_dir: Path, patterns: tuple[str, ...], what: str) -> Path:
    """The first file in `version_dir` matching `patterns` in order, or FAILED_PRECONDITION."""
    names = sorted(p.name for p in version_dir.iterdir() if p.is_file())
    for pattern in patterns:
        for n in names:
            if fnmatch.fnmatch(n, pattern):
                return version_dir / n
    raise ServingError(
        Code.FAILED_PRECONDITION,
        f"no {what} model file in {version_dir} (looked for {', '.join(patterns)})",
    )



@functools.cache
def cuda_device_count() -> int:
    """CUDA devices the driver sees (libcuda's cuDeviceGetCount), 0 without a driver: for frameworks that
    have no count of their own (onnxruntime, XGBoost). Honours CUDA_VISIBLE_DEVICES, as the driver does."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def resolve_device(requested: str, cuda_devices: int, processor: str) -> str:
    """`cpu`, `cuda`, `cuda:N` or `auto` -> the device to use, given how many CUDA devices the framework
    sees; CUDA asked for where none is present (or `cuda:N` past the last) fails the load with a clear
    message (no silent CPU fallback) unless `auto` was asked."""
    key = (requested or "cpu").strip().lower()
    if key == "auto":
        return "cuda" if cuda_devices else "cpu"
    if key == "cpu":
        return "cpu"
    if key == "cuda" or key.startswith("cuda:"):
        if not cuda_devices:
            raise ServingError(Code.FAILED_PRECONDITION,
                               f"processor {processor}: device {requested} asked for, but no CUDA device is present "
                               "(use --device cpu, or auto to fall back)")
        index = key.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= cuda_devices):
            raise ServingError(Code.FAILED_PRECONDITION,
                               f"processor {processor}: device {requested} asked for, but {cuda_devices} CUDA "
                               f"device(s) are present (cuda:0 to cuda:{cuda_devices - 1})")
        return key
    raise ServingError(Code.INVALID_ARGUMENT, f"unknown device '{requested}': use cpu, cuda, cuda:N or auto")


def implements(processor: Processor, method: str) -> bool:
    """Whether a processor overrides `classify` / `regress` (the base class answers UNIMPLEMENTED)."""
    return getattr(type(processor), method) is not getattr(Processor, method)
