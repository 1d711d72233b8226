"""Batching as a client sees it: queue full, rate limit and deadlines on both route families, the
service config form with a flat model directory and its warm-up, and bad batching configuration."""

import json
import threading

import pytest

from tests.helpers import Server, make_linear, run_cli


def concurrent_posts(server, path, body, n):
    results = []
    lock = threading.Lock()

    def one():
        client = Server.__new__(Server)
        client.port, client.conn = server.port, None
        got = client.post(path, body)
        if client.conn is not None:
            client.conn.close()
        with lock:
            results.append(got)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_full_queue_is_503_on_tf_serving_routes_and_450_on_the_processor_route(tmp_path):
    make_linear(tmp_path / "slow", 1, delay_ms=400)
    with Server(f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow", "--worker_threads=1",
                "--max_queue_size=1", "--max_batch_size=1") as s:
        got = concurrent_posts(s, "/v1/models/slow:predict", {"instances": [[1.0]]}, 5)
        statuses = sorted(status for status, _ in got)
        assert statuses.count(200) >= 2 and 503 in statuses, got
        assert all("queue is full" in body["error"] for status, body in got if status == 503)
        got = concurrent_posts(s, "/api/predict/slow", [[1.0]], 5)
        assert 450 in [status for status, _ in got], got
        assert s.post("/v1/models/slow:predict", {"instances": [[2.0]]}) == (200, {"predictions": [3.0]})


def test_rate_limit_is_429(tmp_path):
    make_linear(tmp_path / "m", 1)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", "--rate_limit=5") as s:
        statuses = [s.post("/v1/models/m:predict", {"instances": [[1.0]]})[0] for _ in range(30)]
        assert statuses.count(200) >= 5 and 429 in statuses
        status, body = s.post("/api/predict/m", [[1.0]])
        if status == 429:
            assert "rate limit of 5 requests/s exceeded" in body["error"]


def test_keepalive_deadline_is_408_on_the_processor_route(tmp_path):
    make_linear(tmp_path / "slow", 1, delay_ms=600)
    with Server(f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow", "--keepalive_ms=200") as s:
        status, body = s.post("/api/predict/slow", [[1.0]])
        assert status == 408 and "timed out" in body["error"]


def test_service_config_serves_a_flat_model_dir_after_its_warm_up(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "linear.json").write_text(json.dumps({"weights": [0.5], "bias": 2.0}))
    (tmp_path / "warm.txt").write_text("[[1.0]]\n")
    (tmp_path / "service.json").write_text(json.dumps({
        "name": "svc", "processor": "linear", "model_path": str(model),
        "warm_up_data_path": str(tmp_path / "warm.txt"),
        "metadata": {"rpc": {"max_batch_size": 8, "keepalive": 3000}},
    }))
    with Server(f"--service_config={tmp_path / 'service.json'}") as s:
        assert s.post("/api/predict/svc", [[2.0], [4.0]]) == (200, [3.0, 4.0])
        assert s.post("/", [[2.0]]) == (200, [3.0])
        assert s.get("/v1/models/svc")[1]["model_version_status"][0]["version"] == "1"


def test_batching_parameters_file_is_read_and_validated(tmp_path):
    make_linear(tmp_path / "m", 1)
    good = tmp_path / "good.pbtxt"
    good.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 1000 } allowed_batch_sizes: 4 "
                    "allowed_batch_sizes: 8")
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", "--enable_batching",
                f"--batching_parameters_file={good}") as s:
        rows = [[float(i)] for i in range(20)]  # split into batches of 8, padded to allowed sizes
        assert s.post("/v1/models/m:predict", {"instances": rows}) == (
            200, {"predictions": [0.5 * i + 2 for i in range(20)]})
    bad = tmp_path / "bad.pbtxt"
    bad.write_text("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    result = run_cli(f"--model_base_path={tmp_path / 'm'}", f"--batching_parameters_file={bad}",
                     "--rest_api_port=0")
    assert result.returncode == 1 and "The last entry in allowed_batch_sizes must match max_batch_size" in result.stderr


@pytest.mark.parametrize("batching", ["true", "false"])
def test_batched_answers_equal_unbatched_ones(tmp_path, batching):
    make_linear(tmp_path / "m", 1, weights=[[1.0, 0.0], [0.0, 2.0]], bias=[0.5, -0.5])
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", f"--enable_batching={batching}",
                "--max_batch_size=4") as s:
        got = concurrent_posts(s, "/v1/models/m:predict", {"instances": [[1.0, 1.0], [2.0, 3.0]]}, 12)
        assert got == [(200, {"predictions": [[1.5, 1.5], [2.5, 5.5]]})] * 12


def test_a_request_whose_client_reset_the_connection_is_not_computed(tmp_path):
    # A client that only closes its sending side (FIN) may still read: that is a half-close, answered
    # (test_http_e2e). A reset says it is gone.
    import socket
    import struct
    import time

    make_linear(tmp_path / "slow", 1, delay_ms=500)
    with Server(f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow", "--worker_threads=1",
                "--max_batch_size=1") as s:
        body = b'{"instances": [[1.0]]}'
        request = b"POST /v1/models/slow:predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        busy = socket.create_connection(("127.0.0.1", s.port))
        busy.sendall(request)  # A: computes for 0.5 s
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", s.port)) as gone:
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            gone.sendall(request)  # B: queued behind A, then its client leaves
        time.sleep(0.1)
        t0 = time.monotonic()
        assert s.post("/v1/models/slow:predict", {"instances": [[2.0]]}) == (200, {"predictions": [3.0]})  # C
        waited = time.monotonic() - t0
        busy.close()
        # C waits for A's remaining ~0.3 s and its own 0.5 s; had B been computed, 0.5 s more.
        assert waited < 1.1, waited
