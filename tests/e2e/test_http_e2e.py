"""The real server over real HTTP: every TF Serving REST route, the cloud processor route, and bad input
of every kind, each followed by a check that the server still serves."""

import gzip
import json
import re
import socket
import threading
import time

import numpy as np
import pytest

from tests.helpers import Server, make_lgbm, make_linear, make_xgb, pbtxt, training_data

xgb = pytest.importorskip("xgboost", reason="xgboost-cpu is not installed")
pytest.importorskip("lightgbm", reason="lightgbm is not installed")

NAMES = ["a", "b", "c", "d"]
MAX_BODY = 200_000


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_xgb(root / "xgb", 1, names=NAMES, trees=3)
    make_xgb(root / "xgb", 2, names=NAMES, trees=8)
    make_lgbm(root / "lgbm", 1)
    make_linear(root / "lin", 1, reject_nan=True)
    make_linear(root / "slow", 1, delay_ms=700)
    config = root / "model_config.pbtxt"
    config.write_text(pbtxt(
        {"name": "xgb", "base_path": root / "xgb", "platform": "xgboost", "policy": "all {}",
         "labels": {"stable": 1, "canary": 2}},
        {"name": "lgbm", "base_path": root / "lgbm", "platform": "lightgbm"},
        {"name": "lin", "base_path": root / "lin", "platform": "linear"},
        {"name": "slow", "base_path": root / "slow", "platform": "linear"},
    ))
    return root


@pytest.fixture(scope="module")
def server(repo):
    with Server(f"--model_config_file={repo / 'model_config.pbtxt'}", "--rest_api_timeout_in_ms=400",
                f"--rest_api_max_body_bytes={MAX_BODY}", "--rest_api_read_timeout_seconds=2") as s:
        yield s


def booster(repo, version):
    return xgb.Booster(model_file=str(repo / "xgb" / str(version) / "model.json"))


def still_serves(server):
    status, body = server.post("/v1/models/lin:predict", {"instances": [[2.0], [4.0]]}, fresh=True)
    assert (status, body) == (200, {"predictions": [3.0, 4.0]})


# ---- routes ----

def test_hand_checkable_linear_model(server):
    assert server.post("/v1/models/lin:predict", {"instances": [2.0, 3.0, 4.0]})[0] == 400  # rank 1 != [-1,1]
    assert server.post("/v1/models/lin:predict", {"instances": [[2.0], [3.0], [4.0]]}) == (
        200, {"predictions": [3.0, 3.5, 4.0]})
    assert server.post("/v1/models/lin:predict", {"inputs": [[2.0]]}) == (200, {"outputs": [3.0]})


def test_model_status(server):
    status, body = server.get("/v1/models/xgb")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    ]}
    assert [v["version"] for v in server.get("/v1/models/xgb/versions/1")[1]["model_version_status"]] == ["1"]
    assert [v["version"] for v in server.get("/v1/models/xgb/labels/canary")[1]["model_version_status"]] == ["2"]
    # TF Serving's texts, then the models or versions there are (its clients read only the text)
    assert server.get("/v1/models/nope") == (
        404, {"error": "Could not find any versions of model nope (known models: lgbm, lin, slow, xgb)"})
    assert server.get("/v1/models/xgb/versions/9") == (
        404, {"error": "Could not find version 9 of model xgb (versions of xgb: 1, 2)"})
    assert server.get("/v1/models/xgb/labels/x") == (400, {"error": "Unrecognized servable version label: x"})


