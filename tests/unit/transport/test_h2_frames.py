"""The HTTP/2 frame layer and HPACK of the native gRPC transport, below the socket: frames as hyperframe reads
them, request header blocks decoded (and refused) as RFC 9113 says, and the header-block cache, which must never
hand a block another block's meaning, whatever the client does to its HPACK table."""

from __future__ import annotations

import random
import struct

import hpack
import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame

from serving.transport.h2 import frames as f
from serving.transport.h2.headers import (
    HeaderDecoder,
    Malformed,
    call_headers,
    literal,
    metadata_block,
    parse_timeout,
    percent_encoded,
    status_block,
    trailers_only,
)
from serving.transport.rpc.native import answer_coding

PATH = "/inference.GRPCInferenceService/ServerLive"


def parsed(data: bytes) -> list[Frame]:
    frames, pos = [], 0
    while pos < len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos:pos + 9]))
        frame.parse_body(memoryview(data[pos + 9:pos + 9 + length]))
        frames.append(frame)
        pos += 9 + length
    return frames


def request(path: str = PATH, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra]


def test_the_frame_header_reads_back_as_length_type_flags_and_stream():
    data = f.frame(f.DATA, f.END_STREAM, 7, b"abc")
    type_length, flags, stream = f.FRAME_HEAD.unpack_from(data)
    assert (type_length >> 8, type_length & 0xFF, flags, stream) == (3, f.DATA, f.END_STREAM, 7)
    (frame,) = parsed(data)
    assert isinstance(frame, DataFrame) and frame.data == b"abc" and "END_STREAM" in frame.flags


def test_a_header_block_larger_than_a_frame_goes_on_in_continuation_frames():
    block = bytes(range(256)) * 100
    frames = parsed(f.header_frames(3, block, True, 16384))
    assert isinstance(frames[0], HeadersFrame) and all(isinstance(x, ContinuationFrame) for x in frames[1:])
    assert b"".join(x.data for x in frames) == block
    assert "END_STREAM" in frames[0].flags and "END_HEADERS" in frames[-1].flags
    assert not any("END_HEADERS" in x.flags for x in frames[:-1])


def test_data_is_split_at_the_peers_frame_size_with_end_stream_on_the_last():
    frames = parsed(b"".join(f.data_frames(5, b"x" * 40000, 16384, True)))
    assert [len(x.data) for x in frames] == [16384, 16384, 40000 - 32768]
    assert ["END_STREAM" in x.flags for x in frames] == [False, False, True]


def test_settings_window_update_rst_goaway_and_ping_read_back():
    settings, update, rst, goaway, ping = parsed(
        f.settings({f.MAX_CONCURRENT_STREAMS: 1000, f.INITIAL_WINDOW_SIZE: 1 << 20}) + f.window_update(0, 99)
        + f.rst_stream(3, f.CANCEL) + f.goaway(7, f.ENHANCE_YOUR_CALM, b"calm") + f.ping(b"12345678", ack=True))
    assert settings.settings == {f.MAX_CONCURRENT_STREAMS: 1000, f.INITIAL_WINDOW_SIZE: 1 << 20}
    assert update.window_increment == 99 and rst.error_code == f.CANCEL
    assert (goaway.last_stream_id, goaway.error_code, goaway.additional_data) == (7, f.ENHANCE_YOUR_CALM, b"calm")
    assert ping.opaque_data == b"12345678" and "ACK" in ping.flags


@pytest.mark.parametrize("value, seconds", [(b"5S", 5.0), (b"100m", 0.1), (b"2H", 7200.0), (b"3M", 180.0),
                                            (b"250u", 250e-6), (b"12345678n", 0.012345678)])
def test_grpc_timeout_parses_every_unit(value, seconds):
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"123456789S", b"5", b"S", b"5s", b"-5S", b"5 S", b""])
def test_a_grpc_timeout_of_more_than_8_digits_or_an_unknown_unit_does_not_parse(value):
    assert parse_timeout(value) is None


