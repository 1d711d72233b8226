"""Model control modes (`--model_control_mode=none|poll|explicit`, `--load_model`) and Triton's model
repository extension (index, load, unload) over REST and gRPC, driven by tritonclient; KServe's flat
/mnt/models layout."""

import http.client
import json
import re
import threading
import time

import numpy as np
import pytest

from tests.helpers import Server, make_linear, make_xgb, run_cli, wait_until

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient (test extra) is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient (test extra) is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

X = np.array([[1.0, 2.0]], dtype=np.float32)


def config_file(root, models):
    path = root / "models.pbtxt"
    path.write_text("model_config_list {\n" + "".join(
        f'config {{ name: "{name}" base_path: "{root / name}" model_platform: "{platform}" }}\n'
        for name, platform in models) + "}\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    make_linear(root / "lin", 1, weights=[[1.0], [1.0]], bias=0.0)
    make_xgb(root / "xgb", 1, n_features=2)
    make_linear(root / "broken", 1)
    (root / "broken" / "1" / "linear.json").write_text("{not json")
    make_linear(root / "outside", 3, weights=[[2.0], [2.0]], bias=1.0)  # not in the config
    config = config_file(root, [("lin", "linear"), ("xgb", "xgboost"), ("broken", "linear")])
    with Server(f"--model_config_file={config}", "--model_control_mode=explicit", "--load_model=lin",
                f"--model_load_roots={root}") as s:
        s.root = root
        yield s


def v2_infer(client, model, module=httpclient):
    meta = client.get_model_metadata(model)
    names = (meta["inputs"][0]["name"], meta["outputs"][0]["name"]) if isinstance(meta, dict) else (
        meta.inputs[0].name, meta.outputs[0].name)
    inp = module.InferInput(names[0], list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    return client.infer(model, [inp]).as_numpy(names[1])


def test_explicit_mode_loads_only_the_named_models_and_is_ready(server):
    assert server.get("/readyz")[0] == 200
    assert server.post("/v1/models/lin:predict", {"instances": [[1.0, 2.0]]}) == (200, {"predictions": [3.0]})
    status, body = server.post("/v1/models/xgb:predict", {"instances": [[1.0, 2.0]]})
    assert status == 404 and "xgb" in body["error"]
    status, meta = server.get("/v2")
    assert "model_repository" in meta["extensions"]


def test_index_lists_every_model_of_the_repository_with_its_state(server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["lin"] == {"name": "lin", "version": "1", "state": "READY"}
    assert index["xgb"]["state"] == "UNAVAILABLE" and "version" not in index["xgb"]
    assert {"lin", "xgb", "broken"} <= set(index)
    status, ready = server.post("/v2/repository/index", {"ready": True})
    assert status == 200 and [row["name"] for row in ready] == ["lin"]
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    rows = {m.name: m for m in grpc.get_model_repository_index().models}
    assert rows["lin"].state == "READY" and rows["lin"].version == "1"
    assert rows["xgb"].state == "UNAVAILABLE" and rows["xgb"].reason == "unloaded"


def test_load_and_unload_over_http_and_grpc(server):
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    assert not http.is_model_ready("xgb")
    http.load_model("xgb")
    assert http.is_model_ready("xgb")
    assert v2_infer(http, "xgb").shape == (1,)
    grpc.unload_model("xgb")
    assert not grpc.is_model_ready("xgb")
    with pytest.raises(InferenceServerException):
        v2_infer(http, "xgb")
    grpc.load_model("xgb")
    assert grpc.is_model_ready("xgb")
    assert v2_infer(grpc, "xgb", grpcclient).shape == (1,)
    http.unload_model("xgb")
    assert not http.is_model_ready("xgb") and server.get("/readyz")[0] == 200


def test_load_by_path_of_a_model_outside_the_repository(server):
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    http.load_model("outside", config=json.dumps({"base_path": str(server.root / "outside"), "backend": "linear"}))
    assert v2_infer(http, "outside").tolist() == [7.0]
    row = next(r for r in http.get_model_repository_index() if r["name"] == "outside")
    assert row == {"name": "outside", "version": "3", "state": "READY"}
    # The path parameter (ours) does the same; a version policy from Triton's config JSON applies.
    policy = json.dumps({"version_policy": {"specific": {"versions": [3]}}})
    status, body = server.post("/v2/repository/models/outside2/load", {"parameters": {
        "path": str(server.root / "outside"), "config": policy}})
    assert status == 200, body
    assert server.post("/v1/models/outside2:predict", {"instances": [[1.0, 1.0]]}) == (200, {"predictions": [5.0]})
    http.unload_model("outside")
    http.unload_model("outside2")


def test_a_failed_load_is_an_error_the_index_explains_and_the_server_stays_ready(server):
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    with pytest.raises(InferenceServerException, match="cannot load linear model"):
        http.load_model("broken")
    row = next(r for r in http.get_model_repository_index() if r["name"] == "broken")
    assert row["state"] == "UNAVAILABLE" and "cannot load linear model" in row["reason"]
    assert server.get("/readyz")[0] == 200
    assert server.post("/v1/models/lin:predict", {"instances": [[1.0, 2.0]]})[0] == 200


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/v2/repository/models/nope/load", {}, 404, "not in the model repository"),
    ("/v2/repository/models/nope/unload", {}, 404, "no such model"),
    ("/v2/repository/models/lin/load", b"{bad", 400, "not JSON"),
    ("/v2/repository/models/lin/load", {"parameters": []}, 400, "must be a JSON object"),
    ("/v2/repository/models/lin/load", {"parameters": {"config": "[1]"}}, 400, "must be a JSON object"),
    ("/v2/repository/models/lin/load", {"parameters": {"path": "relative/dir"}}, 400, "absolute path"),
    ("/v2/repository/models/lin/load", {"parameters": {"file:1/model.onnx": "AAAA"}}, 400, "not supported"),
    ("/v2/repository/models/lin/load", {"parameters": {"config": '{"version_policy": {"newest": 1}}'}}, 400,
     "version_policy"),
    ("/v2/repository/index", {"ready": "yes"}, 400, "true or false"),
    ("/v2/repository/models/lin/reload", {}, 404, "Not found"),
])
def test_bad_repository_requests_get_errors_and_the_server_keeps_serving(server, path, body, status, words):
    got, answer = server.post(path, body)
    assert got == status and words in answer["error"], answer
    assert server.post("/v1/models/lin:predict", {"instances": [[1.0, 2.0]]}) == (200, {"predictions": [3.0]})


def test_grpc_load_errors(server):
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    with pytest.raises(InferenceServerException, match="not in the model repository") as e:
        grpc.load_model("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_an_unload_lets_requests_in_flight_finish(tmp_path):
    make_linear(tmp_path / "slow", 1, weights=[[1.0]], bias=0.0, delay_ms=1500)
    config = config_file(tmp_path, [("slow", "linear")])
    # In the prediction pool (not on the event loop, where a first slow batch may run): the loop answers
    # the unload while the request sleeps in the model.
    with Server(f"--model_config_file={config}", "--model_control_mode=explicit", "--load_model=slow",
                "--inline_batch_micros=0") as s:
        results = []

        def send():
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
            conn.request("POST", "/v1/models/slow:predict", body=b'{"instances": [[2.0]]}')
            resp = conn.getresponse()
            results.append((resp.status, json.loads(resp.read())))
            conn.close()

        sender = threading.Thread(target=send)
        sender.start()
        running = re.compile(r'^serving_batch_in_flight\{[^}]*model="slow"[^}]*\} 1\.0$', re.M)
        wait_until(lambda: running.search(s.request("GET", "/metrics", fresh=True)[1].decode()),
                   what="the request running in the model")
        started = time.monotonic()
        assert s.post("/v2/repository/models/slow/unload", {}) == (200, b"")
        assert time.monotonic() - started > 0.3  # the unload waited for it (1.5 s in the model)
        sender.join(10)
        assert results == [(200, {"predictions": [2.0]})]
        assert s.post("/v1/models/slow:predict", {"instances": [[2.0]]})[0] == 404


def test_poll_and_none_modes_refuse_load_and_unload(tmp_path):
    make_linear(tmp_path / "m", 1)
    for mode in ("poll", "none"):
        with Server(f"--model_base_path={tmp_path / 'm'}", f"--model_control_mode={mode}") as s:
            status, body = s.post("/v2/repository/models/model/unload", {})
            assert status == 400 and "not allowed" in body["error"] and mode in body["error"]
            assert s.post("/v1/models/model:predict", {"instances": [[1.0]]})[0] == 200


def test_none_mode_never_polls_the_base_path(tmp_path):
    make_linear(tmp_path / "m", 1)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_control_mode=none",
                "--file_system_poll_wait_seconds=1") as s:
        make_linear(tmp_path / "m", 2)
        time.sleep(2.5)  # two poll periods
        assert s.get("/v1/models/model")[1]["model_version_status"][0]["version"] == "1"
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_control_mode=poll",
                "--file_system_poll_wait_seconds=1") as s:  # the control: poll mode does pick it up
        make_linear(tmp_path / "m", 3)
        wait_until(lambda: s.get("/v1/models/model/versions/3")[0] == 200, what="version 3 loaded")