def test_model_metadata(server):
    status, body = server.get("/v1/models/xgb/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "xgb", "signature_name": "", "version": "1"}
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["inputs"]["dtype"] == "DT_FLOAT"
    assert sig["inputs"]["inputs"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "4", "name": ""}]
    assert sig["outputs"]["predictions"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert server.get("/v1/models/xgb/metadata")[1]["model_spec"]["version"] == "2"


def test_predict_by_latest_version_and_label(server, repo):
    x, _ = training_data()
    rows = x[:3].tolist()
    v1 = booster(repo, 1).predict(xgb.DMatrix(x[:3], feature_names=NAMES))
    v2 = booster(repo, 2).predict(xgb.DMatrix(x[:3], feature_names=NAMES))
    for path, want in [("/v1/models/xgb:predict", v2), ("/v1/models/xgb/versions/1:predict", v1),
                       ("/v1/models/xgb/labels/stable:predict", v1), ("/v1/models/xgb/labels/canary:predict", v2)]:
        status, body = server.post(path, {"instances": rows})
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"], want, rtol=1e-6)
    status, body = server.post("/v1/models/xgb:predict", {"signature_name": "serving_default", "inputs": rows})
    np.testing.assert_allclose(body["outputs"], v2, rtol=1e-6)


def test_feature_objects(server, repo):
    x, _ = training_data()
    rows = [dict(zip(NAMES, r, strict=True)) for r in x[:2].tolist()]
    status, body = server.post("/v1/models/xgb:predict", {"instances": rows})
    assert status == 200
    want = booster(repo, 2).predict(xgb.DMatrix(x[:2], feature_names=NAMES))
    np.testing.assert_allclose(body["predictions"], want, rtol=1e-6)
    status, body = server.post("/v1/models/xgb:predict", {"instances": [{"a": 1.0}]})
    assert status == 400 and "missing feature(s) b, c, d" in body["error"]


def test_lightgbm_over_http(server, repo):
    import lightgbm as lgb

    x, _ = training_data()
    status, body = server.post("/v1/models/lgbm:predict", {"instances": x[:4].tolist()})
    assert status == 200
    want = lgb.Booster(model_file=str(repo / "lgbm" / "1" / "model.txt")).predict(x[:4])
    np.testing.assert_allclose(body["predictions"], want, rtol=1e-5)


def test_cloud_processor_json_route(server, repo):
    x, _ = training_data()
    want = booster(repo, 2).predict(xgb.DMatrix(x[:2], feature_names=NAMES))
    status, body = server.post("/api/predict/xgb", x[:2].tolist())
    assert status == 200
    np.testing.assert_allclose(body, want, rtol=1e-6)
    status, body = server.post("/api/predict/xgb", [dict(zip(NAMES, r, strict=True)) for r in x[:2].tolist()])
    np.testing.assert_allclose(body, want, rtol=1e-6)
    # POST / is the default model: the first one of the config.
    status, body = server.post("/", x[:2].tolist())
    np.testing.assert_allclose(body, want, rtol=1e-6)
    assert server.post("/api/predict/nope", [[1.0]])[0] == 404
    assert server.post("/api/predict/xgb", [[1.0]])[0] == 400


def test_listing_and_health(server):
    status, body = server.get("/v1/models")
    assert status == 200 and [m["name"] for m in body["models"]] == ["lgbm", "lin", "slow", "xgb"]
    xgb_entry = body["models"][-1]
    assert xgb_entry["labels"] == {"stable": 1, "canary": 2}
    assert server.get("/healthz") == (200, {"status": "live"})
    assert server.get("/readyz") == (200, {"status": "ready"})


# ---- bad requests: the answer, then the server still serves ----

@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/models/lin:predict", b"{not json", 400, "JSON Parse error"),
        ("/v1/models/lin:predict", b"", 400, "JSON Parse error: The document is empty"),
        ("/v1/models/lin:predict", b"[1, 2]", 400, "Is not object"),
        ("/v1/models/lin:predict", {"instances": [[1.0, 2.0]]}, 400, "expects shape [-1,1], got [1,2]"),
        ("/v1/models/xgb:predict", {"instances": [[1.0, 2.0, 3.0]]}, 400, "the model takes 4 features per row"),
        ("/v1/models/lin:predict", {"instances": [["x"]]}, 400, "is not of expected type: float"),
        ("/v1/models/lin:predict", {"instances": [[1.0], [1.0, 2.0]]}, 400, "ragged"),
        ("/v1/models/lin:predict", {"instances": []}, 400, "No values in 'instances' array"),
        ("/v1/models/lin:predict", {"signature_name": "other", "instances": [[1.0]]}, 400,
         'Serving signature key "other" not found.'),
        ("/v1/models/nope:predict", {"instances": [[1.0]]}, 404, "Servable not found for request: Latest(nope)"),
        ("/v1/models/xgb/versions/7:predict", {"instances": [[1.0]]}, 404,
         "Servable not found for request: Specific(xgb, 7)"),
        ("/v1/models/xgb/labels/nope:predict", {"instances": [[1.0]]}, 400, "Unrecognized servable version label"),
        ("/v1/models/lin:classify", {"examples": [{"x": 1.0}]}, 501, "does not implement classify"),
        ("/v1/models/lin:regress", {"examples": [{"x": 1.0}]}, 501, "does not implement regress"),
        ("/v1/models/lin:explode", {"instances": [[1.0]]}, 400, "Malformed request: POST /v1/models/lin:explode"),
        ("/v1/models/lin", {"instances": [[1.0]]}, 405, "to predict, POST /v1/models/lin:predict"),
        ("/elsewhere", {}, 404, "Not found"),
    ],
)
def test_bad_requests_get_tf_serving_errors(server, path, body, status, message):
    got_status, got = server.post(path, body)
    assert got_status == status, got
    assert message in got["error"]
    still_serves(server)


