"""The ModelMesh model runtime API (`mmesh.ModelRuntime` on --modelmesh_port), driven by a client generated
from that proto: status, load, inference routed by `mm-model-id` (TF Serving Predict and KServe V2
ModelInfer), sizes, unload, and the errors of unknown models, bad paths and cancelled loads."""

import json
import time

import grpc
import numpy as np
import pytest

from serving._proto.inference import grpc_predict_v2_pb2 as v2
from serving._proto.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from serving._proto.mmesh import model_runtime_pb2 as mm
from serving._proto.mmesh import model_runtime_pb2_grpc as mm_grpc
from serving._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from serving.codecs.tensors import array_to_tensor, tensor_to_array
from serving.core.repository import resident_bytes
from serving.platform.modelmesh import model_capacity
from serving.settings import Settings
from tests.helpers import Server, free_port, make_linear, make_xgb, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm")
    make_linear(root / "lin", 1, weights=[[1.0], [1.0]], bias=0.5)
    make_xgb(root / "xgb", 1, n_features=2)
    make_linear(root / "slow", 1, weights=[[1.0], [1.0]], load_delay_ms=1500)
    (root / "junk").mkdir()
    (root / "junk" / "notes.md").write_text("no model here")
    port = free_port()
    # No model, no config: ModelMesh brings them (from its /models; here from the test's folder).
    with Server(f"--modelmesh_port={port}", f"--model_load_roots={root}") as s:
        s.root, s.mm_port = root, port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as mesh, \
                grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as data:
            s.mesh, s.data = mm_grpc.ModelRuntimeStub(mesh), data
            yield s


def load(server, model_id, folder, model_type="", key=None, timeout=30):
    request = mm.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(server.root / folder),
                                  modelKey=json.dumps(key) if key is not None else "")
    return server.mesh.loadModel(request, timeout=timeout)


def predict(server, model_id, metadata_key="mm-model-id"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ignored-by-routing"
    array_to_tensor(np.array([[1.0, 2.0]], np.float32), request.inputs["inputs"])
    value = model_id.encode() if metadata_key.endswith("-bin") else model_id
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.data)
    response = stub.Predict(request, metadata=((metadata_key, value),), timeout=10)
    return response, tensor_to_array(response.outputs["predictions"], "predictions")


def test_runtime_status_says_ready_with_capacity_and_id_injection(server):
    status = server.mesh.runtimeStatus(mm.RuntimeStatusRequest(), timeout=10)
    assert status.status == mm.RuntimeStatusResponse.READY
    assert status.capacityInBytes > 0 and status.maxLoadingConcurrency >= 1
    assert status.modelLoadingTimeoutMs == 90_000 and status.defaultModelSizeInBytes == 1024 * 1024
    assert status.runtimeVersion
    assert list(status.methodInfos["tensorflow.serving.PredictionService/Predict"].idInjectionPath) == [1, 1]
    assert list(status.methodInfos["inference.GRPCInferenceService/ModelInfer"].idInjectionPath) == [1]


