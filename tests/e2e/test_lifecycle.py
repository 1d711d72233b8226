"""The server as a process: start-up errors, the single-model form, live version and config changes, and
SIGTERM draining."""

import shutil
import signal
import threading

import pytest

from tests.helpers import Server, make_linear, make_xgb, pbtxt, run_cli, wait_until


def versions(server, name):
    status, body = server.get(f"/v1/models/{name}")
    if status != 200:
        return {}
    return {int(v["version"]): v["state"] for v in body["model_version_status"]}


def test_help_documents_every_flag():
    out = run_cli("--help-all").stdout  # `--help` is one screen: tests/unit/test_cli_help.py
    for flag in ("--rest_api_port", "--port", "--host", "--model_name", "--model_base_path", "--model_config_file",
                 "--model_config_file_poll_wait_seconds", "--file_system_poll_wait_seconds",
                 "--allow_version_labels_for_unavailable_models", "--rest_api_timeout_in_ms", "--model_platform",
                 "--rest_api_max_body_bytes"):
        assert flag in out


def test_bad_config_file_exits_with_a_clear_message(tmp_path):
    config = tmp_path / "bad.pbtxt"
    config.write_text("model_config_list { config { name: 'a' base_path: 'relative' model_platform: 'linear' } }")
    result = run_cli(f"--model_config_file={config}", "--rest_api_port=0")
    assert result.returncode == 1
    assert "Expected model a to have an absolute path" in result.stderr
    result = run_cli("--rest_api_port=0")
    assert result.returncode == 1 and "--model_base_path" in result.stderr


def test_unavailable_label_at_startup_exits(tmp_path):
    make_linear(tmp_path / "m", 1)
    config = tmp_path / "c.pbtxt"
    config.write_text(pbtxt({"name": "m", "base_path": tmp_path / "m", "platform": "linear", "labels": {"x": 3}}))
    result = run_cli(f"--model_config_file={config}", "--rest_api_port=0")
    assert result.returncode == 1 and "not currently available" in result.stderr
    # ... unless the flag allows labels on versions that are not there yet.
    with Server(f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models") as s:
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}) == (200, {"predictions": [3.0]})


def test_single_model_form_from_the_tf_serving_environment(tmp_path):
    make_xgb(tmp_path / "mymodel", 3)
    env = {"MODEL_NAME": "mymodel", "MODEL_BASE_PATH": str(tmp_path)}
    with Server(env=env) as s:
        assert versions(s, "mymodel") == {3: "AVAILABLE"}
        status, body = s.post("/v1/models/mymodel:predict", {"instances": [[0.0, 0.0, 0.0, 0.0]]})
        assert status == 200 and len(body["predictions"]) == 1
        assert s.post("/", [[0.0, 0.0, 0.0, 0.0]])[0] == 200  # the single model is the default one


def test_new_versions_swap_in_and_broken_versions_keep_the_old_one(tmp_path):
    base = tmp_path / "m"
    make_linear(base, 1, bias=1.0)
    with Server(f"--model_base_path={base}", "--model_name=m", "--file_system_poll_wait_seconds=1") as s:
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}) == (200, {"predictions": [2.0]})
        make_linear(base, 2, bias=5.0)
        wait_until(lambda: versions(s, "m") == {2: "AVAILABLE", 1: "END"}, what="version 2 replacing 1")
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}) == (200, {"predictions": [6.0]})
        # A broken version 3: status says why, version 2 keeps serving.
        (base / "3").mkdir()
        (base / "3" / "linear.json").write_text("{broken")
        wait_until(lambda: versions(s, "m").get(3) == "END", what="version 3 failing")
        status, body = s.get("/v1/models/m/versions/3")
        (v3,) = body["model_version_status"]
        assert v3["status"]["error_code"] == "FAILED_PRECONDITION"
        assert "cannot load linear" in v3["status"]["error_message"]
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}) == (200, {"predictions": [6.0]})
        assert s.get("/readyz")[0] == 200
        # Every version gone: nothing serves, readiness says so.
        for v in ("1", "2", "3"):
            shutil.rmtree(base / v)
        wait_until(lambda: s.get("/readyz")[0] == 503, what="not ready")
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]})[0] == 503


def test_config_file_polling_moves_labels_adds_models_and_survives_a_bad_file(tmp_path):
    for v in (1, 2):
        make_linear(tmp_path / "a", v, bias=float(v))
    make_linear(tmp_path / "b", 1, bias=10.0)
    config = tmp_path / "c.pbtxt"
    a = {"name": "a", "base_path": tmp_path / "a", "platform": "linear", "policy": "all {}"}
    config.write_text(pbtxt({**a, "labels": {"stable": 1}}))
    with Server(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1") as s:
        assert s.post("/v1/models/a/labels/stable:predict", {"instances": [[0.0]]}) == (200, {"predictions": [1.0]})
        config.write_text(pbtxt({**a, "labels": {"stable": 2}}, {"name": "b", "base_path": tmp_path / "b",
                                                                  "platform": "linear"}))
        wait_until(lambda: s.post("/v1/models/a/labels/stable:predict", {"instances": [[0.0]]})
                   == (200, {"predictions": [2.0]}), what="label moved")
        wait_until(lambda: s.post("/v1/models/b:predict", {"instances": [[0.0]]}) == (200, {"predictions": [10.0]}),
                   what="model b added")
        config.write_text("model_config_list { this is not a config")
        wait_until(lambda: "still serving the previous one" in s.output(), what="bad config logged")
        assert s.post("/v1/models/b:predict", {"instances": [[0.0]]}) == (200, {"predictions": [10.0]})
        config.write_text(pbtxt({**a, "labels": {"stable": 2}}))
        wait_until(lambda: s.get("/v1/models/b")[0] == 404, what="model b removed")
        assert s.post("/v1/models/a/labels/stable:predict", {"instances": [[0.0]]}) == (200, {"predictions": [2.0]})


def test_sigterm_drains_requests_in_flight(tmp_path):
    make_linear(tmp_path / "slow", 1, delay_ms=1500)
    with Server(f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow") as s:
        results = []

        def call():
            client = Server.__new__(Server)
            client.port, client.conn = s.port, None
            results.append(client.post("/v1/models/slow:predict", {"instances": [[2.0]]}))

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: "slow" in s.output(), what="server up")
        import time

        time.sleep(0.5)  # the three requests are in flight
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert s.proc.wait(30) == 0
        assert results == [(200, {"predictions": [3.0]})] * 3
        assert "draining" in s.output()


@pytest.mark.parametrize(
    "policy, expected", [("latest { num_versions: 2 }", {2, 3}), ("specific { versions: 1 }", {1})]
)
def test_version_policies_over_http(tmp_path, policy, expected):
    for v in (1, 2, 3):
        make_linear(tmp_path / "m", v)
    config = tmp_path / "c.pbtxt"
    config.write_text(pbtxt({"name": "m", "base_path": tmp_path / "m", "platform": "linear", "policy": policy}))
    with Server(f"--model_config_file={config}") as s:
        assert set(versions(s, "m")) == expected
