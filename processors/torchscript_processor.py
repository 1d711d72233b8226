"""TorchScript processor (`torchscript`, alias `pytorch`): an archive saved by `torch.jit.save`
(`model.pt` / `*.pt` / `*.pth`), loaded with `torch.jit.load(map_location=device)`, in eval mode, run
under `torch.inference_mode()`.

TorchScript carries no signature: inputs are positional and named `input__0`, `input__1`, ... (as the
cloud `pytorch_predict.proto` is), outputs `output__0`, ...; tuple/list outputs are flattened, dict
outputs keep their keys. An optional `signature.json` beside the model declares names, dtypes and
shapes: `{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}` (dtype numpy names such as
"float32"; -1 for any size), so TF Serving and KServe V2 clients get proper metadata. Without it the
inputs and outputs are counted from the TorchScript schema, float32, of unknown rank.

A request the model cannot take is the client's error (INVALID_ARGUMENT, one line, no TorchScript
traceback): the processor learns each input's row shape (the dims after the batch dim) from the batches
it runs, widening a dim to -1 where two successful batches differ, so a failing batch whose rows do not fit
them is answered with the shape expected and the shape sent; before any batch has run, a failure that
TorchScript words as a shape or size mismatch is answered so too. Those row shapes are then refused in
`validate()`, before queueing, so such a request never fails a batch it would have joined. Learned shapes
are not enforced in advance: a model that takes several sequence lengths keeps taking them.

CUDA: inputs go to the device once per batch from pinned host memory, outputs come back once;
`options["fp16"]` runs the module in half precision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.core.processor import Processor, find_model_file, resolve_device
from serving.core.signature import DEFAULT_SIGNATURE, Signature, TensorSpec
from serving.errors import Code, ServingError, invalid_argument
from serving.redact import load_failed

F32 = np.dtype(np.float32)
# Row shapes of one request or batch, per input (the dims after the batch dim); None: the rank varies.
RowShapes = tuple[tuple[int, ...] | None, ...]
# How TorchScript words a shape mismatch ("mat1 and mat2 shapes cannot be multiplied", "The size of tensor
# a (2) must match ...", "Expected 3D ... input", "expected input[1, 2, 5] to have 3 channels").
SHAPE_WORDS = re.compile(r"shape|size|dimension|\bdim\b|channels", re.IGNORECASE)
MAX_REFUSED = 64  # row shapes remembered as refused; bounded so odd clients cannot grow it


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


def row_shapes(inputs: Sequence[np.ndarray]) -> RowShapes:
    return tuple(tuple(array.shape[1:]) for array in inputs)


def widen(learned: RowShapes | None, seen: RowShapes) -> RowShapes:
    """Row shapes that fit both: dims that differ become -1, a rank that differs None."""
    if learned is None:
        return seen
    return tuple(None if was is None or now is None or len(was) != len(now)
                 else tuple(w if w == n else -1 for w, n in zip(was, now, strict=True))
                 for was, now in zip(learned, seen, strict=True))


def fits(want: tuple[int, ...] | None, got: tuple[int, ...] | None) -> bool:
    if want is None or got is None:
        return True
    return len(want) == len(got) and all(w in (-1, g) for w, g in zip(want, got, strict=True))


def shape_text(shape: tuple[int, ...] | None) -> str:
    return "[?]" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"


#: Batches from this size up go to the GPU from pinned memory: on an H200, a 2 KiB batch copied in 22 µs
#: pageable and 28 µs pinned, 512 KiB in 79 and 68 µs, 4 MiB in 387 and 245 µs.
PIN_BYTES = 64 * 1024


OOM = re.compile(r"CUDA out of memory\.(?: Tried to allocate [\d.]+ \w+)?")


def out_of_memory(error: BaseException) -> str | None:
    """torch's "CUDA out of memory. Tried to allocate 256.00 TiB" when `error` is one (raised as
    torch.cuda.OutOfMemoryError, or inside a TorchScript model as the interpreter's RuntimeError), else None."""
    m = OOM.search(str(error))
    return m[0] if m else None


def last_line(error: BaseException) -> str:
    """TorchScript's own message without its traceback: the last line, less its exception type."""
    lines = str(error).strip().splitlines()
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip()) if lines else type(error).__name__


def to_device(array: np.ndarray, device: str, fp16: bool) -> torch.Tensor:
    """An input array as a tensor on `device` (half precision with `fp16`, floating point only)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device == "cpu":
        return tensor
    if tensor.nbytes >= PIN_BYTES:
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:  # pinning a small batch costs more than the copy it speeds up (benchmarks/gpu_mlp.py)
        tensor = tensor.to(device)
    return tensor.half() if fp16 and tensor.is_floating_point() else tensor


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
        # Written from the executor threads that run batches, read on the event loop: each is replaced or
        # set whole (one reference or one dict item), so no lock; a widening lost to a race comes back with
        # the next batch.
        self.learned: RowShapes | None = None
        self.refused: dict[RowShapes, str] = {}

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        path = find_model_file(version_dir, ("model.pt", "*.pt", "*.pth"), "TorchScript")
        self.device = resolve_device(device, torch.cuda.device_count(), "torchscript")
        try:
            module = torch.jit.load(str(path), map_location=self.device)
        except (RuntimeError, ValueError) as e:
            raise load_failed("TorchScript model", path, e) from e
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
        return to_device(array, self.device, self.fp16)

    def validate(self, inputs: dict[str, np.ndarray], signature: Signature) -> None:
        """Refuse, before queueing, row shapes the model has already refused."""
        if self.refused:
            message = self.refused.get(row_shapes([inputs[name] for name in self.input_names]))
            if message is not None:
                raise invalid_argument(message)

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        assert self.module is not None, "predict before load"
        arrays = [inputs[name] for name in self.input_names]
        seen = row_shapes(arrays)
        args = [self._to_device(array) for array in arrays]
        try:
            with torch.inference_mode():
                result = self.module(*args)
        except (RuntimeError, torch.jit.Error) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
            oom = out_of_memory(e)
            if oom is not None:  # no fault of the shapes: this batch fails, the next ones run
                del args
                torch.cuda.empty_cache()  # give back what the failed batch cached
                raise ServingError(Code.RESOURCE_EXHAUSTED, f"out of GPU memory running the batch: {oom}") from e
            self._refuse(seen, e)
            raise  # not the request's shapes: the model's own failure (INTERNAL)
        if self.learned != seen:
            self.learned = widen(self.learned, seen)
        return flatten(result, self.output_names)

    def _refuse(self, rows: RowShapes, error: BaseException) -> None:
        """Raise INVALID_ARGUMENT where the failure is the request's shapes, and remember them as refused."""
        said = last_line(error)
        learned = self.learned
        if learned is not None:
            wrong = [f"input '{name}' expects rows of shape {shape_text(want)}, got {shape_text(got)}"
                     for name, want, got in zip(self.input_names, learned, rows, strict=True) if not fits(want, got)]
            if not wrong:
                return
            message = f"{'; '.join(wrong)} (learned from the batches the model has run; TorchScript: {said})"
        elif SHAPE_WORDS.search(said):
            got = ", ".join(f"{name} rows of shape {shape_text(shape)}" for name, shape in zip(self.input_names, rows,
                                                                                                strict=True))
            message = f"the model cannot take {got}: {said}"
        else:
            return
        if len(self.refused) < MAX_REFUSED:
            self.refused[rows] = message
        raise invalid_argument(message) from error

    def unload(self) -> None:
        self.module = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