def test_get_on_a_predict_route_is_405_use_post(server):
    # TF Serving answers 400 "Malformed request"; the route exists, so HTTP's answer is 405 with Allow
    assert server.get("/v1/models/lin:predict") == (
        405, {"error": "Method not allowed: GET /v1/models/lin:predict: use POST with a JSON body"})


def test_processor_exception_fails_only_that_request(server):
    status, body = server.post("/v1/models/lin:predict", b'{"instances": [[NaN]]}')
    assert status == 500
    assert "model lin version 1 failed in predict: ValueError: linear model refuses NaN input" == body["error"]
    still_serves(server)


def test_deadline_exceeded_is_504_and_the_server_goes_on(server):
    t0 = time.monotonic()
    status, body = server.post("/v1/models/slow:predict", {"instances": [[1.0]]})
    assert (status, body) == (504, {"error": "Deadline Exceeded"})
    assert time.monotonic() - t0 < 0.69  # answered at the deadline, not when the model finished
    still_serves(server)


def test_nan_and_infinity_tokens_are_read(server, repo):
    # The tokens become NaN / +-inf floats; the answer equals the booster's own for the same row.
    body = b'{"instances": [[NaN, Infinity, -Infinity, 1.0]]}'
    status, got = server.post("/v1/models/xgb/versions/1:predict", body)
    assert status == 200
    row = np.array([[np.nan, np.inf, -np.inf, 1.0]], dtype=np.float32)
    want = booster(repo, 1).inplace_predict(row, validate_features=False)
    np.testing.assert_allclose(got["predictions"], want, rtol=1e-6)
    still_serves(server)


