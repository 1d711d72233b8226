"""Shadow versions: a sample of the answered calls also runs on the shadow, whose answers are compared into
metrics and never returned; a shadow that fails or is not there is counted and dropped, never touching the
served answer."""

import concurrent.futures
import http.client
import json
import re
import time

import pytest

from serving.core.model_config import ConfigError, parse_model_config
from tests.helpers import Server, make_linear, run_cli, wait_until


def config(base, shadow, traffic="version_traffic { key: 1 value: 100 }", rate=""):
    return (f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "linear" '
            f"model_version_policy {{ all {{}} }} {traffic} shadow_version {{ version: {shadow} {rate} }} }} }}\n")


class Client:
    def __init__(self, port):
        self.port = port

    def post(self, path, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=json.dumps(body).encode())
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_shadow_runs_the_answered_calls_and_its_divergence_is_measured(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0, 0.0], [0.0, 1.0]], bias=[0.0, 0.0])
    make_linear(tmp_path / "m", 2, weights=[[1.0, 0.0], [0.0, 1.0]], bias=[0.25, 0.0])  # off by 0.25
    path = tmp_path / "models.pbtxt"
    path.write_text(config(tmp_path / "m", 2))
    with Server(f"--model_config_file={path}") as s:
        for i in range(20):
            status, body = s.post("/v1/models/m:predict", {"instances": [[float(i), 0.0]]})
            assert status == 200 and body["predictions"] == [[float(i), 0.0]]  # version 1's answer, never 2's
        def scraped():
            text = s.request("GET", "/metrics", fresh=True)[1].decode()
            return text if metric(text, "serving_shadow_requests_total", outcome="ok") == 20 else None

        text = wait_until(scraped, what="20 shadow calls")
        assert metric(text, "serving_shadow_divergence_count", model="m", version="2") == 20
        assert metric(text, "serving_shadow_divergence_bucket", version="2", le="0.1") == 0
        assert metric(text, "serving_shadow_divergence_bucket", version="2", le="1.0") == 20  # 0.25 each
        assert metric(text, "serving_shadow_agreement_total", agree="true") + metric(
            text, "serving_shadow_agreement_total", agree="false") == 20
        # Calls that name the shadow are served by it, and not shadowed again.
        assert s.post("/v1/models/m/versions/2:predict", {"instances": [[0.0, 0.0]]})[1]["predictions"] == [[0.25, 0.0]]


def test_a_failing_shadow_is_counted_and_never_touches_the_answer(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0)
    make_linear(tmp_path / "m", 2, weights=[[1.0]], bias=0.0, reject_nan=True)  # fails on NaN
    path = tmp_path / "models.pbtxt"
    path.write_text(config(tmp_path / "m", 2, rate="sample_rate: 0.5"))
    with Server(f"--model_config_file={path}") as s:
        for _ in range(200):
            status, body = s.post("/v1/models/m:predict", {"instances": [[float("nan")]]})
            assert status == 200  # version 1 answers NaN; the shadow's failure is not the client's
        time.sleep(0.5)
        text = s.request("GET", "/metrics", fresh=True)[1].decode()
        failed = metric(text, "serving_shadow_requests_total", outcome="failed")
        assert 60 <= failed <= 140, failed  # half of 200, sampled
        assert metric(text, "serving_shadow_requests_total", outcome="ok") == 0


def test_a_shadow_sampled_while_served_requests_wait_is_shed(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0, delay_ms=150)
    make_linear(tmp_path / "m", 2, weights=[[1.0]], bias=0.0)
    path = tmp_path / "models.pbtxt"
    path.write_text(config(tmp_path / "m", 2))
    with Server(f"--model_config_file={path}", "--max_batch_size=1", "--worker_threads=1") as s:
        def one(_):
            return Client(s.port).post("/v1/models/m:predict", {"instances": [[1.0]]})

        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # one at a time through version 1's queue
            assert [status for status, _ in pool.map(one, range(4))] == [200] * 4

        def scraped():
            text = s.request("GET", "/metrics", fresh=True)[1].decode()
            counts = {o: metric(text, "serving_shadow_requests_total", outcome=o) for o in ("ok", "shed")}
            return counts if sum(counts.values()) == 4 else None

        counts = wait_until(scraped, what="the four calls' shadow outcomes")
        # The first three finished with others still queued behind them: shed; the last found the queue idle.
        assert counts["shed"] >= 1 and counts["ok"] >= 1, counts


def test_the_shadow_must_be_a_served_version(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0)
    path = tmp_path / "models.pbtxt"
    path.write_text(config(tmp_path / "m", 7))
    done = run_cli(f"--model_config_file={path}", "--rest_api_port=0", "--port=0")
    assert done.returncode != 0 and "the shadow version 7 of model m is not one it serves" in done.stderr
    with pytest.raises(ConfigError, match="sampling rate 3.0"):
        parse_model_config(config(tmp_path / "m", 1, rate="sample_rate: 3"))


def test_the_service_json_shadow(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0)
    make_linear(tmp_path / "m", 2, weights=[[1.0]], bias=1.0)
    service = tmp_path / "service.json"
    service.write_text(json.dumps({"name": "m", "processor": "linear", "model_path": str(tmp_path / "m"),
                                   "traffic": {"1": 100}, "shadow": {"version": 2, "sample_rate": 1.0}}))
    with Server(f"--service_config={service}") as s:
        assert s.post("/api/predict/m", [[1.0]])[1] == [1.0]
        wait_until(lambda: re.search(r'serving_shadow_requests_total\{[^}]*outcome="ok"[^}]*\} 1\.0',
                                     s.request("GET", "/metrics", fresh=True)[1].decode()), what="the shadow call")
    service.write_text(json.dumps({"name": "m", "model_path": str(tmp_path / "m"), "shadow": {"version": 2}}))
    done = run_cli(f"--service_config={service}", "--rest_api_port=0", "--port=0")
    assert done.returncode != 0 and "needs \"traffic\"" in done.stderr


def test_a_logged_calls_shadow_answer_is_logged_beside_it(tmp_path):
    from serving._proto.tensorflow_serving.apis import prediction_log_pb2
    from serving.codecs.tensors import tensor_to_array
    from serving.codecs.tfrecord import read_tfrecords

    make_linear(tmp_path / "m", 1, weights=[[1.0]], bias=0.0)
    make_linear(tmp_path / "m", 2, weights=[[1.0]], bias=1.0)
    path = tmp_path / "models.pbtxt"
    path.write_text(config(tmp_path / "m", 2).replace(
        "shadow_version", f'logging_config {{ log_collector_config {{ filename_prefix: "{tmp_path / "log"}" }} '
        "sampling_config { sampling_rate: 1.0 } } shadow_version"))
    with Server(f"--model_config_file={path}") as s:
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}, headers={"x-request-id": "r-1"})[0] == 200
        wait_until(lambda: "serving_request_log_records_total 2.0" in s.request("GET", "/metrics", fresh=True)[1]
                   .decode(), what="both records written")
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for f in sorted(tmp_path.glob("log.*.tfrecord"))
            for r in read_tfrecords(f)]
    answers = {log.log_metadata.model_spec.version.value: tensor_to_array(
        log.predict_log.response.outputs["predictions"], "p").tolist() for log in logs}
    assert answers == {1: [2.0], 2: [3.0]}  # the served answer and the shadow's, one request
    assert {log.log_metadata.request_id for log in logs} == {"r-1"}
