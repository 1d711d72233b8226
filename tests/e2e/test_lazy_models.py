"""--model_control_mode=lazy against a real server: every configured model known at start, loaded on its first
request, the least recently used unloaded under --model_memory_capacity_bytes, a pinned model never; one load
for many first requests; a failed load answered 503 and tried again; what the index, /v1/models, the metrics
and the status page say; the budget shared out under --workers.

Each padded model's version folder holds PAD bytes of padding, so its measured size (at least its files') is
PAD whatever the process's memory does; the budget holds one of them and the small ones."""

from __future__ import annotations

import http.client
import json
import re
import threading

import pytest

from tests.helpers import Server, make_linear, pbtxt, wait_until

PAD = 8 << 20
CAPACITY = PAD + PAD // 2
PADDED = {"a": 1.0, "b": 2.0, "c": 3.0}


def padded(root, name, bias, pad=PAD, **extra):
    folder = make_linear(root / name, 1, weights=[[1.0]], bias=bias, **extra)
    if pad:
        (folder / "padding.bin").write_bytes(b"\0" * pad)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    for name, bias in PADDED.items():
        padded(root, name, bias)
    padded(root, "pinned", 10.0, pad=0)
    padded(root, "slow", 20.0, pad=0, load_delay_ms=1000)
    padded(root, "bad", 0.0, pad=0)
    (root / "bad" / "1" / "linear.json").write_text("{not json")
    config = root / "models.pbtxt"
    config.write_text(pbtxt(*({"name": n, "base_path": str(root / n), "platform": "linear"}
                              for n in [*PADDED, "pinned", "slow", "bad"])))
    with Server(f"--model_config_file={config}", "--model_control_mode=lazy", "--pin_model=pinned",
                f"--model_memory_capacity_bytes={CAPACITY}", "--model_min_residency_seconds=0",
                "--file_system_poll_wait_seconds=0") as s:
        s.root = root
        yield s


def predict(server, model, x=2.0):
    return server.post(f"/v1/models/{model}:predict", {"instances": [[x]]})


def status(server):
    code, doc = server.get("/ui/api/status")
    assert code == 200
    return doc


def loaded(server):
    return {m["name"] for m in status(server)["models"] if m["loaded"]}


def metric(server, name):
    code, text = server.get("/metrics")
    assert code == 200
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text.decode(), re.M)
    return float(match.group(1)) if match else None


def test_every_model_is_known_at_start_and_the_server_is_ready_with_the_pinned_one_loaded(server):
    assert server.get("/readyz")[0] == 200
    code, index = server.post("/v2/repository/index", {})
    rows = {row["name"]: row for row in index}
    assert rows["pinned"]["state"] == "READY"
    assert {k: v for k, v in rows["c"].items()} == {"name": "c", "state": "UNAVAILABLE", "reason": "not loaded"}
    code, listed = server.get("/v1/models")
    assert {m["name"] for m in listed["models"]} == {*PADDED, "pinned", "slow", "bad"}
    code, body = server.get("/v1/models/c")
    assert code == 200 and body["model_version_status"] == [
        {"version": "1", "state": "END", "status": {"error_code": "UNAVAILABLE", "error_message": "not loaded"}}]


def test_requests_in_turn_to_three_models_under_a_budget_of_one_all_answer_and_the_pinned_one_stays(server):
    for _ in range(2):
        for name, bias in PADDED.items():
            assert predict(server, name) == (200, {"predictions": [2.0 + bias]})
            now = loaded(server)
            assert len(now & set(PADDED)) == 1 and "pinned" in now
    assert predict(server, "pinned") == (200, {"predictions": [12.0]})
    assert metric(server, "serving_model_evictions_total") >= 5
    assert metric(server, "serving_model_memory_budget_bytes") == CAPACITY
    assert metric(server, "serving_models_known") == 6
    assert metric(server, 'serving_model_loads_total{reason="poll"}') == 1  # the pinned one, at start
    assert metric(server, 'serving_model_loads_total{reason="lazy"}') >= 6
    assert metric(server, 'serving_model_load_duration_seconds_count{reason="lazy"}') >= 6
    residency = status(server)["server"]["residency"]
    assert residency["budget_bytes"] == CAPACITY and residency["known"] == 6 and residency["loaded"] == 2
    assert PAD <= residency["memory_bytes"] <= CAPACITY
    model = next(m for m in status(server)["models"] if m["name"] == "pinned")
    assert model["pinned"] and model["size_bytes"] > 0 and model["last_used"] > 0


