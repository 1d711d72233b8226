"""Request logs in TF Serving's own format: sampled predict, classify, regress and MultiInference calls with
their answers, as TFRecord files of `tensorflow.serving.PredictionLog` records (`predict_log`, `classify_log`,
`regress_log`, `multi_inference_log`), readable by TensorFlow (`tf.data.TFRecordDataset` +
`PredictionLog.FromString`) and by this engine's warm-up reader.

A model logs when its config says so: `logging_config { log_collector_config { type: "file" filename_prefix:
"/logs/m" } sampling_config { sampling_rate: 0.1 } }` in model_config.pbtxt (TF Serving's own field, whose
collector its open-source build lacks), or `"request_log": {"path": "/logs/m", "sample_rate": 0.1}` in the
service JSON. Every protocol's predict call is logged as a `PredictRequest` / `PredictResponse` with named
TensorProtos (KServe V2 and cloud calls converted), a classify or regress call (TF Serving REST or gRPC) as
the request of its tf.Examples and its answer, a MultiInference (gRPC) as one record of all its tasks once
the last finished, `log_metadata` naming the version that served it, the sampling config and (our field
1001) the request id.

The event loop only samples and queues (the call's arrays, no encoding); a writer thread builds and
writes the records, to `<filename_prefix>.<n>.tfrecord` (`<filename_prefix>.w<worker>.<n>.tfrecord` under
--workers), a new file past `--request_log_max_bytes`. A full queue drops the record and counts it
(`serving_request_log_dropped_total`) rather than slow a request.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._proto.tensorflow_serving.apis import prediction_log_pb2
from .codecs.tensors import array_to_tensor
from .errors import ServingError
from .model_config import RequestLogSpec
from .pipeline import Call, Timings
from .repository import ModelManager
from .warmup import tfrecord

log = logging.getLogger(__name__)

#: Records waiting for the writer; one more is dropped and counted.
QUEUE_SIZE = 10_000
#: Records kept for the status page, and the length of their inputs / outputs text.
RECENT = 50
PREVIEW_CHARS = 240
#: The calls logged: predict (predict_log), classify (classify_log), regress (regress_log); a MultiInference's
#: tasks (classify and regress calls with `call.task` set) as one multi_inference_log.
LOGGED = frozenset({"predict", "classify", "regress"})
#: A MultiInference task's method_name, by verb.
TASK_METHODS = {"classify": "tensorflow/serving/classify", "regress": "tensorflow/serving/regress"}


class TaskGroup:
    """The calls of one MultiInference: each task's (verb, signature, outputs) as it finishes; the request
    log writes one record when the last one did, none if any failed."""

    def __init__(self, tasks: int) -> None:
        self.results: list[tuple[str, str, Any] | None] = [None] * tasks
        self.left = tasks
        self.failed = False


class TFRecordFiles:
    """`<prefix>[.w<worker>].<n>.tfrecord`, a new one past `max_bytes`."""

    def __init__(self, prefix: str, worker: int | None, max_bytes: int) -> None:
        self.prefix, self.worker, self.max_bytes = prefix, worker, max_bytes
        self.index = 0
        self.file: Any = None
        self.size = 0

    def path(self, index: int) -> Path:
        middle = f".w{self.worker}" if self.worker is not None else ""
        return Path(f"{self.prefix}{middle}.{index}.tfrecord")

    def write(self, record: bytes) -> None:
        if self.file is None or (self.size and self.size + len(record) + 16 > self.max_bytes):
            self._next()
        framed = tfrecord(record)
        self.file.write(framed)
        self.file.flush()
        self.size += len(framed)

    def _next(self) -> None:
        if self.file is not None:
            self.file.close()
        while self.path(self.index).exists():  # never overwrite an earlier run's file
            self.index += 1
        path = self.path(self.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("ab")
        self.size = 0
        self.index += 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class RequestLogger:
    """A pipeline observer: samples the finished predict calls of the models that log, on the loop; the
    writer thread builds and writes their records."""

    def __init__(self, manager: ModelManager, worker: int | None = None, max_bytes: int = 256 << 20) -> None:
        self.manager, self.worker, self.max_bytes = manager, worker, max_bytes
        self.queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(QUEUE_SIZE)
        self.dropped = 0
        self.written = 0
        self.files: dict[str, TFRecordFiles] = {}
        #: The last records written, newest last: (time, request id, model, version, method, inputs preview,
        #: outputs preview), for the status page; made by the writer thread, never on the event loop.
        self.recent: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=RECENT)
        self.thread = threading.Thread(target=self._write, name="request-log", daemon=True)
        self.thread.start()

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None:
        servable = call.servable
        if call.task is not None and not self._task_done(call, error):
            return  # a MultiInference task: logged with the last of its group
        if error is not None or servable is None or call.method not in LOGGED or call.result is None:
            return
        model = self.manager.models.get(servable.model)
        spec = model.spec.request_log if model is not None else None
        if spec is None or (spec.sample_rate < 1.0 and random.random() >= spec.sample_rate):
            return
        assert call.signature is not None
        if call.task is not None:
            inputs, outputs, method = call.inputs, call.task[0].results, "multi_inference"
        elif call.method != "predict":
            inputs, outputs, method = call.inputs, call.result, call.method
        else:
            inputs, outputs, method = call.inputs, {n: call.result[n] for n in call.output_names()}, "predict"
        call.logged = self.put(spec, servable.model, servable.version, call.signature.name, call.request_id,
                               inputs, outputs, method)

    @staticmethod
    def _task_done(call: Call, error: ServingError | None) -> bool:
        """Record a MultiInference task's answer; True when it was the group's last and none failed."""
        group, index = call.task
        group.left -= 1
        if error is not None or call.result is None or call.signature is None:
            group.failed = True
        else:
            group.results[index] = (call.method, call.signature.name, call.result)
        return group.left == 0 and not group.failed

    def put(self, spec: RequestLogSpec, model: str, version: int, signature: str, request_id: str, inputs: Any,
            outputs: Any, method: str = "predict") -> bool:
        """Queue one record for the writer; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait((spec, model, version, signature, request_id, inputs, outputs, method))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _write(self) -> None:
        while (item := self.queue.get()) is not None:
            spec, model, version, signature, request_id, inputs, outputs, method = item
            try:
                record = prediction_log(model, version, signature, request_id, inputs, outputs, spec.sample_rate,
                                        method)
                files = self.files.get(spec.prefix)
                if files is None:
                    files = self.files[spec.prefix] = TFRecordFiles(spec.prefix, self.worker, self.max_bytes)
                files.write(record)
                self.written += 1
                shown = preview(inputs) if method == "predict" else f"{len(next(iter(inputs.values())))} tf.Examples"
                self.recent.append((time.time(), request_id, model, version, method, shown, preview(outputs)))
            except Exception:  # noqa: BLE001 - a record that cannot be written is logged; serving goes on
                log.exception("request log: a record of model %s could not be written", model)

    def close(self) -> None:
        """Write what is queued, then close the files."""
        self.queue.put(None)
        self.thread.join(30)
        for files in self.files.values():
            files.close()


