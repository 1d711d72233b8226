"""Traffic split by weight over a model's versions (`version_traffic` in model_config.pbtxt, `"traffic"` in
the service JSON): requests that name no version and no label are routed by weight, a sticky header keeps
one user on one version, every answer says which version served it, and weights change with no failed
request."""

import asyncio
import collections
import json
import math
import threading

import grpc
import pytest

from serving._proto.tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from serving._proto.tensorflow_serving.config import model_server_config_pb2
from serving.codecs.tensors import array_to_tensor
from serving.core.model_config import ConfigError, ModelSpec, VersionPolicy, parse_model_config
from serving.core.repository import ModelManager
from tests.helpers import Server, make_linear, pbtxt

ALL = VersionPolicy("all")


def two_versions(base):
    make_linear(base, 1, weights=[1.0], bias=0.0)
    make_linear(base, 2, weights=[1.0], bias=100.0)


def within(count, n, p, sigmas=5.0):
    """`count` of `n` draws at probability `p`, within `sigmas` standard deviations."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_a_90_10_split_over_10000_requests_and_a_sticky_header(tmp_path):
    two_versions(tmp_path)

    async def go():
        m = ModelManager()
        await m.apply([ModelSpec("m", str(tmp_path), "linear", ALL, traffic={1: 90, 2: 10})])
        counts = collections.Counter(m.get("m").version for _ in range(10_000))
        assert within(counts[2], 10_000, 0.10), counts
        assert m.get("m", version=2).version == 2 and m.get("m", version=1).version == 1  # named: as named
        m.sticky_header = "x-user"
        for user in (b"alice", b"bob", b"carol"):
            assert len({m.get("m", carrier={b"x-user": user}).version for _ in range(50)}) == 1
        users = collections.Counter(m.get("m", carrier={b"x-user": b"user-%d" % i}).version for i in range(2000))
        assert within(users[2], 2000, 0.10), users
        await m.shutdown()

    asyncio.run(go())


def test_weights_must_sum_to_100_and_name_versions_the_policy_serves(tmp_path):
    with pytest.raises(ConfigError, match="sum to 95, not 100"):
        parse_model_config(pbtxt({"name": "m", "base_path": str(tmp_path), "platform": "linear",
                                  "traffic": {1: 90, 2: 5}}))
    two_versions(tmp_path)

    async def go():
        m = ModelManager()
        await m.apply([ModelSpec("m", str(tmp_path), "linear", ALL, traffic={1: 50, 2: 50})])
        # The latest policy serves only version 2: weights on version 1 are refused, the old ones stay.
        with pytest.raises(ConfigError, match="names version 1, which is not one it serves"):
            await m.apply([ModelSpec("m", str(tmp_path), "linear", VersionPolicy("latest"), traffic={1: 50, 2: 50})])
        assert m.models["m"].traffic == {1: 50, 2: 50}
        await m.shutdown()

    asyncio.run(go())


def test_a_weighted_version_that_is_not_available_gives_its_share_to_the_others(tmp_path):
    two_versions(tmp_path)
    (tmp_path / "2" / "linear.json").write_text("{broken")

    async def go():
        m = ModelManager()
        await m.apply([ModelSpec("m", str(tmp_path), "linear", ALL, traffic={1: 10, 2: 90})])
        assert {m.get("m").version for _ in range(200)} == {1}
        await m.shutdown()

    asyncio.run(go())


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
