"""The HTTP/1.1 protocol below the process boundary: HttpConnection driven by bytes through a fake
transport that records what it is told, with a fake clock for the time-outs (uvicorn's way,
tests/protocols/test_http.py). One test uses a loopback socket, for what the event loops do with
eof_received's answer; the real server process is test_http_e2e.py's."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from typing import Any

import pytest

from serving.protocols.router import RestApi
from serving.transport.http import (
    MAX_DISPATCHED,
    MAX_PIPELINE,
    DeadlineWheel,
    Deferred,
    HttpConnection,
    HttpLimits,
    RenderError,
    Request,
    Response,
    plain_error,
)
from tests.helpers import in_loop

TIMED_OUT = b'{"error": "Timed out waiting for the answer"}'
BINARY_HEADER = b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1000],"parameters":{"binary_data_size":4000}}]}'
BINARY_ANSWER = BINARY_HEADER + bytes(4000)


class FakeTransport(asyncio.Transport):
    """What HttpConnection sees of a socket. close() reports the loss on the next loop turn, as
    asyncio's transports do."""

    def __init__(self, protocol: HttpConnection) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.eof_written = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """The server stopped writing (a lingering close); the test's client then goes away."""
        self.eof_written = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000)}.get(name, default)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class App:
    """A trivial handler: /wait/NAME answers when the test resolves futures[NAME] (or on_timeout past
    `timeout_s`); /bug raises; any other path answers at once with what arrived."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.futures: dict[str, asyncio.Future[bytes]] = {}
        self.seen: list[Request] = []

    def __call__(self, request: Request) -> Response | Deferred:
        self.seen.append(request)
        if request.path.startswith("/wait/"):
            future = self.futures[request.path[6:]] = asyncio.get_running_loop().create_future()
            return Deferred(future, lambda f, _: Response(200, f.result()), None,
                            time.monotonic() + self.timeout_s, lambda: Response(504, TIMED_OUT))
        if request.path == "/bug":
            raise RuntimeError("a handler's bug")
        if request.path == "/binary":  # a KServe binary answer: a JSON header, then raw tensor bytes
            return Response(200, BINARY_ANSWER, b"application/octet-stream",
                            b"Inference-Header-Content-Length: %d\r\n" % len(BINARY_HEADER))
        if request.path == "/missing":
            return Response(404, json.dumps({"error": "x" * 2000}).encode())
        return Response(200, echoed(request.path, request.query, request.body))


def echoed(path: str, query: str = "", body: bytes = b"") -> bytes:
    return json.dumps({"path": path, "query": query, "body": body.decode()}).encode()


class Client:
    """One HttpConnection on a fake transport and a fake clock, its own errors written by the router's
    `render_error` as the server's listener has them written."""

    def __init__(self, limits: HttpLimits | None = None, *, timeout_s: float = 30.0, tick_s: float = 0.005,
                 render_error: RenderError = RestApi.render_error) -> None:
        loop = asyncio.get_running_loop()
        self.app = App(timeout_s)
        self.clock = FakeClock()
        self.registry: set[HttpConnection] = set()
        self.protocol = HttpConnection(self.app, limits or HttpLimits(), self.registry, DeadlineWheel(loop, tick_s),
                                       clock=self.clock, render_error=render_error)
        self.transport = FakeTransport(self.protocol)
        self.protocol.connection_made(self.transport)

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.protocol.data_received(chunk)

    def answers(self) -> list[tuple[int, bytes]]:
        return [(status, body) for status, _, body in parse(bytes(self.transport.written))]

    def closed_after_answering(self) -> bool:
        last = parse(bytes(self.transport.written))[-1]
        return self.transport.closed and last[1].get(b"connection") == b"close"


def parse(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines)}
        n = int(headers.get(b"content-length", b"0"))
        out.append((int(status_line.split(b" ")[1]), headers, rest[:n]))
        data = rest[n:]
    return out


