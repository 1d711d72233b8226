"""torch.export processor (`torch_export`, alias `pt2`): a `.pt2` archive (`model.pt2` / `*.pt2`) holding either
an ExportedProgram (`torch.export.save`), run as `torch.export.load(path).module()` under
`torch.inference_mode()`, or an AOTInductor package (`torch._inductor.aoti_compile_and_package`), run through
`torch._inductor.aoti_load_package(path)`. Both are zip archives; which one it is is read from the names inside
(`.../data/aotinductor/...` for a package, `.../models/<name>.json` for a program).

Unlike TorchScript, an exported program says what it takes: its inputs are named after the forward's parameters
(`graph_signature.user_inputs`), typed and shaped from the traced example (a dim made dynamic with
`torch.export.Dim` is -1), and each dynamic dim keeps its range (`range_constraints`); outputs are `output_0`,
`output_1`, ... (the flattened tuple, list or tensor) or the keys of a returned dict. A request whose dim lies
outside its range, or whose dims exported as one `Dim` differ, is refused in `validate()` before queueing,
naming the input and the dim. A batch larger than the batch dim's upper bound (the batcher joins requests) runs
in pieces of that size.

An AOTInductor package keeps no ExportedProgram (unless one was packaged beside it with
`torch.export.pt2_archive._package.package_pt2`, whose signature is then read): its inputs are named from its call
spec (keyword arguments keep their names, positional ones are `input_0`, `input_1`, ...), and dtypes, fixed dims
and dim bounds are read from the input checks AOTInductor compiles into the package's wrapper (`check_input_N`,
run only under `AOTI_RUNTIME_CHECK_INPUTS=1`): compiled code reads what it is given, so the processor checks them
itself. Inductor raises every dynamic dim's lower bound to 2 (it specializes sizes 0 and 1) while the compiled
code runs one row, so a lower bound of 2 read there is taken as 1. A `signature.json` beside the model (the
format of the TorchScript processor's) overrides names, dtypes and shapes of either kind.

CUDA: an ExportedProgram is moved to the device (`torch.export.passes.move_to_device_pass`); `options["fp16"]`
runs it in half precision and still answers float32. An AOTInductor package runs on the device it was compiled
for, in the precision it was compiled in (fp16 does not apply). Running out of GPU memory fails that batch alone
with RESOURCE_EXHAUSTED, as in the TorchScript processor.
"""

from __future__ import annotations

import json
import re
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch._inductor.package import load_package
from torch.export.passes import move_to_device_pass
from torch.utils import _pytree as pytree
from torch.utils._sympy.value_ranges import bound_sympy

from processors.torchscript_processor import _specs, flatten, last_line, out_of_memory, to_device
from serving.core.processor import Processor, find_model_file, resolve_device
from serving.core.signature import BFLOAT16, DEFAULT_SIGNATURE, Signature, TensorSpec
from serving.errors import Code, ServingError, invalid_argument
from serving.redact import load_failed

# torch._inductor (and with it torch._dynamo) is imported above, with this module, not lazily in load(): two models
# loading at once in two threads would each import it half-way ("partially initialized module 'torch._dynamo...'").

NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {
    torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64), torch.float16: np.dtype(np.float16),
    torch.int8: np.dtype(np.int8), torch.int16: np.dtype(np.int16), torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64), torch.uint8: np.dtype(np.uint8), torch.bool: np.dtype(np.bool_),
}
if BFLOAT16 is not None:
    NUMPY_DTYPES[torch.bfloat16] = BFLOAT16
# AOTInductor's dtype words in its generated checks (`aoti_torch_dtype_float32()`), as numpy dtypes.
AOTI_DTYPES: dict[str, np.dtype] = {str(t).removeprefix("torch."): d for t, d in NUMPY_DTYPES.items()}