def test_load_infer_by_id_size_and_unload(server):
    loaded = load(server, "lin-a", "lin", key={"model_type": {"name": "linear"}, "disk_size_bytes": 60})
    on_disk = (server.root / "lin" / "1" / "linear.json").stat().st_size
    assert loaded.sizeInBytes >= on_disk
    assert server.mesh.modelSize(mm.ModelSizeRequest(modelId="lin-a"), timeout=5).sizeInBytes == loaded.sizeInBytes
    response, out = predict(server, "lin-a")
    assert out.tolist() == [3.5] and response.model_spec.name == "lin-a"
    _, out = predict(server, "lin-a", "mm-model-id-bin")
    assert out.tolist() == [3.5]
    server.mesh.unloadModel(mm.UnloadModelRequest(modelId="lin-a"), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        predict(server, "lin-a")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        server.mesh.modelSize(mm.ModelSizeRequest(modelId="lin-a"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_kserve_v2_inference_routes_by_id_and_the_type_comes_from_the_model_key(server):
    load(server, "xgb-1", "xgb", model_type="", key={"model_type": {"name": "xgboost", "version": "2"}})
    stub = v2_grpc.GRPCInferenceServiceStub(server.data)
    request = v2.ModelInferRequest(model_name="whatever")
    tensor = request.inputs.add(name="inputs", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    response = stub.ModelInfer(request, metadata=(("mm-model-id", "xgb-1"),), timeout=10)
    assert response.model_name == "xgb-1" and response.model_version == "1"
    assert len(response.raw_output_contents[0]) == 4  # one FP32 score
    server.mesh.unloadModel(mm.UnloadModelRequest(modelId="xgb-1"), timeout=10)


def test_a_model_path_naming_one_file_loads_that_file(server):
    # ModelMesh's puller hands `.../<id>/mushroom.json` for a one-file model, named as in the bucket.
    source = make_xgb(server.root / "staging", 1, n_features=2)
    single = server.root / "single"
    single.mkdir()
    source.rename(single / "mushroom.json")
    loaded = server.mesh.loadModel(mm.LoadModelRequest(modelId="mush", modelType="xgboost",
                                                       modelPath=str(single / "mushroom.json")), timeout=30)
    assert loaded.sizeInBytes >= (single / "mushroom.json").stat().st_size
    stub = v2_grpc.GRPCInferenceServiceStub(server.data)
    request = v2.ModelInferRequest(model_name="mush")
    request.inputs.add(name="inputs", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1.0, 2.0])
    assert stub.ModelInfer(request, metadata=(("mm-model-id", "mush"),), timeout=10).model_name == "mush"
    server.mesh.unloadModel(mm.UnloadModelRequest(modelId="mush"), timeout=10)


def test_predict_model_size_answers_from_the_key_without_io(server):
    sized = server.mesh.predictModelSize(mm.PredictModelSizeRequest(
        modelId="x", modelPath="/nonexistent", modelKey=json.dumps({"disk_size_bytes": 1000})), timeout=5)
    assert sized.sizeInBytes == 2000
    default = server.mesh.predictModelSize(mm.PredictModelSizeRequest(modelId="y"), timeout=5)
    assert default.sizeInBytes == 1024 * 1024


@pytest.mark.parametrize(("folder", "model_type", "code", "words"), [
    ("missing", "", grpc.StatusCode.FAILED_PRECONDITION, "does not exist"),
    ("junk", "", grpc.StatusCode.FAILED_PRECONDITION, "cannot tell which processor"),
    ("lin", "caffe", grpc.StatusCode.INVALID_ARGUMENT, "not served by this runtime"),
    ("xgb", "linear", grpc.StatusCode.FAILED_PRECONDITION, "linear"),
])
def test_bad_loads_are_errors_that_leave_nothing_loaded(server, folder, model_type, code, words):
    with pytest.raises(grpc.RpcError) as e:
        load(server, "bad", folder, model_type=model_type)
    assert e.value.code() == code and words in e.value.details(), e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        server.mesh.modelSize(mm.ModelSizeRequest(modelId="bad"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.get("/readyz")[0] == 200  # a failed load never makes the runtime unready


def test_relative_paths_and_empty_ids_are_invalid(server):
    for request in (mm.LoadModelRequest(modelId="r", modelPath="relative/x"), mm.LoadModelRequest(modelPath="/")):
        with pytest.raises(grpc.RpcError) as e:
            server.mesh.loadModel(request, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unloading_an_unknown_model_is_no_error(server):
    server.mesh.unloadModel(mm.UnloadModelRequest(modelId="never-loaded"), timeout=5)


def test_a_cancelled_load_leaves_nothing_loaded(server):
    with pytest.raises(grpc.RpcError) as e:
        load(server, "slow-1", "slow", model_type="linear", timeout=0.3)  # ModelMesh gives up
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The load runs on (1.5 s) and is then unloaded, without any unloadModel from the client.
    wait_until(lambda: "slow-1" in server.output() and "unloaded" in server.output().split("slow-1")[-1],
               what="the cancelled load undone")
    time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as e:
        server.mesh.modelSize(mm.ModelSizeRequest(modelId="slow-1"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_runtime_status_unloads_what_modelmesh_does_not_know(server):
    load(server, "left-over", "lin")
    assert server.mesh.modelSize(mm.ModelSizeRequest(modelId="left-over"), timeout=5).sizeInBytes > 0
    assert server.mesh.runtimeStatus(mm.RuntimeStatusRequest(), timeout=10).status == mm.RuntimeStatusResponse.READY
    with pytest.raises(grpc.RpcError) as e:
        predict(server, "left-over")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_under_workers_every_worker_loads_and_the_size_counts_every_copy(tmp_path):
    make_linear(tmp_path / "lin", 1, weights=[[1.0], [1.0]], bias=0.5)
    port = free_port()
    with Server(f"--modelmesh_port={port}", "--workers=2", f"--model_load_roots={tmp_path}") as s, \
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        s.root, s.mesh = tmp_path, mm_grpc.ModelRuntimeStub(channel)
        size = load(s, "lin-w", "lin").sizeInBytes
        on_disk = (tmp_path / "lin" / "1" / "linear.json").stat().st_size
        assert size >= 2 * on_disk
        for _ in range(12):  # new connections: both workers answer
            with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]) \
                    as data:
                s.data = data
                assert predict(s, "lin-w")[1].tolist() == [3.5]
        s.mesh.unloadModel(mm.UnloadModelRequest(modelId="lin-w"), timeout=10)
        for _ in range(6):
            with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]) \
                    as data:
                s.data = data
                with pytest.raises(grpc.RpcError) as e:
                    predict(s, "lin-w")
                assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_capacity_is_the_container_memory_less_the_server_and_the_headroom():
    settings = Settings()
    settings.apply_env({"CONTAINER_MEM_REQ_BYTES": str(4 << 30)})  # as the Downward API sets it
    assert settings.container_memory_bytes == 4 << 30
    rss = resident_bytes()
    assert 0 < rss < 4 << 30
    capacity = model_capacity(settings)
    assert (4 << 30) - (256 << 20) - 2 * rss < capacity <= (4 << 30) - (256 << 20) - rss // 2
    assert model_capacity(settings, copies=2) < capacity  # each worker's own size comes off
    settings.model_memory_capacity_bytes = 123_456
    assert model_capacity(settings) == 123_456
    with pytest.raises(ValueError, match="CONTAINER_MEM_REQ_BYTES"):
        Settings().apply_env({"CONTAINER_MEM_REQ_BYTES": "4Gi"})
