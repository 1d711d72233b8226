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
(`serving_request_log_dropped_total`) rather than slow a request. So does a failing disk (full, read-only,
gone): the writer counts the record as dropped, cuts a half-written record off the file, drops that log's
records unencoded for `RETRY_S` before it tries again (a disk that frees up is written again) and warns at most
once per `WARN_EVERY_S` with how many it dropped; closing never raises, so the server still exits 0.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._proto.tensorflow_serving.apis import prediction_log_pb2
from ..codecs.examples import EXAMPLE_ANSWERS, fill_classification, fill_regression
from ..codecs.tensors import array_to_tensor
from ..codecs.tfrecord import tfrecord
from ..core.model_config import ModelSpec, RequestLogSpec
from ..core.pipeline import Call, ModelObserver
from ..core.repository import ModelManager
from ..errors import ServingError
from ..settings import SUPERVISED_ENV

log = logging.getLogger(__name__)

#: Records waiting for the writer; one more is dropped and counted.
QUEUE_SIZE = 10_000
#: After a write failed, a log's records are dropped unencoded for this long before the next try, so a failing
#: disk costs a syscall a second, not an encoding and a traceback per record.
RETRY_S = 1.0
#: At most one warning per log this often while its writes fail, with how many records were dropped since the last.
WARN_EVERY_S = 60.0
#: How long close() waits for the writer to write what is queued.
CLOSE_TIMEOUT_S = 30.0
#: Records kept for the status page, and the length of their inputs / outputs text.
RECENT = 50
PREVIEW_CHARS = 240
#: The calls logged: predict (predict_log), classify (classify_log), regress (regress_log); a MultiInference's
#: tasks (classify and regress calls with `call.task` set) as one multi_inference_log.
LOGGED = frozenset({"predict", "classify", "regress"})
#: A MultiInference task's method_name, by verb.
TASK_METHODS = {"classify": "tensorflow/serving/classify", "regress": "tensorflow/serving/regress"}