def prediction_log(model: str, version: int, signature: str, request_id: str, inputs: dict[str, Any],
                   outputs: Any, sample_rate: float, method: str = "predict") -> bytes:
    """One PredictionLog record: a predict call as a PredictRequest and its answer as a PredictResponse; a
    classify / regress call as the Classification / RegressionRequest of its tf.Examples and its answer; a
    MultiInference (`outputs`: its tasks' (verb, signature, outputs)) as its request and response."""
    record = prediction_log_pb2.PredictionLog()
    meta = record.log_metadata
    meta.model_spec.name = model
    meta.model_spec.version.value = version
    meta.model_spec.signature_name = signature
    meta.sampling_config.sampling_rate = sample_rate
    meta.request_id = request_id
    if method == "multi_inference":
        from .protocols.tfserving.rpc import fill_classification, fill_regression

        multi = record.multi_inference_log
        (serialized,) = inputs.values()
        for example in serialized:
            multi.request.input.example_list.examples.add().ParseFromString(example)
        for verb, task_signature, task_outputs in outputs:
            task = multi.request.tasks.add()
            task.model_spec.CopyFrom(meta.model_spec)
            task.model_spec.signature_name = task_signature
            task.method_name = TASK_METHODS[verb]
            result = multi.response.results.add()
            result.model_spec.CopyFrom(task.model_spec)
            if verb == "classify":
                fill_classification(result.classification_result, task_outputs, len(serialized))
            else:
                fill_regression(result.regression_result, task_outputs, len(serialized))
        return record.SerializeToString()
    if method != "predict":
        from .protocols.tfserving.rpc import EXAMPLE_ANSWERS

        log = record.classify_log if method == "classify" else record.regress_log
        log.request.model_spec.CopyFrom(meta.model_spec)
        log.response.model_spec.CopyFrom(meta.model_spec)
        (serialized,) = inputs.values()  # the signature's one input: the serialized tf.Examples
        for example in serialized:
            log.request.input.example_list.examples.add().ParseFromString(example)
        EXAMPLE_ANSWERS[method][1](log.response.result, outputs, len(serialized))
        return record.SerializeToString()
    request, response = record.predict_log.request, record.predict_log.response
    request.model_spec.CopyFrom(meta.model_spec)
    response.model_spec.CopyFrom(meta.model_spec)
    for name, array in inputs.items():
        array_to_tensor(array, request.inputs[name])
    for name, array in outputs.items():
        array_to_tensor(array, response.outputs[name])
    return record.SerializeToString()


def preview(values: Any, limit: int = PREVIEW_CHARS) -> str:
    """A short text of a record's inputs or outputs: each array's name, dtype, shape and first values."""
    if isinstance(values, list):  # a MultiInference's tasks: (verb, signature, outputs)
        return "; ".join(f"{verb} {signature}: {preview(outputs, limit)}" for verb, signature, outputs in values)[
            :limit]
    parts = []
    for name, array in values.items():
        array = np.asarray(array)
        head = array.reshape(-1)[:8].tolist()
        shown = ", ".join(repr(v) if isinstance(v, str | bytes) else f"{v:g}" if isinstance(v, float) else str(v)
                          for v in head)
        more = ", ..." if array.size > len(head) else ""
        parts.append(f"{name} {array.dtype.name}{list(array.shape)}: [{shown}{more}]")
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def worker_index() -> int | None:
    from .workers import SUPERVISED_ENV

    value = os.environ.get(SUPERVISED_ENV)
    return int(value.split(",", 1)[0]) if value else None
