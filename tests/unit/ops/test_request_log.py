"""Request logs in process: the logging config's errors; a failing disk (records dropped and counted, one
warning a minute, nothing on the request path) and the reader's truncated last record. Against a real server
(every protocol's calls logged with their answers, TensorFlow reading the files, rotation, warm-up and bench
from a log, a clean exit on a failing disk): tests/e2e/test_request_log.py."""

import errno
import logging
import os
import threading
import time

import numpy as np
import pytest

from serving._proto.tensorflow_serving.apis import prediction_log_pb2
from serving.codecs.tfrecord import prediction_logs, read_tfrecords, tfrecord, write_tfrecords
from serving.core.model_config import ConfigError, RequestLogSpec, parse_model_config
from serving.errors import ServingError
from serving.ops import requestlog
from tests.helpers import wait_until


def config_text(base, prefix, rate=1.0, kind="file"):
    return (f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "linear" '
            f'logging_config {{ log_collector_config {{ type: "{kind}" filename_prefix: "{prefix}" }} '
            f"sampling_config {{ sampling_rate: {rate} }} }} }} }}\n")


def records(folder):
    out = []
    for path in sorted(folder.glob("*.tfrecord")):
        out += [prediction_log_pb2.PredictionLog.FromString(r) for r in read_tfrecords(path)]
    return out


def test_the_logging_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="type 'kafka' is not one this server has"):
        parse_model_config(config_text(tmp_path, tmp_path / "x", kind="kafka"))
    with pytest.raises(ConfigError, match="sampling rate 2.0 is not between 0 and 1"):
        parse_model_config(config_text(tmp_path, tmp_path / "x", rate=2.0))
    with pytest.raises(ConfigError, match="needs a filename_prefix"):
        parse_model_config(config_text(tmp_path, ""))
    (spec,) = parse_model_config(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path}" '
                                 f'model_platform: "linear" logging_config {{ sampling_config {{ sampling_rate: 0.5 }} '
                                 f'}} }} }}')
    assert spec.request_log is None  # a sampling rate with no collector: nothing to log to



# A failing disk (issue 23, finding 3): records are dropped and counted, one warning a minute, nothing on the
# request path, a clean exit; a truncated last record is skipped by the reader.


def logged_inputs(i):
    return {"inputs": np.array([[float(i)]], np.float32)}, {"predictions": np.array([float(i)], np.float32)}


def put_records(logger, spec, n, start=0):
    for i in range(start, start + n):
        logger.put(spec, "m", 1, "serving_default", f"r{i}", *logged_inputs(i))


def log_fd_writes(monkeypatch, folder, write):
    """Route os.write of the files under `folder` (the request log's, and only those) to `write(real, fd,
    data)`: a disk that fills up without root or a small file system."""
    real = os.write

    def patched(fd, data):
        try:
            ours = os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
        except OSError:
            ours = False
        return write(real, fd, data) if ours else real(fd, data)

    monkeypatch.setattr(os, "write", patched)


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "serving.ops.requestlog" and r.levelno >= logging.WARNING]


