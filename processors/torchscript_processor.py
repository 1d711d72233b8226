"""TorchScript processor (`torchscript`, alias `pytorch`): an archive saved by `torch.jit.save`
(`model.pt` / `*.pt` / `*.pth`), loaded with `torch.jit.load(map_location=device)`, in eval mode, run
under `torch.inference_mode()`.

TorchScript carries no signature: inputs are positional and named `input__0`, `input__1`, ... (as the
cloud `pytorch_predict.proto` is), outputs `output__0`, ...; tuple/list outputs are flattened, dict
outputs keep their keys. An optional `signature.json` beside the model declares names, dtypes and
shapes: `{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}` (dtype numpy names such as
"float32"; -1 for any size), so TF Serving and KServe V2 clients get proper metadata. Without it the
inputs and outputs are counted from the TorchScript schema, float32, of unknown rank.

CUDA: inputs go to the device once per batch from pinned host memory, outputs come back once;
`options["fp16"]` runs the module in half precision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.errors import Code, ServingError
from serving.processor import Processor, find_model_file, resolve_device
from serving.signature import DEFAULT_SIGNATURE, Signature, TensorSpec

F32 = np.dtype(np.float32)


def _specs(entries: list[dict[str, Any]], prefix: str) -> dict[str, TensorSpec]:
    specs = {}
    for i, entry in enumerate(entries):
        name = str(entry.get("name", f"{prefix}__{i}"))
        shape = entry.get("shape")
        specs[name] = TensorSpec(name, np.dtype(entry.get("dtype", "float32")),
                                 tuple(int(d) for d in shape) if shape is not None else None)
    return specs


def _schema_outputs(module: Any) -> int:
    try:
        returns = module.forward.schema.returns
        kind = returns[0].type
        return len(kind.elements()) if hasattr(kind, "elements") else 1
    except (AttributeError, IndexError, RuntimeError):
        return 1


def flatten(result: Any, names: list[str]) -> dict[str, np.ndarray]:
    """A module's result (tensor, tuple/list of tensors, dict of tensors) as named numpy arrays."""
    if isinstance(result, dict):
        items = [(str(k), v) for k, v in result.items()]
    elif isinstance(result, tuple | list):
        items = [(names[i] if i < len(names) else f"output__{i}", v) for i, v in enumerate(result)]
    else:
        items = [(names[0] if names else "output__0", result)]
    return {k: v.detach().to("cpu").float().numpy() if v.dtype == torch.float16 else v.detach().to("cpu").numpy()
            for k, v in items}


class TorchScriptProcessor(Processor):
    name = "torchscript"
    devices = ("cpu", "cuda")
    positional_inputs = True

    def __init__(self) -> None:
        super().__init__()
        self.module: Any = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.fp16 = False

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        path = find_model_file(version_dir, ("model.pt", "*.pt", "*.pth"), "TorchScript")
        self.device = resolve_device(device, torch.cuda.is_available(), "torchscript")
        try:
            module = torch.jit.load(str(path), map_location=self.device)
        except (RuntimeError, ValueError) as e:
            raise ServingError(Code.FAILED_PRECONDITION, f"cannot load TorchScript model {path}: {e}") from e
        module.eval()
        self.fp16 = bool(options.get("fp16", False)) and self.device.startswith("cuda")
        if "intra_op_threads" in options:  # process-wide in torch
            torch.set_num_threads(int(options["intra_op_threads"]))
        if self.fp16:
            module = module.half()
        sig_path = version_dir / "signature.json"
        if sig_path.is_file():
            try:
                doc = json.loads(sig_path.read_text())
                inputs, outputs = _specs(doc["inputs"], "input"), _specs(doc["outputs"], "output")
            except (ValueError, KeyError, TypeError) as e:
                raise ServingError(Code.FAILED_PRECONDITION, f"bad {sig_path}: {e!r}") from e
        else:
            n_in = max(len(module.forward.schema.arguments) - 1, 0)
            inputs = {f"input__{i}": TensorSpec(f"input__{i}", F32, None) for i in range(n_in)}
            outputs = {f"output__{i}": TensorSpec(f"output__{i}", F32, None) for i in range(_schema_outputs(module))}
        self.module = module
        self.input_names, self.output_names = list(inputs), list(outputs)
        self.signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, outputs,
                                                        output_order=tuple(outputs))}

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device == "cpu":
            return tensor
        tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.half() if self.fp16 and tensor.is_floating_point() else tensor

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        assert self.module is not None, "predict before load"
        args = [self._to_device(inputs[name]) for name in self.input_names]
        with torch.inference_mode():
            result = self.module(*args)
        return flatten(result, self.output_names)

    def unload(self) -> None:
        self.module = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
