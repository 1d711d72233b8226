"""TF Serving's gRPC API against the real server, with stubs generated from our protos."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from serving._proto.tensorflow_serving.config import model_server_config_pb2
from tests.helpers import Server, make_linear, pbtxt

DT_FLOAT, DT_DOUBLE, DT_INT64 = 1, 2, 9


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    make_linear(root / "lin", 1, bias=1.0)
    make_linear(root / "lin", 2)  # y = 0.5x + 2
    make_linear(root / "slow", 1, delay_ms=800)
    make_linear(root / "two", 1, weights=[[1.0, 0.0], [0.0, 1.0]], bias=[0.0, 0.0])
    make_linear(root / "picky", 1, reject_nan=True)
    config = root / "c.pbtxt"
    config.write_text(pbtxt(
        {"name": "lin", "base_path": root / "lin", "platform": "linear", "policy": "all {}",
         "labels": {"stable": 1, "canary": 2}},
        {"name": "slow", "base_path": root / "slow", "platform": "linear"},
        {"name": "two", "base_path": root / "two", "platform": "linear"},
        {"name": "picky", "base_path": root / "picky", "platform": "linear"},
    ))  # a reload may name models in any of the tests' folders
    with Server(f"--model_config_file={config}", f"--model_load_roots={tmp_path_factory.getbasetemp()}") as s:
        s.root = root
        yield s


def tensor(values, dtype=DT_FLOAT, content=False):
    array = np.asarray(values, dtype={DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT64: np.int64}[dtype])
    from serving._proto.tensorflow.core.framework import tensor_pb2

    t = tensor_pb2.TensorProto(dtype=dtype)
    for d in array.shape:
        t.tensor_shape.dim.add().size = d
    if content:
        t.tensor_content = array.tobytes()
    elif dtype == DT_FLOAT:
        t.float_val.extend(array.ravel().tolist())
    elif dtype == DT_DOUBLE:
        t.double_val.extend(array.ravel().tolist())
    else:
        t.int64_val.extend(array.ravel().tolist())
    return t


def predict(channel, name="lin", values=((2.0,), (4.0,)), timeout=10, **spec):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["inputs"].CopyFrom(tensor(values) if not isinstance(values, type(tensor([0]))) else values)
    return stub.Predict(request, timeout=timeout)


def code_of(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_predict_typed_and_tensor_content_inputs(channel):
    response = predict(channel)
    out = response.outputs["predictions"]
    assert list(out.float_val) == [3.0, 4.0] and [d.size for d in out.tensor_shape.dim] == [2]
    assert (response.model_spec.name, response.model_spec.version.value) == ("lin", 2)
    assert response.model_spec.signature_name == "serving_default"
    packed = predict(channel, values=tensor([[2.0], [4.0]], content=True))
    assert list(packed.outputs["predictions"].float_val) == [3.0, 4.0]


def test_predict_by_version_and_label(channel):
    assert list(predict(channel, version=1).outputs["predictions"].float_val) == [2.0, 3.0]
    assert list(predict(channel, version_label="stable").outputs["predictions"].float_val) == [2.0, 3.0]
    assert predict(channel, version_label="canary").model_spec.version.value == 2


@pytest.mark.parametrize(
    "call, code, message",
    [
        (lambda ch: predict(ch, name="nope"), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(nope)"),
        (lambda ch: predict(ch, version=9), grpc.StatusCode.NOT_FOUND, "Specific(lin, 9)"),
        (lambda ch: predict(ch, version_label="x"), grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: x"),
        (lambda ch: predict(ch, values=((1.0, 2.0),)), grpc.StatusCode.INVALID_ARGUMENT, "expects shape [-1,1]"),
        (lambda ch: predict(ch, values=tensor([[1.0]], DT_DOUBLE)), grpc.StatusCode.INVALID_ARGUMENT,
         "expects float but double is provided"),
        (lambda ch: predict(ch, signature_name="other"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "other" not found.'),
        (lambda ch: predict(ch, name=""), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    ],
)
def test_predict_errors_are_grpc_status_codes(channel, call, code, message):
    got_code, details = code_of(lambda: call(channel))
    assert got_code == code and message in details
    assert list(predict(channel).outputs["predictions"].float_val) == [3.0, 4.0]  # still serving


def test_output_filter_and_unknown_output(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest(output_filter=["predictions"])
    request.model_spec.name = "lin"
    request.inputs["inputs"].CopyFrom(tensor([[2.0]]))
    assert list(stub.Predict(request).outputs) == ["predictions"]
    request.output_filter[:] = ["nope"]
    got_code, details = code_of(lambda: stub.Predict(request))
    assert got_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in details


def test_client_deadline_is_honoured(channel):
    got_code, _ = code_of(lambda: predict(channel, name="slow", timeout=0.2))
    assert got_code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert list(predict(channel).outputs["predictions"].float_val) == [3.0, 4.0]


def test_get_model_metadata_packs_a_signature_def_map(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "two"
    response = stub.GetModelMetadata(request)
    assert (response.model_spec.name, response.model_spec.version.value) == ("two", 1)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    sd = sig_map.signature_def["serving_default"]
    assert sd.method_name == "tensorflow/serving/predict"
    assert sd.inputs["inputs"].dtype == DT_FLOAT and [d.size for d in sd.inputs["inputs"].tensor_shape.dim] == [-1, 2]
    assert [d.size for d in sd.outputs["predictions"].tensor_shape.dim] == [-1, 2]
    request.metadata_field[:] = ["graph"]
    got_code, details = code_of(lambda: stub.GetModelMetadata(request))
    assert got_code == grpc.StatusCode.INVALID_ARGUMENT and details == "Metadata field graph is not supported"


def test_regress_is_unimplemented_for_processors_without_it(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "lin"
    got_code, details = code_of(lambda: stub.Regress(request))
    assert got_code == grpc.StatusCode.UNIMPLEMENTED and "does not implement Regress" in details


def test_multi_inference_is_unimplemented_for_processors_without_it(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = inference_pb2.MultiInferenceRequest()
    task = request.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name = "lin"
    got_code, details = code_of(lambda: stub.MultiInference(request))
    assert got_code == grpc.StatusCode.UNIMPLEMENTED and "does not implement MultiInference" in details


def test_a_processor_failure_is_internal_with_its_message_and_the_server_goes_on(channel):
    got_code, details = code_of(lambda: predict(channel, "picky", ((float("nan"),),)))
    assert got_code == grpc.StatusCode.INTERNAL and "NaN" in details
    assert list(predict(channel, "picky", ((2.0,),)).outputs["predictions"].float_val) == [3.0]


def test_get_model_status(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "lin"
    response = stub.GetModelStatus(request)
    states = {s.version: (s.state, s.status.error_code) for s in response.model_version_status}
    assert states == {2: (get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0),
                      1: (get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)}
    request.model_spec.name = "nope"
    got_code, details = code_of(lambda: stub.GetModelStatus(request))
    assert got_code == grpc.StatusCode.NOT_FOUND
    assert details == "Could not find any versions of model nope (known models: lin, picky, slow, two)"


def test_health(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


def test_reload_config_replaces_the_models_and_answers_when_loaded(server, channel, tmp_path):
    make_linear(tmp_path / "fresh", 1, bias=7.0)
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    config = model_server_config_pb2.ModelServerConfig()
    for name, base in (("fresh", tmp_path / "fresh"), ("lin", server.root / "lin")):
        c = config.model_config_list.config.add(name=name, base_path=str(base), model_platform="linear")
        if name == "lin":
            c.model_version_policy.all.SetInParent()
            c.version_labels["stable"] = 1
            c.version_labels["canary"] = 2
    response = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
    assert response.status.error_code == 0
    assert list(predict(channel, name="fresh", values=((0.0,),)).outputs["predictions"].float_val) == [7.0]
    assert code_of(lambda: predict(channel, name="two"))[0] == grpc.StatusCode.NOT_FOUND
    bad = model_server_config_pb2.ModelServerConfig()
    bad.model_config_list.config.add(name="x", base_path="relative", model_platform="linear")
    got_code, details = code_of(lambda: stub.HandleReloadConfigRequest(
        model_management_pb2.ReloadConfigRequest(config=bad), timeout=30))
    assert got_code == grpc.StatusCode.INVALID_ARGUMENT and "absolute path" in details
    assert list(predict(channel, name="fresh", values=((0.0,),)).outputs["predictions"].float_val) == [7.0]


def test_reload_while_traffic_flows_loses_no_request(tmp_path):
    import threading

    for v in (1, 2):
        make_linear(tmp_path / "m", v, bias=float(v))
    config = tmp_path / "c.pbtxt"
    config.write_text(pbtxt({"name": "m", "base_path": tmp_path / "m", "platform": "linear",
                             "policy": "specific { versions: 1 }"}))
    with Server(f"--model_config_file={config}") as s, grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
        results, stop = [], threading.Event()

        def traffic():
            while not stop.is_set():
                try:
                    out = predict(ch, name="m", values=((0.0,),))
                    results.append(("ok", out.outputs["predictions"].float_val[0]))
                except grpc.RpcError as e:
                    results.append(("error", e.details()))

        threads = [threading.Thread(target=traffic) for _ in range(4)]
        for t in threads:
            t.start()
        stub = model_service_pb2_grpc.ModelServiceStub(ch)
        for version in (2, 1, 2):
            new = model_server_config_pb2.ModelServerConfig()
            c = new.model_config_list.config.add(name="m", base_path=str(tmp_path / "m"), model_platform="linear")
            c.model_version_policy.specific.versions.append(version)
            assert stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=new),
                                                  timeout=30).status.error_code == 0
            import time

            time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(10)
    errors = [r for r in results if r[0] == "error"]
    assert errors == [] and len(results) > 50
    assert {v for _, v in results} == {1.0, 2.0}  # both versions served, swapped without a gap


def test_queue_full_is_unavailable_and_rate_limit_is_resource_exhausted(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    make_linear(tmp_path / "slow", 1, delay_ms=300)
    with Server(f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow", "--worker_threads=1",
                "--max_queue_size=1", "--max_batch_size=1") as s, \
            grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
        def call(_):
            try:
                predict(ch, name="slow", values=((1.0,),))
                return "ok"
            except grpc.RpcError as e:
                return e.code()

        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(call, range(6)))
        assert "ok" in codes and grpc.StatusCode.UNAVAILABLE in codes, codes
    make_linear(tmp_path / "fast", 1)
    with Server(f"--model_base_path={tmp_path / 'fast'}", "--model_name=fast", "--rate_limit=3") as s, \
            grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
        codes = []
        for _ in range(20):
            try:
                predict(ch, name="fast", values=((1.0,),))
                codes.append("ok")
            except grpc.RpcError as e:
                codes.append(e.code())
        assert "ok" in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes


def test_sigterm_lets_grpc_calls_in_flight_finish(tmp_path):
    import signal
    import threading
    import time

    make_linear(tmp_path / "slow", 1, delay_ms=1000)
    s = Server(f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
            results = []

            def call():
                try:
                    results.append(list(predict(ch, name="slow", values=((2.0,),)).outputs["predictions"].float_val))
                except grpc.RpcError as e:
                    results.append(e.code())

            threads = [threading.Thread(target=call) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(0.4)  # the calls are in flight
            s.proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(30)
        assert results == [[3.0]] * 3
        assert s.proc.wait(30) == 0
    finally:
        s.stop()
        s.log.close()
