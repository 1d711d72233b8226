"""Request ids and the access log in process, through HttpConnection on a fake transport: lines, ids,
sampling, health, a stalled sink, text lines. Against the real server over HTTP and gRPC (inference details,
gRPC lines, --log_format=json, secrets never written): tests/e2e/test_access_log.py."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import pytest

from serving.ops.accesslog import MAX_ID_LENGTH, AccessLog
from serving.ops.metrics import ACCESS_LOG_DROPPED
from serving.transport.http import DeadlineWheel, HttpConnection, HttpLimits
from tests.helpers import in_loop
from tests.unit.transport.test_http_protocol import App, FakeTransport, get, parse, post

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


class Logged:
    """One HttpConnection on a fake transport, logging to a Sink."""

    def __init__(self, fmt: str = "json", **options: object) -> None:
        self.sink = Sink()
        self.log = AccessLog(fmt, sink=self.sink, **options)  # type: ignore[arg-type]
        self.app = App(30.0)
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
async def test_sample_rate_zero_logs_nothing_but_still_answers_the_request_id():
    c = Logged(sample_rate=0.0)
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
    c = Logged("text")
    c.send(get(b"/odd%20path%0Ainjected", b'X-Request-Id: id "quoted"'))
    [line] = c.text().splitlines()
    assert re.fullmatch(
        r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "id \\"quoted\\"" 127\.0\.0\.1:50000 protocol=http '
        r'route="GET /odd path\\ninjected" model=- version=- signature=- status=200 rows=- queue_ms=- '
        r'compute_ms=- total_ms=[\d.]+ bytes_in=0 bytes_out=\d+', line), line


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
    log = AccessLog(fmt, sink=sink)
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


def test_unknown_access_log_format_and_sample_rate_are_refused():
    with pytest.raises(ValueError) as e:
        AccessLog.open("xml", sample_rate=1.0, health=False, path="")
    assert str(e.value) == "--access_log: expected off, json or text, got 'xml'"
    with pytest.raises(ValueError) as e:
        AccessLog.open("json", sample_rate=1.5, health=False, path="")
    assert str(e.value) == "--access_log_sample_rate: expected a number from 0 to 1, got 1.5"
    assert AccessLog.open("off", sample_rate=1.0, health=False, path="") is None