#: One torch.export load at a time in a process: a program's deserializer and an AOTInductor package's loader
#: import torch's lazy submodules on first use, and two loader threads importing them at once failed one load with
#: "No module named 'torch.utils.flop_counter'" (a partly imported package seen by the other thread).
_LOADING = threading.Lock()
AOTI_FILES = re.compile(r"(?:^|/)data/aotinductor/([^/]+)/")
PROGRAM_FILES = re.compile(r"(?:^|/)models/([^/]+)\.json$")
# One generated input check of an AOTInductor wrapper, and the facts it states about its input.
CHECK_BLOCK = re.compile(r"static void check_input_(\d+)\((.*?)\n}", re.DOTALL)
CHECK_DTYPE = re.compile(r"_expected_dtype = aoti_torch_dtype_(\w+)\(\)")
CHECK_FIXED = re.compile(r"if \((\d+) != \w+_size\[(\d+)\]\)")
CHECK_LOWER = re.compile(r"if \(\w+_size\[(\d+)\] < (\d+)\)")
CHECK_UPPER = re.compile(r"if \(\w+_size\[(\d+)\] > (\d+)\)")
CHECK_INDEX = re.compile(r"_s(?:ize|tride)\[(\d+)\]")
F32 = np.dtype(np.float32)


@dataclass(frozen=True)
class DimRange:
    """The sizes a dynamic dim takes (`upper` None: no bound) and the symbol it shares with other dims."""

    lower: int
    upper: int | None
    symbol: str | None = None

    def text(self) -> str:
        return f"{self.lower} to {self.upper}" if self.upper is not None else f"at least {self.lower}"


@dataclass(frozen=True)
class ModelInput:
    """What one input of the exported model takes: dtype, shape (-1 dynamic; None unknown), dynamic dims' ranges."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...] | None
    ranges: tuple[DimRange | None, ...] = ()


def archive_kind(path: Path) -> tuple[str, str]:
    """("aoti" or "program", the model's name in the archive) from the names inside a `.pt2` zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise ServingError(Code.FAILED_PRECONDITION,
                           f"cannot load torch.export archive {path.name}: not a zip archive (torch.export.save or "
                           "aoti_compile_and_package make one)") from e
    for pattern, kind in ((AOTI_FILES, "aoti"), (PROGRAM_FILES, "program")):
        found = sorted({m[1] for m in map(pattern.search, names) if m})
        if found:
            return kind, "model" if "model" in found else found[0]
    raise ServingError(Code.FAILED_PRECONDITION,
                       f"{path.name} is neither an ExportedProgram (torch.export.save) nor an AOTInductor package "
                       "(torch._inductor.aoti_compile_and_package): it has no models/*.json nor data/aotinductor/")


def _read(path: Path, pattern: str) -> list[str]:
    """The text of the archive's members whose names match `pattern`."""
    with zipfile.ZipFile(path) as archive:
        return [archive.read(n).decode("utf-8", "replace") for n in archive.namelist() if re.search(pattern, n)]


def aoti_device(path: Path, model: str) -> str:
    """The device type an AOTInductor package was compiled for (its metadata's AOTI_DEVICE_KEY; cpu if unsaid)."""
    for text in _read(path, rf"data/aotinductor/{re.escape(model)}/[^/]*metadata\.json$"):
        try:
            return str(json.loads(text).get("AOTI_DEVICE_KEY") or "cpu")
        except ValueError:
            continue
    return "cpu"


def _bound(value: Any) -> int | None:
    return int(value) if getattr(value, "is_Integer", False) else None