class TFRecordFiles:
    """`<prefix>[.w<worker>].<n>.tfrecord`, a new one past `max_bytes`. Written unbuffered, one whole framed
    record per write: a failed write raises its OSError with the file cut back to its last whole record, so a
    disk that frees up goes on writing a readable file."""

    def __init__(self, prefix: str, worker: int | None, max_bytes: int) -> None:
        self.prefix, self.worker, self.max_bytes = prefix, worker, max_bytes
        self.index = 0
        self.fd: int | None = None
        self.size = 0

    def path(self, index: int) -> Path:
        middle = f".w{self.worker}" if self.worker is not None else ""
        return Path(f"{self.prefix}{middle}.{index}.tfrecord")

    def write(self, record: bytes) -> None:
        if self.fd is None or (self.size and self.size + len(record) + 16 > self.max_bytes):
            self._next()
        fd = self.fd
        assert fd is not None
        framed = memoryview(tfrecord(record))
        done = 0
        try:
            while done < len(framed):  # a write may take part of the bytes (a disk filling up)
                done += os.write(fd, framed[done:])
        except OSError:
            self._cut_back(fd)
            raise
        self.size += len(framed)

    def _cut_back(self, fd: int) -> None:
        """Drop what a failed write left of its record. When even that fails the file is closed, ending in a
        truncated record (which readers skip), and the next write begins a new file."""
        try:
            os.ftruncate(fd, self.size)
        except OSError:
            with contextlib.suppress(OSError):
                self.close()

    def _next(self) -> None:
        self.close()
        while self.path(self.index).exists():  # never overwrite an earlier run's file
            self.index += 1
        path = self.path(self.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.size = 0
        self.index += 1

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # the descriptor is freed even when this raises (EIO of a failing disk)


class Outage:
    """The writes of one request log failing: its records are dropped without being encoded until `retry_at`,
    and a warning says so at most once per WARN_EVERY_S, with how many were dropped since the last one."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.error: OSError | None = None  # the last write's error; None: writing
        self.retry_at = 0.0
        self.warned_at = -WARN_EVERY_S
        self.unreported = 0  # records dropped since the last warning

    def waiting(self) -> bool:
        """Whether to drop a record untried: the last write failed less than RETRY_S ago."""
        return self.error is not None and time.monotonic() < self.retry_at

    def dropped(self, error: OSError | None = None) -> None:
        """Count a record dropped, `error` when its write failed (the next try is then RETRY_S away)."""
        now = time.monotonic()
        self.unreported += 1
        if error is not None:
            self.error, self.retry_at = error, now + RETRY_S
        if now - self.warned_at >= WARN_EVERY_S:
            self.warned_at = now
            log.warning("request log %s: writes fail (%s): %d records dropped since the last warning, counted in "
                        "serving_request_log_dropped_total; trying again every %g s, warning every %g s",
                        self.prefix, self.error, self.unreported, RETRY_S, WARN_EVERY_S)
            self.unreported = 0

    def wrote(self) -> None:
        """A write worked: the end of an outage, if there was one."""
        if self.error is not None:
            log.info("request log %s: writing again (%d more records were dropped after the last warning)",
                     self.prefix, self.unreported)
            self.error, self.unreported = None, 0

    def close(self) -> None:
        if self.unreported:
            log.warning("request log %s: %d more records dropped after the last warning (%s)", self.prefix,
                        self.unreported, self.error)
            self.unreported = 0


class RequestLogger:
    """Samples the finished predict calls of the models that log (through their `ModelObserver`), on the
    loop; the writer thread builds and writes their records."""

    def __init__(self, manager: ModelManager, worker: int | None = None, max_bytes: int = 256 << 20) -> None:
        self.manager, self.worker, self.max_bytes = manager, worker, max_bytes
        self.queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(QUEUE_SIZE)
        # Two counters, each added to by one thread only (the loop; the writer), so none is lost.
        self.dropped_full = 0  # the queue was full
        self.dropped_failed = 0  # the writer could not write them
        self.written = 0
        self.files: dict[str, TFRecordFiles] = {}
        self.outages: dict[str, Outage] = {}
        #: The last records written, newest last: (time, request id, model, version, method, inputs preview,
        #: outputs preview), for the status page; made by the writer thread, never on the event loop.
        self.recent: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=RECENT)
        self.thread = threading.Thread(target=self._write, name="request-log", daemon=True)
        self.thread.start()

    def observer_for(self, spec: ModelSpec) -> ModelObserver[RequestLogSpec] | None:
        """What logs the calls of a model whose config asks for it; chosen when its config is applied
        (ModelManager.observers_for), so a model that does not log costs its calls nothing here."""
        return ModelObserver(self.log, spec.request_log) if spec.request_log is not None else None

    def log(self, call: Call, error: ServingError | None, spec: RequestLogSpec) -> None:
        """Sample one finished call of a model that logs."""
        servable = call.servable
        if call.task is not None and not self._task_done(call, error):
            return  # a MultiInference task: logged with the last of its group
        if error is not None or servable is None or call.method not in LOGGED or call.result is None:
            return
        if spec.sample_rate < 1.0 and random.random() >= spec.sample_rate:
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
            self.dropped_full += 1
            return False
        return True

    @property
    def dropped(self) -> int:
        """Records not written: the queue was full, or the writer could not write them."""
        return self.dropped_full + self.dropped_failed

    def _write(self) -> None:
        while (item := self.queue.get()) is not None:
            written = self.written
            try:
                self._write_one(*item)
            except Exception:  # noqa: BLE001 - a record that cannot be made is logged; serving goes on
                if self.written == written:  # not when only its preview for the status page failed
                    self.dropped_failed += 1
                log.exception("request log: a record of model %s could not be written", item[1])

    def _write_one(self, spec: RequestLogSpec, model: str, version: int, signature: str, request_id: str,
                   inputs: Any, outputs: Any, method: str) -> None:
        outage = self.outages.get(spec.prefix)
        if outage is None:
            outage = self.outages[spec.prefix] = Outage(spec.prefix)
            self.files[spec.prefix] = TFRecordFiles(spec.prefix, self.worker, self.max_bytes)
        if outage.waiting():
            self.dropped_failed += 1
            outage.dropped()
            return
        record = prediction_log(model, version, signature, request_id, inputs, outputs, spec.sample_rate, method)
        try:
            self.files[spec.prefix].write(record)
        except OSError as e:  # ENOSPC, EROFS, EACCES, EIO...: counted, warned about once a minute, tried again
            self.dropped_failed += 1
            outage.dropped(e)
            return
        outage.wrote()
        self.written += 1
        shown = preview(inputs) if method == "predict" else f"{len(next(iter(inputs.values())))} tf.Examples"
        self.recent.append((time.time(), request_id, model, version, method, shown, preview(outputs)))

    def close(self) -> None:
        """Write what is queued, then close the files. Never raises: a failing disk must not fail the exit."""
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=CLOSE_TIMEOUT_S)
        self.thread.join(max(deadline - time.monotonic(), 0.0))
        if self.thread.is_alive():  # stuck in a write (a hung network disk): its files are its own
            log.warning("request log: the writer did not finish in %g s; %d queued records are lost",
                        CLOSE_TIMEOUT_S, self.queue.qsize())
            return
        for prefix, files in self.files.items():
            self.outages[prefix].close()
            try:
                files.close()
            except OSError as e:
                log.warning("request log %s: closing its file failed (%s)", prefix, e)


def _multi_inference(record: Any, inputs: dict[str, Any], outputs: Any) -> None:
    """A MultiInference call's request and response (`outputs`: its tasks' (verb, signature, outputs))."""
    multi, spec = record.multi_inference_log, record.log_metadata.model_spec
    (serialized,) = inputs.values()
    for example in serialized:
        multi.request.input.example_list.examples.add().ParseFromString(example)
    for verb, task_signature, task_outputs in outputs:
        task = multi.request.tasks.add()
        task.model_spec.CopyFrom(spec)
        task.model_spec.signature_name = task_signature
        task.method_name = TASK_METHODS[verb]
        result = multi.response.results.add()
        result.model_spec.CopyFrom(task.model_spec)
        if verb == "classify":
            fill_classification(result.classification_result, task_outputs, len(serialized))
        else:
            fill_regression(result.regression_result, task_outputs, len(serialized))


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
        _multi_inference(record, inputs, outputs)
        return record.SerializeToString()
    if method != "predict":
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
    """This worker's index under a supervisor (its request log files are its own), None alone."""
    value = os.environ.get(SUPERVISED_ENV)
    return int(value.split(",", 1)[0]) if value else None
