"""Triton's ModelStreamInfer against the real server: tritonclient's start_stream / async_stream_infer, and
raw grpc stubs for what tritonclient hides (the error answer's fields, cancelling, a message that does not
decode)."""

import asyncio
import json
import queue
import time

import grpc
import numpy as np
import pytest

from serving._proto.inference import grpc_predict_v2_pb2 as pb
from serving._proto.inference import grpc_predict_v2_pb2_grpc
from tests.helpers import Server, in_loop, make_linear, pbtxt, wait_until

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient (test extra) is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "stream-tok-4b1d"
ROUTE = "/inference.GRPCInferenceService/ModelStreamInfer"
WEIGHTS = {"weights": [[1.0, 0.0], [0.0, 2.0]], "bias": [0.5, -0.5]}  # y = (x0 + 0.5, 2 x1 - 0.5)


def expected(x: np.ndarray) -> np.ndarray:
    return np.stack([x[:, 0] + 0.5, 2 * x[:, 1] - 0.5], axis=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    make_linear(root / "lin", 1, **WEIGHTS)
    make_linear(root / "nan", 1, **WEIGHTS, reject_nan=True)  # a processor that fails on NaN input
    make_linear(root / "slow", 1, **WEIGHTS, delay_ms=20)  # batches fill while one computes
    make_linear(root / "slower", 1, **WEIGHTS, delay_ms=300)
    config = root / "c.pbtxt"
    config.write_text(pbtxt(*[{"name": n, "base_path": root / n, "platform": "linear"}
                              for n in ("lin", "nan", "slow", "slower")]))
    with Server(f"--model_config_file={config}", "--access_log=all") as s:
        yield s


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield c
    c.close()


class Answers:
    """A stream's callback: every (result, error) it is handed, in order."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()

    def __call__(self, result, error) -> None:
        self.queue.put((result, error))

    def take(self, n: int, timeout: float = 20.0) -> list:
        return [self.queue.get(timeout=timeout) for _ in range(n)]


def inputs(x: np.ndarray, datatype: str = "FP32") -> list:
    inp = grpcclient.InferInput("inputs", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return [inp]


def rows(i: int, n: int = 1) -> np.ndarray:
    return np.arange(2 * n, dtype=np.float32).reshape(n, 2) + i


def test_every_message_is_answered_in_order_with_its_id_and_outputs(client):
    answers = Answers()
    client.start_stream(callback=answers)
    for i in range(40):
        client.async_stream_infer("lin", inputs(rows(i, 1 + i % 3)), request_id=f"m{i}")
    got = answers.take(40)
    client.stop_stream()
    for i, (result, error) in enumerate(got):
        assert error is None
        response = result.get_response()
        assert (response.id, response.model_name, response.model_version) == (f"m{i}", "lin", "1")
        np.testing.assert_allclose(result.as_numpy("predictions"), expected(rows(i, 1 + i % 3)))
        assert response.parameters["triton_final_response"].bool_param  # as Triton marks every stream answer


def test_an_error_is_an_answer_and_the_stream_goes_on(client):
    answers = Answers()
    client.start_stream(callback=answers)
    client.async_stream_infer("lin", inputs(rows(1)), request_id="ok1")
    client.async_stream_infer("nope", inputs(rows(1)), request_id="unknown-model")
    client.async_stream_infer("lin", inputs(rows(1).astype(np.float64), "FP64"), request_id="wrong-type")
    client.async_stream_infer("lin", inputs(np.ones((1, 3), np.float32)), request_id="wrong-shape")
    client.async_stream_infer("nan", inputs(np.full((1, 2), np.nan, np.float32)), request_id="processor-fails")
    client.async_stream_infer("lin", inputs(rows(2)), model_version="x", request_id="bad-version")
    client.async_stream_infer("lin", inputs(rows(3)), request_id="ok2")
    got = answers.take(7)
    client.stop_stream()
    assert [r.get_response().id if r is not None else None for r, _ in got] == [
        "ok1", None, None, None, None, None, "ok2"]
    errors = [e for _, e in got[1:6]]
    assert all(isinstance(e, InferenceServerException) for e in errors)
    assert "Servable not found" in errors[0].message()
    assert "unexpected datatype FP64 for input 'inputs', expecting FP32" in errors[1].message()
    assert "input 'inputs' expects shape [-1,2], got [1,3]" in errors[2].message()
    assert errors[3].message() == "model nan version 1 failed in predict: ValueError: linear model refuses NaN input"
    assert errors[4].message() == "model version must be an integer, got 'x'"
    np.testing.assert_allclose(got[6][0].as_numpy("predictions"), expected(rows(3)))


def test_an_error_answer_carries_the_request_id_model_and_version_as_tritons(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        requests = [request("nope", rows(0), "a"), request("lin", rows(1), "b")]
        failed, ok = list(stub.ModelStreamInfer(iter(requests), timeout=20))
    assert failed.error_message.startswith("Servable not found for request: Latest(nope)")
    assert (failed.infer_response.id, failed.infer_response.model_name) == ("a", "nope")
    assert not failed.infer_response.outputs and not failed.infer_response.raw_output_contents
    assert ok.error_message == "" and ok.infer_response.id == "b"
    assert np.frombuffer(ok.infer_response.raw_output_contents[0], np.float32).tolist() == [1.5, 3.5]


def request(model: str, x: np.ndarray, request_id: str = "") -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=model, id=request_id)
    r.inputs.add(name="inputs", datatype="FP32", shape=list(x.shape))
    r.raw_input_contents.append(x.astype(np.float32).tobytes())
    return r


def inference_stats(client, model: str) -> dict:
    (stat,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return stat


def test_64_messages_in_flight_on_one_stream_are_batched(client):
    answers = Answers()
    client.start_stream(callback=answers)
    for i in range(64):
        client.async_stream_infer("slow", inputs(rows(i)), request_id=str(i))
    got = answers.take(64)
    client.stop_stream()
    assert [r.get_response().id for r, _ in got] == [str(i) for i in range(64)]
    stat = inference_stats(client, "slow")
    assert int(stat["inference_count"]) == 64  # rows
    # 64 one-row messages in far fewer batches: at most one batch ran alone (the first, on an idle model).
    assert int(stat["execution_count"]) <= 64 // 4, stat


def test_stop_stream_with_messages_in_flight_answers_them_all(client):
    answers = Answers()
    client.start_stream(callback=answers)
    for i in range(10):
        client.async_stream_infer("slower", inputs(rows(i)), request_id=str(i))
    client.stop_stream()  # half-closes, then waits for the answers
    got = answers.take(10, timeout=0.1)
    assert [(r.get_response().id, e) for r, e in got] == [(str(i), None) for i in range(10)]
    assert answers.queue.empty()


def test_a_message_that_does_not_decode_ends_the_stream_invalid_argument_after_the_answers_before_it(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.stream_stream(ROUTE, request_serializer=lambda b: b,
                                     response_deserializer=pb.ModelStreamInferResponse.FromString)
        responses = call(iter([request("lin", rows(0), "first").SerializeToString(), b"\xff\xff\xff\xff",
                               request("lin", rows(1), "never").SerializeToString()]), timeout=20)
        first = next(responses)
        with pytest.raises(grpc.RpcError) as e:
            next(responses)
    assert first.infer_response.id == "first" and not first.error_message
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("cannot decode the inference.ModelInferRequest message (4 bytes): ")


@in_loop
async def _cancel_in_flight(port: int, messages: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(metadata=(("x-request-id", "cancel-me"),))
        for i in range(messages):
            await call.write(request("slower", rows(i), str(i)))
        await asyncio.sleep(0.1)  # 5 batches (--worker_threads) compute for 300 ms, the rest wait in the queue
        call.cancel()


def rows_computed(client, model: str) -> int:
    """Rows the model computed, failed or not (its batches' sizes)."""
    batches = inference_stats(client, model)["batch_stats"]
    return sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in batches)


def test_a_cancelled_stream_cancels_its_messages_in_flight(server, client):
    before = rows_computed(client, "slower")
    _cancel_in_flight(server.grpc_port, 100)
    lines = wait_until(lambda: (found := access(server, request_id="cancel-me")) and len(found) == 100 and found,
                       what="100 access log lines")
    assert {line["status"] for line in lines} == {"CANCELLED"}
    time.sleep(0.7)  # the batches computing when the stream was cancelled are done by now
    assert rows_computed(client, "slower") - before <= 5 * 16  # the queued messages were dropped uncomputed
    assert client.is_server_live()


def access(server: Server, **match) -> list[dict]:
    out = []
    for text in server.output().splitlines():
        if text.startswith('{"time"') and f'"{ROUTE}"' in text:
            line = json.loads(text)
            if all(line.get(k) == v for k, v in match.items()):
                out.append(line)
    return out


def test_each_message_gets_its_access_log_line_as_a_unary_modelinfer(server, client):
    answers = Answers()
    client.start_stream(callback=answers, headers={"x-request-id": "logged-stream"})
    client.async_stream_infer("lin", inputs(rows(0, 3)), request_id="a")
    client.async_stream_infer("nope", inputs(rows(0)), request_id="b")
    answers.take(2)
    client.stop_stream()
    lines = wait_until(lambda: (found := access(server, request_id="logged-stream")) and len(found) == 2 and found,
                       what="two access log lines")
    assert [(line["status"], line["model"], line["rows"], line["protocol"]) for line in lines] == [
        ("OK", "lin", 3, "kserve_grpc"), ("NOT_FOUND", "nope", None, "kserve_grpc")]
    assert all(line["bytes_in"] > 0 for line in lines)
    assert lines[0]["bytes_out"] > 3 * 4  # three float32 outputs
    assert lines[1]["bytes_out"] > len("Servable not found for request: Latest(nope)")  # the error's text


def test_a_stream_takes_the_token(tmp_path):
    make_linear(tmp_path / "lin", 1, **WEIGHTS)
    with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin", "--model_platform=linear",
                f"--token={TOKEN}") as s:
        for headers in (None, {"authorization": TOKEN + "x"}):
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
            answers = Answers()
            c.start_stream(callback=answers, headers=headers)
            try:  # the server refuses the stream at once: it may have ended before this message is sent
                c.async_stream_infer("lin", inputs(rows(0)), request_id="refused")
            except InferenceServerException as e:
                assert "no longer in valid state" in e.message()
            [(result, error)] = answers.take(1)
            assert result is None and error.status() == "StatusCode.UNAUTHENTICATED"
            c.stop_stream()
            c.close()
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
        answers = Answers()
        c.start_stream(callback=answers, headers={"authorization": TOKEN})
        c.async_stream_infer("lin", inputs(rows(0)), request_id="allowed")
        [(result, error)] = answers.take(1)
        c.stop_stream()
        c.close()
        assert error is None and result.get_response().id == "allowed"


def test_a_stream_without_the_token_is_refused_before_it_sends_anything(tmp_path):
    make_linear(tmp_path / "lin", 1, **WEIGHTS)
    with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin", "--model_platform=linear",
                f"--token={TOKEN}") as s, grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       request_serializer=pb.ModelInferRequest.SerializeToString,
                                       response_deserializer=pb.ModelStreamInferResponse.FromString)
        call = stream(iter(()), timeout=30)  # half-closes at once, no message sent
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert call.time_remaining() > 20  # answered at once, not at the deadline
