"""Request logs in TF Serving's format against a real server: sampled predict calls of every protocol with
their answers, as TFRecord files of PredictionLog records that TensorFlow reads, rotated by size; warm-up and
bench from a log; a log folder that becomes unwritable (drops counted, one warning, a clean exit). In process
(the config's errors, a failing disk, the reader's truncated last record): tests/unit/ops/test_request_log.py."""

import json
import re
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest

from serving._proto.tensorflow_serving.apis import (
    inference_pb2,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from serving.codecs.tensors import array_to_tensor, tensor_to_array
from serving.codecs.tfrecord import read_tfrecords
from tests.helpers import ROOT, Server, make_linear, wait_until
from tests.unit.ops.test_request_log import config_text, records, three_records


def test_every_protocols_predict_calls_are_logged_with_their_answers(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0], [2.0]], bias=0.5)
    config = tmp_path / "models.pbtxt"
    config.write_text(config_text(tmp_path / "m", tmp_path / "logs" / "m"))
    with Server(f"--model_config_file={config}") as s:
        assert s.post("/v1/models/m:predict", {"instances": [[1.0, 1.0]]},
                      headers={"x-request-id": "rest-1"})[0] == 200
        assert s.post("/v2/models/m/infer", {"inputs": [
            {"name": "inputs", "shape": [1, 2], "datatype": "FP32", "data": [2.0, 0.0]}]})[0] == 200
        assert s.post("/api/predict/m", [[0.0, 1.0]])[0] == 200
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            array_to_tensor(np.array([[3.0, 3.0]], np.float32), request.inputs["inputs"])
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
        assert s.post("/v1/models/m:predict", {"instances": [[1.0]]})[0] == 400  # failed: not logged
        s.stop()
        assert s.proc.returncode == 0
    logs = records(tmp_path / "logs")
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["m.0.tfrecord"]
    assert len(logs) == 4
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        meta = log.log_metadata
        assert (meta.model_spec.name, meta.model_spec.version.value, meta.model_spec.signature_name) == (
            "m", 1, "serving_default")
        assert meta.sampling_config.sampling_rate == 1.0 and meta.request_id
        x = tensor_to_array(log.predict_log.request.inputs["inputs"], "inputs")
        y = tensor_to_array(log.predict_log.response.outputs["predictions"], "predictions")
        assert np.allclose(y, x @ np.array([1.0, 2.0]) + 0.5)
    assert logs[0].log_metadata.request_id == "rest-1"
    assert {tuple(tensor_to_array(p.predict_log.request.inputs["inputs"], "i")[0]) for p in logs} == {
        (1.0, 1.0), (2.0, 0.0), (0.0, 1.0), (3.0, 3.0)}


