"""The status page's server side: `GET /` (a browser) and `/ui` answer the page, `/ui/api/status` the JSON it
polls (models, versions, signatures, request bodies that work, live series, recent errors and request-log
samples, the process and the flags, never the token), behind the token when there is one, summed over
workers. The page itself is driven in a real browser in test_ui_browser.py."""

import http.client
import json
import threading

import numpy as np
import pytest

from serving._proto.tensorflow_serving.apis import prediction_log_pb2
from serving.codecs.tensors import array_to_tensor
from serving.codecs.tfrecord import write_tfrecords
from serving.core.stats import LATENCY_BUCKETS
from serving.tools.ui import (
    Point,
    merge_points,
    quantile,
    quantiles,
    queues_sum,
    series,
)
from tests.e2e.test_queue_remote import TOKEN as QUEUE_TOKEN
from tests.e2e.test_queue_remote import QueueService
from tests.helpers import Server, make_linear, pbtxt, wait_until
from tests.redis_server import RedisServer, needs_redis


def status(s, headers=None):
    code, doc = s.request("GET", "/ui/api/status", headers=headers, fresh=True)
    assert code == 200, doc
    return doc


def version_doc(doc, model, version):
    (m,) = [m for m in doc["models"] if m["name"] == model]
    (v,) = [v for v in m["versions"] if v["version"] == version]
    return m, v


def test_the_page_is_served_to_browsers_and_api_clients_keep_their_answers(tmp_path):
    make_linear(tmp_path / "m", 1)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m") as s:
        for path, headers in (("/", {"Accept": "text/html,application/xhtml+xml"}), ("/ui", {}), ("/ui/", {})):
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status == 200 and resp.getheader("Content-Type") == "text/html; charset=utf-8", path
            assert b"<html" in body.lower() and b"/ui/api/status" in body
            assert "default-src 'none'" in resp.getheader("Content-Security-Policy")  # nothing from elsewhere
        # An API client's GET / lists the routes and names the status page (tests/e2e/test_newcomer.py); POST /
        # is the cloud route's default model as before.
        code, index = s.get("/")
        assert code == 200 and b"status page: /ui" in index
        assert s.post("/", [[4.0]]) == (200, [4.0])
        code, readme = s.request("GET", "/ui/docs")
        assert code == 200 and b"## HTTP API" in readme
        assert s.request("POST", "/ui/api/status", b"{}")[0] == 405
        assert s.get("/ui/nothing")[0] == 404


def test_the_status_lists_models_versions_and_signatures_and_its_request_bodies_work(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[1.0, 2.0], bias=0.5)
    make_linear(tmp_path / "m", 2, weights=[1.0, 2.0], bias=1.5)
    warmup = prediction_log_pb2.PredictionLog()
    warmup.predict_log.request.model_spec.name = "m"
    array_to_tensor(np.zeros((1, 2), np.float32), warmup.predict_log.request.inputs["inputs"])
    (tmp_path / "m" / "2" / "assets.extra").mkdir()
    write_tfrecords(tmp_path / "m" / "2" / "assets.extra" / "tf_serving_warmup_requests",
                    [warmup.SerializeToString()] * 2)
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "linear.json").write_text("{not json")
    config = tmp_path / "models.pbtxt"
    config.write_text(pbtxt(
        {"name": "m", "base_path": str(tmp_path / "m"), "platform": "linear", "policy": "all {}",
         "labels": {"stable": 1}},
        {"name": "bad", "base_path": str(tmp_path / "bad"), "platform": "linear"}))
    with Server(f"--model_config_file={config}", "--max_batch_size=7", "--batch_timeout_micros=2000",
                wait_ready=False) as s:
        def loaded():  # both models with their versions found, their loads over and the labels applied after them
            d = status(s)
            versions = [v for m in d["models"] for v in m["versions"]]
            labelled = any(m["labels"] for m in d["models"])
            return len(versions) == 3 and all(v["state"] in ("AVAILABLE", "END") for v in versions) and labelled and d

        doc = wait_until(loaded, what="the loads")
        assert [m["name"] for m in doc["models"]] == ["bad", "m"]
        _, failed = version_doc(doc, "bad", 1)
        assert failed["state"] == "END" and failed["error"] and failed["try"] == []
        model, v1 = version_doc(doc, "m", 1)
        assert model["labels"] == {"stable": 1} and model["platform"] == "linear"
        assert v1["state"] == "AVAILABLE" and v1["processor"] == "linear" and v1["device"] == "cpu"
        assert v1["batching"]["max_batch_size"] == 7 and v1["batching"]["batch_timeout_micros"] == 2000
        (sig,) = v1["signatures"]
        assert sig["inputs"][0]["dtype"] == "float32" and sig["inputs"][0]["shape"] == [-1, 2]
        assert doc["server"]["workers"] == 1 and doc["server"]["rss_bytes"] > 0 and not doc["server"]["auth"]
        assert doc["config"]["models"]["model_config_file"] == str(config)
        assert doc["queues"] == []  # no async service: no queue
        # Every request body the page offers is one the server answers: version 1 answers 0*1 + 0*2 + 0.5.
        _, v2 = version_doc(doc, "m", 2)
        assert (v1["warmup_requests"], v2["warmup_requests"]) == (0, 2) and v2["warmup_seconds"] > 0
        assert [t["protocol"] for t in v1["try"]] == ["tfserving", "kserve"]
        assert [t["protocol"] for t in v2["try"]] == ["tfserving", "kserve", "cloud"]  # the latest: the cloud route
        answers = {}
        for version in (v1, v2):
            for t in version["try"]:
                code, answer = s.request(t["method"], t["path"], t["body"])
                assert code == 200, (t, answer)
                answers[(version["version"], t["protocol"])] = answer
        assert answers[(1, "tfserving")] == {"predictions": [0.5]}
        assert answers[(1, "kserve")]["outputs"][0]["data"] == [0.5]
        assert answers[(2, "cloud")] == [1.5]