def test_body_over_the_limit_is_413(server):
    big = json.dumps({"instances": [[1.0]] * (MAX_BODY // 5)}).encode()
    assert len(big) > MAX_BODY
    status, body = server.post("/v1/models/lin:predict", big)
    assert status == 413 and "larger than the limit" in body["error"]
    chunked = (b"POST /v1/models/lin:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n")
    assert server.raw(chunked).startswith(b"HTTP/1.1 413")
    still_serves(server)


def test_gzip_bodies(server):
    body = gzip.compress(json.dumps({"instances": [[2.0]]}).encode())
    assert server.post("/v1/models/lin:predict", body, headers={"Content-Encoding": "gzip"}) == (
        200, {"predictions": [3.0]})
    status, got = server.post("/v1/models/lin:predict", b"not gzip", headers={"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in got["error"]
    bomb = gzip.compress(b" " * (MAX_BODY * 4))
    status, got = server.post("/v1/models/lin:predict", bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413
    still_serves(server)


def test_garbage_and_truncated_requests(server):
    assert server.raw(b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    # A body shorter than its Content-Length, then the client gives up: nothing to answer, server fine.
    assert server.raw(b"POST /v1/models/lin:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"inst",
                      close_after_send=True) == b""
    # A client that stalls mid-body gets 408 after the read time-out.
    answer = server.raw(b"POST /v1/models/lin:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"inst",
                        read_timeout=6)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    still_serves(server)


def test_client_disconnecting_mid_request_does_not_hurt(server):
    for _ in range(2):  # the slow model holds a worker thread for its whole call
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /v1/models/slow:predict HTTP/1.1\r\nContent-Length: 22\r\n\r\n{\"instances\": [[1.0]]}")
        # closed before the answer
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /v1/models/lin:predict HTTP/1.1\r\nContent-Length: 22\r\n\r\n{\"instances\": [[1.0]]}")
    still_serves(server)


def test_keep_alive_and_pipelining_answer_in_order(server):
    slow = b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\n{\"instances\": [[1.0]]}"
    fast = b"POST /v1/models/lin:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\n{\"instances\": [[2.0]]}"
    last = (b"GET /v1/models/lin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = server.raw(slow + fast + fast + last)
    statuses = re.findall(rb"HTTP/1.1 (\d{3}) ", answer)
    assert statuses == [b"504", b"200", b"200", b"200"]
    assert answer.index(b"Deadline Exceeded") < answer.index(b"[3.0]")
    for _ in range(50):  # many requests on one kept-alive connection
        assert server.post("/v1/models/lin:predict", {"instances": [[2.0]]}) == (200, {"predictions": [3.0]})


def test_concurrent_clients(server):
    errors = []

    def client():
        conn_server = Server.__new__(Server)
        conn_server.port, conn_server.conn = server.port, None
        for _ in range(30):
            got = conn_server.request("POST", "/v1/models/lin:predict", {"instances": [[2.0], [0.0]]})
            if got != (200, {"predictions": [3.0, 2.0]}):
                errors.append(got)
        conn_server.conn.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_prometheus_metrics(server):
    for _ in range(12):  # the linear model is fast: after 8 batches its queue runs them on the loop thread
        assert server.post("/v1/models/lin:predict", {"instances": [[2.0]]})[0] == 200
    assert server.post("/v1/models/nope:predict", {"instances": [[2.0]]})[0] == 404
    for path in ("/metrics", "/monitoring/prometheus/metrics"):
        status, text = server.get(path)
        assert status == 200
        text = text.decode()
        assert 'serving_model_version_state{model="xgb",state="AVAILABLE",version="2"} 1.0' in text
        requests = [line for line in text.splitlines()
                    if line.startswith('serving_batch_requests_total{model="lin",signature="serving_default"')]
        assert requests and float(requests[0].rsplit(" ", 1)[1]) >= 12
        inline = [line for line in text.splitlines()
                  if line.startswith('serving_batch_inline_batches_total{model="lin",signature="serving_default"')]
        assert inline and float(inline[0].rsplit(" ", 1)[1]) >= 1
        assert 'serving_batch_compute_average_seconds{model="lin",signature="serving_default"' in text
        assert 'serving_http_responses_total{code="404"}' in text


def test_many_idle_and_half_sent_connections_do_not_starve_others(server):
    idle = []
    try:
        for i in range(150):
            s = socket.create_connection(("127.0.0.1", server.port))
            if i % 2:
                s.sendall(b"POST /v1/models/lin:predict HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")  # and stall
            idle.append(s)
        t0 = time.monotonic()
        for _ in range(20):
            still_serves(server)
        assert time.monotonic() - t0 < 5
    finally:
        for s in idle:
            s.close()
    still_serves(server)


def test_a_header_block_over_the_limit_is_431_and_the_client_reads_it(server):
    huge = b"POST /v1/models/lin:predict HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    answer = server.raw(huge)  # the server keeps reading what it refused, so the answer is not reset away
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert answer.endswith(b'{"error": "request header block larger than the limit of 65536 bytes"}')
    still_serves(server)


def test_a_url_over_the_limit_is_414_and_a_malformed_one_400(server):
    long_url = b"/v1/models/lin:predict?" + b"%41" * 30000
    answer = server.raw(b"GET " + long_url + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 URI Too Long\r\n")
    assert server.raw(b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")
    still_serves(server)


def test_a_client_that_half_closes_after_its_request_gets_the_answer(server):
    body = b'{"instances": [[2.0]]}'
    request = b"POST /v1/models/lin:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    answer = server.raw(request + request, close_after_send=True)  # as `nc -N` does
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2 and answer.endswith(b'{"predictions":[3.0]}')