def test_sixteen_concurrent_first_requests_cause_one_load(server):
    answers = []

    def ask():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v1/models/slow:predict", body=json.dumps({"instances": [[1.0]]}))
        resp = conn.getresponse()
        answers.append((resp.status, json.loads(resp.read())))
        conn.close()

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [(200, {"predictions": [21.0]})] * 16
    assert server.output().count("model slow version 1 is AVAILABLE") == 1


def test_a_failed_load_answers_503_with_its_error_and_a_later_request_tries_again(server):
    code, body = predict(server, "bad")
    assert code == 503 and "model bad failed to load" in body["error"] and "linear" in body["error"]
    code, index = server.post("/v2/repository/index", {})
    row = next(r for r in index if r["name"] == "bad")
    assert row["state"] == "UNAVAILABLE" and "linear" in row["reason"]
    make_linear(server.root / "bad", 1, weights=[[1.0]], bias=0.0)  # repaired
    wait_until(lambda: predict(server, "bad")[0] == 200, timeout=30, what="the load tried again after its back-off")
    assert predict(server, "bad") == (200, {"predictions": [2.0]})


def test_a_model_pinned_in_the_config_file_loads_at_start(tmp_path):
    padded(tmp_path, "p", 1.0, pad=0)
    padded(tmp_path, "q", 2.0, pad=0)
    config = tmp_path / "models.pbtxt"
    config.write_text(pbtxt({"name": "p", "base_path": str(tmp_path / "p"), "platform": "linear"},
                            {"name": "q", "base_path": str(tmp_path / "q"), "platform": "linear"})
                      .replace('name: "p"', 'name: "p"\n    pinned: true'))
    with Server(f"--model_config_file={config}", "--model_control_mode=lazy") as s:
        assert loaded(s) == {"p"}


def test_under_workers_each_worker_has_its_share_of_the_budget_and_loads_on_its_own(tmp_path):
    padded(tmp_path, "a", 1.0, pad=0)
    with Server(f"--model_base_path={tmp_path / 'a'}", "--model_name=a", "--model_platform=linear",
                "--model_control_mode=lazy", "--workers=2", f"--model_memory_capacity_bytes={2 * CAPACITY}") as s:
        for _ in range(4):
            assert s.post("/v1/models/a:predict", {"instances": [[2.0]]}, fresh=True) == (200, {"predictions": [3.0]})
        code, text = s.get("/metrics")
        shares = re.findall(r'^serving_model_memory_budget_bytes\{worker="\d"\} ([0-9.e+]+)$', text.decode(), re.M)
        assert [float(v) for v in shares] == [CAPACITY, CAPACITY]
        assert f"budget: {CAPACITY} bytes (of {2 * CAPACITY}, 2 worker processes)" in s.output()


def test_a_first_request_for_metadata_loads_the_model_as_a_predict_would(tmp_path):
    import grpc

    from serving._proto.inference import grpc_predict_v2_pb2 as v2
    from serving._proto.inference import grpc_predict_v2_pb2_grpc as v2_grpc
    from serving._proto.tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    for name in ("tf", "v2", "tfgrpc", "v2grpc", "config"):
        padded(tmp_path, name, 1.0, pad=0)
    config = tmp_path / "models.pbtxt"
    config.write_text(pbtxt(*({"name": n, "base_path": str(tmp_path / n), "platform": "linear"}
                              for n in ("tf", "v2", "tfgrpc", "v2grpc", "config"))))
    with Server(f"--model_config_file={config}", "--model_control_mode=lazy") as s:
        assert loaded(s) == set()
        code, doc = s.get("/v1/models/tf/metadata")
        assert code == 200 and doc["model_spec"]["name"] == "tf" and doc["metadata"]["signature_def"]
        code, doc = s.get("/v2/models/v2")
        assert code == 200 and doc["name"] == "v2" and doc["inputs"]
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            request.model_spec.name = "tfgrpc"
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
            assert answer.model_spec.name == "tfgrpc" and answer.model_spec.version.value == 1
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelMetadata(v2.ModelMetadataRequest(name="v2grpc"), timeout=30).name == "v2grpc"
            assert stub.ModelConfig(v2.ModelConfigRequest(name="config"), timeout=30).config.name == "config"
        assert loaded(s) == {"tf", "v2", "tfgrpc", "v2grpc", "config"}
        assert s.get("/v1/models/nope/metadata")[0] == 404  # an unknown model is still NOT_FOUND