def test_a_request_block_gives_the_path_deadline_codings_and_metadata():
    encoder, decoder = hpack.Encoder(), HeaderDecoder(16384)
    headers = decoder.request(encoder.encode(request(
        PATH, ("grpc-timeout", "100m"), ("grpc-encoding", "gzip"), ("grpc-accept-encoding", "identity,gzip"),
        ("authorization", "tok"), ("x-request-id", "r1"), ("trace-bin", "AAEC"), ("user-agent", "ua"))))
    assert headers.path == PATH and headers.timeout == pytest.approx(0.1) and headers.encoding == "gzip"
    assert headers.accept_encoding == b"identity,gzip" and headers.authorization == b"tok"
    assert headers.request_id == "r1" and headers.http_status == 200
    assert headers.metadata == (("authorization", "tok"), ("x-request-id", "r1"), ("trace-bin", b"\x00\x01\x02"),
                                ("user-agent", "ua"))


@pytest.mark.parametrize("fields", [
    [(":method", "POST"), (":scheme", "http"), ("content-type", "application/grpc")],  # no :path
    [(":method", "POST"), ("x", "1"), (":scheme", "http"), (":path", PATH)],  # pseudo after regular
    [(":method", "POST"), (":method", "POST"), (":scheme", "http"), (":path", PATH)],  # repeated
    [(":method", "POST"), (":status", "200"), (":scheme", "http"), (":path", PATH)],  # a response's
    request(PATH, ("Upper", "1")),
    request(PATH, ("connection", "keep-alive")),
    request(PATH, ("te", "gzip")),
    request(PATH, ("x", "a\x00b")),
])
def test_a_malformed_request_block_is_refused(fields):
    with pytest.raises(Malformed):
        HeaderDecoder(16384).request(hpack.Encoder().encode(fields))


def test_not_a_post_or_not_grpc_content_is_answered_with_its_http_status():
    decoder = HeaderDecoder(16384)
    assert decoder.request(hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                                   (":path", PATH)])).http_status == 405
    assert decoder.request(hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", PATH),
                                                   ("content-type", "text/plain")])).http_status == 415


def test_a_header_list_over_its_limit_does_not_decode():
    with pytest.raises(hpack.OversizedHeaderListError):
        HeaderDecoder(1024).request(hpack.Encoder().encode(request(PATH, ("x", "y" * 2000))))


def test_a_table_size_update_past_our_table_size_does_not_decode():
    encoder = hpack.Encoder()
    encoder.header_table_size = 8192
    with pytest.raises(hpack.InvalidTableSizeError):
        HeaderDecoder(16384).request(encoder.encode(request()))


def test_a_repeated_block_is_decoded_once_and_a_block_that_changes_the_table_empties_the_cache():
    encoder, decoder = hpack.Encoder(), HeaderDecoder(16384)
    first = encoder.encode(request())  # indexes its fields: changes the table, not stored
    assert decoder.request(first).path == PATH and not decoder.cache
    again = encoder.encode(request())  # all indexed now: the table stays as it is
    decoder.request(again)
    decoder.request(again)
    assert (decoder.hits, decoder.misses) == (1, 2) and list(decoder.cache) == [again]
    decoder.request(encoder.encode(request("/other/Method")))  # new entries
    assert not decoder.cache and decoder.clears == 1


def test_the_cache_keeps_at_most_its_entries_and_never_a_long_block():
    decoder = HeaderDecoder(65536, cache_entries=4, cache_block_bytes=200)
    for i in range(10):
        decoder.request(hpack.Encoder().encode([(k, v, True) for k, v in request(f"/s/M{i}")]))
    assert len(decoder.cache) == 4
    decoder.request(hpack.Encoder().encode([(k, v, True) for k, v in request("/s/" + "x" * 300)]))
    assert len(decoder.cache) == 4 and all(len(block) <= 200 for block in decoder.cache)