def get(target: bytes, *headers: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (target, b"".join(h + b"\r\n" for h in headers))


def post(target: bytes, body: bytes, *headers: bytes) -> bytes:
    return get(target, b"Content-Length: %d" % len(body), *headers) + body


async def next_turn() -> None:
    """Done callbacks and transport losses run on the next loop turn."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


# ---- pipelining ----

@in_loop
async def test_pipelined_answers_go_out_in_request_order_even_when_the_second_finishes_first():
    c = Client()
    c.send(get(b"/wait/a") + get(b"/now") + get(b"/wait/b"))
    c.app.futures["b"].set_result(b'"b"')
    await next_turn()
    assert c.answers() == []  # the first answer is still owed
    c.app.futures["a"].set_result(b'"a"')
    await next_turn()
    assert c.answers() == [(200, b'"a"'), (200, echoed("/now")), (200, b'"b"')]
    assert not c.transport.closed


# ---- bodies ----

@in_loop
async def test_content_length_over_the_body_limit_is_413_before_the_body_arrives():
    c = Client(HttpLimits(max_body_bytes=100))
    c.send(post(b"/at-limit", b"x" * 100))
    c.send(get(b"/over", b"Content-Length: 101"))
    assert c.answers() == [(200, echoed("/at-limit", body=b"x" * 100)),
                           (413, b'{"error": "request body larger than the limit of 100 bytes"}')]
    assert c.closed_after_answering()
    assert [r.path for r in c.app.seen] == ["/at-limit"]


@in_loop
async def test_chunked_body_over_the_limit_is_413():
    c = Client(HttpLimits(max_body_bytes=100))
    c.send(get(b"/over", b"Transfer-Encoding: chunked"), b"3c\r\n" + b"x" * 60 + b"\r\n")
    assert c.answers() == []
    c.send(b"3c\r\n" + b"x" * 60 + b"\r\n0\r\n\r\n")
    assert c.answers() == [(413, b'{"error": "request body larger than the limit of 100 bytes"}')]
    assert c.closed_after_answering()
    assert c.app.seen == []


@in_loop
async def test_gzip_request_body_is_inflated():
    c = Client()
    c.send(post(b"/zipped", gzip.compress(b"hello"), b"Content-Encoding: gzip"))
    assert c.answers() == [(200, echoed("/zipped", body=b"hello"))]


@in_loop
async def test_corrupt_gzip_request_body_is_400_and_closes():
    c = Client()
    c.send(post(b"/zipped", b"not gzip at all", b"Content-Encoding: gzip"))
    assert c.answers() == [(400, b'{"error": "cannot decompress the gzip request body: '
                                 b'Error -3 while decompressing data: incorrect header check"}')]
    assert c.closed_after_answering()
    assert c.app.seen == []


@in_loop
async def test_a_connection_given_no_error_renderer_writes_its_errors_as_plain_text():
    c = Client(HttpLimits(max_body_bytes=100), render_error=plain_error)
    c.send(get(b"/over", b"Content-Length: 101"))
    (status, headers, body), = parse(bytes(c.transport.written))
    assert (status, headers[b"content-type"], body) == (
        413, b"text/plain; charset=utf-8", b"request body larger than the limit of 100 bytes")


@in_loop
async def test_a_handler_that_raises_is_answered_500_and_the_connection_goes_on():
    c = Client()
    c.send(get(b"/bug") + get(b"/now"))
    assert c.answers() == [(500, b'{"error": "internal server error"}'), (200, echoed("/now"))]
    assert not c.transport.closed


@in_loop
async def test_gzip_bomb_inflating_past_the_body_limit_is_413():
    bomb = gzip.compress(b"0" * 100_000)
    assert len(bomb) < 1000  # it passes the limit on the wire, only inflating breaks it
    c = Client(HttpLimits(max_body_bytes=1000))
    c.send(post(b"/zipped", bomb, b"Content-Encoding: gzip"))
    assert c.answers() == [(413, b'{"error": "request body larger than the limit of 1000 bytes"}')]
    assert c.closed_after_answering()


# ---- compressed request bodies ----

def raw_deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


@pytest.mark.parametrize("deflate", [zlib.compress, raw_deflate], ids=["zlib-wrapped", "raw"])
@in_loop
async def test_deflate_request_body_is_inflated_zlib_wrapped_as_tritonclient_sends_it_or_raw(deflate):
    c = Client()
    c.send(post(b"/zipped", deflate(b"hello"), b"Content-Encoding: deflate"))
    assert c.answers() == [(200, echoed("/zipped", body=b"hello"))]


@in_loop
async def test_deflate_bomb_inflating_past_the_body_limit_is_413():
    bomb = zlib.compress(b"0" * 100_000)
    assert len(bomb) < 1000
    c = Client(HttpLimits(max_body_bytes=1000))
    c.send(post(b"/zipped", bomb, b"Content-Encoding: deflate"))
    assert c.answers() == [(413, b'{"error": "request body larger than the limit of 1000 bytes"}')]
    assert c.closed_after_answering()
    assert c.app.seen == []


@in_loop
async def test_a_truncated_deflate_body_is_400():
    c = Client()
    c.send(post(b"/zipped", zlib.compress(b"hello" * 100)[:-8], b"Content-Encoding: deflate"))
    assert c.answers() == [(400, b'{"error": "cannot decompress the deflate request body: truncated deflate stream"}')]
    assert c.app.seen == []


@in_loop
async def test_an_unknown_content_encoding_is_415_naming_the_codings_read_and_the_connection_goes_on():
    c = Client()
    c.send(post(b"/zipped", b"\x0b\x02\x80hello\x03", b"Content-Encoding: br") + get(b"/now"))
    assert c.answers() == [(415, b'{"error": "unsupported Content-Encoding: br"}'), (200, echoed("/now"))]
    assert parse(bytes(c.transport.written))[0][1][b"accept-encoding"] == b"gzip, deflate"
    assert not c.transport.closed
    assert [r.path for r in c.app.seen] == ["/now"]


@pytest.mark.parametrize("coding", [b"identity", b"GZIP", b" Deflate "])
@in_loop
async def test_content_encoding_is_read_without_regard_to_case_and_space_and_identity_is_no_coding(coding):
    body = {b"identity": b"hello", b"GZIP": gzip.compress(b"hello"), b" Deflate ": zlib.compress(b"hello")}[coding]
    c = Client()
    c.send(post(b"/zipped", body, b"Content-Encoding:" + coding))
    assert c.answers() == [(200, echoed("/zipped", body=b"hello"))]


# ---- compressed answers ----

BIG = b"x" * 2000  # echoed back: an answer over the 1024-byte minimum
DECODERS = {None: bytes, b"gzip": gzip.decompress, b"deflate": zlib.decompress}


def compressed_answers(c: Client) -> list[tuple[int, bytes | None, bytes | None, bytes]]:
    """(status, Content-Encoding, Vary, the body decompressed) of each answer."""
    return [(status, headers.get(b"content-encoding"), headers.get(b"vary"),
             DECODERS[headers.get(b"content-encoding")](body))
            for status, headers, body in parse(bytes(c.transport.written))]


@pytest.mark.parametrize(("accept", "coding"), [
    (b"gzip", b"gzip"),
    (b"deflate", b"deflate"),
    (b"gzip, deflate, br", b"gzip"),
    (b"deflate, gzip", b"gzip"),  # at equal q, gzip
    (b"deflate;q=1.0, gzip;q=0.5", b"deflate"),
    (b"gzip;q=0, deflate", b"deflate"),
    (b"gzip; q=0", None),
    (b"gzip;level=9;q=0, deflate", b"deflate"),
    (b"*", b"gzip"),
    (b"gzip;q=0, *", b"deflate"),
    (b"*;q=0", None),
    (b"br, identity", None),
    (b"GZIP", b"gzip"),
    (b"gzip;q=x", None),
])
@in_loop
async def test_the_answer_is_compressed_in_the_coding_accept_encoding_prefers(accept, coding):
    c = Client()
    c.send(post(b"/big", BIG, b"Accept-Encoding: " + accept))
    vary = b"Accept-Encoding" if coding is not None else None
    assert compressed_answers(c) == [(200, coding, vary, echoed("/big", body=BIG))]


@in_loop
async def test_a_compressed_answer_is_smaller_and_its_content_length_counts_the_compressed_bytes():
    c = Client()
    c.send(post(b"/big", BIG, b"Accept-Encoding: gzip"))
    (status, headers, body), = parse(bytes(c.transport.written))  # parse() reads Content-Length bytes
    assert int(headers[b"content-length"]) == len(body) < len(echoed("/big", body=BIG)) // 10
    assert gzip.decompress(body) == echoed("/big", body=BIG)


@in_loop
async def test_an_answer_under_the_minimum_goes_as_it_is_with_vary():
    c = Client(HttpLimits(compression_min_bytes=1024))
    c.send(post(b"/small", b"x" * 900, b"Accept-Encoding: gzip"))
    assert compressed_answers(c) == [(200, None, b"Accept-Encoding", echoed("/small", body=b"x" * 900))]


@in_loop
async def test_a_minimum_of_0_never_compresses():
    c = Client(HttpLimits(compression_min_bytes=0))
    c.send(post(b"/big", BIG, b"Accept-Encoding: gzip"))
    assert compressed_answers(c) == [(200, None, None, echoed("/big", body=BIG))]


@in_loop
async def test_a_request_without_accept_encoding_gets_no_coding_and_no_vary():
    c = Client()
    c.send(post(b"/big", BIG))
    assert compressed_answers(c) == [(200, None, None, echoed("/big", body=BIG))]


@in_loop
async def test_error_answers_are_not_compressed_as_tritonclient_reads_them_undecompressed():
    c = Client()
    c.send(get(b"/missing", b"Accept-Encoding: gzip"))
    assert compressed_answers(c) == [(404, None, b"Accept-Encoding", json.dumps({"error": "x" * 2000}).encode())]


@in_loop
async def test_a_binary_answer_keeps_the_length_of_its_uncompressed_json_header_as_triton_does():
    c = Client()
    c.send(post(b"/binary", b"", b"Accept-Encoding: deflate"))
    (status, headers, body), = parse(bytes(c.transport.written))
    assert (status, headers[b"content-encoding"]) == (200, b"deflate")
    assert headers[b"inference-header-content-length"] == b"%d" % len(BINARY_HEADER)
    assert zlib.decompress(body) == BINARY_ANSWER


@in_loop
async def test_each_pipelined_request_is_answered_in_the_coding_it_asked_for():
    c = Client()
    c.send(post(b"/a", BIG, b"Accept-Encoding: gzip") + post(b"/b", BIG)
           + post(b"/c", BIG, b"Accept-Encoding: deflate"))
    assert [answer[:3] for answer in compressed_answers(c)] == [
        (200, b"gzip", b"Accept-Encoding"), (200, None, None), (200, b"deflate", b"Accept-Encoding")]


@in_loop
async def test_the_answer_to_a_head_request_is_not_compressed():
    c = Client()
    c.send(get(b"/big?q=" + BIG, b"Accept-Encoding: gzip").replace(b"GET", b"HEAD", 1) + get(b"/after"))
    head, _, rest = bytes(c.transport.written).partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(echoed("/big", "q=" + BIG.decode())) in head
    assert b"Content-Encoding" not in head
    assert rest.startswith(b"HTTP/1.1 200 OK")


# ---- time-outs (fake clock) ----

@in_loop
async def test_request_that_stalls_past_the_read_timeout_is_408():
    c = Client(HttpLimits(read_timeout_s=30.0))
    c.send(b"POST /slow HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    c.clock.now += 30.0
    c.protocol.check_timeouts(c.clock())
    assert c.answers() == []
    c.clock.now += 0.1
    c.protocol.check_timeouts(c.clock())
    assert c.answers() == [(408, b'{"error": "the request did not arrive in time"}')]
    assert c.closed_after_answering()


@in_loop
async def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    c = Client(HttpLimits(idle_timeout_s=75.0))
    c.send(get(b"/now"))
    c.clock.now += 75.0
    c.protocol.check_timeouts(c.clock())
    assert not c.transport.closed
    c.clock.now += 0.1
    c.protocol.check_timeouts(c.clock())
    assert c.transport.closed
    await next_turn()
    assert c.registry == set()


@in_loop
async def test_a_connection_waiting_on_an_answer_is_not_idle():
    c = Client(HttpLimits(idle_timeout_s=75.0))
    c.send(get(b"/wait/a"))
    c.clock.now += 100.0
    c.protocol.check_timeouts(c.clock())
    assert not c.transport.closed


# ---- flow control ----

@in_loop
async def test_reading_pauses_at_max_pipeline_pending_and_resumes_when_half_drained():
    c = Client()
    c.send(b"".join(get(b"/wait/%d" % i) for i in range(MAX_PIPELINE - 1)))
    assert c.transport.reading
    c.send(get(b"/wait/%d" % (MAX_PIPELINE - 1)))
    assert not c.transport.reading
    for i in range(MAX_PIPELINE // 2):  # each answer lets one more waiting request reach the handler
        c.app.futures[str(i)].set_result(b"1")
        await next_turn()
    assert not c.transport.reading  # MAX_PIPELINE // 2 still owed
    c.app.futures[str(MAX_PIPELINE // 2)].set_result(b"1")
    await next_turn()
    assert c.transport.reading
    assert len(c.answers()) == MAX_PIPELINE // 2 + 1


@in_loop
async def test_one_write_of_200_pipelined_requests_is_computed_a_few_at_a_time_and_answered_in_order():
    c = Client()
    c.send(b"".join(get(b"/wait/%d" % i) for i in range(200)))
    assert len(c.app.seen) == MAX_DISPATCHED  # the rest wait in the connection, not in the model's queue
    answered = 0
    while answered < 200:
        waiting = [name for name, f in c.app.futures.items() if not f.done()]
        assert 0 < len(waiting) <= MAX_DISPATCHED
        for name in waiting:
            c.app.futures[name].set_result(name.encode())
        await next_turn()
        answered = len(c.answers())
    assert c.answers() == [(200, b"%d" % i) for i in range(200)]
    assert len(c.app.seen) == 200


@in_loop
async def test_the_answer_to_a_head_request_has_no_body_so_the_next_answer_keeps_its_framing():
    c = Client()
    c.send(get(b"/now").replace(b"GET", b"HEAD", 1) + get(b"/after"))
    head, _, rest = bytes(c.transport.written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: %d" % len(echoed("/now")) in head
    assert rest.startswith(b"HTTP/1.1 200 OK")  # no body came between the two answers
    assert parse(rest) == [(200, parse(rest)[0][1], echoed("/after"))]


@in_loop
async def test_pause_writing_pauses_reading_until_resume_writing():
    c = Client()
    c.protocol.pause_writing()
    assert not c.transport.reading
    c.send(get(b"/now"))  # answering does not resume reading while the socket buffer is full
    assert not c.transport.reading
    c.protocol.resume_writing()
    assert c.transport.reading


# ---- deferred answers ----

@in_loop
async def test_deferred_past_its_deadline_is_answered_by_on_timeout_and_its_future_cancelled():
    c = Client(timeout_s=0.01, tick_s=0.001)
    c.send(get(b"/wait/a") + get(b"/now"))
    await asyncio.sleep(0.1)
    assert c.answers() == [(504, TIMED_OUT), (200, echoed("/now"))]
    assert c.app.futures["a"].cancelled()
    assert not c.transport.closed


@in_loop
async def test_connection_lost_cancels_the_pending_futures():
    c = Client()
    c.send(get(b"/wait/a") + get(b"/wait/b"))
    c.protocol.connection_lost(ConnectionResetError())
    assert c.app.futures["a"].cancelled() and c.app.futures["b"].cancelled()
    assert c.registry == set()


# ---- header block and URL limits ----

@in_loop
async def test_header_block_over_the_limit_is_431_and_closes():
    c = Client()
    c.send(get(b"/fits", b"X-Pad: " + b"a" * 60_000))
    c.send(get(b"/huge", b"X-Pad: " + b"a" * (1 << 20)))
    assert c.answers() == [(200, echoed("/fits")),
                           (431, b'{"error": "request header block larger than the limit of 65536 bytes"}')]
    assert c.closed_after_answering()
    assert [r.path for r in c.app.seen] == ["/fits"]


@in_loop
async def test_one_endless_header_line_is_431_before_it_ends():
    c = Client()
    c.send(b"GET / HTTP/1.1\r\nX-Pad: ")
    c.send(*[b"a" * 16384] * 3)
    assert c.answers() == []
    c.send(*[b"a" * 16384] * 2)
    assert c.answers() == [(431, b'{"error": "request header block larger than the limit of 65536 bytes"}')]
    assert c.transport.closed


@in_loop
async def test_431_goes_out_after_the_answers_already_owed_and_never_with_100_continue():
    c = Client(HttpLimits(max_header_bytes=1000))
    c.send(get(b"/wait/a"), get(b"/huge", b"Expect: 100-continue", b"X-Pad: " + b"a" * 2000))
    assert c.answers() == []
    c.app.futures["a"].set_result(b'"a"')
    await next_turn()
    assert c.answers() == [(200, b'"a"'),
                           (431, b'{"error": "request header block larger than the limit of 1000 bytes"}')]
    assert c.closed_after_answering()


@in_loop
async def test_413_with_expect_100_continue_waits_for_the_answers_owed():
    c = Client(HttpLimits(max_body_bytes=100))
    c.send(get(b"/wait/a"), get(b"/over", b"Expect: 100-continue", b"Content-Length: 101"))
    assert c.transport.written == b""
    c.app.futures["a"].set_result(b'"a"')
    await next_turn()
    assert c.answers() == [(200, b'"a"'), (413, b'{"error": "request body larger than the limit of 100 bytes"}')]


@pytest.mark.parametrize("query", [b"?q=", b"%41"])
@in_loop
async def test_url_over_the_limit_is_414_and_closes(query):
    c = Client()
    c.send(get(b"/long" + query + b"x" * 65536))
    assert c.answers() == [(414, b'{"error": "request URL longer than the limit of 65536 bytes"}')]
    assert c.transport.written.startswith(b"HTTP/1.1 414 URI Too Long\r\n")  # RFC 9110's reason phrase
    assert c.closed_after_answering()
    assert c.app.seen == []


@in_loop
async def test_endless_url_is_414_before_the_request_line_ends():
    c = Client()
    c.send(b"GET /long?q=", *[b"x" * 16384] * 5)
    assert c.answers() == [(414, b'{"error": "request URL longer than the limit of 65536 bytes"}')]
    assert c.transport.closed


@pytest.mark.parametrize("target", [b"http://host:99999/x", b"/long?q=" + b"x" * 70_000])
@in_loop
async def test_url_httptools_cannot_split_is_400_in_its_own_slot_and_the_connection_goes_on(target):
    c = Client(HttpLimits(max_header_bytes=1 << 20))  # room for a URL longer than parse_url's 65535
    c.send(get(b"/wait/a") + get(target) + get(b"/now?x=1"))
    assert c.answers() == []
    c.app.futures["a"].set_result(b'"a"')
    await next_turn()
    assert c.answers() == [(200, b'"a"'), (400, b'{"error": "malformed request URL"}'),
                           (200, echoed("/now", "x=1"))]
    assert not c.transport.closed


# ---- half-closed clients ----

@in_loop
async def test_half_closed_client_gets_the_answers_owed_then_the_connection_closes():
    c = Client()
    c.send(get(b"/wait/a") + get(b"/wait/b"))
    assert c.protocol.eof_received() is True  # keep our sending side open
    c.app.futures["b"].set_result(b'"b"')
    await next_turn()
    assert not c.transport.closed
    c.app.futures["a"].set_result(b'"a"')
    await next_turn()
    assert c.answers() == [(200, b'"a"'), (200, b'"b"')]
    assert c.transport.closed
    assert c.registry == set()  # nothing left behind


@in_loop
async def test_half_closed_client_owed_nothing_is_closed_at_once():
    c = Client()
    c.send(get(b"/now"), b"GET /never-finished HTTP/1.1\r\n")
    assert not c.protocol.eof_received()  # asyncio closes the transport
    assert c.answers() == [(200, echoed("/now"))]


@in_loop
async def test_half_closed_client_whose_request_times_out_is_answered_and_closed():
    c = Client(timeout_s=0.01, tick_s=0.001)
    c.send(get(b"/wait/a"))
    assert c.protocol.eof_received() is True
    await asyncio.sleep(0.1)
    assert c.answers() == [(504, TIMED_OUT)]
    assert c.transport.closed
    assert c.registry == set()


async def half_close_over_a_socket() -> tuple[bytes, set[HttpConnection]]:
    loop = asyncio.get_running_loop()
    registry: set[HttpConnection] = set()
    app = App(timeout_s=5.0)
    server = await loop.create_server(lambda: HttpConnection(app, HttpLimits(), registry, DeadlineWheel(loop)),
                                      "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
    try:
        writer.write(get(b"/wait/a"))
        writer.write_eof()  # shutdown(SHUT_WR), as `nc -N` does
        while "a" not in app.futures:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)  # the EOF reaches the server before the answer is ready
        if not app.futures["a"].done():  # a server that closed on the EOF cancelled it
            app.futures["a"].set_result(b'"a"')
        answer = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closes after answering
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
    return answer, registry


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_half_closed_client_on_a_real_socket_gets_its_answer(loop_name):
    """The fake transport cannot show what the event loops do with eof_received's answer."""
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        answer, registry = uvloop.run(half_close_over_a_socket())
    else:
        answer, registry = asyncio.run(half_close_over_a_socket())
    assert [(s, b) for s, _, b in parse(answer)] == [(200, b'"a"')]
    assert registry == set()
