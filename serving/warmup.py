"""Warm-up before ready: a version becomes AVAILABLE only after its warm-up requests ran, through the
same data plane (and batching path) as real traffic, so the first real request finds everything
compiled and allocated.

- TF Serving: `<version>/assets.extra/tf_serving_warmup_requests`, a TFRecord file of PredictionLog
  records, each replayed `num_request_iterations_for_warmup` times, at most 1000 records.
- Cloud processor: the service's `warm_up_data_path`, a `.bin` file holding one serialized processor
  PredictRequest (tf_predict.proto) or a `.txt` file with one JSON request per line; each sent 5 times.

A bad record, a file that cannot be read or a request that fails fails the load, with a message.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import Code, ServingError
from .repository import Servable

if TYPE_CHECKING:
    from .dataplane import DataPlane

TF_WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000
EAS_REPEAT = 5
WARMUP_DEADLINE_S = 600.0


def _fail(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, f"warm-up: {message}")


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file, framing and CRCs checked."""
    data = path.read_bytes()
    pos, index = 0, 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise _fail(f"{path}: record {index} is truncated (incomplete length header)")
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        if _masked_crc(data[pos:pos + 8]) != length_crc:
            raise _fail(f"{path}: record {index} has a corrupt length (CRC mismatch)")
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            raise _fail(f"{path}: record {index} is truncated")
        record = data[start:end]
        (data_crc,) = struct.unpack_from("<I", data, end)
        if _masked_crc(record) != data_crc:
            raise _fail(f"{path}: record {index} is corrupt (CRC mismatch)")
        yield record
        pos, index = end + 4, index + 1


def write_tfrecords(path: Path, records: list[bytes]) -> None:
    """Write records with TFRecord framing (used by tests and tools that make warm-up files)."""
    with path.open("wb") as f:
        for record in records:
            header = struct.pack("<Q", len(record))
            f.write(header + struct.pack("<I", _masked_crc(header)) + record + struct.pack("<I", _masked_crc(record)))


@dataclass
class WarmupRequest:
    signature_name: str
    inputs: dict[str, np.ndarray]
    repeat: int


def tf_serving_requests(version_dir: Path, iterations: int) -> list[WarmupRequest]:
    path = version_dir / TF_WARMUP_FILE
    if not path.is_file():
        return []
    from ._proto.tensorflow_serving.apis import prediction_log_pb2
    from .codecs.tensors import tensor_to_array

    out = []
    for index, record in enumerate(read_tfrecords(path)):
        if index >= MAX_RECORDS:
            raise _fail(f"{path}: more than {MAX_RECORDS} warm-up records")
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise _fail(f"{path}: record {index} is not a PredictionLog: {e}") from e
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":
            raise _fail(f"{path}: record {index} is a {kind or 'empty'} log; this processor warms up with "
                        "predict_log records only")
        request = log.predict_log.request
        try:
            inputs = {name: tensor_to_array(t, name) for name, t in request.inputs.items()}
        except ServingError as e:
            raise _fail(f"{path}: record {index}: {e.message}") from e
        out.append(WarmupRequest(request.model_spec.signature_name, inputs, iterations))
    return out


def eas_requests(path: Path, servable: Servable) -> list[WarmupRequest]:
    from .codecs import eas
    from .codecs.jsonutil import loads

    if not path.is_file():
        raise _fail(f"warm_up_data_path {path} is not a file")
    if path.suffix == ".bin":
        from ._proto.eas import tf_predict_pb2
        from .codecs.tensors import array_proto_to_array

        request = tf_predict_pb2.PredictRequest()
        try:
            request.ParseFromString(path.read_bytes())
            inputs = {name: array_proto_to_array(a, name) for name, a in request.inputs.items()}
        except ServingError as e:
            raise _fail(f"{path}: {e.message}") from e
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError
            raise _fail(f"{path}: not a serialized PredictRequest: {e}") from e
        return [WarmupRequest(request.signature_name, inputs, EAS_REPEAT)]
    if path.suffix == ".txt":
        sig = servable.signature(None)
        out = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(WarmupRequest(sig.name, eas.decode_json(loads(line.encode()), sig), EAS_REPEAT))
            except ServingError as e:
                raise _fail(f"{path}: line {number}: {e.message}") from e
        return out
    raise _fail(f"warm_up_data_path {path}: expected a .bin or .txt file")


class Warmup:
    """The manager's warm-up hook: replays a new version's warm-up requests before it is AVAILABLE."""

    def __init__(self, dataplane: DataPlane, *, iterations: int = 1, service_model: str = "",
                 warm_up_data_path: str = "") -> None:
        self.dataplane = dataplane
        self.iterations = iterations
        self.service_model = service_model
        self.warm_up_data_path = warm_up_data_path

    async def __call__(self, servable: Servable) -> None:
        requests = tf_serving_requests(servable.path, self.iterations)
        if self.warm_up_data_path and servable.model == self.service_model:
            requests += eas_requests(Path(self.warm_up_data_path), servable)
        for number, request in enumerate(requests):
            await self._replay(servable, request, number)

    async def _replay(self, servable: Servable, request: WarmupRequest, number: int) -> None:
        from .codecs.tensors import conform_all

        try:
            sig = servable.signature(request.signature_name)
            inputs = conform_all(request.inputs, sig, "warm-up")
            for _ in range(request.repeat):
                await self.dataplane.infer(servable, sig, inputs, time.monotonic() + WARMUP_DEADLINE_S,
                                           rate_limited=False)
        except ServingError as e:
            raise _fail(f"request {number} failed: {e.message}") from e