@pytest.mark.parametrize("seed", range(12))
def test_a_cached_block_never_answers_for_a_table_that_changed(seed):
    """A client (an attacker) that replays old raw blocks after changing its table, with blocks that index,
    evict, shrink and grow the table: every block must mean what a fresh decoder says it means."""
    rng = random.Random(seed)
    encoder, ours, reference = hpack.Encoder(), HeaderDecoder(65536, cache_entries=16), hpack.Decoder(65536)
    seen: list[bytes] = []
    hits = 0
    for _ in range(400):
        if seen and rng.random() < 0.45:
            block = rng.choice(seen)  # replayed bytes: their meaning may have changed since
        else:
            if rng.random() < 0.05:
                encoder.header_table_size = rng.choice([0, 64, 256, 4096])
            path = rng.choice(["/a/A", "/b/B", "/c/C", "/d/" + "x" * rng.randrange(200) if rng.random() < 0.1
                               else "/d/D"])
            token = rng.choice(["tok-1", "tok-2", "tok-3" * (rng.randrange(1, 30) if rng.random() < 0.1 else 1)])
            sensitive = rng.random() < 0.2
            block = encoder.encode([(k, v, sensitive) for k, v in request(path, ("authorization", token),
                                                                         ("x-request-id", str(rng.randrange(4))))])
            seen.append(block)
        try:
            expected = _meaning(reference.decode(block, raw=True))
        except (hpack.HPACKError, IndexError, ValueError):
            hits += ours.hits
            encoder, ours, reference, seen = hpack.Encoder(), HeaderDecoder(65536, cache_entries=16), \
                hpack.Decoder(65536), []  # the connection would end here: start another
            continue
        assert _ours(ours, block) == expected
    assert hits + ours.hits > 0


def _meaning(fields: list[tuple[bytes, bytes]]) -> object:
    """What a block means to a call: its headers, or that it is malformed (a block replayed against another
    table can decode to fields in an order no request has)."""
    try:
        headers = call_headers(fields)
    except Malformed:
        return "malformed"
    return headers.path, headers.authorization, headers.request_id, headers.metadata


def _ours(decoder: HeaderDecoder, block: bytes) -> object:
    try:
        headers = decoder.request(block)
    except Malformed:
        return "malformed"
    return headers.path, headers.authorization, headers.request_id, headers.metadata


def test_answers_are_literals_that_never_touch_the_clients_table():
    decoder = hpack.Decoder()
    fields = decoder.decode(trailers_only(5, "no model «m» 100%", metadata_block(
        [("x-request-id", "r1"), ("details-bin", b"\x00\xff"), ("Bad", "x"), ("grpc-status", "0"), ("v", "a\nb")])))
    assert fields == [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "5"),
                      ("grpc-message", "no model %C2%ABm%C2%BB 100%25"), ("x-request-id", "r1"),
                      ("details-bin", "AP8")]
    assert len(decoder.header_table.dynamic_entries) == 0
    assert hpack.Decoder().decode(status_block(0)) == [("grpc-status", "0")]
    assert literal(b"a", b"b") == b"\x00\x01a\x01b"
    assert percent_encoded("a b") == b"a b"


@pytest.mark.parametrize("level, accepted, coding", [
    (0, b"identity,deflate,gzip", None), (1, b"identity,deflate,gzip", "gzip"), (1, b"deflate", "deflate"),
    (3, b"identity,deflate,gzip", "deflate"), (3, b"gzip", "gzip"), (1, b"identity", None)])
def test_answers_are_compressed_as_the_level_and_the_clients_accept_encoding_say(level, accepted, coding):
    assert answer_coding(level, accepted) == coding


def test_settings_payload_parses_in_six_byte_pairs():
    payload = struct.pack(">HIHI", f.INITIAL_WINDOW_SIZE, 10, 0xFF, 7)
    assert f.parse_settings(payload) == [(f.INITIAL_WINDOW_SIZE, 10), (0xFF, 7)]
