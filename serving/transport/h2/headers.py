"""HPACK for gRPC calls: request header blocks decoded by `hpack` behind a per-connection cache, and the
answers' header blocks written without the dynamic table.

The cache maps a request's raw header block to what the call needs of it (`CallHeaders`: path, deadline,
codings, metadata). A block's meaning depends on the HPACK dynamic table it was decoded against, so a block is
stored only when decoding it left the table as it was (same entry count, same object first, same size limit),
and every decode that changes the table empties the cache: a hit is then always a block decoded against the
table as it is now, and one call never gets another's path or token. grpcio (C-core) and grpc-js send the same
bytes for the same call, so a client's repeated calls cost one dict lookup.

A block with a value that changes per call (a request id) misses. Such a value is a literal without indexing
(RFC 7541 6.2.2/6.2.3: it leaves the table as it is) after fields that repeat, so the repeating first part
(a *prefix*) is remembered too: the second time a missed block's bytes up to its trailing literals are seen,
those bytes are decoded alone by hpack on a copy of the table, and if that leaves the copy as it was they
are a prefix. A later block that is a prefix's bytes and more is decoded by hpack from where the prefix ends
(its first part means what it meant: the table has not changed since, or the prefixes were forgotten with
the cache); HPACK decodes a block field by field, so the two parts mean what the whole block means, with two
block-wide rules kept by hand: a table size update may only start a block (such a tail is decoded whole),
and the header list size limit counts both parts. A request id then costs ~4 us instead of ~35.

Answers never index: `:status 200` is static entry 8, everything else a literal without indexing, so the
pre-encoded constant blocks stay valid whatever the client's table does, and a value of one call (its request
id, its error message) is never remembered by the connection.
"""

from __future__ import annotations

import binascii
import collections
import copy
import logging
import re
from urllib.parse import quote_from_bytes

import hpack
from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

# hpack logs every header it decodes at DEBUG, values included: `authorization` tokens would reach the log
# with --log_level=DEBUG. Its records stop at WARNING whatever the server's level (and its debug calls then
# cost one level check).
logging.getLogger("hpack").setLevel(logging.WARNING)

#: Codings a request's messages may be compressed in (grpc's names; deflate is the zlib format).
ENCODINGS = ("gzip", "deflate")
ACCEPT_ENCODING = b"identity,deflate,gzip"

_TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
#: Field names and values a request may not carry (RFC 9113 8.2.1; names lower case).
_BAD_NAME = re.compile(rb"[^a-z0-9!#$%&'*+\-.^_`|~]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
#: Connection-specific fields: malformed in HTTP/2 (RFC 9113 8.2.2).
_CONNECTION_FIELDS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
#: Headers gRPC reads itself: not the call's metadata.
_RESERVED = frozenset({b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"})
#: Metadata names a handler may answer (gRPC: lower-case letters, digits, `-_.`; not `grpc-` reserved ones).
_METADATA_NAME = re.compile(r"[0-9a-z_.\-]+")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


class Malformed(Exception):
    """A request header block that breaks HTTP/2's rules for one (RFC 9113 8.1.1): the stream is reset
    PROTOCOL_ERROR, the connection goes on."""


class CallHeaders:
    """What a gRPC call needs of its request headers, shared by the calls whose blocks are the same bytes
    (so nothing here is changed after it is made)."""

    __slots__ = ("path", "timeout", "encoding", "accept_encoding", "metadata", "authorization", "request_id",
                 "http_status", "problem")

    def __init__(self) -> None:
        self.path = ""
        self.timeout: float | None = None  # seconds (grpc-timeout)
        self.encoding: str | None = None  # grpc-encoding, lower case; None: identity
        self.accept_encoding = b""  # grpc-accept-encoding as sent
        self.metadata: tuple[tuple[str, str | bytes], ...] = ()  # as grpc's invocation_metadata()
        self.authorization: bytes | None = None
        self.request_id: str | None = None  # x-request-id as sent
        self.http_status = 200  # 405 not a POST, 415 not application/grpc
        self.problem: str | None = None  # answered INTERNAL (a grpc-timeout that does not parse)


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout in seconds: at most 8 digits and a unit (H M S m u n); None when it does not parse."""
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        return None
    return int(match[1]) * _UNITS[match[2]]


class Prefix:
    """The first part of request blocks (see the module docstring): its fields, its call headers, its size as
    the header list limit counts it."""

    __slots__ = ("fields", "headers", "size")

    def __init__(self, fields: list[tuple[bytes, bytes]], headers: CallHeaders) -> None:
        self.fields, self.headers, self.size = fields, headers, list_size(fields)


class HeaderDecoder:
    """One connection's HPACK decoder and its cache of request blocks (at most `cache_entries` blocks of at
    most `cache_block_bytes` each, oldest out first) and of their prefixes (`prefix_entries`, tried at up to
    PREFIX_LENGTHS lengths)."""

    PREFIX_LENGTHS = 4

    def __init__(self, max_list_size: int, max_table_size: int = HeaderTable.DEFAULT_SIZE,
                 cache_entries: int = 512, cache_block_bytes: int = 1024, prefix_entries: int = 64) -> None:
        self.decoder = hpack.Decoder(max_header_list_size=max_list_size)
        self.decoder.max_allowed_table_size = max_table_size
        self.table = self.decoder.header_table
        self.cache: dict[bytes, CallHeaders] = {}
        self.cache_entries, self.cache_block_bytes = cache_entries, cache_block_bytes
        self.prefixes: dict[bytes, Prefix] = {}
        self.prefix_lengths: list[int] = []  # of the prefixes, latest first
        self.seen: dict[bytes, bool] = {}  # first parts seen once (False), or that cannot be prefixes (True)
        self.prefix_entries = prefix_entries
        self.hits = self.misses = self.clears = self.prefix_hits = 0

    def request(self, block: bytes) -> CallHeaders:
        """The call headers of a request block; hpack.HPACKError (and IndexError, ValueError) when it does not
        decode (the connection's end: COMPRESSION_ERROR), Malformed when it breaks RFC 9113 8.1.1."""
        cached = self.cache.get(block)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        found = self._by_prefix(block) if self.prefix_lengths else None
        if found is None:
            fields, unchanged = self._decode(block)
            headers = call_headers(fields)
            if unchanged:
                self._learn(block, fields)
        else:
            headers, unchanged = found
        if unchanged and len(block) <= self.cache_block_bytes:
            cache = self.cache
            if len(cache) >= self.cache_entries:
                del cache[next(iter(cache))]
            cache[block] = headers
        return headers

    def fields(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Any other block (trailers, a block of a stream being refused): decoded to keep the table in step."""
        return self._decode(block)[0]

    def _decode(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        entries = self.table.dynamic_entries
        count, first, size = len(entries), entries[0] if entries else None, self.table.maxsize
        try:
            fields = self.decoder.decode(block, raw=True)
        finally:  # a block that failed half-way may have changed the table too
            unchanged = (len(entries) == count and (entries[0] if entries else None) is first
                         and self.table.maxsize == size)
            if not unchanged and (self.cache or self.prefixes or self.seen):
                self.cache.clear()
                self.prefixes.clear()
                self.prefix_lengths.clear()
                self.seen.clear()
                self.clears += 1
        return fields, unchanged  # type: ignore[return-value]

    # ---- prefixes ----

    def _by_prefix(self, block: bytes) -> tuple[CallHeaders, bool] | None:
        """(call headers, table unchanged) of a block that is a prefix's bytes and more, only the rest decoded;
        None when it is not one (or the rest starts with a table size update: the whole block is decoded)."""
        size = len(block)
        for length in self.prefix_lengths:
            if length < size and (prefix := self.prefixes.get(block[:length])) is not None:
                break
        else:
            return None
        if block[length] & 0xE0 == 0x20:  # a table size update, which may only start a block (RFC 7541 4.2)
            return None
        rest = block[length:]  # the table holds now what the prefix was read with
        tail = plain_literals(rest)
        if tail is None:
            tail, unchanged = self._decode(rest)
        else:
            unchanged = True
        if prefix.size + list_size(tail) > self.decoder.max_header_list_size:
            raise hpack.OversizedHeaderListError(f"A header list larger than {self.decoder.max_header_list_size}")
        self.prefix_hits += 1
        return extended(prefix.headers, tail) or call_headers(prefix.fields + tail), unchanged

    def _learn(self, block: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        """A block that left the table as it was: its bytes before its trailing literals are noted, and the
        second time they are seen they become a prefix if decoding them alone (on a copy of the table) reads
        the same fields and leaves the table as it is."""
        split = literal_tail(block)
        if split is None or split > self.cache_block_bytes:
            return
        first = block[:split]
        state = self.seen.get(first)
        if state is None:
            if len(self.seen) >= self.prefix_entries:
                del self.seen[next(iter(self.seen))]
            self.seen[first] = False
        elif not state:
            self.seen[first] = True  # tried once, whatever comes of it
            prefix = self._checked(first, fields)
            if prefix is not None:
                self._remember(first, prefix)

    def _checked(self, first: bytes, fields: list[tuple[bytes, bytes]]) -> Prefix | None:
        """`first` as a prefix: decoded by hpack alone against a copy of the table, which it must leave as it
        is; its fields must be the block's first ones and make call headers on their own."""
        scratch = copy.copy(self.decoder)
        scratch.header_table = table = copy.copy(self.table)
        table.dynamic_entries = collections.deque(self.table.dynamic_entries)
        try:
            head: list[tuple[bytes, bytes]] = scratch.decode(first, raw=True)  # type: ignore[assignment]
            headers = call_headers(head)
        except (hpack.HPACKError, IndexError, ValueError, Malformed):
            return None
        if (table.dynamic_entries != self.table.dynamic_entries or table.maxsize != self.table.maxsize
                or not head or head != fields[:len(head)]):
            return None
        return Prefix(head, headers)

    def _remember(self, first: bytes, prefix: Prefix) -> None:
        prefixes = self.prefixes
        if len(prefixes) >= self.prefix_entries:
            del prefixes[next(iter(prefixes))]
        prefixes[first] = prefix
        lengths = self.prefix_lengths
        if len(first) in lengths:
            lengths.remove(len(first))
        lengths.insert(0, len(first))
        del lengths[self.PREFIX_LENGTHS:]


def list_size(fields: list[tuple[bytes, bytes]]) -> int:
    """A header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 6.5.2), as hpack does."""
    return sum(32 + len(name) + len(value) for name, value in fields)


def literal_tail(block: bytes) -> int | None:
    """Where a header block's trailing run of literals without indexing (first byte 0000xxxx or 0001xxxx, RFC
    7541 6.2.2 and 6.2.3) starts, when fields come before it; None otherwise, or when the block does not parse.
    Only where to cut: what is cut off is then decoded by hpack, and checked, before it is used."""
    pos, end, start = 0, len(block), None
    try:
        while pos < end:
            first = block[pos]
            bits = 7 if first & 0x80 else 6 if first & 0x40 else 5 if first & 0x20 else 4
            index, after = _read_integer(block, pos, bits)
            if bits == 6 or bits == 4:  # a literal: its name when not indexed, then its value
                after = _skip_string(block, _skip_string(block, after) if not index else after)
            if bits != 4:
                start = None
            elif start is None:
                start = pos
            pos = after
    except (IndexError, ValueError):
        return None
    return start if start and pos == end else None


def plain_literals(tail: bytes) -> list[tuple[bytes, bytes]] | None:
    """The fields of a run of literals without indexing whose names are literals too (first byte 0x00 or 0x10:
    RFC 7541 6.2.2, 6.2.3), read as hpack reads them (its Huffman decoder, its integer limits); they leave the
    table as it is. None when `tail` holds anything else or does not read: hpack decodes it (and says why)."""
    fields = []
    pos, end = 0, len(tail)
    try:
        while pos < end:
            if tail[pos] & 0xEF:
                return None
            name, pos = _read_string(tail, pos + 1)
            value, pos = _read_string(tail, pos)
            fields.append((name, value))
    except (IndexError, ValueError, hpack.HPACKError):
        return None
    return fields


def _read_string(block: bytes, pos: int) -> tuple[bytes, int]:
    """An HPACK string literal (RFC 7541 5.2) at `pos`: (its bytes, where it ends)."""
    huffman = block[pos] & 0x80
    length, pos = _read_integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise ValueError("truncated HPACK string")
    data = block[pos:end]
    return (decode_huffman(data) if huffman else data), end


def _read_integer(block: bytes, pos: int, bits: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 5.1) at `pos` with a `bits`-bit prefix, read by hpack: (value, where it ends)."""
    value, used = decode_integer(memoryview(block)[pos:], bits)
    return value, pos + used


def _skip_string(block: bytes, pos: int) -> int:
    length, pos = _read_integer(block, pos, 7)
    if pos + length > len(block):
        raise ValueError("truncated HPACK string")
    return pos + length


def call_headers(fields: list[tuple[bytes, bytes]]) -> CallHeaders:
    """A request's CallHeaders; Malformed for a block HTTP/2 forbids."""
    headers = CallHeaders()
    pseudo = _pseudo_headers(fields)
    method, path = pseudo.get(b":method"), pseudo.get(b":path")
    if method is None or path is None or b":scheme" not in pseudo or not path:
        raise Malformed("a request needs :method, :scheme and :path")
    headers.path = path.decode("latin-1")
    if method != b"POST":
        headers.http_status = 405
    metadata: list[tuple[str, str | bytes]] = []
    content_type = b""
    for name, value in fields[len(pseudo):]:
        if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
            raise Malformed(f"header {name[:64]!r} has a character HTTP/2 forbids")
        if name in _RESERVED:
            content_type = _reserved(headers, name, value) or content_type
        elif name in _CONNECTION_FIELDS:
            raise Malformed(f"connection-specific header {name.decode()}")
        elif not name.startswith(b"grpc-"):
            metadata.append(_metadata(headers, name, value))
    if not content_type.startswith(b"application/grpc"):
        headers.http_status = headers.http_status if headers.http_status != 200 else 415
    headers.metadata = tuple(metadata)
    return headers


def extended(base: CallHeaders, fields: list[tuple[bytes, bytes]]) -> CallHeaders | None:
    """What call_headers makes of a prefix's fields (whose call headers are `base`) followed by `fields`, when
    those are plain metadata (no pseudo-header, no name gRPC reads or HTTP/2 forbids); None otherwise (the
    caller reads the whole list with call_headers)."""
    headers = CallHeaders()
    headers.path, headers.timeout, headers.encoding = base.path, base.timeout, base.encoding
    headers.accept_encoding, headers.authorization, headers.request_id = (base.accept_encoding, base.authorization,
                                                                          base.request_id)
    headers.http_status, headers.problem = base.http_status, base.problem
    metadata = list(base.metadata)
    for name, value in fields:
        if (_BAD_NAME.search(name) or _BAD_VALUE.search(value) or name in _RESERVED or name in _CONNECTION_FIELDS
                or name.startswith(b"grpc-")):
            return None
        metadata.append(_metadata(headers, name, value))
    headers.metadata = tuple(metadata)
    return headers


def _pseudo_headers(fields: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The pseudo-header fields, which must come first, once each, and be a request's (RFC 9113 8.3)."""
    pseudo: dict[bytes, bytes] = {}
    for name, value in fields:
        if not name.startswith(b":"):
            break
        if name not in _REQUEST_PSEUDO or name in pseudo:
            raise Malformed(f"pseudo-header {name[:64]!r} unknown or repeated")
        pseudo[name] = value
    for name, _ in fields[len(pseudo):]:
        if name.startswith(b":"):
            raise Malformed("a pseudo-header after a regular header")
    return pseudo


def _reserved(headers: CallHeaders, name: bytes, value: bytes) -> bytes | None:
    """Read a header gRPC itself uses into `headers`; the content type when it is that."""
    if name == b"content-type":
        return value
    if name == b"te":
        if value != b"trailers":
            raise Malformed("te other than trailers")
    elif name == b"grpc-timeout":
        headers.timeout = parse_timeout(value)
        if headers.timeout is None:
            headers.problem = f"invalid grpc-timeout {value[:16]!r}"
    elif name == b"grpc-encoding":
        coding = value.decode("latin-1").strip().lower()
        headers.encoding = None if coding == "identity" else coding
    else:
        headers.accept_encoding = value
    return None


def _metadata(headers: CallHeaders, name: bytes, value: bytes) -> tuple[str, str | bytes]:
    key = name.decode("latin-1")
    if name.endswith(b"-bin"):
        try:
            return key, binascii.a2b_base64(value + b"=" * (-len(value) % 4))
        except binascii.Error as e:
            raise Malformed(f"metadata {key} is not base64") from e
    if name == b"authorization":
        headers.authorization = value
    elif name == b"x-request-id":
        headers.request_id = value.decode("latin-1")
    return key, value.decode("utf-8", "replace")


# ---- answers ----

def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) whose first byte's high bits are `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7) + value


def literal(name: bytes, value: bytes) -> bytes:
    """A field as a literal without indexing, its name a literal too (RFC 7541 6.2.2)."""
    return b"\x00" + _string(name) + _string(value)


def table_size_update(size: int) -> bytes:
    """A dynamic table size update (RFC 7541 6.3): what the first block after the client lowers
    SETTINGS_HEADER_TABLE_SIZE starts with."""
    return _integer(size, 5, 0x20)


STATUS_200 = b"\x88"  # static index 8
#: content-type: application/grpc, its name static index 31, without indexing.
CONTENT_TYPE = b"\x0f\x10" + _string(b"application/grpc")
_ACCEPT = literal(b"grpc-accept-encoding", ACCEPT_ENCODING)
#: The answer's headers by the coding of its messages (None: identity).
RESPONSE_HEADERS = {
    None: STATUS_200 + CONTENT_TYPE + _ACCEPT,
    "gzip": STATUS_200 + CONTENT_TYPE + literal(b"grpc-encoding", b"gzip") + _ACCEPT,
    "deflate": STATUS_200 + CONTENT_TYPE + literal(b"grpc-encoding", b"deflate") + _ACCEPT,
}
_STATUS = [literal(b"grpc-status", b"%d" % code) for code in range(17)]
TRAILERS_OK = _STATUS[0]


def status_block(code: int, message: str = "", metadata: bytes = b"") -> bytes:
    """grpc-status, grpc-message (percent-encoded) and the answered metadata, for trailers."""
    block = _STATUS[code] if 0 <= code < len(_STATUS) else literal(b"grpc-status", b"%d" % code)
    if message:
        block += literal(b"grpc-message", percent_encoded(message))
    return block + metadata


def trailers_only(code: int, message: str = "", metadata: bytes = b"", http_status: int = 200) -> bytes:
    """A call answered with its status alone (one HEADERS frame with END_STREAM)."""
    status = STATUS_200 if http_status == 200 else literal(b":status", b"%d" % http_status)
    return status + CONTENT_TYPE + status_block(code, message, metadata)


def percent_encoded(message: str) -> bytes:
    """grpc-message's encoding: UTF-8, then every byte outside 0x20-0x7E and `%` as %XX."""
    return quote_from_bytes(message.encode("utf-8", "replace"), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()


def metadata_block(metadata: object) -> bytes:
    """A handler's metadata (pairs of name and value, bytes for `-bin` names) as literals without indexing;
    a pair gRPC would not send (a bad name, a reserved one, a value with control characters) is left out."""
    parts = []
    for item in metadata or ():  # type: ignore[attr-defined]
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if not isinstance(name, str) or not _METADATA_NAME.fullmatch(name) or name.startswith("grpc-"):
            continue
        if name.endswith("-bin"):
            if isinstance(value, str):
                value = value.encode()
            if isinstance(value, bytes):
                parts.append(literal(name.encode(), binascii.b2a_base64(value, newline=False).rstrip(b"=")))
        elif isinstance(value, str) and _METADATA_VALUE.fullmatch(value):
            parts.append(literal(name.encode(), value.encode()))
    return b"".join(parts)