def test_the_series_follow_the_traffic_and_errors_are_kept_with_their_request_ids(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[1.0], bias=0.0)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", "--batch_timeout_micros=0") as s:
        stop = threading.Event()

        def traffic():
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            while not stop.is_set():
                conn.request("POST", "/v1/models/m:predict", body=b'{"instances": [[1.0], [2.0]]}')
                conn.getresponse().read()
            conn.close()

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            # A sample with requests and a batch: the sampler may tick between a batch's end (counted then) and its
            # requests' answers (counted by the observers on the next loop turn), leaving one interval with calls
            # and no batch (its batch size: none, '–' on the page).
            _, v = wait_until(lambda: (r := version_doc(status(s), "m", 1)) and (r[1]["now"]["rps"] or 0) > 0
                              and r[1]["now"]["batch_rows"] is not None and r, what="a sample with requests")
        finally:
            stop.set()
            thread.join()
        now = v["now"]
        assert now["error_rate"] == 0.0 and 0 < now["p50_ms"] <= now["p99_ms"] < 30_000
        assert now["batch_rows"] >= 2 and 0.0 <= now["inline_share"] <= 1.0
        assert len(v["series"]["t"]) == len(v["series"]["rps"]) and v["series"]["t"] == sorted(v["series"]["t"])
        # ?since=<second>: only the later seconds, for a page that keeps what it has; "now" is the same.
        last = v["series"]["t"][-1]
        code, doc = s.request("GET", f"/ui/api/status?since={last - 1}", fresh=True)
        later = version_doc(doc, "m", 1)[1]
        assert code == 200 and doc["since"] == last - 1 and later["series"]["t"][0] == last
        assert all(len(values) == len(later["series"]["t"]) for values in later["series"].values())
        for bad in ("nan", "x", "-1", "1e30", "1000000000000000000000000000000"):  # 400, never a 500
            code, doc = s.request("GET", f"/ui/api/status?since={bad}", fresh=True)
            assert code == 400 and "since" in doc["error"], bad
        code, _ = s.post("/v1/models/m:predict", {"instances": [["x"]]}, headers={"X-Request-Id": "bad-row-1"})
        assert code == 400
        errors = wait_until(lambda: status(s)["recent"]["errors"], what="the error in the status")
        assert errors[0]["request_id"] == "bad-row-1" and errors[0]["code"] == "INVALID_ARGUMENT"
        assert errors[0]["model"] == "m" and errors[0]["version"] == 1 and errors[0]["protocol"] == "tfserving_rest"
        assert s.post("/v1/models/nope:predict", {"instances": [[1.0]]})[0] == 404  # the name the client gave
        unknown = wait_until(lambda: [e for e in status(s)["recent"]["errors"] if e["code"] == "NOT_FOUND"],
                             what="the unknown model's error")
        assert unknown[0]["model"] == "nope" and unknown[0]["version"] is None
        wait_until(lambda: 0 < max(version_doc(status(s), "m", 1)[1]["series"]["error_rate"]) <= 1,
                   what="the error in the error rate")


