"""Traffic split by weight over a model's versions against a real server (`version_traffic` in
model_config.pbtxt, `"traffic"` in the service JSON): over HTTP and gRPC every answer says which version served
it, and weights change with no failed request. The split itself, in process: tests/unit/core/test_traffic.py."""

import collections
import json
import threading

import grpc

from serving._proto.tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from serving._proto.tensorflow_serving.config import model_server_config_pb2
from serving.codecs.tensors import array_to_tensor
from tests.helpers import Server, pbtxt
from tests.unit.core.test_traffic import two_versions, within


class Client:
    """A keep-alive HTTP client that returns the x-model-version header too."""

    def __init__(self, port):
        import http.client

        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path, body, headers=None):
        self.conn.request("POST", path, body=json.dumps(body).encode(), headers=headers or {})
        resp = self.conn.getresponse()
        return resp.status, resp.getheader("x-model-version"), json.loads(resp.read())

    def close(self):
        self.conn.close()


def test_over_http_and_grpc_the_split_routes_and_every_answer_says_the_version(tmp_path):
    two_versions(tmp_path / "m")
    config = tmp_path / "models.pbtxt"
    config.write_text(pbtxt({"name": "m", "base_path": str(tmp_path / "m"), "platform": "linear",
                             "policy": "all {}", "traffic": {1: 80, 2: 20}}))
    with Server(f"--model_config_file={config}", "--traffic_sticky_header=x-user") as s:
        client = Client(s.port)
        seen = collections.Counter()
        for _ in range(400):
            status, version, body = client.post("/v1/models/m:predict", {"instances": [[1.0]]})
            assert status == 200
            seen[version] += 1
            assert body["predictions"] == [1.0 if version == "1" else 101.0]  # the header names the one that ran
        assert within(seen["2"], 400, 0.20), seen
        assert client.post("/v1/models/m/versions/1:predict", {"instances": [[1.0]]})[1] == "1"  # named: as named
        sticky = {client.post("/v1/models/m:predict", {"instances": [[1.0]]}, {"x-user": "alice"})[1]
                  for _ in range(30)}
        assert len(sticky) == 1
        status, version, body = client.post("/v2/models/m/infer", {"inputs": [
            {"name": "inputs", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]})
        assert status == 200 and body["model_version"] == version
        client.close()
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            import numpy as np

            array_to_tensor(np.array([[1.0]], np.float32), request.inputs["inputs"])
            versions = collections.Counter(stub.Predict(request, timeout=10).model_spec.version.value
                                           for _ in range(200))
            assert set(versions) == {1, 2} and within(versions[2], 200, 0.20), versions
            sticky = {stub.Predict(request, metadata=(("x-user", "bob"),), timeout=10).model_spec.version.value
                      for _ in range(20)}
            assert len(sticky) == 1  # the sticky key read from gRPC metadata too
        metrics = s.request("GET", "/metrics", fresh=True)[1].decode()
        for version in ("1", "2"):  # the request counters by version show the split
            assert f'version="{version}"' in metrics


def test_weights_change_by_reload_with_no_failed_request(tmp_path):
    two_versions(tmp_path / "m")

    def config(weights):
        c = model_server_config_pb2.ModelServerConfig()
        model = c.model_config_list.config.add(name="m", base_path=str(tmp_path / "m"), model_platform="linear")
        model.model_version_policy.all.SetInParent()
        for version, weight in weights.items():
            model.version_traffic[version] = weight
        return c

    config_path = tmp_path / "models.pbtxt"
    config_path.write_text(pbtxt({"name": "m", "base_path": str(tmp_path / "m"), "platform": "linear",
                                  "policy": "all {}", "traffic": {1: 100}}))
    with Server(f"--model_config_file={config_path}") as s:
        statuses, stop = [], threading.Event()

        def hammer():
            client = Client(s.port)
            while not stop.is_set():
                statuses.append(client.post("/v1/models/m:predict", {"instances": [[1.0]]})[:2])
            client.close()

        thread = threading.Thread(target=hammer)
        thread.start()
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            for weights in ({1: 0, 2: 100}, {1: 50, 2: 50}, {2: 100}):
                reply = stub.HandleReloadConfigRequest(
                    model_management_pb2.ReloadConfigRequest(config=config(weights)), timeout=30)
                assert reply.status.error_code == 0, reply.status.error_message
        stop.set()
        thread.join(10)
        assert statuses and {status for status, _ in statuses} == {200}
        assert {version for _, version in statuses} == {"1", "2"}
        client = Client(s.port)
        after = [client.post("/v1/models/m:predict", {"instances": [[1.0]]}) for _ in range(20)]
        client.close()
        assert {version for _, version, _ in after} == {"2"}  # the last weights: all to version 2


def test_the_service_json_traffic_splits_the_single_model(tmp_path):
    two_versions(tmp_path / "m")
    service = tmp_path / "service.json"
    service.write_text(json.dumps({"name": "m", "processor": "linear", "model_path": str(tmp_path / "m"),
                                   "traffic": {"1": 50, "2": 50}}))
    with Server(f"--service_config={service}") as s:
        client = Client(s.port)
        seen = {client.post("/v1/models/m:predict", {"instances": [[1.0]]})[1] for _ in range(60)}
        client.close()
    assert seen == {"1", "2"}
    service.write_text(json.dumps({"name": "m", "model_path": str(tmp_path / "m"), "traffic": {"1": 50}}))
    from tests.helpers import run_cli

    done = run_cli(f"--service_config={service}", "--rest_api_port=0", "--port=0")
    assert done.returncode != 0 and "sum to 50, not 100" in done.stderr
