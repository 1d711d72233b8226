"""The native gRPC server with grpcio's own clients (C-core: the sync channel and grpc.aio): the server runs in
the test's event loop, the sync client in a thread. The servicer is test_h2_safety's double of KServe's service,
plus grpc.health.v1's real servicer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from serving._proto.inference import grpc_predict_v2_pb2 as pb
from serving._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.ops.accesslog import GRPC_REQUEST_ID
from serving.transport.auth import TokenAuth
from tests.helpers import in_loop
from tests.unit.transport.test_h2_safety import INFER, serving

T = TypeVar("T")
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


async def in_thread(work: Callable[[], T]) -> T:
    """Run a blocking client in a thread while the server's loop goes on."""
    with ThreadPoolExecutor(1) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, work)


def stub_call(port: int, work: Callable[[Any], T], **channel: Any) -> Callable[[], T]:
    def run() -> T:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS, **channel) as ch:
            return work(pb_grpc.GRPCInferenceServiceStub(ch))
    return run


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, dict[str, Any]]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details(), dict(e.trailing_metadata() or ())
    raise AssertionError("the call did not fail")


class Log:
    """An access log that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[Any, ...]] = []

    def selects(self, failed: bool, total_s: float) -> bool:
        return True

    def grpc(self, *line: Any) -> None:
        self.lines.append(line)


@in_loop
async def test_unary_calls_from_the_sync_client_small_large_and_many_at_once():
    async with serving() as (server, servicer):
        def work(stub: Any) -> None:
            assert stub.ServerLive(pb.ServerLiveRequest()).live
            big = stub.ModelInfer(pb.ModelInferRequest(id="8m", raw_input_contents=[b"e" * (8 << 20)]))
            assert big.id == "8m" and big.raw_output_contents == [b"e" * (8 << 20)]
            echoes = [stub.ModelInfer.future(pb.ModelInferRequest(raw_input_contents=[bytes([i]) * (3 << 20)]))
                      for i in range(12)]  # 36 MB each way: more than the 16 MiB connection window
            for i, future in enumerate(echoes):
                assert future.result().raw_output_contents == [bytes([i]) * (3 << 20)]
            many = [stub.ServerLive.future(pb.ServerLiveRequest()) for _ in range(3000)]  # > 1000 streams
            assert all(future.result().live for future in many)
        await in_thread(stub_call(server.port, work))
        counters = server.counters()
        assert counters["calls"] == 3014 and counters["cache_hits"] > 2900


@in_loop
async def test_unary_calls_from_the_aio_client_that_wait_and_that_do_not():
    async with serving() as (server, servicer):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=OPTIONS) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            assert (await stub.ServerLive(pb.ServerLiveRequest())).live
            answers = await asyncio.gather(*[stub.ModelInfer(pb.ModelInferRequest(id="later" if i % 2 else str(i)))
                                             for i in range(200)])
            assert [a.id for a in answers] == ["later" if i % 2 else str(i) for i in range(200)]


@in_loop
async def test_metadata_reaches_the_method_and_the_request_id_comes_back():
    async with serving() as (server, servicer):
        def work(stub: Any) -> Any:
            stub.ModelInfer(pb.ModelInferRequest(), metadata=(("x-custom", "v1"), ("trace-bin", b"\x00\x01\xff")))
            return stub.ModelMetadata.with_call(pb.ModelMetadataRequest(name="m"),
                                                metadata=(("x-request-id", "rid-42"),))
        response, call = await in_thread(stub_call(server.port, work))
        assert ("x-custom", "v1") in servicer.metadata[0] and ("trace-bin", b"\x00\x01\xff") in servicer.metadata[0]
        assert response.name == "rid-42" and ("x-request-id", "rid-42") in call.trailing_metadata()


@in_loop
async def test_each_call_runs_in_a_context_of_its_own_across_its_waits():
    async with serving() as (server, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            calls = [stub.ModelMetadata(pb.ModelMetadataRequest(name="later" if i % 2 else "now"),
                                        metadata=(("x-request-id", f"r{i}"),)) for i in range(100)]
            answers = await asyncio.gather(*calls)
        assert [a.name for a in answers] == [f"r{i}" for i in range(100)]
        assert GRPC_REQUEST_ID.get() is None  # nothing leaked into the server's own context


@in_loop
async def test_a_deadline_is_deadline_exceeded_and_the_method_learns_its_time_remaining():
    async with serving() as (server, servicer):
        slow = pb.ModelReadyRequest(name="slow")
        code, _, _ = await in_thread(lambda: code_of(stub_call(server.port, lambda s: s.ModelReady(slow, timeout=0.2))))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.1)
        assert servicer.cancelled == ["slow"] and 0 < servicer.remaining[0] <= 0.2
        assert (await in_thread(stub_call(server.port, lambda s: s.ServerLive(pb.ServerLiveRequest(), timeout=5)))).live


@in_loop
async def test_an_unknown_method_is_unimplemented_and_an_undecodable_message_invalid_argument():
    async with serving() as (server, _):
        def work() -> list[Any]:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                unknown = channel.unary_unary("/inference.GRPCInferenceService/Nope")
                garbage = channel.unary_unary(INFER)
                return [code_of(lambda: unknown(b"")), code_of(lambda: garbage(b"\xff\xff\xff")),
                        pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live]
        unknown, garbage, live = await in_thread(work)
        assert unknown[0] == grpc.StatusCode.UNIMPLEMENTED and "Nope" in unknown[1]
        assert garbage[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert garbage[1].startswith("cannot decode the inference.ModelInferRequest message (3 bytes)")
        assert live


@in_loop
async def test_aborts_and_failures_are_the_calls_status_and_the_server_goes_on():
    async with serving() as (server, _):
        def work(stub: Any) -> list[Any]:
            return [code_of(lambda: stub.ModelReady(pb.ModelReadyRequest(name="abort"))),
                    code_of(lambda: stub.ModelReady(pb.ModelReadyRequest(name="fail"))),
                    stub.ServerLive(pb.ServerLiveRequest()).live]
        aborted, failed, live = await in_thread(stub_call(server.port, work))
        assert aborted == (grpc.StatusCode.NOT_FOUND, "no such model «x»", {"x-request-id": "rid"})
        assert failed[0] == grpc.StatusCode.UNKNOWN and "RuntimeError" in failed[1]  # as grpc.aio answers it
        assert live


@in_loop
async def test_the_token_is_checked_but_for_health_and_control_calls_take_the_admin_token():
    log = Log()
    health = health_aio.HealthServicer()
    async with serving(auth=TokenAuth("secret"), admin_auth=TokenAuth("admin"), health=health,
                       access_log=log) as (server, _):
        def work(stub: Any) -> list[Any]:
            live = pb.ServerLiveRequest()
            load = pb.RepositoryModelLoadRequest(model_name="m")
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
                checked = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            return [code_of(lambda: stub.ServerLive(live, metadata=(("x-request-id", "r9"),))),
                    code_of(lambda: stub.ServerLive(live, metadata=(("authorization", "wrong"),))),
                    stub.ServerLive(live, metadata=(("authorization", "secret"),)).live,
                    code_of(lambda: stub.RepositoryModelLoad(load, metadata=(("authorization", "secret"),))),
                    stub.RepositoryModelLoad(load, metadata=(("authorization", "admin"),)) is not None,
                    checked.status]
        missing, wrong, ok, control, admin_ok, health_status = await in_thread(stub_call(server.port, work))
        assert missing == (grpc.StatusCode.UNAUTHENTICATED, "missing Authorization token", {"x-request-id": "r9"})
        assert wrong[:2] == (grpc.StatusCode.UNAUTHENTICATED, "invalid Authorization token")
        assert control[0] == grpc.StatusCode.UNAUTHENTICATED and ok and admin_ok
        assert health_status == health_pb2.HealthCheckResponse.SERVING
        assert [line[4] for line in log.lines] == ["UNAUTHENTICATED"] * 3
        assert log.lines[0][:2] == ("/inference.GRPCInferenceService/ServerLive", "r9")


@pytest.mark.parametrize("level", [0, 1, 3])
@in_loop
async def test_gzip_both_ways_with_grpcios_compression(level):
    async with serving(compression_level=level) as (server, _):
        message = pb.ModelInferRequest(id="gz", raw_input_contents=[b"compressible " * 50000])

        def work(stub: Any) -> Any:
            return stub.ModelInfer(message)
        answer = await in_thread(stub_call(server.port, work, compression=grpc.Compression.Gzip))
        assert answer.raw_output_contents == list(message.raw_input_contents)


@in_loop
async def test_a_call_the_client_cancels_cancels_its_handler():
    async with serving() as (server, servicer):
        def work(stub: Any) -> bool:
            future = stub.ModelReady.future(pb.ModelReadyRequest(name="slow"))
            while not servicer.started:
                time.sleep(0.01)
            cancelled = future.cancel()
            time.sleep(0.2)
            return cancelled
        assert await in_thread(stub_call(server.port, work))
        assert servicer.cancelled == ["slow"]


@in_loop
async def test_health_check_and_watch():
    health = health_aio.HealthServicer()
    await health.set("m", health_pb2.HealthCheckResponse.NOT_SERVING)
    async with serving(health=health) as (server, _):
        def work(stub: Any) -> list[Any]:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
                health_stub = health_pb2_grpc.HealthStub(ch)
                watch = health_stub.Watch(health_pb2.HealthCheckRequest(service="m"))
                first = next(watch)
                watch.cancel()
                return [health_stub.Check(health_pb2.HealthCheckRequest(service="m")).status, first.status,
                        code_of(lambda: health_stub.Check(health_pb2.HealthCheckRequest(service="none")))[0]]
        check, watched, unknown = await in_thread(stub_call(server.port, work))
        assert check == watched == health_pb2.HealthCheckResponse.NOT_SERVING
        assert unknown == grpc.StatusCode.NOT_FOUND


@in_loop
async def test_a_bidirectional_stream_answers_each_message():
    async with serving() as (server, _):
        def work(stub: Any) -> list[str]:
            requests = (pb.ModelInferRequest(id=str(i)) for i in range(50))
            return [r.infer_response.id for r in stub.ModelStreamInfer(requests)]
        assert await in_thread(stub_call(server.port, work)) == [str(i) for i in range(50)]


@in_loop
async def test_handlers_run_as_tasks_when_eager_is_off():
    async with serving(eager=False) as (server, servicer):
        def work(stub: Any) -> list[Any]:
            return [stub.ServerLive(pb.ServerLiveRequest()).live,
                    stub.ModelInfer(pb.ModelInferRequest(id="later")).id,
                    code_of(lambda: stub.ModelReady(pb.ModelReadyRequest(name="slow"), timeout=0.1))[0]]
        assert await in_thread(stub_call(server.port, work)) == [True, "later", grpc.StatusCode.DEADLINE_EXCEEDED]
        await asyncio.sleep(0.05)
        assert servicer.cancelled == ["slow"]
