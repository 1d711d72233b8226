"""Hostile gRPC clients against the real server: bytes that do not decode, absurd tensors, reloads of
models that cannot exist. Each gets a one-line client error and the server goes on serving."""

import random
import time

import grpc
import pytest

from serving._proto.inference import grpc_predict_v2_pb2
from serving._proto.tensorflow.core.framework import tensor_pb2
from serving._proto.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)
from serving._proto.tensorflow_serving.config import model_server_config_pb2
from tests.helpers import Server, make_linear, pbtxt

SERVICES = [
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
    grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
]
METHODS = [m for service in SERVICES for m in service.methods]
GARBAGE = b"\xff\xff\xff\xff"  # a field tag whose varint never ends: no message decodes from it
DT_FLOAT, DT_COMPLEX128, DT_RESOURCE, DT_UINT64 = 1, 18, 20, 23


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    make_linear(root / "lin", 1)  # y = 0.5x + 2
    config = root / "c.pbtxt"
    config.write_text(pbtxt({"name": "lin", "base_path": root / "lin", "platform": "linear"}))
    with Server(f"--model_config_file={config}", f"--model_load_roots={root}") as s:
        s.root = root
        yield s


def send_raw(channel, method, data):
    """One call carrying `data` as the request bytes, as a broken or hostile client sends them."""
    call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return call(data, timeout=10)


def rpc_error(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def tensor(dtype, dims, **fields):
    t = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for d in dims:
        t.tensor_shape.dim.add().size = d
    return t


def predict(channel, t, name="inputs"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lin"
    request.inputs[name].CopyFrom(t)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)


def still_serving(channel):
    return list(predict(channel, tensor(DT_FLOAT, [2, 1], float_val=[2.0, 4.0])).outputs["predictions"].float_val)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
def test_a_request_that_does_not_decode_is_invalid_argument_on_every_method(channel, method):
    path = f"/{method.containing_service.full_name}/{method.name}"
    code, details = rpc_error(lambda: send_raw(channel, path, GARBAGE))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"cannot decode the {method.input_type.full_name} message (4 bytes): ")
    assert "\n" not in details


def undecodable(rng, n):
    """`n` random byte strings that are not a PredictRequest (random bytes often are one)."""
    found = []
    while len(found) < n:
        data = rng.randbytes(rng.randrange(1, 64))
        try:
            predict_pb2.PredictRequest.FromString(data)
        except Exception:  # noqa: BLE001 - the point is that it does not decode
            found.append(data)
    return found


def test_a_thousand_garbage_messages_leave_no_traceback_and_the_server_serves(server, channel):
    logged = len(server.output())
    codes = set()
    for data in undecodable(random.Random(11), 1000):
        codes.add(rpc_error(lambda d=data: send_raw(channel, "/tensorflow.serving.PredictionService/Predict", d))[0])
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    new_log = server.output()[logged:]
    assert "Traceback" not in new_log and "PredictRequest" not in new_log, new_log[-2000:]
    assert still_serving(channel) == [3.0, 4.0]


