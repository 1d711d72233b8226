"""The HTTP routes below the process boundary: `RestApi` called with `Request` objects inside an event loop,
over a real ModelManager, DataPlane and Pipeline wired as serving/app.py wires them, serving tiny models
made at test time. A `Deferred` answer is settled as the connection settles it (`finish(future, context)`
once its future is done, or `on_timeout()` at its deadline), so every protocol's routes, texts and codes
are checked here without a server process (test_http_e2e.py keeps the real-process tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving import __version__ as serving_version
from serving._proto.eas import tf_predict_pb2
from serving.core.batching import BatchingOptions
from serving.core.dataplane import DataPlane
from serving.core.model_config import ModelSpec, VersionPolicy
from serving.core.pipeline import Pipeline
from serving.core.repository import ModelManager
from serving.core.servable import Runtime
from serving.ops.metrics import Metrics, RequestMetrics
from serving.protocols.router import RestApi
from serving.transport.auth import TokenAuth
from serving.transport.http import Deferred, Request, Response
from tests.e2e.test_cloud_protocol import tf_request
from tests.helpers import in_loop, make_linear, make_xgb, training_data

TOKEN = "s3cret-token"
SLOW_MS = 200


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("routes")
    make_linear(root / "lin", 1, bias=1.0)  # y = 0.5x + 1
    make_linear(root / "lin", 2)  # y = 0.5x + 2
    make_linear(root / "slow", 1, delay_ms=SLOW_MS)
    make_linear(root / "two", 1, weights=[[1.0, 0.0], [0.0, 2.0]], bias=[0.5, -0.5])  # two inputs, two outputs
    return root


def specs(repo: Path, *names: str) -> list[ModelSpec]:
    """The models to serve; lin serves both its versions, labelled stable (1) and canary (2)."""
    out = []
    for name in names or ("lin", "slow", "two"):
        if name == "lin":
            out.append(ModelSpec("lin", str(repo / "lin"), "linear", VersionPolicy("all"), {"stable": 1, "canary": 2}))
        else:
            out.append(ModelSpec(name, str(repo / name), "xgboost" if name == "xgb" else "linear"))
    return out


class Served:
    """The server's request path in process: Runtime -> DataPlane -> ModelManager -> Pipeline (observed by
    RequestMetrics) -> RestApi, as serving/app.py builds it."""

    def __init__(self, models: list[ModelSpec], *, batching: BatchingOptions | None = None,
                 auth: TokenAuth | None = None, timeout_s: float = 30.0, keepalive_s: float = 30.0) -> None:
        self.specs = models
        self.runtime = Runtime(batching)
        self.manager = ModelManager(runtime=self.runtime)
        self.pipeline = Pipeline(self.manager, DataPlane(self.runtime))
        self.requests = RequestMetrics()
        self.pipeline.observe(self.requests)
        self.api = RestApi(self.manager, self.pipeline, timeout_s=timeout_s, keepalive_s=keepalive_s,
                           default_model=lambda: models[0].name if models else None, auth=auth,
                           metrics=Metrics(self.manager, self.requests))

    def send(self, method: str, path: str, body: Any = b"", headers: dict[bytes, bytes] | None = None,
             ) -> Response | Deferred:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.api(Request(method, path, "", headers or {}, data))

    async def ask(self, method: str, path: str, body: Any = b"", headers: dict[bytes, bytes] | None = None,
                  ) -> tuple[int, Any]:
        """(status, body: decoded JSON, else the bytes) of one request, answered as the connection would."""
        return decoded(await settle(self.send(method, path, body, headers)))

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.ask("POST", path, body, **kw)

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.ask("GET", path, **kw)


@contextlib.asynccontextmanager
async def serving(models: list[ModelSpec], **kw: Any) -> AsyncIterator[Served]:
    served = Served(models, **kw)
    await served.manager.apply(models)
    try:
        yield served
    finally:
        await served.manager.shutdown()  # waits for what is still queued or running
        served.runtime.shutdown()


async def settle(answer: Response | Deferred) -> Response:
    """The Response the connection writes: at once, or once the Deferred's future is done (any outcome)."""
    if isinstance(answer, Response):
        return answer
    await asyncio.wait([answer.future])
    return answer.finish(answer.future, answer.context)


def decoded(response: Response) -> tuple[int, Any]:
    if response.content_type == b"application/json":
        return response.status, json.loads(response.body)
    return response.status, response.body


