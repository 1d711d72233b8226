"""Request ids and the access log in process, through HttpConnection on a fake transport and a gRPC method
with a fake context: which requests get a line (failures, slow ones, the sample, `all`), lines, ids, health, a
stalled sink, text lines. Against the real server over HTTP and gRPC (inference details,
gRPC lines, --log_format=json, secrets never written): tests/e2e/test_access_log.py."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import pytest

from serving.errors import not_found
from serving.ops.accesslog import MAX_ID_LENGTH, AccessLog
from serving.ops.metrics import ACCESS_LOG_DROPPED
from serving.protocols.adapters import GrpcExchange, grpc_errors
from serving.transport.http import DeadlineWheel, Deferred, HttpConnection, HttpLimits, Request, Response
from tests.helpers import in_loop
from tests.unit.protocols.test_grpc_adapters import Aborted, FakeContext
from tests.unit.transport.test_http_protocol import App, FakeTransport, get, next_turn, parse, post

GENERATED_ID = re.compile(r"[0-9a-f]{20}\Z")


class Sink:
    """A file-like sink that keeps what the writer thread writes; `stall()` blocks its writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()  # a write has begun

    def stall(self) -> None:
        self.open.clear()

    def write(self, data: bytes) -> int:
        self.entered.set()
        self.open.wait(10)
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class StatusApp(App):
    """App (/wait/NAME answers when the test resolves it, /bug raises), and /status/N answers status N."""

    def __call__(self, request: Request) -> Response | Deferred:
        if request.path.startswith("/status/"):
            return Response(int(request.path[8:]), b"")
        return super().__call__(request)


class Logged:
    """One HttpConnection on a fake transport, logging to a Sink (by default every request: `all`)."""

    def __init__(self, fmt: str = "all", **options: object) -> None:
        self.sink = Sink()
        self.log = AccessLog(fmt, sink=self.sink, **options)  # type: ignore[arg-type]
        self.app = StatusApp(30.0)
        loop = asyncio.get_running_loop()
        self.protocol = HttpConnection(self.app, HttpLimits(max_body_bytes=100), set(), DeadlineWheel(loop),
                                       access_log=self.log)
        self.transport = FakeTransport(self.protocol)
        self.protocol.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def answers(self) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        return parse(bytes(self.transport.written))

    def text(self) -> str:
        self.log.close()
        return self.sink.data.decode()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines()]


# ---- in process ----

