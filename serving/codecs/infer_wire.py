"""The common KServe V2 `ModelInferRequest` read from its wire bytes by the layout of one read before.

A client sends the same message call after call with only its tensor's bytes changed: perf_analyzer and
tritonclient write the model name, the request's parameters, the input's name, datatype and shape and the outputs
named, then `raw_input_contents` (field 7) last, as protobuf writes fields in the order of their numbers. Decoded by
upb and read field by field as the express lane checks it, that costs ~4.6 µs a call here (each nested message and
container a new Python object). So once a message has been decoded and taken by the lane, its layout is kept: its
length and its bytes before the raw contents, with what the lane read of it. A later message of that length that
starts with those bytes is the same message up to the contents, and the contents are the rest: one comparison.

The values may also be in the input's typed field, as KServe's SDK sends them: a FP32 input's packed
`fp32_contents` (a FP64 one's `fp64_contents`) are the same little-endian bytes as raw contents, and with no
outputs named they end the message: `inputs` (5) its last field, `contents` (5) the input's last, the typed field
the contents' last. Such a layout is kept with that path of fields (its values read as their bytes: a NaN keeps
the payload it was sent with, which protobuf's Python floats would quiet).

A layout is used only once a scan of the message's fields (top-level, then down the path) has found the values'
one field last and running to the end, so a message whose last bytes merely look like it (another field holding
them) is never read this way.
"""

from __future__ import annotations

from typing import Any

from .predict_wire import varint

#: raw_input_contents (7), length-delimited: its tag byte; the path of fields down to it.
RAW_TAG = 7 << 3 | 2
RAW_PATH = (RAW_TAG,)

#: A datatype whose packed typed field holds its values as their little-endian bytes -> the path of fields (tag
#: bytes) down to that field: inputs (5), the input's contents (5), fp32_contents (6) / fp64_contents (7).
TYPED_PATHS = {"FP32": (5 << 3 | 2, 5 << 3 | 2, 6 << 3 | 2), "FP64": (5 << 3 | 2, 5 << 3 | 2, 7 << 3 | 2)}


class Layouts:
    """Message length -> (the bytes before its values, what was read of that message, and the message itself and
    the path of fields down to its values until its layout is checked). Emptied when full.

    The check (a scan of the fields down its path) is made when a second message of the same length and start comes,
    not when the first is kept: a client whose every message differs (a new id each call) never pays for it."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self.kept: dict[int, tuple[bytes, Any, tuple[bytes, tuple[int, ...]] | None]] = {}

    def find(self, data: bytes) -> tuple[Any, bytes] | None:
        """(what was read, the values' bytes) of a message of a kept layout, else None."""
        size = len(data)
        kept = self.kept.get(size)
        if kept is None or not data.startswith(kept[0]):
            return None
        head, read, unchecked = kept
        if unchecked is not None:
            if nested_start(*unchecked) != len(head):
                del self.kept[size]
                return None
            self.kept[size] = (head, read, None)
        return read, data[len(head):]

    def keep(self, data: bytes, raw_size: int, read: Any, path: tuple[int, ...] = RAW_PATH) -> None:
        """Keep the layout of `data`, whose values of `raw_size` bytes, in the field `path` leads to, are taken to
        end it (checked when it is next found), with `read`."""
        if len(self.kept) >= self.limit:
            self.kept.clear()
        self.kept[len(data)] = (data[:len(data) - raw_size], read, (data, path))


def nested_start(data: bytes, path: tuple[int, ...]) -> int | None:
    """Where the value of the field `path` leads to starts: each tag's field the last of its message (the one
    before's value), its only one with that tag, running to the end; None otherwise."""
    offset = 0
    for tag in path:
        start = last_field_start(data, tag)
        if start is None:
            return None
        offset += start
        data = data[start:]
    return offset


def last_field_start(data: bytes, tag: int) -> int | None:
    """Where the value of the field of one-byte `tag` (length-delimited) starts, when it is the message's last
    top-level field, its only one with that tag, and ends with the message; None otherwise (or for bytes that do
    not scan as fields)."""
    at, end, start = 0, len(data), None
    try:
        while at < end:
            key, at = varint(data, at)
            kind = key & 7
            if kind == 0:
                _, at = varint(data, at)
            elif kind == 1:
                at += 8
            elif kind == 5:
                at += 4
            elif kind == 2:
                size, at = varint(data, at)
                if key == tag:
                    if start is not None:
                        return None  # twice
                    start = at
                at += size
            else:
                return None  # groups: not what a V2 client writes
            if start is not None and at != end and key == tag:
                return None  # not last
    except (IndexError, ValueError):
        return None
    if at != end or start is None:
        return None
    return start