def test_request_log_samples_show_with_their_payloads(tmp_path):
    make_linear(tmp_path / "m", 1, weights=[3.0], bias=0.0)
    config = tmp_path / "models.pbtxt"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" '
                      f'model_platform: "linear" logging_config {{ log_collector_config {{ filename_prefix: '
                      f'"{tmp_path / "logs" / "m"}" }} sampling_config {{ sampling_rate: 1.0 }} }} }} }}\n')
    with Server(f"--model_config_file={config}") as s:
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}, headers={"X-Request-Id": "logged-1"})[0] == 200
        requests = wait_until(lambda: status(s)["recent"]["requests"], what="the logged request")
        (logged,) = requests
        assert logged["request_id"] == "logged-1" and logged["model"] == "m" and logged["version"] == 1
        assert logged["inputs"] == "inputs float32[1, 1]: [2]" and "[6]" in logged["outputs"]
        assert version_doc(status(s), "m", 1)[0]["request_log"] == {"path": str(tmp_path / "logs" / "m"),
                                                                     "sample_rate": 1.0}


def test_with_a_token_the_status_asks_for_it_and_never_shows_it(tmp_path):
    make_linear(tmp_path / "m", 1)
    token = "s3cret-status-token"
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", f"--token={token}") as s:
        code, doc = s.request("GET", "/ui/api/status", fresh=True)
        assert code == 401 and "error" in doc
        assert s.request("GET", "/ui/api/status", headers={"Authorization": "wrong"}, fresh=True)[0] == 401
        doc = status(s, {"Authorization": token})
        assert doc["server"]["auth"] is True and [m["name"] for m in doc["models"]] == ["m"]
        assert token not in json.dumps(doc)
        assert s.request("GET", "/ui", fresh=True)[0] == 200  # the page itself holds no data: it asks


def test_under_workers_the_status_adds_up_every_worker(tmp_path):
    make_linear(tmp_path / "m", 1)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", "--workers=2") as s:
        doc = wait_until(lambda: (d := status(s))["server"]["workers_answered"] == 2 and d, what="both workers")
        assert doc["server"]["workers"] == 2
        for _ in range(40):  # new connections: the kernel spreads them over the two workers
            assert s.request("POST", "/v1/models/m:predict", {"instances": [[1.0]]}, fresh=True)[0] == 200

        def counted():
            _, v = version_doc(status(s), "m", 1)
            return sum(v["series"]["rps"]) >= 40 and v

        wait_until(counted, what="every worker's requests in the series")


def queues_of(s):
    return {q["name"]: q for q in status(s)["queues"]}


def test_an_async_services_queues_show_their_length_what_is_held_their_age_limits_and_store(tmp_path):
    make_linear(tmp_path / "lin", 1, delay_ms=1500)  # the window stays held while the test looks
    store = tmp_path / "q.db"
    with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin", "--async_service",
                f"--queue_store=sqlite:{store}", "--queue_window=2", "--queue_max_length=50") as s:
        for i in range(5):
            assert s.post(f"/api/predict/lin?requestId=q{i}", [[2.0]])[0] == 200
        # The window taken and no answer in the sink yet: all five still in the input, two of them held.
        queues = wait_until(lambda: (q := queues_of(s))["lin"]["inflight"] == 2 and q["lin/sink"]["length"] == 0
                            and q, 10, "the window held")
        assert list(queues) == ["lin", "lin/sink"]
        lin, sink = queues["lin"], queues["lin/sink"]
        assert (lin["kind"], lin["length"], lin["max_length"], lin["watchers"], lin["window"]) == ("input", 5, 50, 1, 2)
        assert lin["oldest_seconds"] > 0 and lin["counts"] == {"put": 5, "get": 0, "commit": 0}
        assert lin["store"] == sink["store"] == f"sqlite:{store}" and lin["remote"] is False
        assert (sink["kind"], sink["max_length"], sink["watchers"], sink["window"]) == ("sink", 10000, 0, None)
        # Every item answered: the input empty, five answers in the sink; a get of the sink is counted.
        queues = wait_until(lambda: (q := queues_of(s))["lin/sink"]["length"] == 5 and q["lin"]["length"] == 0
                            and q, 20, "every answer")
        assert queues["lin"]["counts"]["commit"] == 5 and queues["lin"]["inflight"] == 0
        assert queues["lin"]["oldest_seconds"] == 0
        assert s.request("GET", "/api/predict/lin/sink?requestId=q0&_raw_=true")[0] == 200
        assert queues_of(s)["lin/sink"]["counts"] == {"put": 5, "get": 1, "commit": 1}  # auto_delete