def program_inputs(ep: Any) -> list[ModelInput]:
    """An ExportedProgram's user inputs: names, dtypes, shapes and the ranges of their dynamic dims."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    ranges = ep.range_constraints
    inputs = []
    for name in ep.graph_signature.user_inputs:
        node = placeholders.get(name)
        val = node.meta.get("val") if node is not None else None
        if not isinstance(val, torch.Tensor):
            raise ServingError(Code.FAILED_PRECONDITION, f"the exported program's input '{name}' is not a tensor "
                                                         f"({type(val).__name__}): only tensor inputs are served")
        shape: list[int] = []
        dims: list[DimRange | None] = []
        for d in val.shape:
            if isinstance(d, int):
                shape.append(d)
                dims.append(None)
                continue
            expr = d.node.expr
            vr = ranges.get(expr)
            if vr is None:  # a derived dim (2 * s0): its own range, no symbol of its own
                vr = bound_sympy(expr, ranges)
            shape.append(-1)
            dims.append(DimRange(max(_bound(vr.lower) or 0, 0), _bound(vr.upper),
                                 str(expr) if getattr(expr, "is_Symbol", False) else None))
        dtype = NUMPY_DTYPES.get(val.dtype)
        if dtype is None:
            raise ServingError(Code.FAILED_PRECONDITION, f"the exported program's input '{name}' is of type "
                                                         f"{val.dtype}, which no protocol carries")
        inputs.append(ModelInput(name, dtype, tuple(shape), tuple(dims)))
    return inputs


def program_outputs(ep: Any, names: list[str]) -> list[TensorSpec]:
    output = next(n for n in ep.graph.nodes if n.op == "output")
    vals = [a.meta.get("val") if isinstance(a, torch.fx.Node) else None for a in pytree.tree_leaves(output.args[0])]
    user = vals[len(vals) - len(names):]  # buffer mutations come first, the user's outputs last
    specs = []
    for name, val in zip(names, user, strict=True):
        if isinstance(val, torch.Tensor):
            specs.append(TensorSpec(name, NUMPY_DTYPES.get(val.dtype, F32),
                                    tuple(d if isinstance(d, int) else -1 for d in val.shape)))
        else:
            specs.append(TensorSpec(name, F32, None))
    return specs


def output_names(spec: Any) -> list[str]:
    """The keys of a returned dict of tensors, else `output_0`, `output_1`, ... for the flattened leaves."""
    if spec.type is dict and all(c.is_leaf() for c in spec.children()):
        return [str(k) for k in spec.context]
    return [f"output_{i}" for i in range(spec.num_leaves)]


def input_names(spec: Any, count: int) -> list[str]:
    """Names of an AOTInductor package's inputs from its call spec `((args...), {kwargs})`: keyword arguments
    keep their keys, positional ones are `input_0`, ...; `count` the tensors the compiled code takes."""
    try:
        args, kwargs = spec.children()
        names = [f"input_{i}" for i in range(args.num_leaves)]
        if kwargs.type is dict:
            names += [str(k) if c.is_leaf() else f"{k}_{j}" for k, c in zip(kwargs.context, kwargs.children(),
                                                                             strict=True)
                      for j in range(c.num_leaves)]
    except (ValueError, AttributeError):
        names = []
    return names if len(names) == count else [f"input_{i}" for i in range(count)]


def wrapper_inputs(path: Path, model: str) -> list[tuple[np.dtype, tuple[int, ...], tuple[DimRange | None, ...]]]:
    """Dtype, shape and dim bounds of each input of an AOTInductor package, from the input checks compiled into its
    wrapper (`check_input_N`); [] when the package has no wrapper source."""
    found = []
    for text in _read(path, rf"data/aotinductor/{re.escape(model)}/[^/]*\.wrapper\.cpp$"):
        for m in CHECK_BLOCK.finditer(text):
            body = m[2]
            dtype = CHECK_DTYPE.search(body)
            rank = max((int(i) + 1 for i in CHECK_INDEX.findall(body)), default=0)
            shape = [-1] * rank
            for size, dim in CHECK_FIXED.findall(body):
                shape[int(dim)] = int(size)
            lower = {int(d): int(v) for d, v in CHECK_LOWER.findall(body)}
            upper = {int(d): int(v) for d, v in CHECK_UPPER.findall(body)}
            # Inductor raises a dynamic dim's lower bound to 2 (0/1 specialization); the code runs one row.
            dims = tuple(None if shape[i] != -1 else DimRange(1 if lower.get(i, 0) <= 2 else lower[i], upper.get(i))
                         for i in range(rank))
            found.append((int(m[1]), AOTI_DTYPES.get(dtype[1], F32) if dtype else F32, tuple(shape), dims))
    return [(dtype, shape, dims) for _, dtype, shape, dims in sorted(found, key=lambda f: f[0])]


class TorchExportProcessor(Processor):
    name = "torch_export"
    devices = ("cpu", "cuda")
    positional_inputs = True  # the cloud route's protobuf body is pytorch_predict.proto, as for TorchScript

    def __init__(self) -> None:
        super().__init__()
        self.run_flat: Any = None  # list of tensors in, list of tensors out
        self.kind = ""
        self.inputs: list[ModelInput] = []
        self.input_names: list[str] = []  # the signature's names, in the model's order
        self.output_names: list[str] = []
        self.chunk: int | None = None  # the batch dim's upper bound, where a batch must be split
        self.fp16 = False

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        path = find_model_file(version_dir, ("model.pt2", "*.pt2"), "torch.export")
        kind, model = archive_kind(path)
        if "intra_op_threads" in options:  # process-wide in torch
            torch.set_num_threads(int(options["intra_op_threads"]))
        with _LOADING:
            if kind == "aoti":
                outputs = self._load_aoti(path, model, device)
            else:
                outputs = self._load_program(path, device, bool(options.get("fp16", False)))
        self.kind = kind
        inputs = {m.name: TensorSpec(m.name, m.dtype, m.shape) for m in self.inputs}
        named = {s.name: s for s in outputs}
        sig_path = version_dir / "signature.json"
        if sig_path.is_file():
            inputs, named = self._declared(sig_path, len(inputs), len(named))
        self.input_names, self.output_names = list(inputs), list(named)
        self.chunk = self._chunk()
        self.signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, named,
                                                        output_order=tuple(named))}

    def _load_program(self, path: Path, device: str, fp16: bool) -> list[TensorSpec]:
        self.device = resolve_device(device, torch.cuda.device_count(), "torch_export")
        try:
            ep = torch.export.load(str(path))
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            raise load_failed("ExportedProgram", path, e) from e
        if self.device != "cpu":
            ep = move_to_device_pass(ep, self.device)
        self.inputs = program_inputs(ep)
        names = output_names(ep.call_spec.out_spec)
        outputs = program_outputs(ep, names)
        module = ep.module()
        self.fp16 = fp16 and self.device.startswith("cuda")
        if self.fp16:
            module = module.half()
        in_spec = ep.call_spec.in_spec

        def run(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            args, kwargs = pytree.tree_unflatten(tensors, in_spec)
            return pytree.tree_leaves(module(*args, **kwargs))  # type: ignore[no-any-return]

        self.run_flat = run
        return outputs

    def _load_aoti(self, path: Path, model: str, device: str) -> list[TensorSpec]:
        compiled_for = aoti_device(path, model)
        count = torch.cuda.device_count()
        wanted = compiled_for if (device or "").strip().lower() == "auto" else device
        self.device = resolve_device(wanted, count, "torch_export")
        if self.device.partition(":")[0] != compiled_for:
            raise ServingError(Code.FAILED_PRECONDITION,
                               f"the AOTInductor package {path.name} was compiled for {compiled_for}, not "
                               f"{self.device}: serve it with --device {compiled_for}, or compile it for "
                               f"{self.device.partition(':')[0]}")
        index = self.device.partition(":")[2]
        try:
            compiled = load_package(str(path), model, device_index=int(index) if index else -1)
        except (RuntimeError, ValueError, OSError) as e:
            raise load_failed("AOTInductor package", path, e) from e
        loader = compiled.loader
        in_spec, out_spec = (pytree.treespec_loads(s) for s in loader.get_call_spec())
        names = output_names(out_spec)
        program = self._packaged_program(path)
        if program is not None:
            self.inputs = program_inputs(program)
            outputs = program_outputs(program, names)
        else:
            checks = wrapper_inputs(path, model)
            count_in = len(checks) or in_spec.num_leaves
            named = input_names(in_spec, count_in)
            self.inputs = [ModelInput(n, *checks[i]) if checks else ModelInput(n, F32, None)
                           for i, n in enumerate(named)]
            outputs = [TensorSpec(n, F32, None) for n in names]
        # the AOTICompiledModel's own call, less its parse of the call spec on every call
        self.run_flat = loader.boxed_run
        return outputs

    @staticmethod
    def _packaged_program(path: Path) -> Any:
        """The ExportedProgram packaged beside the compiled model, if any (package_pt2 may hold both)."""
        with zipfile.ZipFile(path) as archive:
            if not any(PROGRAM_FILES.search(n) for n in archive.namelist()):
                return None
        try:
            return torch.export.load(str(path))
        except (RuntimeError, ValueError, KeyError) as e:
            raise load_failed("ExportedProgram beside the AOTInductor package", path, e) from e

    def _declared(self, sig_path: Path, n_in: int, n_out: int) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        try:
            doc = json.loads(sig_path.read_text())
            inputs, outputs = _specs(doc["inputs"], "input"), _specs(doc["outputs"], "output")
        except (ValueError, KeyError, TypeError) as e:
            raise ServingError(Code.FAILED_PRECONDITION, f"bad {sig_path}: {e!r}") from e
        if len(inputs) != n_in or len(outputs) != n_out:
            raise ServingError(Code.FAILED_PRECONDITION,
                               f"{sig_path} declares {len(inputs)} input(s) and {len(outputs)} output(s); the "
                               f"exported model has {n_in} and {n_out}")
        return inputs, outputs

    def _chunk(self) -> int | None:
        """The most rows one call takes: the least upper bound of the inputs' first dims (dynamic or fixed)."""
        bounds = []
        for m in self.inputs:
            if not m.shape:
                return None
            rng = m.ranges[0] if m.ranges else None
            bounds.append(m.shape[0] if m.shape[0] != -1 else rng.upper if rng is not None else None)
        finite = [b for b in bounds if b is not None]
        return min(finite) if finite else None

    def validate(self, inputs: dict[str, np.ndarray], signature: Signature) -> None:
        """Refuse, before queueing, dims outside the ranges the model was exported with, and dims exported as one
        `torch.export.Dim` that differ."""
        seen: dict[str, tuple[str, int, int]] = {}
        for name, model_input in zip(self.input_names, self.inputs, strict=True):
            shape = inputs[name].shape
            for i, rng in enumerate(model_input.ranges):
                if rng is None or i >= len(shape):
                    continue
                size = shape[i]
                if size < rng.lower or (rng.upper is not None and size > rng.upper):
                    raise invalid_argument(f"input '{name}' dimension {i} is {size}, outside the range the model "
                                           f"was exported with ({rng.text()}, torch.export.Dim)")
                if rng.symbol is not None:
                    other = seen.setdefault(rng.symbol, (name, i, size))
                    if other[2] != size:
                        raise invalid_argument(
                            f"input '{name}' dimension {i} is {size} but input '{other[0]}' dimension {other[1]} is "
                            f"{other[2]}: the model was exported with them equal (one torch.export.Dim)")

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device, self.fp16)

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        assert self.run_flat is not None, "predict before load"
        arrays = [inputs[name] for name in self.input_names]
        rows = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
        if self.chunk is None or rows <= self.chunk:
            return self._run(arrays)
        parts = [self._run([a[i:i + self.chunk] for a in arrays]) for i in range(0, rows, self.chunk)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _run(self, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [self._to_device(a) for a in arrays]
        try:
            with torch.inference_mode():
                result = self.run_flat(tensors)
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
            oom = out_of_memory(e)
            if oom is None:
                raise  # the model's own failure (INTERNAL)
            del tensors
            torch.cuda.empty_cache()  # give back what the failed batch cached
            raise ServingError(Code.RESOURCE_EXHAUSTED, f"out of GPU memory running the batch: {oom}") from e
        except AssertionError as e:  # an ExportedProgram's guards on its inputs (relations validate() cannot see)
            raise invalid_argument(f"the exported model refused the inputs: {last_line(e)}") from e
        return flatten(list(result), self.output_names)

    def unload(self) -> None:
        self.run_flat = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