@in_loop
async def test_every_http_answer_is_one_json_line_with_the_request_id_route_status_and_bytes():
    c = Logged()
    c.send(post(b"/echo", b"abc", b"X-Request-Id: client-id-1"))
    [(status, headers, _)] = c.answers()
    assert (status, headers[b"x-request-id"]) == (200, b"client-id-1")
    [line] = c.lines()
    assert list(line) == ["time", "request_id", "remote", "protocol", "route", "model", "version", "signature",
                          "status", "rows", "queue_ms", "compute_ms", "total_ms", "bytes_in", "bytes_out"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert {k: v for k, v in line.items() if k not in ("time", "total_ms")} == {
        "request_id": "client-id-1", "remote": "127.0.0.1:50000", "protocol": "http", "route": "GET /echo",
        "model": "", "version": None, "signature": "", "status": 200, "rows": None, "queue_ms": None,
        "compute_ms": None, "bytes_in": 3, "bytes_out": len(c.transport.written)}
    assert 0 <= line["total_ms"] < 1000


@in_loop
async def test_a_request_without_an_id_or_with_an_overlong_one_gets_a_generated_id_answered_and_logged():
    c = Logged()
    c.send(get(b"/a") + get(b"/b") + get(b"/c", b"X-Request-Id: " + b"x" * (MAX_ID_LENGTH + 1)))
    ids = [headers[b"x-request-id"].decode() for _, headers, _ in c.answers()]
    assert all(GENERATED_ID.match(i) for i in ids), ids
    assert len(set(ids)) == 3
    assert [line["request_id"] for line in c.lines()] == ids


@in_loop
async def test_a_refused_request_is_logged_with_its_status_and_the_clients_id():
    c = Logged()
    c.send(get(b"/big", b"Content-Length: 101", b"X-Request-Id: big-1"))
    assert [(s, h[b"x-request-id"]) for s, h, _ in c.answers()] == [(413, b"big-1")]
    assert [(line["request_id"], line["status"]) for line in c.lines()] == [("big-1", 413)]


@in_loop
async def test_sample_rate_zero_logs_no_fast_success_but_still_answers_the_request_id():
    c = Logged("json", sample_rate=0.0)
    c.send(get(b"/a", b"X-Request-Id: r1") + get(b"/b"))
    first, second = (h[b"x-request-id"].decode() for _, h, _ in c.answers())
    assert first == "r1" and GENERATED_ID.match(second)
    assert c.text() == ""


@in_loop
async def test_health_routes_are_logged_only_with_access_log_health():
    quiet, loud = Logged(), Logged(health=True)
    for c in (quiet, loud):
        c.send(get(b"/healthz") + get(b"/readyz") + get(b"/metrics") + get(b"/v2/health/live") + get(b"/work"))
    assert [line["route"] for line in quiet.lines()] == ["GET /work"]
    assert [line["route"] for line in loud.lines()] == ["GET /healthz", "GET /readyz", "GET /metrics",
                                                         "GET /v2/health/live", "GET /work"]


@in_loop
async def test_a_stalled_sink_drops_and_counts_lines_instead_of_blocking_the_answers():
    c = Logged(max_queued=4)
    c.sink.stall()
    c.send(get(b"/first"))
    assert c.sink.entered.wait(5)  # the writer thread is stuck in the sink's write
    before = ACCESS_LOG_DROPPED[0]
    t0 = time.perf_counter()
    for i in range(20):
        c.send(get(b"/more/%d" % i))
    assert time.perf_counter() - t0 < 1.0
    assert len(c.answers()) == 21  # every request answered while the sink is stuck
    assert (c.log.dropped, ACCESS_LOG_DROPPED[0] - before) == (16, 16)  # 4 queued, the rest dropped
    c.sink.open.set()
    assert [line["route"] for line in c.lines()] == ["GET /first", *(f"GET /more/{i}" for i in range(4))]


@in_loop
async def test_text_format_is_one_line_of_fields_with_client_text_quoted():
    c = Logged("text", sample_rate=1.0)
    c.send(get(b"/odd%20path%0Ainjected", b'X-Request-Id: id "quoted"'))
    [line] = c.text().splitlines()
    assert re.fullmatch(
        r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "id \\"quoted\\"" 127\.0\.0\.1:50000 protocol=http '
        r'route="GET /odd path\\ninjected" model=- version=- signature=- status=200 rows=- queue_ms=- '
        r'compute_ms=- total_ms=[\d.]+ bytes_in=0 bytes_out=\d+', line), line


# ---- which requests get a line ----

@in_loop
async def test_every_failure_is_logged_whatever_the_sample_and_a_fast_success_or_redirect_is_not():
    c = Logged("json", sample_rate=0.0)
    c.send(get(b"/status/200") + get(b"/status/399") + get(b"/status/400") + get(b"/status/404") + get(b"/bug")
           + get(b"/status/503") + get(b"/big", b"Content-Length: 101"))
    assert [status for status, _, _ in c.answers()] == [200, 399, 400, 404, 500, 503, 413]
    assert [(line["route"], line["status"]) for line in c.lines()] == [
        ("GET /status/400", 400), ("GET /status/404", 404), ("GET /bug", 500), ("GET /status/503", 503),
        ("", 413)]  # refused before it was read whole: no route


@in_loop
async def test_a_request_slower_than_the_threshold_is_logged_whatever_the_sample():
    c = Logged("json", sample_rate=0.0, slow_ms=100)
    c.send(get(b"/fast"))
    c.send(get(b"/wait/slow"))
    await asyncio.sleep(0.15)
    c.app.futures["slow"].set_result(b"late")
    await next_turn()
    assert [status for status, _, _ in c.answers()] == [200, 200]
    [line] = c.lines()
    assert (line["route"], line["status"]) == ("GET /wait/slow", 200) and line["total_ms"] >= 150


def test_the_slow_threshold_counts_from_the_requests_start_and_zero_makes_every_request_slow():
    sink, every_sink = Sink(), Sink()
    log = AccessLog("json", sample_rate=0.0, slow_ms=1000, sink=sink)
    every = AccessLog("json", sample_rate=0.0, slow_ms=0, sink=every_sink)
    now = time.perf_counter()
    for request_id, started in (("2 s", now - 2.0), ("1 s", now - 1.0), ("0.5 s", now - 0.5), ("now", now)):
        log.http(None, request_id, None, 200, started, 0, 0)
    every.http(None, "now", None, 200, time.perf_counter(), 0, 0)
    log.close()
    every.close()
    assert [json.loads(line)["request_id"] for line in sink.data.splitlines()] == ["2 s", "1 s"]
    assert [json.loads(line)["request_id"] for line in every_sink.data.splitlines()] == ["now"]


@in_loop
async def test_a_fast_success_is_logged_only_by_the_sample_and_always_with_all():
    never, always, everything = Logged("json", sample_rate=0.0), Logged("text", sample_rate=1.0), Logged(
        "all", sample_rate=0.0)
    for c in (never, always, everything):
        c.send(get(b"/a") + get(b"/b"))
        assert [status for status, _, _ in c.answers()] == [200, 200]
    assert never.text() == ""
    assert re.findall(r' route="([^"]*)" ', always.text()) == ["GET /a", "GET /b"]
    assert [line["route"] for line in everything.lines()] == ["GET /a", "GET /b"]


def test_the_sample_logs_about_its_share_of_fast_successes():
    sink = Sink()
    log = AccessLog("json", sample_rate=0.25, sink=sink)
    for i in range(4000):
        log.http(None, str(i), None, 200, time.perf_counter(), 0, 0)
    log.close()
    assert 800 <= len(sink.data.splitlines()) <= 1200  # 1000 expected; 1 in 10^12 falls outside by chance


class Message:
    """What the gRPC decorator reads of a request or response message: its size."""

    def ByteSize(self) -> int:  # noqa: N802 - protobuf's name
        return 3


class GrpcServicer:
    """A method that answers at once, one that answers after 150 ms and one that fails, logged to `access_log`."""

    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log

    @grpc_errors
    async def Fast(self, request: Message, exchange: GrpcExchange) -> Message:  # noqa: N802 - gRPC's name
        return Message()

    @grpc_errors
    async def Slow(self, request: Message, exchange: GrpcExchange) -> Message:  # noqa: N802
        await asyncio.sleep(0.15)
        return Message()

    @grpc_errors
    async def Fail(self, request: Message, exchange: GrpcExchange) -> Message:  # noqa: N802
        raise not_found("no model m")


async def grpc_lines(fmt: str) -> list[tuple[str, str, str]]:
    """(request id, route, status) of the lines a Fast, a Slow and a Failing call get (sample rate 0)."""
    sink = Sink()
    servicer = GrpcServicer(AccessLog(fmt, sample_rate=0.0, slow_ms=100, sink=sink))
    await servicer.Fast(Message(), FakeContext((("x-request-id", "fast"),)))
    await servicer.Slow(Message(), FakeContext((("x-request-id", "slow"),)))
    with pytest.raises(Aborted):
        await servicer.Fail(Message(), FakeContext((("x-request-id", "fail"),)))
    servicer.access_log.close()
    return [(line["request_id"], line["route"], line["status"]) for line in map(json.loads, sink.data.splitlines())]


@in_loop
async def test_a_grpc_call_is_logged_when_it_fails_or_is_slow_and_a_fast_ok_one_only_by_the_sample_or_all():
    assert await grpc_lines("json") == [("slow", "Slow", "OK"), ("fail", "Fail", "NOT_FOUND")]
    assert await grpc_lines("all") == [("fast", "Fast", "OK"), ("slow", "Slow", "OK"), ("fail", "Fail", "NOT_FOUND")]


@in_loop
async def test_no_authorization_value_is_in_a_line_even_with_all():
    c = Logged()
    c.send(get(b"/predict", b"Authorization: Bearer secret-token", b"X-Request-Id: with-bearer")
           + get(b"/predict", b"Authorization: EAS c2lnbmF0dXJl"))
    text = c.text()
    assert json.loads(text.splitlines()[0])["request_id"] == "with-bearer" and len(text.splitlines()) == 2
    assert "secret-token" not in text and "c2lnbmF0dXJl" not in text


class _Servable:
    version_header = b""

    def __init__(self, model: object, version: object) -> None:
        self.model, self.version = model, version


class _Call:
    """What call_details reads of a pipeline Call, with values a client could have chosen."""

    dispatched = computed = received = 0.0
    signature = None

    def __init__(self, model: object, version: object) -> None:
        self.servable, self.model, self.version, self.protocol, self.rows = None, model, version, "grpc", 1


HOSTILE = [2**64, -(2**63) - 1, 10**30, "\ud800", "a\nb\r\n\x00", "\u2028", '"}{', "x" * 10_000, float("nan")]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_field_a_client_controls_is_written_as_one_line_whatever_its_value(fmt):
    sink = Sink()
    log = AccessLog(fmt, sink=sink, sample_rate=1.0)
    for value in HOSTILE:
        log.grpc(f"/route/{value}", str(value), str(value), _Call(value, value), str(value), time.perf_counter(),
                 0, 0)
        log.http(None, str(value), (str(value), value), 200, time.perf_counter(), 0, 0)
    log.close()
    lines = sink.data.decode().split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 2 * len(HOSTILE)
    if fmt == "json":
        parsed = [json.loads(line) for line in lines[:-1]]
        assert parsed[0]["version"] == str(2**64) and parsed[0]["model"] == str(2**64)


def test_unknown_access_log_format_sample_rate_and_slow_threshold_are_refused(tmp_path):
    with pytest.raises(ValueError) as e:
        AccessLog.open("xml", sample_rate=1.0, slow_ms=1000, health=False, path=str(tmp_path / "access.log"))
    assert str(e.value) == "--access_log: expected off, json, text or all, got 'xml'"
    assert not (tmp_path / "access.log").exists()  # refused before the file was made
    with pytest.raises(ValueError) as e:
        AccessLog.open("json", sample_rate=1.5, slow_ms=1000, health=False, path="")
    assert str(e.value) == "--access_log_sample_rate: expected a number from 0 to 1, got 1.5"
    with pytest.raises(ValueError) as e:
        AccessLog.open("json", sample_rate=0.01, slow_ms=-1, health=False, path="")
    assert str(e.value) == "--access_log_slow_ms: expected 0 or more, got -1"
    assert AccessLog.open("off", sample_rate=1.0, slow_ms=1000, health=False, path="") is None
