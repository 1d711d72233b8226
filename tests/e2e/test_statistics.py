"""Triton's statistics extension (`/v2/models[/<m>[/versions/<v>]]/stats`, gRPC ModelStatistics), read by
tritonclient's `get_inference_statistics()` over HTTP and gRPC from a real server."""

import time

import numpy as np
import pytest
from google.protobuf import json_format

from tests.helpers import Server, make_linear, pbtxt

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient (test extra) is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient (test extra) is not installed")
from tritonclient.grpc import service_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

WEIGHTS = {"weights": [[1.0, 0.0], [0.0, 2.0]], "bias": [0.5, -0.5]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    # One model per test, so that what one test sends does not show in another's counts.
    for name in ("counted", "failing", "idle"):
        make_linear(root / name, 1, **WEIGHTS)
    for version in (1, 2):
        make_linear(root / "two", version, **WEIGHTS)
    config = root / "models.pbtxt"
    config.write_text(pbtxt(*[{"name": n, "base_path": root / n, "platform": "linear"}
                              for n in ("counted", "failing", "idle")],
                            {"name": "two", "base_path": root / "two", "platform": "linear", "policy": "all {}"}))
    with Server(f"--model_config_file={config}") as s:
        yield s


@pytest.fixture
def http(server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


@pytest.fixture
def grpc(server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def v2_infer(client, model: str, rows: int, version: str = "") -> None:
    inp = httpclient.InferInput("inputs", [rows, 2], "FP32")
    inp.set_data_from_numpy(np.ones((rows, 2), np.float32))
    client.infer(model, [inp], model_version=version)


def only(stats: dict) -> dict:
    (stat,) = stats["model_stats"]
    return stat


def test_predicts_over_v2_and_tf_serving_rest_count_their_requests_rows_queue_and_compute(server, http):
    for _ in range(3):
        v2_infer(http, "counted", 2)
    for _ in range(2):
        status, _ = server.post("/v1/models/counted:predict", {"instances": [[1.0, 1.0]] * 3})
        assert status == 200
    stat = only(http.get_inference_statistics("counted"))
    assert (stat["name"], stat["version"]) == ("counted", "1")
    inference = stat["inference_stats"]
    assert inference["success"]["count"] == 5 and inference["success"]["ns"] > 0
    assert inference["fail"] == {"count": 0, "ns": 0}
    assert stat["inference_count"] == 3 * 2 + 2 * 3  # rows, not requests
    assert inference["queue"]["count"] == 5 and inference["queue"]["ns"] > 0
    assert inference["compute_infer"]["count"] == 5 and inference["compute_infer"]["ns"] > 0
    # The whole compute time is compute_infer's: input and output preparation are not measured apart.
    assert inference["compute_input"] == inference["compute_output"] == {"count": 5, "ns": 0}
    assert inference["cache_hit"] == inference["cache_miss"] == {"count": 0, "ns": 0}
    assert inference["success"]["ns"] >= inference["queue"]["ns"] + inference["compute_infer"]["ns"]
    assert stat["execution_count"] >= 1
    batches = stat["batch_stats"]
    assert batches and sum(b["compute_infer"]["count"] for b in batches) == stat["execution_count"]
    assert all(b["compute_infer"]["ns"] > 0 and b["compute_input"]["ns"] == 0 for b in batches)
    assert abs(stat["last_inference"] - time.time() * 1000) < 60_000


def test_grpc_statistics_are_the_rest_statistics_in_tritons_messages(http, grpc):
    v2_infer(http, "counted", 1)
    over_grpc = grpc.get_inference_statistics("counted")
    # Triton's own proto (tritonclient's) reads what our REST answer says, field for field.
    over_rest = json_format.ParseDict(http.get_inference_statistics("counted"), service_pb2.ModelStatisticsResponse())
    assert over_grpc.model_stats[0].last_inference > 0
    for response in (over_grpc, over_rest):
        response.model_stats[0].ClearField("last_inference")  # ms since the epoch, computed when asked
    assert over_grpc == over_rest and over_grpc.model_stats[0].inference_stats.success.count >= 1


def test_a_failed_request_counts_in_fail_not_in_success(server, http):
    v2_infer(http, "failing", 1)
    status, body = server.post("/v2/models/failing/infer", {"inputs": [
        {"name": "inputs", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]})
    assert status == 400 and "unexpected datatype INT64" in body["error"]
    inference = only(http.get_inference_statistics("failing"))["inference_stats"]
    assert inference["success"]["count"] == 1 and inference["fail"]["count"] == 1 and inference["fail"]["ns"] > 0
    assert only(http.get_inference_statistics("failing"))["inference_count"] == 1


def test_a_version_filter_reports_that_version_only(http, grpc):
    v2_infer(http, "two", 4, version="1")
    both = http.get_inference_statistics("two")["model_stats"]
    assert [(s["version"], s["inference_count"]) for s in both] == [("1", 4), ("2", 0)]
    assert only(http.get_inference_statistics("two", "1"))["inference_count"] == 4
    (stat,) = grpc.get_inference_statistics("two", "2").model_stats
    assert (stat.version, stat.inference_count, stat.inference_stats.success.count) == ("2", 0, 0)


def test_every_ready_version_of_every_model_without_a_name(server):
    status, body = server.get("/v2/models/stats")
    assert status == 200
    names = [(s["name"], s["version"]) for s in body["model_stats"]]
    assert names == [("counted", "1"), ("failing", "1"), ("idle", "1"), ("two", "1"), ("two", "2")]
    idle = body["model_stats"][2]
    assert (idle["last_inference"], idle["execution_count"], idle["batch_stats"]) == (0, 0, [])


def test_unknown_models_and_versions_answer_tritons_errors(server, http, grpc):
    assert server.get("/v2/models/nope/stats") == (400, {"error": "requested model 'nope' is not available"})
    assert server.get("/v2/models/two/versions/7/stats") == (
        400, {"error": "requested model version is not available for model 'two'"})
    with pytest.raises(InferenceServerException, match="requested model 'nope' is not available") as http_error:
        http.get_inference_statistics("nope")
    assert http_error.value.status() == "400"
    with pytest.raises(InferenceServerException, match="requested model 'nope' is not available") as grpc_error:
        grpc.get_inference_statistics("nope")
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="not available for model 'two'") as grpc_error:
        grpc.get_inference_statistics("two", "7")
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_server_metadata_lists_the_statistics_extension(http, grpc):
    assert "statistics" in http.get_server_metadata()["extensions"]
    assert "statistics" in grpc.get_server_metadata().extensions
