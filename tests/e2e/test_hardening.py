"""What a hostile probe found (issue 23), each reproduced against a real server: control calls without the
(admin) token, loads that read files outside the model folders and echo them, secrets in base paths and
endpoints, versions past int64 that broke the access log and the connection, a pipelining client that filled
the queue for others, model names that could break a metrics line, and a health check fed garbage."""

from __future__ import annotations

import http.client
import json
import re
import socket
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving._proto.inference import grpc_predict_v2_pb2 as v2
from serving._proto.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from serving._proto.mmesh import model_runtime_pb2 as mm
from serving._proto.mmesh import model_runtime_pb2_grpc as mm_grpc
from serving._proto.tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from serving.core.control import LoadRoots
from serving.errors import ServingError
from serving.redact import redact, without_native_trace
from tests.helpers import Server, free_port, make_linear, make_xgb, pbtxt, run_cli, wait_until

USER, ADMIN = "user-token", "admin-token"
SECRET = "TOPSECRET-c2VjcmV0"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server with a token for inference and an admin token for control, a ModelMesh port, models under
    root/models (the load root) and a secret beside them."""
    root = tmp_path_factory.mktemp("guarded")
    models = root / "models"
    make_linear(models / "lin", 1)  # y = 0.5x + 2
    make_linear(models / "broken", 1)
    (models / "broken" / "1" / "linear.json").write_text("{not json")
    (models / "leaky" / "1").mkdir(parents=True)  # an XGBoost "model" whose parse error would quote it
    (models / "leaky" / "1" / "model.json").write_text('{"learner": {"secret": "' + SECRET + '", ')
    (root / "outside").mkdir()
    (root / "outside" / "secret.json").write_text(json.dumps({"password": SECRET}))
    make_linear(root / "outside", 1)
    (models / "link").symlink_to(root / "outside")  # inside the root by name, outside once followed
    config = models / "models.pbtxt"
    config.write_text(pbtxt({"name": "lin", "base_path": models / "lin", "platform": "linear"}))
    mesh_port = free_port()
    with Server(f"--model_config_file={config}", "--model_control_mode=explicit", "--load_model=lin",
                f"--model_load_roots={models}", f"--token={USER}", f"--admin_token={ADMIN}",
                f"--modelmesh_port={mesh_port}") as s, \
            grpc.insecure_channel(f"127.0.0.1:{mesh_port}") as mesh, \
            grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
        s.root, s.models, s.mesh_port = root, models, mesh_port
        s.mesh, s.channel = mm_grpc.ModelRuntimeStub(mesh), channel
        yield s


def as_user(token: str) -> dict[str, str]:
    return {"Authorization": token}


def rpc_code(call, *args, **kw):
    try:
        call(*args, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def predict_lin(server) -> tuple[int, object]:
    return server.post("/v1/models/lin:predict", {"instances": [[2.0]]}, headers=as_user(USER))


# ---- 1: every control surface behind the token ----

def test_the_modelmesh_port_refuses_every_call_without_the_admin_token(guarded):
    for metadata in ((), (("authorization", USER),), (("authorization", "wrong"),)):
        code, _ = rpc_code(guarded.mesh.runtimeStatus, mm.RuntimeStatusRequest(), metadata=metadata, timeout=10)
        assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
        load = mm.LoadModelRequest(modelId="mm-lin", modelPath=str(guarded.models / "lin"))
        assert rpc_code(guarded.mesh.loadModel, load, metadata=metadata, timeout=10)[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        assert rpc_code(guarded.mesh.unloadModel, mm.UnloadModelRequest(modelId="lin"), metadata=metadata,
                        timeout=10)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert predict_lin(guarded) == (200, {"predictions": [3.0]})  # runtimeStatus unloaded nothing
    admin = (("authorization", ADMIN),)
    load = mm.LoadModelRequest(modelId="mm-lin", modelPath=str(guarded.models / "lin"))
    assert guarded.mesh.loadModel(load, metadata=admin, timeout=30).sizeInBytes > 0
    guarded.mesh.unloadModel(mm.UnloadModelRequest(modelId="mm-lin"), metadata=admin, timeout=30)


def test_the_modelmesh_port_listens_on_loopback_only(guarded):
    port = f"{guarded.mesh_port:04X}"
    local = [line.split()[1] for name in ("/proc/net/tcp", "/proc/net/tcp6") if Path(name).exists()
             for line in Path(name).read_text().splitlines()[1:]
             if line.split()[1].endswith(":" + port) and line.split()[3] == "0A"]  # 0A: LISTEN
    assert local, "the ModelMesh port is not listening"
    loopback = ("0100007F:", "0000000000000000FFFF00000100007F:", "00000000000000000000000001000000:")  # 127.0.0.1
    # as IPv4 and as a mapped IPv6 address, ::1
    assert all(address.startswith(loopback) for address in local), local


def test_repository_calls_take_the_admin_token_and_inference_the_user_token(guarded):
    path = "/v2/repository/models/lin/load"
    for token in (None, USER, "wrong"):
        status, body = guarded.post(path, {}, headers=as_user(token) if token else {})
        assert status == 401, (token, body)
    assert guarded.post(path, {}, headers=as_user(ADMIN)) == (200, b"")
    assert guarded.post("/v1/models/lin:predict", {"instances": [[2.0]]}, headers=as_user(ADMIN))[0] == 401
    assert predict_lin(guarded) == (200, {"predictions": [3.0]})
    stub = v2_grpc.GRPCInferenceServiceStub(guarded.channel)
    request = v2.RepositoryModelLoadRequest(model_name="lin")
    assert rpc_code(stub.RepositoryModelLoad, request, metadata=(("authorization", USER),), timeout=30)[0] == \
        grpc.StatusCode.UNAUTHENTICATED
    assert rpc_code(stub.RepositoryModelLoad, request, metadata=(("authorization", ADMIN),), timeout=30)[0] == \
        grpc.StatusCode.OK
    reload = model_management_pb2.ReloadConfigRequest()
    reload.config.model_config_list.config.add(name="lin", base_path=str(guarded.models / "lin"),
                                               model_platform="linear")
    service = model_service_pb2_grpc.ModelServiceStub(guarded.channel)
    assert rpc_code(service.HandleReloadConfigRequest, reload, metadata=(("authorization", USER),),
                    timeout=30)[0] == grpc.StatusCode.UNAUTHENTICATED


# ---- 2: loads only from where models live, and no file byte in a load error ----

def load_by_path(server, name: str, path: str, backend: str = "linear") -> tuple[int, object]:
    config = json.dumps({"base_path": path, "backend": backend})
    return server.post(f"/v2/repository/models/{name}/load", {"parameters": {"config": config}},
                       headers=as_user(ADMIN))


@pytest.mark.parametrize("where", ["/etc/shadow", "/etc", "/proc/self/environ", "outside/secret.json", "outside",
                                   "models/link", "models/../outside"])
def test_a_load_naming_a_path_outside_the_load_roots_is_refused_before_it_is_read(guarded, where):
    path = where if where.startswith("/") else f"{guarded.root}/{where}"
    status, body = load_by_path(guarded, "probe", path, "xgboost")
    assert status == 403 and "outside the folders this server loads models from" in body["error"], body
    assert SECRET not in json.dumps(body) and "root:" not in json.dumps(body)
    assert predict_lin(guarded)[0] == 200
    code, details = rpc_code(guarded.mesh.loadModel, mm.LoadModelRequest(modelId="probe", modelPath=path),
                             metadata=(("authorization", ADMIN),), timeout=30)
    assert code == grpc.StatusCode.PERMISSION_DENIED and SECRET not in details


def test_a_reload_naming_a_base_path_outside_the_load_roots_is_refused(guarded):
    reload = model_management_pb2.ReloadConfigRequest()
    reload.config.model_config_list.config.add(name="lin", base_path=str(guarded.models / "lin"),
                                               model_platform="linear")
    reload.config.model_config_list.config.add(name="etc", base_path="/etc", model_platform="xgboost")
    service = model_service_pb2_grpc.ModelServiceStub(guarded.channel)
    code, details = rpc_code(service.HandleReloadConfigRequest, reload, metadata=(("authorization", ADMIN),),
                             timeout=30)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'/etc'" in details
    assert predict_lin(guarded)[0] == 200


def test_a_load_error_names_the_exception_type_never_bytes_of_the_file(guarded):
    status, body = load_by_path(guarded, "leaky", str(guarded.models / "leaky"), "xgboost")
    kind = re.search(r"cannot load .*leaky.*: ([\w.]+) \(the server log has the details\)$", body["error"])
    assert status == 400 and kind, body
    assert SECRET not in body["error"] and "[bt]" not in body["error"]
    index = guarded.post("/v2/repository/index", {}, headers=as_user(USER))[1]
    assert SECRET not in json.dumps(index)
    status_doc = guarded.request("GET", "/ui/api/status", headers=as_user(USER))[1]
    assert SECRET not in json.dumps(status_doc)
    assert f"{kind[1]}:" in guarded.output()  # the operator's log keeps the framework's own words


def test_the_status_page_shows_a_model_whose_explicit_load_failed(guarded):
    status, _ = load_by_path(guarded, "broken", str(guarded.models / "broken"))
    assert status == 400
    doc = guarded.request("GET", "/ui/api/status", headers=as_user(USER))[1]
    broken = next(m for m in doc["models"] if m["name"] == "broken")
    assert broken["versions"] == [] and "cannot load linear model" in broken["error"]


# ---- 12: names ----

@pytest.mark.parametrize("name", ["bad%00name", "bad%0d%0aname", "a" * 129, "..", "sp%20ace"])
def test_a_model_name_that_could_break_a_metrics_line_is_refused(guarded, name):
    status, body = guarded.post(f"/v2/repository/models/{name}/load",
                                {"parameters": {"path": str(guarded.models / "lin")}}, headers=as_user(ADMIN))
    assert status == 400 and "model name" in body["error"], body
    code, _ = rpc_code(guarded.mesh.loadModel, mm.LoadModelRequest(
        modelId=name.replace("%00", "\0").replace("%0d%0a", "\r\n"), modelPath=str(guarded.models / "lin")),
        metadata=(("authorization", ADMIN),), timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    metrics = guarded.request("GET", "/metrics")[1].decode()
    assert "\0" not in metrics and "\r" not in metrics


def test_a_config_naming_a_model_with_a_line_break_stops_the_start(tmp_path):
    make_linear(tmp_path / "m", 1)
    config = tmp_path / "c.pbtxt"
    config.write_text(f'model_config_list {{ config {{ name: "m\\r\\nx" base_path: "{tmp_path / "m"}" '
                      f'model_platform: "linear" }} }}')
    done = run_cli(f"--model_config_file={config}", "--rest_api_port=0", "--port=0")
    assert done.returncode == 1 and "is not one this server accepts" in done.stderr, done.stderr[-2000:]


# ---- the open server: secrets in what it shows, numbers past their range, pipelining, health ----

@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    root = tmp_path_factory.mktemp("shown")
    make_linear(root / "lin", 1)
    make_xgb(root / "xgb", 1, n_features=2, names=["f0", "f1"])
    remote = "http://reader:hunter2@127.0.0.1:1/m.tar.gz?X-Amz-Signature=deadbeef&token=t0ken#sha256=" + "0" * 64
    config = root / "c.pbtxt"
    config.write_text(pbtxt({"name": "lin", "base_path": root / "lin", "platform": "linear"},
                            {"name": "xgb", "base_path": root / "xgb", "platform": "xgboost"},
                            {"name": "remote", "base_path": remote, "platform": "linear"}))
    with Server(f"--model_config_file={config}", f"--token={USER}", "--s3_endpoint_url=http://key:s3pass@127.0.0.1:1",
                wait_ready=False) as s:
        wait_until(lambda: s.get("/v1/models/lin/metadata")[0] == 200 and s.get("/v1/models/xgb/metadata")[0] == 200,
                   what="lin and xgb AVAILABLE")  # their metadata: their status answers 200 while they load
        wait_until(lambda: "remote" in s.output() and "m.tar.gz" in s.output(), what="the failed fetch")
        yield s


def test_credentials_in_base_paths_and_endpoints_never_show(shown):
    status, listing = shown.get("/v1/models")  # open without the token, as TF Serving's
    assert status == 200
    remote = next(m for m in listing["models"] if m["name"] == "remote")
    assert remote["base_path"].startswith("http://***@127.0.0.1:1/m.tar.gz?X-Amz-Signature=***&token=***#sha256=")
    doc = shown.request("GET", "/ui/api/status", headers=as_user(USER))[1]
    everything = json.dumps(listing) + json.dumps(doc) + json.dumps(shown.get("/v1/models/remote")[1])
    everything += shown.request("GET", "/metrics")[1].decode() + shown.output()
    for secret in ("hunter2", "deadbeef", "t0ken", "s3pass"):
        assert secret not in everything, secret
    assert doc["config"]["models"]["s3_endpoint_url"] == "http://***@127.0.0.1:1"


def test_redact_masks_user_info_and_query_values_and_keeps_the_rest():
    assert redact("/models/a") == "/models/a"
    assert redact("fetch of https://u:p@h/x.tgz?sig=abc&se=2 failed: 403") == \
        "fetch of https://***@h/x.tgz?sig=***&se=*** failed: 403"
    assert redact("s3://bucket/m?X-Amz-Credential=AK/1#sha256=ff") == "s3://bucket/m?X-Amz-Credential=***#sha256=ff"


@pytest.mark.parametrize("native", ["\nStack trace:\n  [bt] (0) /usr/lib/libxgboost.so(+0x5f1a2) [0x7f3c2a]",
                                    "\nException raised from operator() at aten/src/x.cpp:1 (most recent call "
                                    "first):\nframe #0: c10::Error::Error() + 0x9c (0x7f1d in libc10.so)"])
def test_a_frameworks_native_stack_trace_stays_out_of_the_message(native):
    message = without_native_trace("Check failed: shape == 4" + native)
    assert message.startswith("Check failed: shape == 4") and "0x7f" not in message and "libc" not in message
    assert without_native_trace("feature_names mismatch") == "feature_names mismatch"


def test_load_roots_follow_links_and_match_whole_folder_names(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models-evil").mkdir()
    (tmp_path / "models" / "out").symlink_to(tmp_path / "models-evil")
    roots = LoadRoots([str(tmp_path / "models"), "s3://bucket/models"])
    assert roots.check(str(tmp_path / "models" / "a")) == str(tmp_path / "models" / "a")
    assert roots.check("s3://bucket/models/a#sha256=1") == "s3://bucket/models/a#sha256=1"
    for outside in (tmp_path / "models-evil", tmp_path / "models" / "out", tmp_path / "models" / ".." / "x"):
        with pytest.raises(ServingError) as e:
            roots.check(str(outside))
        assert e.value.code.name == "PERMISSION_DENIED"
    for outside in ("s3://bucket/models-evil/a", "http://169.254.169.254/latest", "s3://bucket"):
        with pytest.raises(ServingError):
            roots.check(outside)
    with pytest.raises(ServingError) as e:
        roots.check("relative/path")
    assert e.value.code.name == "INVALID_ARGUMENT"


def access_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.output().splitlines() if line.startswith('{"time"')]


@pytest.mark.parametrize("path", ["/v1/models/lin/versions/99999999999999999999:predict",
                                  "/v1/models/lin/versions/-99999999999999999999:predict",
                                  "/v2/models/lin/versions/99999999999999999999/infer"])
def test_a_version_past_int64_is_a_400_and_the_connection_and_the_access_log_go_on(shown, path):
    conn = http.client.HTTPConnection("127.0.0.1", shown.port, timeout=10)
    body = json.dumps({"instances": [[2.0]]}).encode()
    rid = f"big-version-{len(path)}-{path[2]}"
    conn.request("POST", path, body=body, headers={**as_user(USER), "X-Request-Id": rid})
    answer = conn.getresponse()
    error = json.loads(answer.read())["error"]
    assert answer.status == 400 and "99999999999999999999" in error
    conn.request("POST", "/v1/models/lin:predict", body=body, headers=as_user(USER))  # the same connection
    answer = conn.getresponse()
    assert (answer.status, json.loads(answer.read())) == (200, {"predictions": [3.0]})
    conn.close()
    line = wait_until(lambda: [x for x in access_lines(shown) if x["request_id"] == rid],
                      what="the access log line")[-1]
    assert line["status"] == 400 and line["route"] == f"POST {path}"
    assert "malformed HTTP request" not in shown.output()


def test_a_grpc_version_past_int64_is_invalid_argument_with_its_access_log_line(shown):
    with grpc.insecure_channel(f"127.0.0.1:{shown.grpc_port}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        request = v2.ModelInferRequest(model_name="lin", model_version="99999999999999999999")
        tensor = request.inputs.add(name="inputs", datatype="FP32", shape=[1, 1])
        tensor.contents.fp32_contents.append(2.0)
        code, details = rpc_code(stub.ModelInfer, request, timeout=10,
                                 metadata=(("authorization", USER), ("x-request-id", "big-grpc")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "99999999999999999999" in details
    wait_until(lambda: [x for x in access_lines(shown) if x["request_id"] == "big-grpc"], what="its log line")
    assert "Traceback" not in shown.output()


def test_one_write_of_200_pipelined_requests_is_answered_200_in_order(shown):
    body = b'{"instances": [[2.0]]}'
    one = (b"POST /v1/models/lin:predict HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nX-Request-Id: p%%d\r\n"
           b"Content-Length: %d\r\n\r\n%s") % (USER.encode(), len(body), body)
    with socket.create_connection(("127.0.0.1", shown.port), timeout=30) as s:
        s.sendall(b"".join(one % i for i in range(200)))
        data = b""
        while data.count(b"HTTP/1.1 ") < 200 or not data.endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, "the server closed the connection"
            data += chunk
    assert re.findall(rb"HTTP/1.1 (\d+)", data) == [b"200"] * 200
    assert re.findall(rb"X-Request-Id: p(\d+)", data) == [b"%d" % i for i in range(200)]


def test_a_health_check_sent_garbage_is_invalid_argument_without_a_traceback(shown):
    with grpc.insecure_channel(f"127.0.0.1:{shown.grpc_port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")  # no serializer: the bytes as they are
        code, details = rpc_code(check, b"\xff\xff\xff\xff", timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "HealthCheckRequest" in details
    assert "Traceback" not in shown.output()


@pytest.mark.parametrize(("path", "body"), [
    ("/v2/models/lin/infer", b'{"inputs": [{"name": "inputs", "shape": [99999999999999999999, 1], "datatype": "FP32", '
                             b'"data": [1.0]}]}'),
    ("/v2/models/lin/infer", b'{"inputs": [{"name": "inputs", "shape": [1, 1], "datatype": "INT64", '
                             b'"data": [18446744073709551616]}]}'),
    ("/v2/models/lin/infer", b'{"inputs": [{"name": "inputs", "shape": [1, -99999999999999999999], '
                             b'"datatype": "FP32", "data": [1.0]}]}'),
])
def test_numbers_past_their_type_in_bodies_are_400s(shown, path, body):
    status, answer = shown.post(path, body, headers=as_user(USER))
    assert status == 400, (body, answer)
    assert predict_lin(shown)[0] == 200
    np.testing.assert_equal(predict_lin(shown)[1]["predictions"], [3.0])


# ---- what the re-run probe (benchmarks/probe.py) found ----

@pytest.mark.parametrize(("path", "body"), [
    ("/v1/models/xgb:predict", b'{"inputs": {"f0": 0.1, "f1": [0.2]}}'),  # columns of different shapes
    ("/v1/models/xgb:predict", b'{"inputs": {"f0": [0.1, 0.2], "f1": [0.2]}}'),
    ("/v2/models/lin/infer", b'{"inputs": [{"name": "inputs", "shape": [1, 1], "datatype": '
                             + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b', "data": [2.0]}]}'),
    ("/v2/models/lin/infer", b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP16", "data": [1.0]}]}'),
])
def test_client_input_that_answered_500_or_501_is_a_400(shown, path, body):
    status, answer = shown.post(path, body, headers=as_user(USER))
    assert status == 400 and len(answer["error"]) < 1000, answer
    assert "Traceback" not in shown.output()


def test_a_kserve_grpc_shape_with_a_negative_dimension_is_invalid_argument(shown):
    with grpc.insecure_channel(f"127.0.0.1:{shown.grpc_port}") as channel:
        request = v2.ModelInferRequest(model_name="lin")
        request.inputs.add(name="inputs", datatype="FP32", shape=[-1, 0])
        code, details = rpc_code(v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request, timeout=10,
                                 metadata=(("authorization", USER),))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "negative" in details


def test_a_nul_in_a_load_path_and_a_huge_disk_size_are_client_errors(guarded):
    status, body = guarded.post("/v2/repository/models/probe/load", {"parameters": {"path": "/etc/passwd\u0000"}},
                                headers=as_user(ADMIN))
    assert status == 400 and "NUL" in body["error"]
    admin = (("authorization", ADMIN),)
    code, _ = rpc_code(guarded.mesh.loadModel, mm.LoadModelRequest(modelId="probe", modelPath="/etc/passwd\0"),
                       metadata=admin, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    size = guarded.mesh.predictModelSize(mm.PredictModelSizeRequest(
        modelId="x", modelKey=json.dumps({"disk_size_bytes": 2**64})), metadata=admin, timeout=10).sizeInBytes
    assert 0 < size < 2**63
    assert "embedded null byte" not in guarded.output() and "Value out of range" not in guarded.output()


@pytest.mark.parametrize("parameters", [
    {"path": "MODELS/nosuch"},  # a base path with no version
    {"config": json.dumps({"backend": "xgboost"})},  # the wrong processor: the load fails
    {"config": json.dumps({"version_policy": {"specific": {"versions": [9]}}})},  # a version not on disk
])
def test_a_failed_reload_of_a_served_model_leaves_it_serving(guarded, parameters):
    parameters = {k: v.replace("MODELS", str(guarded.models)) for k, v in parameters.items()}
    status, body = guarded.post("/v2/repository/models/lin/load", {"parameters": parameters},
                                headers=as_user(ADMIN))
    assert status in (400, 404), body
    assert predict_lin(guarded) == (200, {"predictions": [3.0]})
    assert guarded.get("/v1/models/lin")[0] == 200


def test_a_reload_cannot_point_a_request_log_somewhere_new(guarded, tmp_path):
    reload = model_management_pb2.ReloadConfigRequest()
    model = reload.config.model_config_list.config.add(name="lin", base_path=str(guarded.models / "lin"),
                                                       model_platform="linear")
    model.logging_config.log_collector_config.filename_prefix = str(tmp_path / "elsewhere")
    model.logging_config.sampling_config.sampling_rate = 1.0
    service = model_service_pb2_grpc.ModelServiceStub(guarded.channel)
    code, details = rpc_code(service.HandleReloadConfigRequest, reload, metadata=(("authorization", ADMIN),),
                             timeout=30)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "filename_prefix" in details
    assert not list(tmp_path.iterdir())


def test_a_config_moving_a_model_to_a_base_path_that_fails_leaves_the_old_one_serving(tmp_path):
    make_linear(tmp_path / "a", 1)
    (tmp_path / "b" / "1").mkdir(parents=True)
    (tmp_path / "b" / "1" / "linear.json").write_text("{not json")
    config = tmp_path / "c.pbtxt"
    config.write_text(pbtxt({"name": "m", "base_path": tmp_path / "a", "platform": "linear"}))
    with Server(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1") as s:
        config.write_text(pbtxt({"name": "m", "base_path": tmp_path / "b", "platform": "linear"}))
        wait_until(lambda: "nothing loaded from its new base path" in s.output(), what="the failed move")
        assert s.post("/v1/models/m:predict", {"instances": [[2.0]]}) == (200, {"predictions": [3.0]})
        make_linear(tmp_path / "c", 1, bias=5.0)  # a base path that works: the model moves there
        config.write_text(pbtxt({"name": "m", "base_path": tmp_path / "c", "platform": "linear"}))
        wait_until(lambda: s.post("/v1/models/m:predict", {"instances": [[2.0]]})[1] == {"predictions": [6.0]},
                   what="the move to c")