# ---- TF Serving REST ----

@in_loop
async def test_tf_serving_predict_answers_in_the_row_and_the_columnar_format(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        assert await s.post("/v1/models/lin:predict", {"instances": [[2.0], [4.0]]}) == (
            200, {"predictions": [3.0, 4.0]})
        assert await s.post("/v1/models/lin:predict", {"inputs": [[2.0], [4.0]]}) == (200, {"outputs": [3.0, 4.0]})
        assert await s.post("/v1/models/lin:predict", {"inputs": {"inputs": [[2.0]]}}) == (200, {"outputs": [3.0]})
        status, body = await s.post("/v1/models/two:predict", {"instances": [[1.0, 1.0], [2.0, 3.0]]})
        assert (status, body) == (200, {"predictions": [[1.5, 1.5], [2.5, 5.5]]})


@in_loop
async def test_tf_serving_predict_by_version_and_by_label(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        for path, want in [("/v1/models/lin/versions/1:predict", 2.0), ("/v1/models/lin/versions/2:predict", 3.0),
                           ("/v1/models/lin/labels/stable:predict", 2.0), ("/v1/models/lin/labels/canary:predict", 3.0),
                           ("/v1/models/lin:predict", 3.0)]:
            assert await s.post(path, {"instances": [[2.0]]}) == (200, {"predictions": [want]}), path


@in_loop
async def test_tf_serving_predict_on_an_xgboost_model_equals_the_booster(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost", reason="xgboost-cpu is not installed")
    make_xgb(tmp_path / "xgb", 1)
    x, _ = training_data()
    want = xgb.Booster(model_file=str(tmp_path / "xgb" / "1" / "model.json")).inplace_predict(x[:3])
    async with serving([ModelSpec("xgb", str(tmp_path / "xgb"), "xgboost")]) as s:
        status, body = await s.post("/v1/models/xgb:predict", {"instances": x[:3].tolist()})
        assert status == 200
        np.testing.assert_allclose(body["predictions"], want, rtol=1e-6)


@in_loop
async def test_tf_serving_status_metadata_and_model_list(repo: Path) -> None:
    ok = {"error_code": "OK", "error_message": ""}
    v1, v2 = ({"version": v, "state": "AVAILABLE", "status": ok} for v in ("1", "2"))
    async with serving(specs(repo)) as s:
        assert await s.get("/v1/models/lin") == (200, {"model_version_status": [v2, v1]})
        assert await s.get("/v1/models/lin/labels/stable") == (200, {"model_version_status": [v1]})
        assert await s.get("/v1/models/lin/versions/9") == (
            404, {"error": "Could not find version 9 of model lin (versions of lin: 1, 2)"})
        status, body = await s.get("/v1/models/lin/versions/1/metadata")
        assert status == 200 and body["model_spec"] == {"name": "lin", "signature_name": "", "version": "1"}
        sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert sig["inputs"]["inputs"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "1", "name": ""}]
        assert (await s.get("/v1/models/lin/metadata"))[1]["model_spec"]["version"] == "2"
        status, body = await s.get("/v1/models")
        assert status == 200 and [m["name"] for m in body["models"]] == ["lin", "slow", "two"]
        assert body["models"][0]["labels"] == {"stable": 1, "canary": 2}
        assert body["models"][0]["model_version_status"] == [{"version": "2", "state": "AVAILABLE"},
                                                              {"version": "1", "state": "AVAILABLE"}]


@in_loop
async def test_tf_serving_classify_on_a_processor_without_it_is_unimplemented(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        assert await s.post("/v1/models/lin:classify", {"examples": [{"x": 1.0}]}) == (
            501, {"error": "model lin (linear) does not implement classify: it serves predict only"})
        assert await s.post("/v1/models/lin:regress", {"examples": [{"x": 1.0}]}) == (
            501, {"error": "model lin (linear) does not implement regress: it serves predict only"})


@in_loop
async def test_tf_serving_routes_refuse_what_tf_serving_refuses(repo: Path) -> None:
    # TF Serving's texts, then (after a space) the models or versions there are: clients read only the text.
    known = " (known models: lin, slow, two)"
    cases = [
        ("POST", "/v1/models/lin:PREDICT", 400, "Malformed request: POST /v1/models/lin:PREDICT"),
        ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)" + known),
        ("POST", "/v1/models/lin/versions/7:predict", 404,
         "Servable not found for request: Specific(lin, 7) (versions of lin: 1, 2)"),
        ("POST", "/v1/models/nope/versions/7:predict", 404,
         "Servable not found for request: Specific(nope, 7)" + known),
        ("POST", "/v1/models/lin/labels/x:predict", 400, "Unrecognized servable version label: x"),
        ("GET", "/v1/models/nope", 404, "Could not find any versions of model nope" + known),
        ("GET", "/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)" + known),
        ("GET", "/elsewhere", 404, "Not found: GET /elsewhere"),
    ]
    async with serving(specs(repo)) as s:
        for method, path, status, message in cases:
            assert await s.ask(method, path, {"instances": [[1.0]]}) == (status, {"error": message}), path
    async with serving([]) as s:
        assert await s.post("/v1/models/nope:predict", {"instances": [[1.0]]}) == (
            404, {"error": "Servable not found for request: Latest(nope) (no model is served)"})


@in_loop
async def test_tf_serving_routes_asked_with_another_method_are_405_with_allow(repo: Path) -> None:
    """TF Serving answers these 400 `Malformed request`; the route exists, so HTTP's answer is 405 and Allow."""
    post = "use POST with a JSON body"
    cases = [
        ("GET", "/v1/models/lin:predict", b"POST", post),
        ("GET", "/v1/models/lin:classify", b"POST", post),
        ("GET", "/v1/models/lin/versions/1:regress", b"POST", post),
        ("PUT", "/v1/models/lin:predict", b"POST", post),
        ("GET", "/v1/models/nope:predict", b"POST", post),  # the method first: then the 404 names the models
        ("POST", "/v1/models/lin", b"GET",
         "use GET for the model's status or metadata; to predict, POST /v1/models/lin:predict"),
        ("POST", "/v1/models/lin/labels/canary/metadata", b"GET",
         "use GET for the model's status or metadata; to predict, POST /v1/models/lin/labels/canary:predict"),
        ("DELETE", "/v1/models/lin/versions/2", b"GET",
         "use GET for the model's status or metadata; to predict, POST /v1/models/lin/versions/2:predict"),
    ]
    async with serving(specs(repo)) as s:
        for method, path, allow, hint in cases:
            answer = await settle(s.send(method, path, {"instances": [[1.0]]}))
            assert decoded(answer) == (405, {"error": f"Method not allowed: {method} {path}: {hint}"}), path
            assert answer.headers == b"Allow: " + allow + b"\r\n"


@in_loop
async def test_tf_serving_predict_refuses_bad_bodies(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        status, body = await s.post("/v1/models/lin:predict", b"{not json")
        assert status == 400 and body["error"].startswith("JSON Parse error"), body
        assert await s.post("/v1/models/lin:predict", {"signature_name": "x", "instances": [[1.0]]}) == (
            400, {"error": 'Serving signature key "x" not found.'})
        assert await s.post("/v1/models/lin:predict", {"instances": []}) == (
            400, {"error": "JSON Value: {\"instances\":[]} No values in 'instances' array"})
        status, body = await s.post("/v1/models/lin:predict", {"instances": [[1.0, 2.0]]})
        assert status == 400 and "expects shape [-1,1], got [1,2]" in body["error"], body


@in_loop
async def test_tf_serving_answer_past_the_deadline_is_504_deadline_exceeded(repo: Path) -> None:
    async with serving(specs(repo), timeout_s=0.25) as s:
        before = time.monotonic()
        answer = s.send("POST", "/v1/models/slow:predict", {"instances": [[1.0]]})
        assert isinstance(answer, Deferred)
        assert before + 0.25 <= answer.deadline <= time.monotonic() + 0.25  # --rest_api_timeout_in_ms from now
        assert decoded(answer.on_timeout()) == (504, {"error": "Deadline Exceeded"})
        answer.future.cancel()  # as the connection does: a request still queued is dropped


# ---- KServe V2 REST ----

V2 = {"id": "r1", "inputs": [{"name": "inputs", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 1.0, 2.0, 3.0]}]}


@in_loop
async def test_kserve_infer_with_json_tensors(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        assert await s.post("/v2/models/two/infer", V2) == (200, {
            "model_name": "two", "model_version": "1", "id": "r1",
            "outputs": [{"name": "predictions", "datatype": "FP32", "shape": [2, 2], "data": [1.5, 1.5, 2.5, 5.5]}]})
        status, body = await s.post("/v2/models/lin/versions/1/infer", {"inputs": [
            {"name": "inputs", "shape": [1, 1], "datatype": "FP32", "data": [2.0]}]})
        assert status == 200 and body["model_version"] == "1" and body["outputs"][0]["data"] == [2.0]


@in_loop
async def test_kserve_infer_with_binary_tensors(repo: Path) -> None:
    x = np.array([[2.0, 4.0]], dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "inputs", "shape": [1, 2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 8}}],
                         "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}]}).encode()
    async with serving(specs(repo)) as s:
        response = await settle(s.send("POST", "/v2/models/two/infer", header + x.tobytes(),
                                       {b"inference-header-content-length": str(len(header)).encode()}))
        assert response.status == 200 and response.content_type == b"application/octet-stream"
        headers = dict(line.split(b": ", 1) for line in response.headers.split(b"\r\n") if line)
        assert headers[b"x-model-version"] == b"1"
        json_length = int(headers[b"Inference-Header-Content-Length"])
        doc = json.loads(response.body[:json_length])
        assert doc["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [1, 2],
                                   "parameters": {"binary_data_size": 8}}]
        assert np.frombuffer(response.body[json_length:], np.float32).tolist() == [2.5, 7.5]
        status, body = await s.post("/v2/models/two/infer", header + x.tobytes(),
                                    headers={b"inference-header-content-length": b"ten"})
        assert (status, body) == (400, {"error": "Inference-Header-Content-Length must be an integer"})


@in_loop
async def test_kserve_model_ready_metadata_and_config(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        assert await s.get("/v2/health/live") == (200, {})
        assert await s.get("/v2/health/ready") == (200, {})
        assert await s.get("/v2/models/lin/versions/1/ready") == (200, {})
        assert await s.get("/v2/models/nope/ready") == (400, {"error": "model nope is not ready"})
        assert await s.get("/v2/models/lin") == (200, {
            "name": "lin", "versions": ["1", "2"], "platform": "linear",
            "inputs": [{"name": "inputs", "datatype": "FP32", "shape": [-1, 1]}],
            "outputs": [{"name": "predictions", "datatype": "FP32", "shape": [-1]}]})
        status, body = await s.get("/v2/models/two/config")
        assert status == 200 and body["max_batch_size"] == 16 and body["input"][0]["dims"] == [2]


@in_loop
async def test_kserve_unknown_output_gets_tritons_text(repo: Path) -> None:
    doc = {**V2, "outputs": [{"name": "nope"}]}
    async with serving(specs(repo)) as s:
        assert await s.post("/v2/models/two/infer", doc) == (
            400, {"error": "unexpected inference output 'nope' for model 'two'"})


@in_loop
async def test_kserve_unknown_output_is_refused_before_the_model_runs(repo: Path) -> None:
    doc = {**V2, "outputs": [{"name": "nope"}]}
    async with serving(specs(repo)) as s:
        answer = s.send("POST", "/v2/models/two/infer", doc)
        queue = s.manager.get("two").queues["serving_default"]
        status, _ = decoded(await settle(answer))
        assert status == 400 and queue.stats.requests == 0


@in_loop
async def test_kserve_unknown_routes_and_models_are_404(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        assert await s.get("/v2/models/lin/explode") == (404, {"error": "Not found: GET /v2/models/lin/explode"})
        assert await s.post("/v2/models/nope/infer", V2) == (
            404, {"error": "Servable not found for request: Latest(nope) (known models: lin, slow, two)"})
        assert await s.get("/v2/models/nope") == (
            404, {"error": "Servable not found for request: Latest(nope) (known models: lin, slow, two)"})
        assert await s.post("/v2/models/lin/versions/x/infer", V2) == (
            400, {"error": "model version must be an integer, got 'x'"})


@in_loop
async def test_kserve_routes_asked_with_another_method_are_405_with_allow(repo: Path) -> None:
    infer = "use POST with a JSON body (or JSON and binary tensors)"
    cases = [
        ("GET", "/v2/models/lin/infer", b"POST", infer),
        ("GET", "/v2/models/lin/versions/2/infer", b"POST", infer),
        ("PUT", "/v2/models/nope/infer", b"POST", infer),
        ("POST", "/v2/models/lin", b"GET", "to infer, POST /v2/models/lin/infer"),
        ("POST", "/v2/models/lin/versions/1/ready", b"GET", "to infer, POST /v2/models/lin/versions/1/infer"),
        ("POST", "/v2/models/lin/config", b"GET", "to infer, POST /v2/models/lin/infer"),
    ]
    async with serving(specs(repo)) as s:
        for method, path, allow, hint in cases:
            answer = await settle(s.send(method, path, V2))
            assert decoded(answer) == (405, {"error": f"Method not allowed: {method} {path}: {hint}"}), path
            assert answer.headers == b"Allow: " + allow + b"\r\n"


@in_loop
async def test_get_slash_from_an_api_client_lists_the_models_and_routes(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        answer = await settle(s.send("GET", "/"))
        assert (answer.status, answer.content_type) == (200, b"text/plain; charset=utf-8")
        lines = answer.body.decode().splitlines()
        assert lines[0] == f"serving-engine {serving_version}: 3 model(s): lin, slow, two"
        assert "  POST /v1/models/<m>:predict" in answer.body.decode()
        assert lines[-1].split() == ["POST", "/", "the", "cloud", "processor", "protocol,", "model", "lin"]
        assert not any("status page" in line for line in lines)  # this RestApi serves no status page
        assert await s.post("/", [[2.0]]) == (200, [3.0])  # POST / is still the default model's
    async with serving([]) as s:
        answer = await settle(s.send("GET", "/"))
        assert answer.body.decode().splitlines()[0] == f"serving-engine {serving_version}: 0 model(s)"
        assert "POST /  " not in answer.body.decode()


# ---- the cloud protocol ----

@in_loop
async def test_cloud_json_rows_and_the_default_model(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        assert await s.post("/api/predict/lin", [[2.0], [4.0]]) == (200, [3.0, 4.0])
        assert await s.post("/", [[2.0]]) == (200, [3.0])  # the first configured model
        assert await s.get("/api/predict/lin") == (200, {
            "signature_name": "serving_default",
            "inputs": [{"name": "inputs", "shape": [-1, 1], "type": "DT_FLOAT"}],
            "outputs": [{"name": "predictions", "shape": [-1], "type": "DT_FLOAT"}]})


@in_loop
async def test_cloud_tf_predict_body_gets_a_protobuf_answer(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        status, body = await s.post("/api/predict/lin", tf_request([2.0, 4.0]))
        assert status == 200
        out = tf_predict_pb2.PredictResponse.FromString(body).outputs["predictions"]
        assert list(out.float_val) == [3.0, 4.0] and list(out.array_shape.dim) == [2]
        assert await s.post("/api/predict/lin", tf_request([1.0], output_filter=("nope",))) == (400, {
            "error": "output_filter names unknown output(s) nope; the signature has predictions"})
        assert await s.post("/api/predict/lin", tf_request([1.0], signature_name="x")) == (
            400, {"error": 'Serving signature key "x" not found.'})


@in_loop
async def test_cloud_errors_use_the_protocols_codes(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        assert await s.post("/api/predict/nope", [[1.0]]) == (
            404, {"error": "Servable not found for request: Latest(nope) (known models: lin, slow, two)"})
        assert await s.ask("PUT", "/api/predict/lin", [[1.0]]) == (
            404, {"error": "Not found: PUT /api/predict/lin (predict with POST)"})
        assert await s.post("/api/predict/lin/more", [[1.0]]) == (404, {"error": "Not found: /api/predict/lin/more"})
    async with serving([]) as s:
        assert await s.post("/", [[1.0]]) == (
            404, {"error": "no default model: name one with POST /api/predict/<model>"})


@in_loop
async def test_cloud_answer_past_the_keepalive_deadline_is_408(repo: Path) -> None:
    async with serving(specs(repo), keepalive_s=0.05) as s:
        before = time.monotonic()
        answer = s.send("POST", "/api/predict/slow", [[1.0]])
        assert isinstance(answer, Deferred) and before + 0.05 <= answer.deadline <= time.monotonic() + 0.05
        assert decoded(answer.on_timeout()) == (408, {"error": "request timed out"})
        answer.future.cancel()


@pytest.mark.parametrize("path, status", [("/api/predict/slow", 450), ("/v1/models/slow:predict", 503)])
@in_loop
async def test_a_full_batch_queue_is_450_on_the_cloud_route_and_503_on_tf_serving(repo: Path, path: str,
                                                                                 status: int) -> None:
    body = [[1.0]] if path.startswith("/api") else {"instances": [[1.0]]}
    full = "model slow version 1 signature serving_default: the request queue is full (1 requests waiting); retry later"
    async with serving(specs(repo), batching=BatchingOptions(max_queue_size=1, max_in_flight=1)) as s:
        running, waiting = s.send("POST", path, body), s.send("POST", path, body)  # one batch runs, one waits
        assert await s.post(path, body) == (status, {"error": full})
        for answer in (running, waiting):
            assert (await settle(answer)).status == 200


# ---- the token, health, readiness, metrics ----

@in_loop
async def test_a_token_guards_the_predict_routes_and_not_health(repo: Path) -> None:
    token = {b"authorization": TOKEN.encode()}
    async with serving(specs(repo), auth=TokenAuth(TOKEN)) as s:
        missing = (401, {"error": "missing Authorization token"})
        assert await s.post("/v1/models/lin:predict", {"instances": [[2.0]]}) == missing
        assert await s.post("/v2/models/two/infer", V2) == missing
        assert await s.post("/api/predict/lin", [[2.0]]) == missing
        assert await s.get("/api/predict/lin") == missing
        assert await s.post("/api/predict/lin", [[2.0]], headers={b"authorization": b"wrong"}) == (
            401, {"error": "invalid Authorization token"})
        assert await s.post("/v1/models/lin:predict", {"instances": [[2.0]]}, headers=token) == (
            200, {"predictions": [3.0]})
        assert await s.post("/api/predict/lin", [[2.0]], headers=token) == (200, [3.0])
        assert await s.get("/healthz") == (200, {"status": "live"})
        assert await s.get("/readyz") == (200, {"status": "ready"})
        assert (await s.get("/metrics"))[0] == 200


@in_loop
async def test_readyz_lists_the_models_without_a_version_until_they_load(repo: Path) -> None:
    served = Served(specs(repo, "lin", "slow"))
    assert await served.get("/readyz") == (503, {"status": "not ready", "models_without_available_version": []})
    loading = asyncio.create_task(served.manager.apply(served.specs))
    await asyncio.sleep(0)  # the apply registers the models, then waits for the loads
    assert await served.get("/readyz") == (503, {"status": "not ready",
                                                 "models_without_available_version": ["lin", "slow"]})
    await loading
    assert await served.get("/readyz") == (200, {"status": "ready"})
    assert await served.get("/healthz") == (200, {"status": "live"})
    await served.manager.shutdown()
    served.runtime.shutdown()


@in_loop
async def test_metrics_count_requests_by_model_protocol_and_code(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        assert (await s.post("/v1/models/lin:predict", {"instances": [[2.0]]}))[0] == 200
        assert (await s.post("/v1/models/lin/versions/1:predict", {"instances": [[2.0]]}))[0] == 200
        assert (await s.post("/v1/models/lin:predict", {"instances": [[1.0, 2.0]]}))[0] == 400
        assert (await s.post("/v2/models/two/infer", V2))[0] == 200
        assert (await s.post("/api/predict/lin", [[2.0]]))[0] == 200
        assert (await s.post("/api/predict/nope", [[2.0]]))[0] == 404
        await asyncio.sleep(0)  # the observers are told once the answer is handed over: on the next turn
        for path in ("/metrics", "/monitoring/prometheus/metrics"):
            status, text = await s.get(path)
            assert status == 200
            lines = text.decode().splitlines()
            for want in [
                'code="OK",method="predict",model="lin",protocol="tfserving_rest",signature="serving_default",'
                'version="2"} 1.0',
                'code="OK",method="predict",model="lin",protocol="tfserving_rest",signature="serving_default",'
                'version="1"} 1.0',
                'code="INVALID_ARGUMENT",method="predict",model="lin",protocol="tfserving_rest",'
                'signature="serving_default",version="2"} 1.0',
                'code="OK",method="predict",model="two",protocol="kserve_rest",signature="serving_default",'
                'version="1"} 1.0',
                'code="OK",method="predict",model="lin",protocol="cloud",signature="serving_default",version="2"} 1.0',
                'code="NOT_FOUND",method="predict",model="",protocol="cloud",signature="",version=""} 1.0',
            ]:
                assert "serving_requests_total{" + want in lines, want
            assert not any('model="nope"' in line for line in lines)  # no label per client-chosen name