@pytest.mark.parametrize(
    "t, message",
    [
        (tensor(DT_FLOAT, [2**40, 1], float_val=[1.0]),
         "input 'inputs': one value cannot fill the shape [1099511627776, 1]: more than 67108864 bytes"),
        (tensor(DT_FLOAT, [2**32, 2**32], tensor_content=b"\0" * 4),
         "input 'inputs': the shape [4294967296, 4294967296] is too large"),
        (tensor(DT_FLOAT, [0, 2**62, 2**62]),
         "input 'inputs': the shape [0, 4611686018427387904, 4611686018427387904] is too large"),
        (tensor(DT_FLOAT, [-3, 1], float_val=[1.0]), "input 'inputs': negative dimension in shape [-3, 1]"),
        (tensor(DT_FLOAT, [1] * 65, float_val=[1.0]), "input 'inputs': 65 dimensions, more than 64"),
        (tensor(DT_RESOURCE, [1]), "input 'inputs': data type DT_RESOURCE is not supported"),
        (tensor(4242, [1]), "input 'inputs': data type 4242 is not supported"),
        (tensor(DT_COMPLEX128, [1, 1], dcomplex_val=[1.0, 2.0, 3.0]),
         "input 'inputs': complex values come as (real, imaginary) pairs; 3 numbers given"),
        (tensor(4, [1, 1], int_val=[300]), "input 'inputs': Python integer 300 out of bounds for uint8"),
        (tensor(DT_UINT64, [1, 1], uint64_val=[2**64 - 1]),
         "model lin version 1 signature serving_default: input 'inputs' expects float but uint64 is provided"),
    ],
    ids=["huge-fill", "overflowing-dims", "empty-but-too-large", "negative-dim", "rank-65", "DT_RESOURCE",
         "unknown-dtype", "odd-complex", "uint8-overflow", "uint64"],
)
def test_absurd_tensors_are_invalid_argument_naming_the_input(channel, t, message):
    assert rpc_error(lambda: predict(channel, t)) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert still_serving(channel) == [3.0, 4.0]


VALUE_FIELDS = ["float_val", "double_val", "int_val", "string_val", "scomplex_val", "int64_val", "bool_val",
                "dcomplex_val", "half_val", "uint32_val", "uint64_val"]


def random_tensor(rng):
    """A TensorProto of any dtype enum, any dims and random content: mostly nonsense, sometimes valid."""
    t = tensor(rng.choice([DT_FLOAT, rng.randrange(0, 30), rng.randrange(0, 1 << 20)]),
               [rng.choice([0, 1, 2, -1, 2**31, 2**40, rng.randrange(-2**63, 2**63)]) for _ in range(rng.randrange(4))])
    if rng.random() < 0.3:
        t.tensor_content = rng.randbytes(rng.randrange(64))
        return t
    field = rng.choice(VALUE_FIELDS)
    for _ in range(rng.randrange(6)):
        if field == "string_val":
            getattr(t, field).append(rng.randbytes(3))
        elif field == "bool_val":
            t.bool_val.append(rng.random() < 0.5)
        elif field in ("float_val", "scomplex_val", "double_val", "dcomplex_val"):
            getattr(t, field).append(rng.uniform(-1e30, 1e30))
        else:
            bits = {"int_val": 31, "half_val": 31, "int64_val": 63, "uint32_val": 32, "uint64_val": 64}[field]
            low = 0 if field.startswith("uint") else -(2**bits)
            getattr(t, field).append(rng.randrange(low, 2**bits))
    return t


def test_random_tensors_answer_ok_or_a_client_error_and_the_server_goes_on(channel):
    rng = random.Random(5)
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
    seen = {}
    for i in range(200):
        t = random_tensor(rng)
        try:
            predict(channel, t, name="inputs" if i % 10 else "x")
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            assert "\n" not in e.details()
        assert code in allowed, (code, t)
        seen[code] = seen.get(code, 0) + 1
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 100, seen
    assert still_serving(channel) == [3.0, 4.0]


def test_reload_with_a_base_path_that_does_not_exist_is_refused_at_once_and_the_models_serve(server, channel):
    # Runs last in this module: were the config applied, "lin" would be gone for the tests after it.
    ghost = server.root / "ghost"
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="lin", base_path=str(server.root / "lin"), model_platform="linear")
    config.model_config_list.config.add(name="ghost", base_path=str(ghost), model_platform="linear")
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    started = time.monotonic()
    response = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
    assert time.monotonic() - started < 5
    assert response.status.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert response.status.error_message == f"Could not find base path {ghost} for servable ghost"
    assert still_serving(channel) == [3.0, 4.0]
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "ghost"
    assert rpc_error(lambda: stub.GetModelStatus(status)) == (
        grpc.StatusCode.NOT_FOUND, "Could not find any versions of model ghost (known models: lin)")
    del config.model_config_list.config[0]  # a config without "lin" is refused whole: "lin" stays
    response = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
    assert response.status.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert still_serving(channel) == [3.0, 4.0]
