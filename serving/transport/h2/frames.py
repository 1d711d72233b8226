"""HTTP/2's frame layer (RFC 9113 section 4 and 6): the numbers, the frame header, and the frames the server
writes, built as bytes (one `bytes` per frame or per run of frames, joined by the connection into one write).

Parsing is one `FRAME_HEAD.unpack_from(buffer, offset)` per frame, done by the connection over its read
buffer: the 9-byte header read as `>IBI` gives (length << 8 | type, flags, stream id with its reserved bit).
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)

# Flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (RFC 9113 7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC
HTTP_1_1_REQUIRED = 0xD

# Settings (RFC 9113 6.5.2)
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6
ENABLE_CONNECT_PROTOCOL = 0x8

#: The largest window (RFC 9113 6.9.1) and stream id.
MAX_WINDOW = 2**31 - 1
#: Until SETTINGS say otherwise (RFC 9113 6.5.2).
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_FRAME_LIMIT = 2**24 - 1

FRAME_HEAD = struct.Struct(">IBI")  # (length << 8 | type, flags, R + stream id)
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
_GOAWAY = struct.Struct(">II")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: its 9-byte header and `payload` (at most the peer's MAX_FRAME_SIZE: the caller splits)."""
    return FRAME_HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def head(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    """A frame's header alone, for a payload written after it without joining the two."""
    return FRAME_HEAD.pack(length << 8 | kind, flags, stream_id)


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """(identifier, value) pairs of a SETTINGS payload (a multiple of 6 bytes: the caller checks)."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code) + debug)


def ping(data: bytes, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, data)


def u32(payload: bytes, offset: int = 0) -> int:
    """The 32-bit number at `offset` (a window increment, an error code: the caller masks the reserved bit)."""
    return int(_U32.unpack_from(payload, offset)[0])


def header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """A header block as HEADERS (END_HEADERS when it fits one frame), then CONTINUATION frames."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return FRAME_HEAD.pack(len(block) << 8 | HEADERS, flags | END_HEADERS, stream_id) + block
    parts = [frame(HEADERS, flags, stream_id, block[:max_frame])]
    for start in range(max_frame, len(block), max_frame):
        last = start + max_frame >= len(block)
        parts.append(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[start:start + max_frame]))
    return b"".join(parts)


def data_frames(stream_id: int, payload: bytes | memoryview, max_frame: int, end_stream: bool) -> list[bytes]:
    """`payload` as DATA frames of at most `max_frame` bytes (END_STREAM on the last when asked): a list of
    header and payload pieces, for one join with the rest of the write."""
    size = len(payload)
    if size <= max_frame:
        return [FRAME_HEAD.pack(size << 8 | DATA, END_STREAM if end_stream else 0, stream_id), bytes(payload)]
    view = memoryview(payload)
    parts: list[bytes] = []
    for start in range(0, size, max_frame):
        piece = view[start:start + max_frame]
        last = end_stream and start + max_frame >= size
        parts += (FRAME_HEAD.pack(len(piece) << 8 | DATA, END_STREAM if last else 0, stream_id), bytes(piece))
    return parts