def test_a_log_on_a_failing_disk_drops_and_counts_warns_once_a_minute_and_writes_again_once_it_frees_up(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(requestlog, "RETRY_S", 0.05)
    monkeypatch.setattr(requestlog, "WARN_EVERY_S", 1.0)
    caplog.set_level(logging.INFO, "serving.ops.requestlog")
    blocked = tmp_path / "logs"
    blocked.write_text("a file where the log's folder should be")  # mkdir and open fail: ENOTDIR, EEXIST
    spec = RequestLogSpec(str(blocked / "m"), 1.0)
    logger = requestlog.RequestLogger(None)
    try:
        started = time.monotonic()
        put_records(logger, spec, 2000)
        assert time.monotonic() - started < 1.0  # the caller only queues
        wait_until(lambda: logger.dropped == 2000, what="the records dropped")
        assert logger.written == 0 and logger.dropped_full == 0
        (warning,) = warnings_of(caplog)  # one, not one per record (nor a traceback)
        assert f"request log {blocked / 'm'}: writes fail" in warning and "1 records dropped" in warning
        assert not any(r.exc_info for r in caplog.records)
        time.sleep(1.0)  # a minute later (WARN_EVERY_S), still failing: one more warning with the count
        put_records(logger, spec, 1, 2000)
        wait_until(lambda: len(warnings_of(caplog)) == 2, what="the second warning")
        assert "2000 records dropped since the last warning" in warnings_of(caplog)[1]
        blocked.unlink()  # the disk frees up
        blocked.mkdir()
        time.sleep(0.1)  # past RETRY_S
        put_records(logger, spec, 3, 3000)
        wait_until(lambda: logger.written == 3, what="the records written")
        assert "writing again" in caplog.text
    finally:
        logger.close()
    assert [p.name for p in blocked.iterdir()] == ["m.0.tfrecord"]
    assert [r.log_metadata.request_id for r in records(blocked)] == ["r3000", "r3001", "r3002"]
    assert logger.dropped == 2001 and len(warnings_of(caplog)) == 2


def test_a_disk_that_fills_up_mid_record_leaves_only_whole_records_and_closing_never_raises(tmp_path, monkeypatch,
                                                                                            caplog):
    monkeypatch.setattr(requestlog, "RETRY_S", 0.02)
    caplog.set_level(logging.INFO, "serving.ops.requestlog")
    folder = tmp_path / "logs"
    state = {"full": False, "calls": 0}

    def write(real, fd, data):
        if not state["full"]:
            return real(fd, data)
        state["calls"] += 1
        if state["calls"] % 2:  # the disk takes a few bytes of the record, then is full
            return real(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    log_fd_writes(monkeypatch, folder, write)
    spec = RequestLogSpec(str(folder / "m"), 1.0)
    logger = requestlog.RequestLogger(None)
    put_records(logger, spec, 2)
    wait_until(lambda: logger.written == 2, what="the first records")
    state["full"] = True
    for i in range(2, 500):  # a stream of requests, so the writer tries again (RETRY_S) while it is full
        put_records(logger, spec, 1, i)
        if i % 50 == 0:
            time.sleep(0.03)
    wait_until(lambda: logger.dropped == 498, what="the records dropped")
    assert state["calls"] >= 4  # tried again, and cut each try's bytes back
    (warning,) = warnings_of(caplog)
    assert "No space left on device" in warning
    state["full"] = False
    time.sleep(0.05)
    put_records(logger, spec, 2, 500)
    wait_until(lambda: logger.written == 4, what="the records written once the disk has room")

    def fails(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    real_close = os.close
    monkeypatch.setattr(os, "close", lambda fd: (real_close(fd), fails(fd)))
    logger.close()  # EIO on close: logged, not raised (SIGTERM exits 0)
    monkeypatch.setattr(os, "close", real_close)
    assert "closing its file failed" in warnings_of(caplog)[-1]
    # every record whole: the strict reader (a warm-up file's) reads the file through
    assert [r.log_metadata.request_id for r in records(folder)] == ["r0", "r1", "r500", "r501"]


def test_a_full_queue_drops_and_counts_without_blocking_the_caller(tmp_path, monkeypatch):
    monkeypatch.setattr(requestlog, "QUEUE_SIZE", 3)
    folder = tmp_path / "logs"
    stuck = threading.Event()
    log_fd_writes(monkeypatch, folder, lambda real, fd, data: (stuck.wait(10), real(fd, data))[1])
    spec = RequestLogSpec(str(folder / "m"), 1.0)
    logger = requestlog.RequestLogger(None)
    put_records(logger, spec, 1)
    wait_until(lambda: logger.queue.empty(), what="the writer to take the first record")
    started = time.monotonic()
    put_records(logger, spec, 10, 1)
    assert time.monotonic() - started < 0.5
    assert (logger.dropped_full, logger.dropped) == (7, 7)  # 3 queued, the rest dropped
    stuck.set()
    logger.close()
    assert logger.written == 4


def three_records(path):
    records_ = [requestlog.prediction_log("m", 1, "serving_default", f"r{i}", *logged_inputs(i), 1.0)
                for i in range(3)]
    write_tfrecords(path, records_)
    return path.read_bytes(), [len(tfrecord(r)) for r in records_]


@pytest.mark.parametrize("cut", [5, 12, 20, 1])
def test_a_truncated_last_record_is_skipped_with_a_warning_naming_the_file_and_offset(tmp_path, caplog, cut):
    path = tmp_path / "m.0.tfrecord"
    data, sizes = three_records(path)
    path.write_bytes(data[:sizes[0] + sizes[1] + cut])  # the third cut short: in its header, or in its data
    logs = list(prediction_logs([path]))
    assert [log.log_metadata.request_id for log in logs] == ["r0", "r1"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{path}: record 2 at byte {sizes[0] + sizes[1]} is truncated" in warning
    with pytest.raises(ServingError, match="record 2 is truncated"):  # a warm-up file must be whole, as today
        list(read_tfrecords(path))


def test_a_corrupt_record_before_the_last_is_still_an_error(tmp_path):
    path = tmp_path / "m.0.tfrecord"
    data, sizes = three_records(path)
    broken = bytearray(data)
    broken[sizes[0] + 20] ^= 0xFF  # a byte of the second record's data; the third follows it whole
    path.write_bytes(bytes(broken))
    with pytest.raises(ServingError, match="record 1 is corrupt"):
        list(prediction_logs([path]))
    path.write_bytes(bytes(broken[:-3]))  # and the last one truncated too: the corrupt one still fails
    with pytest.raises(ServingError, match="record 1 is corrupt"):
        list(prediction_logs([path]))
