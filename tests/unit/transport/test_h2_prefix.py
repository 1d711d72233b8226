"""The header decoder's prefixes (serving/transport/h2/headers.py): a request block that is a known first part's
bytes and more fields is decoded from where that part ends. A mistake there would hand a call another call's
headers, so every block here, whatever a client (an attacker) does to its HPACK table, must mean exactly what
a reference hpack.Decoder says the whole block means, or fail where the reference fails."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from serving.transport.h2.headers import (
    HeaderDecoder,
    Malformed,
    call_headers,
    extended,
    literal_tail,
    plain_literals,
)

PATH = "/inference.GRPCInferenceService/ModelInfer"
HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
DECODE_ERRORS = (hpack.HPACKError, IndexError, ValueError)


def base(path: str = PATH) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "grpc-python/1.0")]


def integer(value: int, bits: int, first: int = 0) -> bytes:
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((first | value,))
    out, value = bytearray((first | limit,)), value - limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes((value,)))


def string(data: bytes, huffman: bool) -> bytes:
    if huffman:
        data = HUFFMAN.encode(data)
    return integer(len(data), 7, 0x80 if huffman else 0) + data


def plain(name: bytes, value: bytes, rng: random.Random) -> bytes:
    """A literal without indexing (or never indexed) with a literal name, as a client's per-call metadata."""
    return rng.choice((b"\x00", b"\x10")) + string(name, rng.random() < 0.5) + string(value, rng.random() < 0.5)


NAMES = [b"x-request-id", b"x-request-id", b"authorization", b"mm-model-id", b"mm-model-id-bin", b"trace-bin",
         b"x-custom", b"te", b"content-type", b"grpc-timeout", b"grpc-encoding", b"grpc-other", b":path",
         b"connection", b"Upper", b"bad name", b""]
VALUES = [b"abc", b"trailers", b"application/grpc", b"text/plain", b"10S", b"1x", b"gzip", b"identity",
          b"/other/Method", b"AAEC", b"!!notbase64", b"bad\r\nvalue", b" lead", b"", b"\xff\xfe"]


def tail_field(rng: random.Random, hostile: float) -> bytes:
    """One field after the repeating part: a plain literal; or (with probability `hostile`) what must be decoded
    by hpack or refused (an indexed field, a literal that indexes: it changes the table, a table size update,
    garbage)."""
    roll = rng.random()
    if roll >= hostile:
        if rng.random() < 0.7:  # what clients send
            name = rng.choice((b"x-request-id", b"authorization", b"mm-model-id", b"x-custom", b"trace-bin"))
            return plain(name, b"AAEC%d" % rng.randrange(10**6), rng)
        return plain(rng.choice(NAMES), rng.choice(VALUES) + str(rng.randrange(1000)).encode() * rng.randrange(2),
                     rng)
    roll = rng.random()
    if roll < 0.3:
        return integer(rng.randrange(1, 70), 7, 0x80)  # indexed (static or dynamic, or past the table)
    if roll < 0.55:
        return b"\x40" + string(rng.choice(NAMES), False) + string(rng.choice(VALUES), False)  # indexes
    if roll < 0.7:
        return integer(rng.choice((0, 100, 4096, 5000)), 5, 0x20)  # a table size update
    if roll < 0.85:
        return integer(rng.randrange(1, 70), 4, rng.choice((0x00, 0x10))) + string(b"v", False)  # indexed name
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))  # garbage


def meaning(headers: object) -> object:
    slots = ("path", "timeout", "encoding", "accept_encoding", "metadata", "authorization", "request_id",
             "http_status", "problem")
    return tuple(getattr(headers, slot) for slot in slots)


def reference_meaning(reference: hpack.Decoder, block: bytes) -> object:
    try:
        fields = reference.decode(block, raw=True)
    except DECODE_ERRORS:
        return "does not decode"
    try:
        return meaning(call_headers(fields))  # type: ignore[arg-type]
    except Malformed:
        return "malformed"


def our_meaning(decoder: HeaderDecoder, block: bytes) -> object:
    try:
        return meaning(decoder.request(block))
    except DECODE_ERRORS:
        return "does not decode"
    except Malformed:
        return "malformed"


@pytest.mark.parametrize("seed", range(40))
def test_a_block_decoded_from_its_prefix_means_what_the_whole_block_means(seed):
    rng = random.Random(seed)
    max_list = rng.choice((700, 1000, 16384))
    hostile = rng.choice((0.0, 0.02, 0.05, 0.15))

    def fresh() -> tuple[hpack.Encoder, HeaderDecoder, hpack.Decoder]:
        return (hpack.Encoder(), HeaderDecoder(max_list, cache_entries=rng.choice((4, 512)), prefix_entries=4),
                hpack.Decoder(max_list))

    encoder, ours, reference = fresh()
    calls = [base(PATH) + [("authorization", "tok-1")], base("/a/A")]
    seen: list[bytes] = []
    prefix_hits = 0
    for _ in range(600):
        if seen and rng.random() < 0.25:
            block = rng.choice(seen)  # replayed: what it means may have changed since
        else:
            if rng.random() < 0.02:
                encoder.header_table_size = rng.choice([0, 64, 256, 4096])
            if rng.random() < 0.03:  # new fields: the table changes
                block = encoder.encode(base("/b/B" + "x" * rng.randrange(40)) + [("authorization", "tok-3")])
            else:
                block = encoder.encode(rng.choice(calls))
            if rng.random() < 0.3:  # a replayed first part, with a new tail
                block = rng.choice(seen) if seen else block
                block = block[:literal_tail(block) or len(block)]
            block += b"".join(tail_field(rng, hostile) for _ in range(rng.choice((0, 1, 1, 1, 2, 3))))
            seen.append(block)
        expected = reference_meaning(reference, block)
        assert our_meaning(ours, block) == expected, block
        if expected == "does not decode":  # the connection ends here (COMPRESSION_ERROR): start another
            prefix_hits += ours.prefix_hits
            encoder, ours, reference = fresh()
            seen = []
    assert prefix_hits + ours.prefix_hits > 0


