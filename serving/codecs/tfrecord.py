"""TFRecord files: the framing of TF Serving's warm-up files and of this engine's request logs (length, the
length's masked CRC-32C, the data, the data's), and the PredictionLog records they hold."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import Code, ServingError

log = logging.getLogger(__name__)


def _fail(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, message)


def masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def prediction_logs(paths: Iterable[Path]) -> Iterator[Any]:
    """The PredictionLog records of TFRecord files (request logs, warm-up files), in order; a truncated last
    record (a log cut short by a full disk or a crash) is skipped with a warning."""
    from .._proto.tensorflow_serving.apis import prediction_log_pb2

    for path in paths:
        for record in read_tfrecords(path, truncated_end_ok=True):
            yield prediction_log_pb2.PredictionLog.FromString(record)


def read_tfrecords(path: Path, truncated_end_ok: bool = False) -> Iterator[bytes]:
    """The records of a TFRecord file, framing and CRCs checked. A last record cut short (a partial length
    header, or fewer bytes than its length says) is an error, or with `truncated_end_ok` skipped with a warning
    naming the file and its offset (a request log whose disk filled up); a corrupt record stays an error."""
    data = path.read_bytes()
    pos, index = 0, 0
    while pos < len(data):
        if pos + 12 > len(data):
            truncated(path, index, pos, "incomplete length header", truncated_end_ok)
            return
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        if masked_crc(data[pos:pos + 8]) != length_crc:
            raise _fail(f"{path}: record {index} has a corrupt length (CRC mismatch)")
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            truncated(path, index, pos, f"{len(data) - pos} of its {length + 16} bytes", truncated_end_ok)
            return
        record = data[start:end]
        (data_crc,) = struct.unpack_from("<I", data, end)
        if masked_crc(record) != data_crc:
            raise _fail(f"{path}: record {index} is corrupt (CRC mismatch)")
        yield record
        pos, index = end + 4, index + 1


def truncated(path: Path, index: int, offset: int, what: str, skip: bool) -> None:
    """A last record cut short: raised, or when `skip` logged as skipped."""
    if not skip:
        raise _fail(f"{path}: record {index} is truncated ({what})")
    log.warning("%s: record %d at byte %d is truncated (%s), skipped; the %d records before it are read", path,
                index, offset, what, index)


def tfrecord(record: bytes) -> bytes:
    """One record with its TFRecord framing: length, the length's masked CRC-32C, the data, the data's."""
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", masked_crc(header)) + record + struct.pack("<I", masked_crc(record))


def write_tfrecords(path: Path, records: list[bytes]) -> None:
    """Write records with TFRecord framing (used by tests and tools that make warm-up files)."""
    with path.open("wb") as f:
        for record in records:
            f.write(tfrecord(record))
