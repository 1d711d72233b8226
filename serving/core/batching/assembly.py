"""Batch assembly as pure functions: how the rows of queued requests become one batch, and how a batch's
outputs go back to its requests. No state, no clock, no event loop: each is tested on arrays alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import Code, ServingError, invalid_argument

Inputs = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


def rows_of(inputs: Inputs) -> int:
    """The batch size of a request (its first batched input's dim 0)."""
    for array in inputs.values():
        if array.ndim:
            return int(array.shape[0])
    raise invalid_argument("a batched input needs a batch dimension")


def shape_key(inputs: Inputs, pad: bool) -> tuple[object, ...]:
    """What must be equal for requests to share a batch: per input, dtype and non-batch dims (rank only
    when padding)."""
    key: list[object] = []
    for array in inputs.values():
        key.append(array.dtype)
        key.append(array.ndim if pad else array.shape[1:])
    return tuple(key)


def take_rows(inputs: Inputs, start: int, stop: int, total: int) -> Inputs:
    """Rows [start, stop) of a request (views; the request itself when that is all of it)."""
    if start == 0 and stop == total:
        return inputs
    return {k: v[start:stop] for k, v in inputs.items()}


def concatenate(parts: Sequence[Inputs], pad: bool) -> Inputs:
    """One batch from several requests' rows, in order; `pad` zero-pads differing non-batch dims."""
    if len(parts) == 1:
        return parts[0]
    batch = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if pad:
            arrays = pad_to_common(arrays)
        batch[name] = np.concatenate(arrays)
    return batch


def pad_to_common(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Zero-pad each array's non-batch dims up to the largest of each dim."""
    target = tuple(max(dims) for dims in zip(*(a.shape[1:] for a in arrays), strict=True))
    out = []
    for a in arrays:
        if a.shape[1:] != target:
            widths = [(0, 0)] + [(0, t - d) for d, t in zip(a.shape[1:], target, strict=True)]
            a = np.pad(a, widths)
        out.append(a)
    return out


def pad_to_allowed(inputs: Inputs, rows: int, allowed: Sequence[int]) -> Inputs:
    """Zero rows up to the next of `allowed` batch sizes (none when `allowed` is empty or rows is one)."""
    target = next((s for s in allowed if s >= rows), rows)
    if target <= rows:
        return inputs
    return {k: np.concatenate([v, np.zeros((target - rows, *v.shape[1:]), dtype=v.dtype)])
            for k, v in inputs.items()}


def check_outputs(outputs: Outputs, rows: int, name: str) -> None:
    """Every output has at least the batch's rows (a model may not drop or merge rows)."""
    for key, value in outputs.items():
        if value.ndim == 0 or value.shape[0] < rows:
            raise ServingError(
                Code.INTERNAL,
                f"{name}: output '{key}' has shape {list(value.shape)}, which does not have the batch's {rows} rows",
            )


def slice_outputs(outputs: Outputs, start: int, stop: int, total: int) -> Outputs:
    """Rows [start, stop) of a batch's outputs (the outputs themselves when that is all of them)."""
    if start == 0 and stop == total and all(v.shape[0] == total for v in outputs.values()):
        return outputs
    return {k: v[start:stop] for k, v in outputs.items()}


def reassemble(parts: Sequence[tuple[int, Outputs]]) -> Outputs:
    """A split request's outputs from its pieces, (row offset, outputs) in any order."""
    ordered = [p for _, p in sorted(parts, key=lambda part: part[0])]
    if len(ordered) == 1:
        return ordered[0]
    return {k: np.concatenate([p[k] for p in ordered]) for k in ordered[0]}