def test_a_request_id_per_call_is_read_from_the_prefix_after_the_second_call():
    encoder, decoder = hpack.Encoder(), HeaderDecoder(16384)
    decoder.request(encoder.encode(base()))  # indexes its fields
    rng = random.Random(0)
    blocks = [encoder.encode(base()) + plain(b"x-request-id", b"id-%d" % i, rng) for i in range(5)]
    for i, block in enumerate(blocks):
        headers = decoder.request(block)
        assert headers.request_id == f"id-{i}" and headers.path == PATH
        assert ("x-request-id", f"id-{i}") in headers.metadata
    assert decoder.prefix_hits == 3 and decoder.prefix_lengths == [len(encoder.encode(base()))]
    decoder.request(encoder.encode(base("/other/M")))  # new entries: what was learnt is forgotten
    assert not decoder.prefixes and not decoder.prefix_lengths and not decoder.seen


def test_a_prefix_is_not_used_past_the_header_list_limit():
    encoder, decoder, reference = hpack.Encoder(), HeaderDecoder(500), hpack.Decoder(500)
    first = encoder.encode(base())
    for d in (decoder, reference):
        d.decode(first, raw=True) if isinstance(d, hpack.Decoder) else d.request(first)
    block = encoder.encode(base())
    rng = random.Random(1)
    for i in range(3):
        decoder.request(block + plain(b"x-request-id", b"%d" % i, rng))
    assert decoder.prefix_lengths
    big = block + plain(b"x-request-id", b"y" * 200, rng)
    with pytest.raises(hpack.OversizedHeaderListError):
        reference.decode(big, raw=True)
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.request(big)


def test_a_table_size_update_after_a_prefix_is_refused_as_the_whole_block_is():
    encoder, decoder = hpack.Encoder(), HeaderDecoder(16384)
    decoder.request(encoder.encode(base()))
    block = encoder.encode(base())
    rng = random.Random(2)
    for i in range(3):
        decoder.request(block + plain(b"x-request-id", b"%d" % i, rng))
    assert decoder.prefix_lengths
    with pytest.raises(hpack.HPACKDecodingError):
        decoder.request(block + integer(4096, 5, 0x20) + plain(b"x-request-id", b"z", rng))


@pytest.mark.parametrize("seed", range(20))
def test_plain_literals_read_what_hpack_reads_or_leave_it_to_hpack(seed):
    rng = random.Random(seed)
    for _ in range(300):
        tail = b"".join(plain(rng.choice(NAMES), rng.choice(VALUES), rng) for _ in range(rng.randrange(1, 4)))
        if rng.random() < 0.5:  # damaged: truncated, a byte changed, bytes added, an over-long integer
            roll = rng.random()
            if roll < 0.3:
                tail = tail[:rng.randrange(len(tail))]
            elif roll < 0.6:
                at = rng.randrange(len(tail))
                tail = tail[:at] + bytes((rng.randrange(256),)) + tail[at + 1:]
            elif roll < 0.8:
                tail += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
            else:
                tail = b"\x00" + bytes((0x7F,)) + b"\x80" * rng.randrange(3, 7) + b"\x01" + tail
        ours = plain_literals(tail)
        try:
            theirs = hpack.Decoder().decode(tail, raw=True)
        except DECODE_ERRORS:
            assert ours is None
            continue
        assert ours is None or ours == [tuple(f) for f in theirs]


def test_literal_tail_finds_where_the_trailing_plain_literals_start():
    encoder = hpack.Encoder()
    head = encoder.encode(base()) + encoder.encode(base())  # literals that index, then indexed fields
    rng = random.Random(3)
    tail = plain(b"x-request-id", b"1", rng) + b"\x0f\x2b" + string(b"v", True)  # literal with an indexed name
    assert literal_tail(head + tail) == len(head)
    assert literal_tail(head) is None  # no literal tail
    assert literal_tail(tail) is None  # nothing before it
    assert literal_tail(head + tail + b"\x82") is None  # a field after it
    assert literal_tail(head + tail[:-1]) is None  # truncated
    assert literal_tail(head + b"\x00\x85abc") is None


def test_extended_is_call_headers_of_both_lists_or_refuses():
    fields = [(k.encode(), v.encode()) for k, v in base()]
    prefix = call_headers(fields)
    for tail in ([(b"x-request-id", b"r1"), (b"authorization", b"Bearer t")], [(b"trace-bin", b"AAEC")], []):
        assert meaning(extended(prefix, tail)) == meaning(call_headers(fields + tail))
    for tail in ([(b":path", b"/x")], [(b"grpc-timeout", b"1S")], [(b"te", b"x")], [(b"Upper", b"v")],
                 [(b"connection", b"close")], [(b"grpc-x", b"v")], [(b"a", b"bad\n")]):
        assert extended(prefix, tail) is None
    with pytest.raises(Malformed):
        extended(prefix, [(b"trace-bin", b"A")])