def test_explicit_mode_may_start_with_no_model(tmp_path):
    with Server("--model_control_mode=explicit", f"--model_load_roots={tmp_path}") as s:
        assert s.get("/readyz")[0] == 200
        assert s.post("/v2/repository/index", b"") == (200, [])
        make_linear(tmp_path / "m", 1)
        assert s.post("/v2/repository/models/m/load", {"parameters": {"path": str(tmp_path / "m")}}) == (200, b"")
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}) == (200, {"predictions": [3.0]})


@pytest.mark.parametrize(("args", "words"), [
    (("--load_model=lin",), "--load_model needs --model_control_mode=explicit"),
    (("--model_control_mode=explicit", "--load_model=nope"), "no model nope"),
    (("--model_control_mode=explicit", "--load_model=*,lin"), "name no other model"),
    (("--model_control_mode=sometimes",), "--model_control_mode: expected one of none, poll, explicit"),
    ((), "Either --model_config_file or --model_base_path"),  # poll mode still needs a model
])
def test_bad_control_flags_stop_the_start(tmp_path, args, words):
    make_linear(tmp_path / "lin", 1)
    config = config_file(tmp_path, [("lin", "linear")])
    extra = (f"--model_config_file={config}",) if args else ()
    done = run_cli("--rest_api_port=0", "--port=0", *extra, *args)
    assert done.returncode != 0 and words in done.stderr, done.stderr