def test_tensorflow_reads_the_files(tmp_path):
    pytest.importorskip("tensorflow", reason="TensorFlow (tensorflow extra) is not installed")
    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0)
    config = tmp_path / "models.pbtxt"
    config.write_text(config_text(tmp_path / "m", tmp_path / "logs" / "m"))
    with Server(f"--model_config_file={config}") as s:
        for i in range(5):
            assert s.post("/v1/models/m:predict", {"instances": [[float(i)]]})[0] == 200
    # In its own process: TensorFlow's protobuf runtime must not meet ours in one interpreter.
    script = ("import sys, tensorflow as tf\n"
              "from serving._proto.tensorflow_serving.apis import prediction_log_pb2 as p\n"
              "n = [p.PredictionLog.FromString(r.numpy()).log_metadata.model_spec.name "
              "for r in tf.data.TFRecordDataset(sys.argv[1:])]; print(len(n), set(n))")
    files = [str(p) for p in sorted((tmp_path / "logs").glob("*.tfrecord"))]
    done = subprocess.run([sys.executable, "-c", script, *files], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "5 {'m'}"


def test_sampling_and_rotation_by_size(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0)
    config = tmp_path / "models.pbtxt"
    config.write_text(config_text(tmp_path / "m", tmp_path / "half" / "m", rate=0.5))
    with Server(f"--model_config_file={config}", "--request_log_max_bytes=1000") as s:
        for i in range(400):
            assert s.post("/v1/models/m:predict", {"instances": [[float(i)]]})[0] == 200
        metrics = s.request("GET", "/metrics", fresh=True)[1].decode()
    logged = records(tmp_path / "half")
    assert 140 <= len(logged) <= 260  # half of 400, within 6 standard deviations
    files = sorted((tmp_path / "half").glob("*.tfrecord"))
    assert len(files) > 10 and all(f.stat().st_size <= 1000 for f in files)
    assert "serving_request_log_records_total" in metrics and "serving_request_log_dropped_total 0.0" in metrics


def test_the_service_json_request_log(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0)
    service = tmp_path / "service.json"
    service.write_text(json.dumps({"name": "m", "processor": "linear", "model_path": str(tmp_path / "m"),
                                   "request_log": {"path": str(tmp_path / "svc" / "m"), "sample_rate": 1.0}}))
    with Server(f"--service_config={service}") as s:
        assert s.post("/api/predict/m", [[2.0]])[0] == 200
    (log,) = records(tmp_path / "svc")
    assert tensor_to_array(log.predict_log.response.outputs["predictions"], "p").tolist() == [2.0]


def test_warmup_from_log_keeps_one_request_per_shape_and_the_server_replays_it(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0)
    config = tmp_path / "models.pbtxt"
    config.write_text(config_text(tmp_path / "m", tmp_path / "logs" / "m"))
    with Server(f"--model_config_file={config}") as s:
        for rows in (1, 1, 2, 2, 2, 3):  # three distinct shapes
            assert s.post("/v1/models/m:predict", {"instances": [[1.0]] * rows})[0] == 200
    out = tmp_path / "m" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    logs = [str(p) for p in sorted((tmp_path / "logs").glob("*.tfrecord"))]
    done = subprocess.run([sys.executable, "-m", "serving", "warmup-from-log", *logs, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "wrote 3 warm-up records" in done.stdout, done.stderr
    kept = [prediction_log_pb2.PredictionLog.FromString(r) for r in read_tfrecords(out)]
    assert [len(tensor_to_array(k.predict_log.request.inputs["inputs"], "i")) for k in kept] == [1, 2, 3]
    assert not any(k.predict_log.HasField("response") for k in kept)  # responses dropped
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m") as s:
        assert "warm-up of model m version 1: 3 requests" in s.output()
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(b"not a tfrecord at all")
    done = subprocess.run([sys.executable, "-m", "serving", "warmup-from-log", str(bad), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1 and "corrupt" in done.stderr


def test_serving_bench_replays_the_logged_requests_over_each_protocol(tmp_path):
    pytest.importorskip("hdrh", reason="hdrhistogram (bench extra) is not installed")
    make_linear(tmp_path / "m", 1, weights=[[1.0], [2.0]], bias=0.0)
    config = tmp_path / "models.pbtxt"
    config.write_text(config_text(tmp_path / "m", tmp_path / "logs" / "m"))
    with Server(f"--model_config_file={config}") as s:
        for rows in (1, 2, 3):
            assert s.post("/v1/models/m:predict", {"instances": [[1.0, 2.0]] * rows})[0] == 200
        logs = []
        for _ in range(50):  # the writer thread writes them soon after
            logs = sorted((tmp_path / "logs").glob("*.tfrecord"))
            if logs and len(records(tmp_path / "logs")) == 3:
                break
            import time

            time.sleep(0.1)
        snapshot = tmp_path / "snapshot"  # the server goes on logging the replayed calls into its own files
        snapshot.mkdir()
        logs = [shutil.copy(log, snapshot) for log in logs]
        targets = {
            "tf-rest": ["--url", f"http://127.0.0.1:{s.port}/v1/models/m:predict"],
            "v2-rest": ["--url", f"http://127.0.0.1:{s.port}/v2/models/m/infer"],
            "tf-grpc": ["--grpc", f"127.0.0.1:{s.grpc_port}", "--api", "tf"],
            "v2-grpc": ["--grpc", f"127.0.0.1:{s.grpc_port}", "--api", "v2"],
        }
        for name, target in targets.items():
            done = subprocess.run([sys.executable, "-m", "serving", "bench", *target, "--replay", *map(str, logs),
                                   "--concurrency", "2", "--duration", "1", "--warmup", "0", "--quiet",
                                   "--processes", "1", "--out", str(tmp_path / name)],
                                  capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert done.returncode == 0, (name, done.stderr[-2000:])
            report = json.loads((tmp_path / name / "report.json").read_text())
            step = report["steps"][0]
            assert report["target"]["bodies"] == 3 and step["ok"] > 30 and step["errors"] == {}, (name, step["errors"])


def test_classify_regress_and_multi_inference_calls_are_logged_as_tf_serving_logs_them(tmp_path):
    pytest.importorskip("tensorflow", reason="TensorFlow (tensorflow extra) is not installed")
    from serving._proto.tensorflow.core.example import example_pb2
    from serving._proto.tensorflow_serving.apis import classification_pb2
    from tests.tf_models import half_plus_two

    half_plus_two(tmp_path / "half" / "1")
    config = tmp_path / "models.pbtxt"
    config.write_text(config_text(tmp_path / "half", tmp_path / "logs" / "half").replace('"linear"', '"tensorflow"')
                      .replace('name: "m"', 'name: "half"'))
    with Server(f"--model_config_file={config}") as s:
        body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]}
        assert s.post("/v1/models/half:regress", body) == (200, {"results": [3.0, 4.0]})
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            request = classification_pb2.ClassificationRequest()
            request.model_spec.name = "half"
            request.model_spec.signature_name = "classify_x_to_y"
            example = request.input.example_list.examples.add()
            example.features.feature["x"].float_list.value.append(6.0)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Classify(request, timeout=30)
            multi = inference_pb2.MultiInferenceRequest()
            for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
                task = multi.tasks.add(method_name=f"tensorflow/serving/{method}")
                task.model_spec.name, task.model_spec.signature_name = "half", signature
            for x in (8.0, 10.0):
                multi.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
            answer = stub.MultiInference(multi, timeout=30)
    regress, classify, logged = records(tmp_path / "logs")
    assert regress.WhichOneof("log_type") == "regress_log" and classify.WhichOneof("log_type") == "classify_log"
    assert logged.WhichOneof("log_type") == "multi_inference_log"  # one record for the call's two tasks
    assert [t.model_spec.signature_name for t in logged.multi_inference_log.request.tasks] == [
        "regress_x_to_y", "classify_x_to_y"]
    assert [t.method_name for t in logged.multi_inference_log.request.tasks] == [t.method_name for t in multi.tasks]
    assert logged.multi_inference_log.request.input == multi.input
    assert [r.model_spec.version.value for r in logged.multi_inference_log.response.results] == [1, 1]
    results = logged.multi_inference_log.response.results
    assert [r.value for r in results[0].regression_result.regressions] == [6.0, 7.0]
    assert results[1].classification_result == answer.results[1].classification_result
    assert regress.log_metadata.model_spec.signature_name == "regress_x_to_y"
    assert [r.value for r in regress.regress_log.response.result.regressions] == [3.0, 4.0]
    xs = [example_pb2.Example.FromString(e.SerializeToString()).features.feature["x"].float_list.value[0]
          for e in regress.regress_log.request.input.example_list.examples]
    assert xs == [2.0, 4.0]
    assert [c.score for c in classify.classify_log.response.result.classifications[0].classes] == [5.0]
    assert classify.classify_log.request.input.example_list.examples[0].features.feature["x"].float_list.value == [6.0]
    # the three kinds become warm-up records the server replays (responses dropped)
    out = tmp_path / "half" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    logs = [str(p) for p in sorted((tmp_path / "logs").glob("*.tfrecord"))]
    done = subprocess.run([sys.executable, "-m", "serving", "warmup-from-log", *logs, *logs, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "wrote 3 warm-up records" in done.stdout, done.stderr
    kept = [prediction_log_pb2.PredictionLog.FromString(r) for r in read_tfrecords(out)]
    assert [k.WhichOneof("log_type") for k in kept] == ["regress_log", "classify_log", "multi_inference_log"]
    assert not kept[2].multi_inference_log.HasField("response")
    with Server(f"--model_base_path={tmp_path / 'half'}", "--model_name=half", "--model_platform=tensorflow") as s:
        assert "warm-up of model half version 1: 3 requests" in s.output()


def test_warmup_from_log_accepts_a_log_whose_last_record_is_truncated(tmp_path):
    path = tmp_path / "m.0.tfrecord"
    data, sizes = three_records(path)
    path.write_bytes(data[:-9])
    out = tmp_path / "m" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    done = subprocess.run([sys.executable, "-m", "serving", "warmup-from-log", str(path), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "wrote 1 warm-up records" in done.stdout, done.stderr  # one shape
    assert f"serving warmup-from-log: {path}: record 2 at byte {sizes[0] + sizes[1]} is truncated" in done.stderr


def metric(text, name):
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def test_a_server_whose_log_folder_becomes_unwritable_answers_counts_the_drops_warns_once_and_exits_0(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0)
    config = tmp_path / "models.pbtxt"
    logs = tmp_path / "logs"
    config.write_text(config_text(tmp_path / "m", logs / "m"))
    with Server(f"--model_config_file={config}", "--request_log_max_bytes=1000") as s:  # a new file every few
        for i in range(10):
            assert s.post("/v1/models/m:predict", {"instances": [[float(i)]]})[0] == 200
        wait_until(lambda: len(records(logs)) == 10, what="the first records")
        logs.rename(tmp_path / "logs.before")
        logs.write_text("")  # the folder is gone, a file in its place: the next file cannot be opened
        for i in range(300):
            assert s.post("/v1/models/m:predict", {"instances": [[float(i)]]})[0] == 200
        text = s.request("GET", "/metrics", fresh=True)[1].decode()
        dropped = metric(text, "serving_request_log_dropped_total")
        assert dropped >= 250 and metric(text, "serving_request_log_records_total") <= 10 + 50
        for i in range(100):
            assert s.post("/v1/models/m:predict", {"instances": [[float(i)]]})[0] == 200
        wait_until(lambda: metric(s.request("GET", "/metrics", fresh=True)[1].decode(),
                                  "serving_request_log_dropped_total") >= dropped + 100, what="more drops")
        assert s.stop() == 0
        output = s.output()
    warnings = [line for line in output.splitlines() if "WARNING serving.ops.requestlog" in line]
    assert 1 <= len(warnings) <= 2, output[-3000:]  # the outage, and at exit the drops since
    assert "writes fail" in warnings[0] and "Traceback" not in output