@needs_redis
def test_a_queue_on_redis_shows_its_url_with_the_password_masked(tmp_path):
    import redis

    with RedisServer(tmp_path / "redis") as server:
        redis.Redis(port=server.port).config_set("requirepass", "redis-pw-s3cret")
        make_linear(tmp_path / "lin", 1)
        with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin", "--async_service",
                    f"--queue_store=redis://:redis-pw-s3cret@127.0.0.1:{server.port}/3") as s:
            assert s.post("/api/predict/lin", [[2.0]])[0] == 200
            queues = wait_until(lambda: (q := queues_of(s))["lin/sink"]["length"] == 1 and q, 20, "the answer")
            assert queues["lin"]["store"] == f"redis://***@127.0.0.1:{server.port}/3"
            assert queues["lin"]["counts"]["put"] == 1 and queues["lin/sink"]["counts"]["put"] == 1
            assert "redis-pw-s3cret" not in json.dumps(status(s))


def test_an_engine_subscribed_to_serving_queue_shows_its_subscription(tmp_path):
    make_linear(tmp_path / "lin", 1)
    service = QueueService(f"sqlite:{tmp_path / 'q.db'}")
    try:
        with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin",
                    f"--queue_endpoint=http://127.0.0.1:{service.port}", "--queue_window=3",
                    f"--queue_token={QUEUE_TOKEN}") as s:
            service.put("lin", b"[[2.0]]")
            (queue,) = wait_until(lambda: (q := status(s)["queues"]) and q[0]["counts"]["commit"] == 1 and q, 20,
                                  "the item answered")
            assert queue["name"] == "lin" and queue["remote"] is True and queue["window"] == 3
            assert queue["store"] == f"http://127.0.0.1:{service.port}" and queue["length"] is None
            assert queue["counts"] == {"get": 1, "put": 1, "commit": 1} and queue["inflight"] == 0
    finally:
        service.stop()


def test_workers_subscriptions_to_one_queue_are_added():
    def part(inflight, window, put):
        return [{"name": "m", "kind": "input", "inflight": inflight, "window": window, "length": None,
                 "counts": {"put": put, "get": put, "commit": put}}]

    (merged,) = queues_sum([part(1, 4, 10), part(2, 4, 5)])
    assert (merged["inflight"], merged["window"], merged["counts"]) == (3, 8, {"put": 15, "get": 15, "commit": 15})
    assert queues_sum([[], []]) == []


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does():
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    assert quantile(counts, 0.5) is None
    counts[1] = 10  # ten calls between 50 and 100 µs
    assert quantile(counts, 0.5) == pytest.approx(0.000075)
    counts[-1] = 10  # and ten above the last bound
    assert quantile(counts, 0.99) == LATENCY_BUCKETS[-1]
    # The page's series compute the same, every point at once.
    rng = np.random.default_rng(7)
    rows = rng.choice([0, 0, 0, 1, 5], size=(200, len(LATENCY_BUCKETS) + 1))
    for q in (0.0001, 0.5, 0.99, 1.0):
        expected = [quantile(list(row), q) for row in rows]
        got = quantiles(rows.astype(float), q)
        assert [None if v != v else pytest.approx(v) for v in got] == expected
    made = series([Point(1, ok=3, errors=1, latency=list(rows[0]), rows=6, batches=2), Point(2)])
    assert made["rps"] == [4.0, 0.0] and made["error_rate"] == [0.25, 0.0] and made["batch_rows"] == [3.0, None]
    assert made["p50_ms"][1] is None and made["inline_share"] == [0.0, None]


def test_workers_points_of_the_same_second_are_added():
    a = {"m\t1": [list(Point(100, ok=3, rows=3, batches=1).__dict__.values())]}
    b = {"m\t1": [list(Point(100, ok=2, errors=1, rows=2, batches=2).__dict__.values()),
                  list(Point(101, ok=5).__dict__.values())]}
    merged = merge_points(a, [b])
    points = [(p.t, p.ok, p.errors, p.rows, p.batches) for p in merged[("m", 1)]]
    assert points == [(100, 5, 1, 5, 3), (101, 5, 0, 0, 0)]
