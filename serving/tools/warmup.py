"""Warm-up before ready: a version becomes AVAILABLE only after its warm-up requests ran, through the
same data plane (and batching path) as real traffic, so the first real request finds everything
compiled and allocated.

- TF Serving: `<version>/assets.extra/tf_serving_warmup_requests`, a TFRecord file of PredictionLog
  records (predict, classify, regress and multi-inference logs, as TF Serving's saved_model_warmup.cc
  replays them), each replayed `num_request_iterations_for_warmup` times, at most 1000 records.
- Cloud processor: the service's `warm_up_data_path`, a `.bin` file holding one serialized processor
  PredictRequest (tf_predict.proto) or a `.txt` file with one JSON request per line; each sent 5 times.

A bad record, a file that cannot be read or a request that fails fails the load, with a message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..codecs import examples
from ..codecs.examples import examples_input, multi_inference_plan
from ..codecs.tfrecord import read_tfrecords
from ..core.dataplane import DataPlane, outputs_of
from ..core.servable import Servable
from ..core.signature import Signature
from ..errors import Code, ServingError

log = logging.getLogger(__name__)

TF_WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000
CLOUD_REPEAT = 5
WARMUP_DEADLINE_S = 600.0
# The PredictionLog kinds TF Serving replays (saved_model_warmup.cc); it refuses session_run_log too.
LOG_KINDS = ("predict_log", "classify_log", "regress_log", "multi_inference_log")


def _fail(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, f"warm-up: {message}")


@dataclass
class WarmupRequest:
    """One request to replay `repeat` times. `verb` is predict (named `inputs`) or, from TF Serving's other
    log kinds, classify / regress / multi_inference over serialized tf.Examples; `name` says which record
    or request it is in failure messages."""

    name: str
    repeat: int
    signature_name: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    verb: str = "predict"
    examples: np.ndarray | None = None
    tasks: Sequence[Any] = ()  # multi_inference's InferenceTasks


# One data-plane call of a replay: (verb, signature, inputs).
Replay = tuple[str, Signature, dict[str, np.ndarray]]


def _records(path: Path) -> Iterator[bytes]:
    """A warm-up file's records; a framing error in this module's words."""
    try:
        yield from read_tfrecords(path)
    except ServingError as e:
        raise _fail(e.message) from None


def tf_serving_requests(version_dir: Path, iterations: int) -> list[WarmupRequest]:
    path = version_dir / TF_WARMUP_FILE
    if not path.is_file():
        return []
    from .._proto.tensorflow_serving.apis import prediction_log_pb2

    out = []
    for index, record in enumerate(_records(path)):
        if index >= MAX_RECORDS:
            raise _fail(f"{path}: more than {MAX_RECORDS} warm-up records")
        prediction_log = prediction_log_pb2.PredictionLog()
        try:
            prediction_log.ParseFromString(record)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise _fail(f"{path}: record {index} is not a PredictionLog: {e}") from e
        kind = prediction_log.WhichOneof("log_type")
        if kind not in LOG_KINDS:
            # A session_run_log (field 5, not declared in our proto) parses as an empty record.
            what = f"a {kind}" if kind else "an empty (or session_run_log)"
            raise _fail(f"{path}: record {index} is {what} log; warm-up replays predict_log, classify_log, "
                        "regress_log and multi_inference_log records")
        name = f"record {index} ({kind})"
        try:
            out.append(_logged_request(name, kind, getattr(prediction_log, kind).request, iterations))
        except ServingError as e:
            raise _fail(f"{path}: {name}: {e.message}") from e
    return out


def _logged_request(name: str, kind: str, request: Any, iterations: int) -> WarmupRequest:
    """The request of one PredictionLog record, its inputs decoded now so a bad record fails before any runs."""
    if kind == "predict_log":
        from ..codecs.tensors import tensor_to_array

        inputs = {key: tensor_to_array(t, key) for key, t in request.inputs.items()}
        return WarmupRequest(name, iterations, request.model_spec.signature_name, inputs)
    serialized = examples.examples_from_input(request.input)
    if kind == "multi_inference_log":
        return WarmupRequest(name, iterations, verb="multi_inference", examples=serialized, tasks=request.tasks)
    return WarmupRequest(name, iterations, request.model_spec.signature_name, verb=kind.removesuffix("_log"),
                         examples=serialized)


def cloud_requests(path: Path, servable: Servable) -> list[WarmupRequest]:
    from ..codecs.jsonutil import loads
    from ..protocols.cloud import codec as cloud

    if not path.is_file():
        raise _fail(f"warm_up_data_path {path} is not a file")
    if path.suffix == ".bin":
        from .._proto.eas import tf_predict_pb2
        from ..codecs.tensors import array_proto_to_array

        request = tf_predict_pb2.PredictRequest()
        try:
            request.ParseFromString(path.read_bytes())
            inputs = {name: array_proto_to_array(a, name) for name, a in request.inputs.items()}
        except ServingError as e:
            raise _fail(f"{path}: {e.message}") from e
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError
            raise _fail(f"{path}: not a serialized PredictRequest: {e}") from e
        return [WarmupRequest("request 0", CLOUD_REPEAT, request.signature_name, inputs)]
    if path.suffix == ".txt":
        sig = servable.signature(None)
        out: list[WarmupRequest] = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                inputs = cloud.decode_json(loads(line.encode()), sig)
                out.append(WarmupRequest(f"request {len(out)}", CLOUD_REPEAT, sig.name, inputs))
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

    async def __call__(self, servable: Servable) -> int:
        """Replay the version's warm-up requests; how many there were."""
        requests = tf_serving_requests(servable.path, self.iterations)
        if self.warm_up_data_path and servable.model == self.service_model:
            requests += cloud_requests(Path(self.warm_up_data_path), servable)
        started = time.monotonic()
        for request in requests:
            await self._replay(servable, request)
        if requests:
            log.info("warm-up of model %s version %d: %d requests, %d replays in all, in %.3f s", servable.model,
                     servable.version, len(requests), sum(r.repeat for r in requests), time.monotonic() - started)
        return len(requests)

    async def _replay(self, servable: Servable, request: WarmupRequest) -> None:
        try:
            calls = _calls(servable, request)
            for _ in range(request.repeat):
                for verb, sig, inputs in calls:
                    deadline = time.monotonic() + WARMUP_DEADLINE_S
                    future = self.dataplane.infer(servable, sig, inputs, deadline, verb, rate_limited=False)
                    _check_answer(verb, await outputs_of(future), inputs)
        except ServingError as e:
            raise _fail(f"{request.name} failed: {e.message}") from e


def _calls(servable: Servable, request: WarmupRequest) -> list[Replay]:
    """The data-plane calls one replay makes, resolved once: (verb, signature, inputs)."""
    if request.verb == "predict":
        from ..codecs.tensors import conform_all

        sig = servable.signature(request.signature_name)
        return [("predict", sig, conform_all(request.inputs, sig, "warm-up"))]
    if request.verb == "multi_inference":
        plan = multi_inference_plan(servable, request.tasks)
    else:
        sig = servable.signature(request.signature_name)
        plan = [(request.verb, sig, examples_input(servable, sig, request.verb, request.verb.capitalize()))]
    assert request.examples is not None
    return [(verb, sig, {name: request.examples}) for verb, sig, name in plan]


def _check_answer(verb: str, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    """Turn classify / regress outputs into results as an answer would, so a signature whose outputs no
    answer can be made of fails the load, not the first client."""
    if verb == "classify":
        examples.classification_pairs(outputs, len(next(iter(inputs.values()))))
    elif verb == "regress":
        examples.regression_values(outputs, len(next(iter(inputs.values()))))