def test_load_model_star_loads_everything(tmp_path):
    make_linear(tmp_path / "a", 1)
    make_linear(tmp_path / "b", 1)
    config = config_file(tmp_path, [("a", "linear"), ("b", "linear")])
    with Server(f"--model_config_file={config}", "--model_control_mode=explicit", "--load_model=*") as s:
        assert s.post("/v2/repository/index", {"ready": True})[1] == [
            {"name": "a", "version": "1", "state": "READY"}, {"name": "b", "version": "1", "state": "READY"}]


@pytest.mark.parametrize("layout", ["files", "one_folder"])
def test_kserve_mnt_models_without_version_folder_is_version_1(tmp_path, layout):
    model_dir = make_xgb(tmp_path / "staging", 1, n_features=2).parent  # the files of a model, to move
    mnt = tmp_path / "mnt" / "models"
    target = mnt if layout == "files" else mnt / "my-model"
    target.parent.mkdir(parents=True, exist_ok=True)
    model_dir.rename(target)
    with Server(f"--model_base_path={mnt}", "--model_name=iris") as s:
        status, body = s.get("/v1/models/iris")
        assert status == 200 and body["model_version_status"][0]["version"] == "1"
        status, out = s.post("/v2/models/iris/infer", {"inputs": [
            {"name": "inputs", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]})
        assert status == 200 and out["model_version"] == "1"
        assert "xgboost" in s.output()  # detected from the files


def test_under_workers_a_load_and_an_unload_reach_every_worker(tmp_path):
    make_linear(tmp_path / "m", 1)
    with Server("--workers=2", "--model_control_mode=explicit", f"--model_load_roots={tmp_path}") as s:
        assert s.post("/v2/repository/models/m/load", {"parameters": {"path": str(tmp_path / "m")}}) == (200, b"")
        # Fresh connections land on both workers (SO_REUSEPORT): each must serve the model.
        answers = {s.request("POST", "/v1/models/m:predict", {"instances": [[2.0]]}, fresh=True)[0]
                   for _ in range(40)}
        assert answers == {200}
        states = {s.request("POST", "/v2/repository/index", b"", fresh=True)[1][0]["state"] for _ in range(10)}
        assert states == {"READY"}
        assert s.post("/v2/repository/models/m/unload", {}) == (200, b"")
        answers = {s.request("POST", "/v1/models/m:predict", {"instances": [[2.0]]}, fresh=True)[0]
                   for _ in range(40)}
        assert answers == {404}


def test_a_worker_restarted_after_a_load_serves_the_loaded_model(tmp_path):
    import os
    import signal
    from pathlib import Path

    make_linear(tmp_path / "m", 1)
    with Server("--workers=2", "--model_control_mode=explicit", f"--model_load_roots={tmp_path}") as s:
        assert s.post("/v2/repository/models/m/load", {"parameters": {"path": str(tmp_path / "m")}}) == (200, b"")
        children = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children")
        before = sorted(int(p) for p in children.read_text().split())
        os.kill(before[1], signal.SIGKILL)
        wait_until(lambda: str(before[1]) not in children.read_text().split()
                   and len(children.read_text().split()) == 2, what="the worker restarted")
        s.wait_for("/readyz")
        answers = {s.request("POST", "/v1/models/m:predict", {"instances": [[2.0]]}, fresh=True)[0]
                   for _ in range(40)}
        assert answers == {200}  # the new worker loaded `m` too


def test_explicit_mode_is_not_ready_before_its_start_up_loads(tmp_path):
    make_linear(tmp_path / "m", 1, load_delay_ms=1500)
    config = config_file(tmp_path, [("m", "linear")])
    with Server(f"--model_config_file={config}", "--model_control_mode=explicit", "--load_model=m",
                wait_ready=False) as s:
        assert s.get("/readyz")[0] == 503  # the HTTP port is open, the model still loading
        s.wait_for("/readyz")
        assert s.post("/v1/models/m:predict", {"instances": [[1.0]]})[0] == 200
