"""A bounded, repeatable hostile probe of a serving-engine server (issue 23): "the whole probe re-run (same kinds,
same counts) finds no 5xx from client input, no unauthenticated control call, no file byte in an answer".

By default it starts its own server (`<python> -m serving --host 127.0.0.1` on free loopback ports, cwd the
checkout) with a linear model `lin` (y = 0.5x + 2) and, when xgboost imports, an XGBoost model `xgb` (4 features
f0..f3), both made at run time in a temporary folder, and the flags
`--model_control_mode=explicit --load_model=* --token=<user> --admin_token=<admin> --modelmesh_port=<port>
--model_load_roots=<its model folder>`. Beside the model folder it writes a secret marker in a file outside the
load root, links to it from inside the root (`models/link`, and model files linking to /etc/passwd and
/etc/shadow), and starts the server with a marker in its environment (what /proc/self/environ would show).
With `--url` (and `--grpc`, `--modelmesh`, `--token`, which it needs, and `--admin-token`) it probes a server
already running instead; then the log and SIGTERM checks are skipped, and no reload is sent with the control token
(an accepted one would replace a model config this script cannot give back).

Everything goes to 127.0.0.1 only, every loop is bounded in count and in time (`--max-seconds`), and the run
stops by itself. Cases come from a random.Random seeded per kind from `--seed`, so a run with the same seed and
counts sends the same bytes (the thread pool only changes their order).

HTTP kinds (raw sockets, several requests per connection where the kind allows; `--http-connections` in all,
10,230 by default, shared out by the weights in HTTP_KINDS): malformed request lines, bad / huge / duplicated
headers, wrong Content-Length, chunked garbage, gzip bombs and broken gzip, bodies of the wrong JSON shape or
dtype (TF Serving REST, KServe V2 JSON and binary, the cloud route's JSON and protobuf), numbers past int64 and
float ranges and Unicode digits in paths and bodies, NUL / CR / LF and %00 / %0d%0a in model names, every route
with every method, `?since=` garbage on /ui/api/status, tokens (none, wrong, the user's, the admin's, signed
`EAS` forms with hostile Dates), the repository API's load / unload naming /etc/shadow, /etc, /proc/self/environ,
a symlink, `..` paths, a URL to 169.254.169.254, with the user token instead of the admin token, pipelined
bursts of 200 requests, and a few slowloris clients (short client time-outs) while a good client is timed.

gRPC kinds (grpcio; `--grpc-messages` in all, 3,400 by default): raw bytes through `channel.unary_unary(method)`
with no serializer, and well-formed protos with hostile fields, to every method of
tensorflow.serving.PredictionService, ModelService, inference.GRPCInferenceService, grpc.health.v1.Health and
mmesh.ModelRuntime on the ModelMesh port, with no token, a wrong one, the user's and the admin's. Raw bytes
that would decode into a destructive control call (a reload, an unload, runtimeStatus) are not sent with the
admin token, nor unloads of its own models: the probe keeps them loaded so that it can go on. Admin requests that
reload one of its models run one at a time at the end of their kind, each followed by a predict on that model (a
reload that fails must leave the served version serving). One admin runtimeStatus (which unloads every model, as
ModelMesh's contract asks) is sent at the end and the models are loaded again.

Checks, per answer: HTTP >= 500 (the README's own 5xx answers are counted in the notes instead: 501 of :classify /
:regress, 503 for too many connections, a full queue or a model being loaded) and gRPC UNKNOWN / INTERNAL /
DATA_LOSS; a control call (repository load / unload,
HandleReloadConfigRequest, any ModelMesh method) that succeeded without the admin token; a load naming a path
outside the load root that succeeded; an answer holding bytes of a file it named (a line of /etc/passwd or
/etc/shadow, the marker files, the environment marker) or a token the request did not carry; a header of the
probe's making injected into an answer. After each kind: `Traceback` lines in the server's log (those of a failed
model load, which the README documents, go to the notes), tied to their request by the request id; a good predict
over HTTP and gRPC (should one fail, the models are loaded again so that the next kinds still test something);
the status documents (/v1/models, /ui/api/status, the repository index) free of file bytes. Each distinct finding
keeps its exact request, sent again alone on a fresh connection to show whether it reproduces by itself. At the
end: the server exits 0 on SIGTERM.

Output: a summary table printed and written as markdown to `benchmarks/results/probe-<YYYY-MM-DD-HHMM>.md`
(UTC) with the exact command, per kind: connections, sent, 2xx / 4xx / 5xx (gRPC: OK / client-error codes /
UNKNOWN, INTERNAL, DATA_LOSS), resets, time-outs, findings; then every finding with samples and the exact
request. Exit status 1 if anything was found.

    .venv/bin/python benchmarks/probe.py                          # its own server, the default counts
    .venv/bin/python benchmarks/probe.py --seed 7 --only names,grpc-control
    .venv/bin/python benchmarks/probe.py --url http://127.0.0.1:8080 --grpc 127.0.0.1:9090 \\
        --modelmesh 127.0.0.1:8085 --token T --admin-token A --model lin
"""

from __future__ import annotations

import argparse
import base64
import datetime
import email.utils
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import grpc
from google.protobuf import message_factory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's serving._proto stubs

from grpc_health.v1 import health_pb2  # noqa: E402

from serving._proto.eas import tf_predict_pb2  # noqa: E402
from serving._proto.inference import grpc_predict_v2_pb2 as v2  # noqa: E402
from serving._proto.mmesh import model_runtime_pb2 as mm  # noqa: E402
from serving._proto.tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
    regression_pb2,
)

HOST = "127.0.0.1"  # the only address this script sends to
HTTP_KINDS = {  # kind: connections at the default total of 10,230
    "request-line": 1200, "headers": 1200, "content-length": 800, "chunked": 800, "gzip": 300,
    "json-bodies": 1600, "numbers": 600, "names": 700, "routes-methods": 1000, "ui-since": 400, "auth": 800,
    "control": 782, "pipelined": 40, "slowloris": 8,
}
GRPC_KINDS = {"grpc-raw": 1400, "grpc-tensors": 1000, "grpc-names": 400, "grpc-control": 600}  # messages: 3,400
PIPELINE = 200  # requests in one write of the pipelined kind
SLOW_SECONDS = 3.0  # how long a slowloris client trickles before it gives up
CONTROL_RE = re.compile(r"^/v2/repository/models/[^/]+/(load|unload)/*$")
PASSWD_LINE = re.compile(rb"root:[^:\s\"]{0,200}:\d+:")  # /etc/passwd (root:x:0:0:) and /etc/shadow (root:*:19000:)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \S+ ")  # the server's text log: a line begins with its time
INJECTED = b"x-probe-injected"  # a header name only a response split could put in an answer
HTTP_OK_5XX = {501: (":classify", ":regress")}  # documented 5xx answers: the processor has no such method
GRPC_BAD = ("UNKNOWN", "INTERNAL", "DATA_LOSS")
GRPC_CLIENT = ("CANCELLED", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
               "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
               "UNAUTHENTICATED")
SAMPLES = 25  # distinct answers kept per (kind, check), each with its request

# ---- hostile values ----

HOSTILE_JSON = [  # JSON texts put in place of a value of a valid request
    "[" * 1000 + "1" + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000, "[" * 1025 + "]" * 1025, "[" * 64 + "]" * 64,
    '"\\ud800"', '"\\udfff"', '{"\\ud800": 1}', '"\\ud83d\\ude00"', '""', '"\u00e9\u2713\u4e2d"',
    '"' + "x" * 20_000 + '"',
    "NaN", "Infinity", "-Infinity", "nan", "1e999", "-1e999", "1" + "0" * 400, "1" + "0" * 5000,
    "18446744073709551616", "9223372036854775808", "-9223372036854775809", "1.5e-400", "-0", "0.0", "1e38", "3.5e38",
    "true", "false", "null", "[]", "{}", "[[]]", "[1, [2]]", '[1, "a"]', '{"b64": "!!"}', '{"b64": 1}',
    '{"b64": "' + "A" * 4000 + '"}', "[" + ",".join(["1"] * 5000) + "]", "-1", "4294967296", "[null]", "[[null]]",
    "[[1, 2], [3]]", '[{"f0": []}]', '{"": 1}', "[" + ", ".join(["[0.5]"] * 3000) + "]", "01", "1.", ".5", "+1",
    "0x10", "\"\\u0000\"", "1e", "[1,]", "{,}", "[1 2]", "'a'", "\u00a0 1", "\u0661", "\"\\uDBFF\\uDFFF\"",
]
HOSTILE_KEYS = ['"\\ud800"', '""', '"inputs "', '"INSTANCES"', '"\\u0000"', '"' + "k" * 5000 + '"', '"b64"',
                '"signature_name"', '"instances"', '"inputs"', '"examples"', '"\\u0069nputs"']
V2_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
            "BYTES", "BF16", "", "fp32", "FP32 ", "FP8", "STRING", "OBJECT", "FP32\\u0000", "\\ud800"]
JSON_NUMBERS = ["0", "-0", "1", "-1", "2.5", "1e38", "3.5e38", "-3.5e38", "1e308", "1e309", "-1e309", "1e-400", "NaN",
                "Infinity", "-Infinity", "127", "128", "255", "256", "-129", "32768", "65535", "65536", "2147483648",
                "4294967296", "-2147483649", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
                "18446744073709551615", "18446744073709551616", "1" + "0" * 400, "true", "false", "null", '"1"',
                '"x"', "[]", "{}", '{"b64": "AAAA"}', "65520", "1e-45"]
DIM_TEXTS = ["0", "1", "2", "-1", "-2", "3", "1000000", "2147483648", "4294967296", "9223372036854775807",
             "9223372036854775808", "99999999999999999999", "-99999999999999999999", "1e3", "1.5", '"2"', "null",
             "true", "[1]", "4611686018427387904"]
DIMS = [-(2 ** 63), -2, -1, 0, 1, 1, 2, 3, 4, 1000, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63 - 1]
VERSION_TEXTS = ["99999999999999999999", "-99999999999999999999", "9223372036854775807", "9223372036854775808",
                 "-9223372036854775808", "-9223372036854775809", "18446744073709551616", "1e400", "1e3", "0x10", "+1",
                 "-0", "00000000000000000000001", "1_0", "%201", "1%20", "\u0661", "\u0661\u0662", "\u00b2", "\u2460",
                 "\U0001d7cf", "\uff11", "\u09ea", "1" * 5000, "nan", "inf", "-1", "0", "", "1.5", "1%00", "%c2%b2",
                 "%d9%a1", "%ef%bc%91", "1%0d%0aX-Probe-Injected:%201", "%ff", "1/../2", "%2e%2e", "\u00bd", "\u216b"]
NAMES = ["lin%00", "li%00n", "%00", "lin%0d%0aX-Probe-Injected:%201", "%0d%0a", "%0a", "..", ".", "%2e%2e", "%2e",
         "lin%2f..%2f..%2fetc%2fpasswd", "a" * 129, "a" * 10_000, "\uff4c\uff49\uff4e", "lin\u202e", "%ff%fe",
         "%c0%ae%c0%ae", "%ed%a0%80", "\U0001f600", "lin;x", "lin%3apredict", "lin%20", "%20lin", "LIN", "lin.", "-",
         "_", "x" * 128, "%25", "%", "%zz", "lin%09", "l\u0131n", "lin%7f", "%e2%80%8blin", "con", "nul", "~",
         "lin%5c..%5c..", "*", "lin*", "lin?x", "lin%23x", "%u006cin", "\u0661"]
PATH_TRAVERSALS = ["/ui/../../../../etc/passwd", "/ui/docs/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                   "/ui/docs%2f..%2f..%2f..%2fetc%2fpasswd", "/..%c0%af..%c0%afetc/passwd", "/ui/%2e%2e/README.md",
                   "/ui/docs/..%2f..%2f..%2fproc%2fself%2fenviron", "//etc/passwd", "/ui//etc/passwd",
                   "/ui/docs/%2e%2e%2f%2e%2e%2fetc%2fshadow", "/../../../../etc/shadow", "/ui/..;/..;/etc/passwd",
                   "/ui/docs?file=/etc/passwd", "/ui/api/status/../../../../proc/self/environ", "/ui/index.html",
                   "/ui/%00", "/ui/docs%00.md", "/static/../etc/passwd", "/ui/docs/README.md", "/ui/docs/"]
DATES = ["", "0", "garbage", "Mon, 32 Jan 2024 00:00:00 GMT", "Fri, 31 Dec 99999 23:59:59 GMT",
         "Fri, 31 Dec 99999999999999999999 23:59:59 GMT", "Thu, 01 Jan 1970 00:00:00 +9999",
         "Thu, 01 Jan 1970 00:00:00 -9999", "Mon, 01 Jan 0001 00:00:00 GMT", "Mon, 01 Jan 0000 00:00:00 GMT",
         "Tue, 15 Nov 1994 08:12:31 GMT", "Sun, 06 Nov 1994 08:49:37", "Sunday, 06-Nov-94 08:49:37 GMT",
         "Sun Nov  6 08:49:37 1994", "Mon, 01 Jan 2024 25:61:61 GMT", "1" * 1000,
         "Mon, 01 Jan 2024 00:00:00 +99999999999999999999", "Mon, 01 Jan -1 00:00:00 GMT",
         "Mon, 1 Jan 2024 00:00:00 UT", "Mon,,,", "Mon, 01 Jan 2024 00:00:00 GMT+1", "Wed, 31 Feb 2024 00:00:00 GMT",
         "Mon, 01 Jan 10000 00:00:00 GMT", "Mon, 01 Jan 9999 23:59:60 GMT", "\u0661 Jan 2024", "-1", "nan", "inf"]
SINCE = ["", "nan", "NaN", "inf", "-inf", "Infinity", "-1", "0", "-0", "1e11", "100000000001", "1e400", "-1e400",
         "1" * 10_000, "1e-400", "0x10", "\u0661\u0662", "\uff11", "\u00b2", "1_000", " 1", "1 ", "%00", "1%00",
         "%ff", "1e10", "99999999999999999999", "1.5", ".", "e", "--1", "+1", "1,2", "[1]", "%0d%0a",
         "1.7976931348623157e309"]
UI_QUERIES = ["since={}", "since={}&since=1", "since=1&since={}", "since[]={}", "SINCE={}", "since", "since=",
              "since={}&x=" + "y" * 5000, "%73ince={}", "since%00={}", "since={}#frag", "since={}&since"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "MKCOL", "LOCK", "SEARCH",
           "PURGE", "get", "FOO", "M-SEARCH", "CONNECT", "QUERY", "PRI"]
AUTH_SIGNALS = ["user", "admin", "wrong", None, "", "eas-user", "eas-admin"]


def b(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")


def http_request(method: str | bytes, path: str | bytes, body: bytes = b"",
                 headers: Iterable[tuple[str | bytes, str | bytes]] = (), *, version: bytes = b"HTTP/1.1",
                 length: bool | None = None, host: bool = True) -> bytes:
    """One request's bytes: request line, Host, the headers given, Content-Length (a body, or POST/PUT/PATCH)."""
    lines = [b(method) + b" " + b(path) + b" " + version]
    if host:
        lines.append(b"Host: 127.0.0.1")
    lines += [b(k) + b": " + b(v) for k, v in headers]
    if length if length is not None else (body or b(method) in (b"POST", b"PUT", b"PATCH")):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def decoded_path(path: str | bytes) -> str:
    return unquote(b(path).split(b"?", 1)[0].decode("latin-1"), errors="surrogateescape")


def eas_headers(token: str, method: str, path: str, body: bytes, *, date: str | None = None,
                content_type: str = "application/json", md5: str | None = None) -> list[tuple[str, str]]:
    """The signed `EAS` form of the cloud SDKs: HMAC-SHA1 over method, Content-MD5, type, Date and path."""
    date = email.utils.formatdate(usegmt=True) if date is None else date
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode() if md5 is None else md5
    to_sign = "\n".join([method, md5, content_type, date, decoded_path(path)]).encode("utf-8", "surrogateescape")
    signature = base64.b64encode(hmac.new(token.encode(), to_sign, hashlib.sha1).digest()).decode()
    out = [("Authorization", f"EAS {signature}"), ("Content-MD5", md5), ("Content-Type", content_type)]
    return out + ([("Date", date)] if date else [])


def excerpt(data: bytes, limit: int = 1500) -> str:
    """`data` as a Python bytes literal, its middle cut out past `limit` characters."""
    text = repr(data)
    if len(text) <= limit:
        return text
    return f"{text[:limit * 2 // 3]} ...[{len(data)} bytes in all]... {text[-limit // 3:]}"


# ---- the HTTP client: raw sockets, pipelined answers parsed in order ----

@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def closes(self) -> bool:
        return (self.header(b"connection") or b"").lower() == b"close"


class Reader:
    """HTTP/1.1 answers out of a byte stream (Content-Length framed; 1xx skipped; one without a length ends at
    the close)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.answers: list[Answer] = []
        self.garbage = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        while not self.garbage and self._one():
            pass

    def _one(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buf[:end])
        lines = head.split(b"\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
        if m is None:
            self.garbage = True
            return False
        status = int(m[1])
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in lines[1:])]
        if 100 <= status < 200:
            del self.buf[:end + 4]
            return True
        length_text = next((v for k, v in headers if k.lower() == b"content-length"), None)
        if length_text is None or not length_text.isdigit():
            return False  # to the close
        size = end + 4 + int(length_text)
        if len(self.buf) < size:
            return False
        self.answers.append(Answer(status, headers, bytes(self.buf[end + 4:size]), bytes(self.buf[:size])))
        del self.buf[:size]
        return True

    def close(self) -> None:
        """The connection ended: an answer whose head arrived counts, its body as far as it came (HEAD)."""
        end = self.buf.find(b"\r\n\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", self.buf) if end >= 0 else None
        if m is not None:
            lines = bytes(self.buf[:end]).split(b"\r\n")
            headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in lines[1:])]
            self.answers.append(Answer(int(m[1]), headers, bytes(self.buf[end + 4:]), bytes(self.buf)))
            self.buf.clear()


@dataclass
class Outcome:
    answers: list[Answer] = field(default_factory=list)
    reset: bool = False  # ECONNRESET (or a refused connect)
    timed_out: bool = False  # answers still owed when the client gave up
    closed: bool = False  # the server closed the connection
    junk: bytes = b""  # bytes after the last answer that are not one


def exchange(port: int, data: bytes, expect: int, timeout: float, half_close: bool = False) -> Outcome:
    """Send `data` on a new connection while reading answers, until `expect` answers, an answer that closes,
    the close, a reset or `timeout` seconds."""
    out = Outcome()
    reader = Reader()
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((HOST, port), timeout=timeout)
    except OSError:
        out.reset = True
        return out
    with sock:
        sock.setblocking(False)
        view, sent, shut = memoryview(data), 0, False
        while not (len(reader.answers) >= expect or (reader.answers and reader.answers[-1].closes)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                out.timed_out = True
                break
            if sent >= len(data) and half_close and not shut:
                shut = True
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            readable, writable, _ = select.select([sock], [sock] if sent < len(data) else [], [], min(remaining, 0.5))
            if writable:
                try:
                    sent += sock.send(view[sent:sent + 262144])
                except BlockingIOError:
                    pass
                except OSError:  # the server closed: what it answered is still to be read
                    sent = len(data)
            if readable:
                try:
                    chunk = sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    out.reset = True
                    break
                if not chunk:
                    out.closed = True
                    reader.close()
                    break
                reader.feed(chunk)
    out.answers, out.junk = reader.answers, bytes(reader.buf)
    return out


# ---- what is found ----

@dataclass
class Req:
    data: bytes
    path: str = ""  # decoded, for the documented-5xx rule
    control: bool = False  # a repository load / unload
    admin: bool = False  # carries the admin token, plain or signed
    outside: bool = False  # names a path outside the load root


@dataclass
class Case:
    reqs: list[Req]
    timeout: float = 10.0
    half_close: bool = False
    expect: int | None = None  # answers owed; None: one per request
    tail: bytes = b""  # sent after the requests
    touches: str = ""  # a served model an admin request reloads: run alone, then that model is checked

    @property
    def data(self) -> bytes:
        return b"".join(r.data for r in self.reqs) + self.tail


@dataclass
class Finding:
    check: str
    kind: str
    what: str  # the answer (status or code, an excerpt)
    repro: str  # the exact request
    count: int = 1  # answers of this kind, check and key
    request: bytes | None = None  # an HTTP request to replay alone
    call: GrpcCase | None = None  # a gRPC call to replay
    alone: str = ""  # what the replay on a fresh connection answered


@dataclass
class Tally:
    kind: str
    proto: str
    connections: int = 0
    sent: int = 0
    ok: int = 0
    client: int = 0
    server: int = 0
    other: int = 0
    resets: int = 0
    timeouts: int = 0
    skipped: int = 0  # past --max-seconds
    statuses: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)
    samples: dict[str, dict[str, Finding]] = field(default_factory=dict)  # check -> distinct answer -> first
    notes: Counter[str] = field(default_factory=Counter)
    by: Counter[str] = field(default_factory=Counter)  # control answers by token; gRPC codes by method
    tracebacks: int = 0
    serves_after: str = ""
    seconds: float = 0.0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def find(self, check: str, what: str, repro: str, key: str = "", **kw: Any) -> None:
        """Count a finding; the first of each distinct `key` (an answer without its request id) is kept."""
        with self.lock:
            self.findings[check] += 1
            kept = self.samples.setdefault(check, {})
            key = key or what
            if key in kept:
                kept[key].count += 1
            elif len(kept) < SAMPLES:
                kept[key] = Finding(check, self.kind, what, repro, **kw)

    def count_http(self, status: int) -> None:
        self.statuses[str(status)] += 1
        if 200 <= status < 300:
            self.ok += 1
        elif 400 <= status < 500:
            self.client += 1
        elif status >= 500:
            self.server += 1
        else:
            self.other += 1

    def count_grpc(self, code: str) -> None:
        self.statuses[code] += 1
        if code == "OK":
            self.ok += 1
        elif code in GRPC_CLIENT:
            self.client += 1
        elif code in GRPC_BAD:
            self.server += 1
        elif code == "DEADLINE_EXCEEDED":
            self.timeouts += 1
        elif code == "UNAVAILABLE":
            self.resets += 1
        else:
            self.other += 1


# ---- the server under test ----

@dataclass
class Ctx:
    port: int
    grpc_port: int
    mm_port: int | None
    user: str
    admin: str
    model: str = "lin"
    models: Path | None = None  # the load root, when this script made it
    outside: Path | None = None  # a folder outside the load root with the marker file
    secrets: dict[str, bytes] = field(default_factory=dict)  # what no answer may hold, by what it is
    log: Path | None = None
    log_offset: int = 0
    proc: subprocess.Popen[bytes] | None = None
    xgb: bool = False
    command: list[str] = field(default_factory=list)
    exact: bool = False  # the model is this script's linear one: predictions are checked, not only the status

    def is_admin(self, token: str | None) -> bool:
        """Whether `token` is the control token (the admin token; the user token when it is the same)."""
        return bool(token) and token == self.admin

    def leaks(self, answer: bytes, sent: bytes) -> list[str]:
        found = [what for what, secret in self.secrets.items() if secret in answer]
        if PASSWD_LINE.search(answer):
            found.append("a line of /etc/passwd or /etc/shadow")
        for what, token in (("the admin token", self.admin), ("the user token", self.user)):
            if len(token) >= 8 and token.encode() in answer and token.encode() not in sent:  # shorter: words match
                found.append(f"{what}, which the request did not carry")
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_linear(folder: Path, **extra: Any) -> None:
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "linear.json").write_text(json.dumps({"weights": [0.5], "bias": 2.0, **extra}))


def make_xgb(folder: Path) -> bool:
    try:
        import numpy as np
        import xgboost as xgb
    except ImportError:
        return False
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
    params = {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 1}
    booster = xgb.train(params, xgb.DMatrix(x, label=y, feature_names=["f0", "f1", "f2", "f3"]), 5)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / "1" / "model.json"))
    return True


def prepare_models(tmp: Path, seed: int) -> tuple[Path, Path, dict[str, bytes], bool]:
    """The load root (models/) and what lies around it; the secrets no answer may show."""
    tag = hashlib.sha256(f"probe-{seed}".encode()).hexdigest()[:16]
    secrets = {"the marker file outside the load root": f"OUTSIDE-SECRET-{tag}".encode(),
               "bytes of a model file inside the root": f"INSIDE-MODEL-BYTES-{tag}".encode(),
               "the server's environment (/proc/self/environ)": f"ENVIRON-SECRET-{tag}".encode()}
    models, outside = tmp / "models", tmp / "outside"
    make_linear(models / "lin")
    make_linear(models / "spare")
    xgb = make_xgb(models / "xgb")
    inside = secrets["bytes of a model file inside the root"].decode()
    (models / "broken" / "1").mkdir(parents=True)
    (models / "broken" / "1" / "linear.json").write_text('{"weights": [0.5], "bias": "' + inside + '", ')
    (models / "leaky" / "1").mkdir(parents=True)
    (models / "leaky" / "1" / "model.json").write_text('{"learner": {"secret": "' + inside + '", ')
    (models / "shadowlink" / "1").mkdir(parents=True)
    (models / "shadowlink" / "1" / "model.json").symlink_to("/etc/shadow")
    (models / "passwdlink" / "1").mkdir(parents=True)
    (models / "passwdlink" / "1" / "linear.json").symlink_to("/etc/passwd")
    (models / "environlink" / "1").mkdir(parents=True)
    (models / "environlink" / "1" / "linear.json").symlink_to("/proc/self/environ")
    marker = secrets["the marker file outside the load root"].decode()
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"password": marker}))
    make_linear(outside, note=marker)  # loadable: a load that escaped the root would succeed
    (models / "link").symlink_to(outside)
    (tmp / "requestlog").mkdir()
    config = [("lin", "linear", 'version_labels { key: "stable" value: 1 }')]
    config += [("xgb", "xgboost", "")] if xgb else []
    (models / "models.pbtxt").write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{models / n}" model_platform: "{p}" {extra} }}\n'
        for n, p, extra in config) + "}\n")
    return models, outside, secrets, xgb


def start_server(args: argparse.Namespace, tmp: Path) -> Ctx:
    models, outside, secrets, xgb = prepare_models(tmp, args.seed)
    user, admin = f"probe-user-{args.seed}-9f3a", f"probe-admin-{args.seed}-7c1e"
    ctx = Ctx(free_port(), free_port(), free_port(), user, admin, "lin", models, outside, secrets, tmp / "server.log",
              xgb=xgb, exact=True)
    assert ctx.mm_port is not None
    ctx.command = [args.python, "-m", "serving", "--host", HOST, f"--rest_api_port={ctx.port}",
                   f"--port={ctx.grpc_port}", f"--model_config_file={models / 'models.pbtxt'}",
                   "--model_control_mode=explicit", "--load_model=*", f"--token={user}", f"--admin_token={admin}",
                   f"--modelmesh_port={ctx.mm_port}", f"--model_load_roots={models}"]
    env = {**os.environ, "PROBE_ENV_SECRET": secrets["the server's environment (/proc/self/environ)"].decode()}
    with open(ctx.log, "wb") as log:
        ctx.proc = subprocess.Popen(ctx.command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ctx.proc.poll() is not None:
            sys.exit(f"the server exited with {ctx.proc.returncode}:\n{ctx.log.read_text(errors='replace')[-4000:]}")
        if http_get(ctx, "/readyz")[0] == 200:
            return ctx
        time.sleep(0.1)
    ctx.proc.kill()
    sys.exit(f"the server was not ready in 120 s:\n{ctx.log.read_text(errors='replace')[-4000:]}")


def external(args: argparse.Namespace, tmp: Path) -> Ctx:
    url = urlsplit(args.url)
    if url.hostname not in ("127.0.0.1", "localhost"):
        sys.exit("this probe only talks to 127.0.0.1")
    if not args.token:
        sys.exit("--url needs the server's --token: a server without one has no authentication to probe")
    mm_port = int(args.modelmesh.rpartition(":")[2]) if args.modelmesh else None
    grpc_port = int(args.grpc.rpartition(":")[2]) if args.grpc else 0
    for address in (args.grpc, args.modelmesh):
        if address and address.rpartition(":")[0] not in ("127.0.0.1", "localhost"):
            sys.exit("this probe only talks to 127.0.0.1")
    outside = tmp / "outside"
    outside.mkdir()
    secret = f"OUTSIDE-SECRET-{args.seed}-{os.getpid()}".encode()
    (outside / "secret.json").write_bytes(b'{"password": "' + secret + b'"}')
    models = Path(args.load_root) if args.load_root else None
    if models is not None:
        link = tmp / "link"
        link.symlink_to(outside)
    # without an admin token the user token is the control token (README, "Who may load")
    return Ctx(url.port or 80, grpc_port, mm_port, args.token, args.admin_token or args.token, args.model, models,
               outside, {"the marker file outside the load root": secret})


def http_get(ctx: Ctx, path: str, token: str | None = None, method: str = "GET",
             body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, ctx.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": token} if token else {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e).encode()
    finally:
        conn.close()


def stop_server(ctx: Ctx) -> int | None:
    if ctx.proc is None:
        return None
    ctx.proc.send_signal(signal.SIGTERM)
    try:
        return ctx.proc.wait(60)
    except subprocess.TimeoutExpired:
        ctx.proc.kill()
        ctx.proc.wait()
        return None


# ---- HTTP cases ----

class HttpCases:
    """The hostile connections of each HTTP kind, from that kind's seeded rng."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        m = ctx.model
        self.good: list[tuple[str, bytes]] = [
            (f"/v1/models/{m}:predict", b'{"instances": [[2.0]]}'),
            (f"/v1/models/{m}:predict", b'{"inputs": [[2.0], [4.0]]}'),
            (f"/v1/models/{m}/labels/stable:predict", b'{"instances": [[2.0]]}'),
            (f"/v1/models/{m}/versions/1:predict", b'{"signature_name": "serving_default", "instances": [[2.0]]}'),
            (f"/v2/models/{m}/infer", b'{"inputs": [{"name": "inputs", "shape": [2, 1], "datatype": "FP32", '
                                      b'"data": [2, 4]}]}'),
            (f"/api/predict/{m}", b"[[2.0]]"),
            (f"/api/predict/{m}", b'{"instances": [[2.0]]}'),
            ("/", b"[[2.0]]"),
        ]
        self.templates: list[tuple[str, Any]] = [
            (f"/v1/models/{m}:predict", {"instances": [[2.0], [4.0]]}),
            (f"/v1/models/{m}:predict", {"signature_name": "serving_default", "inputs": {"inputs": [[2.0]]}}),
            (f"/v1/models/{m}:classify", {"examples": [{"x": 1.0}], "context": {"c": [1]}}),
            (f"/v1/models/{m}:regress", {"signature_name": "serving_default", "examples": [{"x": [1, 2]}]}),
            (f"/v2/models/{m}/infer", {"id": "r1", "inputs": [{"name": "inputs", "shape": [1, 1], "datatype": "FP32",
                                                               "data": [2.0], "parameters": {"binary_data_size": 4}}],
                                       "outputs": [{"name": "predictions", "parameters": {"binary_data": False}}],
                                       "parameters": {"binary_data_output": False}}),
            (f"/api/predict/{m}", [[2.0], [4.0]]),
            (f"/api/predict/{m}", {"instances": [[2.0]]}),
        ]
        if ctx.xgb:
            row = {"f0": 0.1, "f1": 0.2, "f2": 0.3, "f3": 0.4}
            self.good += [("/v1/models/xgb:predict", b'{"instances": [[0.1, 0.2, 0.3, 0.4]]}'),
                          ("/api/predict/xgb", json.dumps([row, row]).encode())]
            self.templates += [("/v1/models/xgb:predict", {"instances": [row]}),
                               ("/v1/models/xgb:predict", {"inputs": {k: [v] for k, v in row.items()}}),
                               ("/v2/models/xgb/infer", {"inputs": [{"name": "inputs", "shape": [1, 4], "datatype":
                                                                     "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}),
                               ("/api/predict/xgb", [row, [0.1, 0.2, 0.3, 0.4]])]
        self._bombs: dict[str, bytes] = {}

    # -- building blocks --

    def token(self, who: str | None) -> str | None:
        return {"user": self.ctx.user, "admin": self.ctx.admin, "wrong": "wrong-token"}.get(who or "", who)

    def admin_who(self, who: str | None) -> bool:
        signed = {"eas-admin": self.ctx.admin, "eas-user": self.ctx.user}.get(who or "")
        return self.ctx.is_admin(signed if signed is not None else self.token(who))

    def req(self, method: str | bytes, path: str | bytes, body: bytes = b"",
            headers: Iterable[tuple[str | bytes, str | bytes]] = (), who: str | None = "user", *,
            outside: bool = False, **kw: Any) -> Req:
        """A request with `who`'s token: user, admin, wrong, eas-user, eas-admin (signed), None, or a literal."""
        hdrs = list(headers)
        signed = who in ("eas-user", "eas-admin")
        if signed:
            token = self.ctx.user if who == "eas-user" else self.ctx.admin
            hdrs = eas_headers(token, b(method).decode("latin-1"), decoded_path(path), body) + hdrs
        elif (tok := self.token(who)) is not None:
            hdrs.insert(0, ("Authorization", tok))
        data = http_request(method, path, body, hdrs, **kw)
        dpath = decoded_path(path)
        admin = self.admin_who(who) or bool(self.ctx.admin) and self.ctx.admin.encode() in data
        return Req(data, dpath, bool(CONTROL_RE.match(dpath)), admin, outside)

    def raw(self, data: bytes, path: str = "") -> Req:
        return Req(data, path, bool(CONTROL_RE.match(path)), bool(self.ctx.admin) and self.ctx.admin.encode() in data)

    def hostile_body(self, rng: random.Random) -> tuple[str, bytes, list[tuple[str, str]]]:
        """(path, body, extra headers) of a predict-route request with something wrong in its body."""
        pick = rng.random()
        if pick < 0.5:
            path, doc = rng.choice(self.templates)
            return path, mutate(rng, doc), []
        if pick < 0.6:
            path = rng.choice([p for p, _ in self.templates])
            return path, random_json(rng, 4).encode("utf-8", "surrogatepass"), []
        name = rng.choice([self.ctx.model] + (["xgb"] if self.ctx.xgb else []))
        if pick < 0.8:
            return f"/v2/models/{name}/infer", v2_json(rng), []
        if pick < 0.92:
            body, hlen = v2_binary(rng)
            return (f"/v2/models/{name}/infer", body,
                    [("Inference-Header-Content-Length", hlen), ("Content-Type", "application/octet-stream")])
        return f"/api/predict/{name}", cloud_proto(rng), [("Content-Type", "application/octet-stream")]

    def bomb(self, which: str) -> bytes:
        """gzip bodies made once: `over` inflates past the 64 MiB body limit, `under` to 60 MiB of JSON space."""
        if which not in self._bombs:
            comp = zlib.compressobj(9, zlib.DEFLATED, 31)
            block = (b"\0" if which == "over" else b" ") * (1 << 20)
            parts = [comp.compress(block) for _ in range(80 if which == "over" else 60)]
            tail = b"" if which == "over" else b'{"instances": [[2.0]]}'
            self._bombs[which] = b"".join(parts) + comp.compress(tail) + comp.flush()
        return self._bombs[which]

    # -- kinds --

    def request_line(self, rng: random.Random, n: int) -> Iterator[Case]:
        m = self.ctx.model
        lines: list[Callable[[], bytes]] = [
            lambda: rng.randbytes(rng.randrange(1, 200)) + b"\r\n\r\n",
            lambda: b"GET\r\n\r\n", lambda: b"GET /\r\n\r\n", lambda: b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            lambda: b"GET / HTTP/1.1.1\r\n\r\n", lambda: b"GET / HTTP/01.1\r\n\r\n", lambda: b"GET / http/1.1\r\n\r\n",
            lambda: b"GET / HTTP/2.0\r\n\r\n", lambda: b"GET / FOO/1.1\r\n\r\n",
            lambda: b"GET  /healthz  HTTP/1.1\r\n\r\n",
            lambda: b"GET\t/healthz\tHTTP/1.1\r\n\r\n", lambda: b"\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            lambda: b" GET /healthz HTTP/1.1\r\n\r\n", lambda: b"GET /healthz HTTP/1.1\n\n",
            lambda: b"GET /healthz HTTP/1.1\nHost: x\n\n", lambda: b"GET /path with spaces HTTP/1.1\r\n\r\n",
            lambda: b"GET /\x00 HTTP/1.1\r\n\r\n", lambda: b"GET /\x01\x7f\xff HTTP/1.1\r\n\r\n",
            lambda: b"GET http://127.0.0.1/v1/models HTTP/1.1\r\n\r\n",
            lambda: b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n",
            lambda: b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: 169.254.169.254:80\r\n\r\n",
            lambda: b"OPTIONS * HTTP/1.1\r\n\r\n", lambda: b"GET * HTTP/1.1\r\n\r\n",
            lambda: b"GET /healthz#frag HTTP/1.1\r\n\r\n", lambda: b"GET /? HTTP/1.1\r\n\r\n",
            lambda: b"GET /v1/models?%zz HTTP/1.1\r\n\r\n", lambda: b"GET /% HTTP/1.1\r\n\r\n",
            lambda: b"GET /%zz HTTP/1.1\r\n\r\n", lambda: b"GET /%0 HTTP/1.1\r\n\r\n",
            lambda: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            lambda: bytes.fromhex("160301020001") + rng.randbytes(300),  # a TLS ClientHello's start
            lambda: b"SSH-2.0-OpenSSH_9.6\r\n",
            lambda: b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET /healthz HTTP/1.1\r\n\r\n",
            lambda: b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", lambda: b"G" * 1000 + b" / HTTP/1.1\r\n\r\n",
            lambda: b"\r\n\r\n", lambda: b"GET / HTTP/1.1\r\n", lambda: b"GET /v1/models/" + m.encode() + b" HTTP/1.1",
            lambda: b"POST /v1/models/" + m.encode() + b":predict HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}",
            lambda: b"GET /healthz HTTP/1.1\r\n\r\n" + rng.randbytes(50),
            lambda: b"GET /\xef\xbb\xbfhealthz HTTP/1.1\r\n\r\n", lambda: b"\xef\xbb\xbfGET /healthz HTTP/1.1\r\n\r\n",
            lambda: b"GET /healthz HTTP/1.0\r\n\r\n", lambda: b"GET /healthz HTTP/1.1\r\r\n\r\n",
            lambda: b"GET /healthz\rHTTP/1.1\r\n\r\n", lambda: b"GET /healthz HTTP/1.1 extra\r\n\r\n",
        ]
        for i in range(n):
            if i % 5 == 0:  # a path that tries to step out of the status page's files
                path = rng.choice(PATH_TRAVERSALS)
                yield Case([self.req(rng.choice(["GET", "GET", "POST"]), path, who=rng.choice(["user", None]))],
                           timeout=5, half_close=rng.random() < 0.5)
                continue
            data = rng.choice(lines)()
            yield Case([self.raw(data, decoded_path(data.split(b" ")[1]) if data.count(b" ") >= 2 else "")],
                       timeout=3, half_close=rng.random() < 0.6)

    def headers(self, rng: random.Random, n: int) -> Iterator[Case]:
        variants: list[Callable[[str, bytes], list[tuple[str | bytes, str | bytes]] | bytes]] = [
            lambda p, body: [("X-Big", "v" * 70_000)],
            lambda p, body: [(f"X-H{i}", "v") for i in range(2000)],
            lambda p, body: [(f"X-H{i}", "v" * 10) for i in range(5000)],
            lambda p, body: [("Cookie", "c=" + "x" * 60_000)],
            lambda p, body: http_request("POST", p, body, [("Foo", "")]).replace(b"Foo: ", b"Foo"),
            lambda p, body: http_request("POST", p, body, [("Host ", "x")]),
            lambda p, body: [("X-Fold", "a\r\n b")],
            lambda p, body: [("X Space", "v")], lambda p, body: [("X-\x00", "v")], lambda p, body: [("", "v")],
            lambda p, body: [("X-Nul", "a\x00b")], lambda p, body: [("X-Del", "a\x7fb")],
            lambda p, body: [(b"X-Ff", b"\xff\xfe")],
            lambda p, body: http_request("POST", p, body, [("Content-Length", str(len(body)))], length=True),
            lambda p, body: http_request("POST", p, body, [("Content-Length", str(len(body) + 1))], length=True),
            lambda p, body: http_request("POST", p, body, [("Content-Length", str(len(body)))], length=False)
            .replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n", 1),
            lambda p, body: http_request("POST", p, body, [("Content-Length", rng.choice(
                ["-1", "+5", "0x10", " 5", "5 5", "99999999999999999999", "18446744073709551616", "1e3",
                 "\u0665", "5,5", "", "abc", "9223372036854775807"]))], length=False),
            lambda p, body: http_request("POST", p, body, [("Transfer-Encoding", rng.choice(
                ["chunked", "gzip", "gzip, chunked", "chunked, chunked", " chunked", "Chunked", "xchunked",
                 "identity", "chunked\x00"]))]),
            lambda p, body: [("Expect", "100-continue")], lambda p, body: [("Expect", "garbage")],
            lambda p, body: http_request("POST", p, body, host=False),
            lambda p, body: [("Host", "169.254.169.254")], lambda p, body: [("Host", "a"), ("Host", "b")],
            lambda p, body: [("Connection", "close")], lambda p, body: [("Connection", "Upgrade"), ("Upgrade", "h2c")],
            lambda p, body: [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "x")],
            lambda p, body: [("X-Request-Id", "r" * rng.choice([128, 129, 10_000]))],
            lambda p, body: [(b"X-Request-Id", rng.choice([b"\xff\xfe", b"a\x00b", b"%0d%0aX-Probe-Injected: 1",
                                                           b"a\tb", b'"<>', b"\xc3\xa9", b"", b" "]))],
            lambda p, body: [("X-Request-Id", "a"), ("X-Request-Id", "b")],
            lambda p, body: [("traceparent", rng.choice(["garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01",
                                                         "ff-" + "z" * 32 + "-" + "1" * 16 + "-01", "x" * 5000]))],
            lambda p, body: [("tracestate", "k=" + "v" * 20_000)],
            lambda p, body: [("Content-Type", rng.choice(["multipart/form-data; boundary=x", "text/plain",
                                                          "application/json; charset=utf-16", "application/x-protobuf",
                                                          "application/octet-stream", "\xff"]))],
            lambda p, body: [("Accept", "text/html")], lambda p, body: [("Accept", "*/*;" * 5000)],
            lambda p, body: [("Inference-Header-Content-Length", rng.choice(
                ["-1", "x", "18446744073709551616", "99999999999999999999", str(len(body) + 1), "0", " 5", "1e3"]))],
            lambda p, body: [("Content-MD5", "x" * 100), ("Date", rng.choice(DATES))],
            lambda p, body: [("Authorization", self.ctx.user), ("Authorization", "wrong")],
            lambda p, body: [("Authorization", "wrong"), ("Authorization", self.ctx.user)],
            lambda p, body: http_request("POST", p, body, [("Authorization", self.ctx.user)], version=b"HTTP/1.0"),
            lambda p, body: http_request("POST", p, body, [("Authorization", self.ctx.user),
                                                           ("Connection", "keep-alive")], version=b"HTTP/1.0"),
        ]
        for _ in range(n):
            path, body = rng.choice(self.good)
            made = rng.choice(variants)(path, body)
            if isinstance(made, bytes):  # the token goes right after the request line
                token = b"\r\nAuthorization: " + self.ctx.user.encode() + b"\r\n"
                reqs = [self.raw(made.replace(b"\r\n", token, 1), decoded_path(path))]
            else:
                reqs = [self.req("POST", path, body, made, rng.choice(["user", "user", "user", None]))]
            if rng.random() < 0.5:  # and a good request after it on the same connection
                reqs.append(self.req("POST", path, body))
            yield Case(reqs, timeout=4, half_close=rng.random() < 0.5)

    def content_length(self, rng: random.Random, n: int) -> Iterator[Case]:
        for _ in range(n):
            path, body = rng.choice(self.good)
            auth = [("Authorization", self.ctx.user)]
            pick = rng.randrange(8)
            if pick == 0:  # shorter than the body: the rest is read as the next request
                cut = rng.randrange(0, max(len(body), 1))
                data = http_request("POST", path, body, auth + [("Content-Length", str(cut))], length=False)
                yield Case([self.raw(data, path)], timeout=3, expect=2, half_close=True)
            elif pick == 1:  # longer, then the client half-closes
                longer = [("Content-Length", str(len(body) + rng.randrange(1, 999)))]
                data = http_request("POST", path, body, auth + longer, length=False)
                yield Case([self.raw(data, path)], timeout=3, half_close=True)
            elif pick == 2:  # longer, and the client waits (a short time-out)
                data = http_request("POST", path, body, auth + [("Content-Length", str(len(body) + 10))], length=False)
                yield Case([self.raw(data, path)], timeout=0.5)
            elif pick == 3:  # no length on a POST with a body
                data = http_request("POST", path, body, auth, length=False)
                yield Case([self.raw(data, path)], timeout=3, expect=2, half_close=True)
            elif pick == 4:  # past the body limit, announced
                size = rng.choice([64 * 2 ** 20 + 1, 2 ** 63 - 1, 2 ** 40])
                data = http_request("POST", path, b"", auth + [("Content-Length", str(size))], length=False)
                yield Case([self.raw(data + body, path)], timeout=5)
            elif pick == 5:  # a wrong length in the middle of a keep-alive run
                good = self.req("POST", path, body)
                bad = http_request("POST", path, body, auth + [("Content-Length", str(max(len(body) - 3, 0)))],
                                   length=False)
                yield Case([good, self.raw(bad, path), good], timeout=3, half_close=True)
            elif pick == 6:  # a GET with a body
                yield Case([self.req("GET", f"/v1/models/{self.ctx.model}", body), self.req("GET", "/healthz")],
                           timeout=3)
            else:  # zero length, body sent anyway
                data = http_request("POST", path, body, auth + [("Content-Length", "0")], length=False)
                yield Case([self.raw(data, path)], timeout=3, expect=2, half_close=True)

    def chunked(self, rng: random.Random, n: int) -> Iterator[Case]:
        def framed(path: str, chunks: bytes, extra: list[tuple[str, str]] | None = None) -> bytes:
            heads = [("Authorization", self.ctx.user), ("Transfer-Encoding", "chunked")] + (extra or [])
            return http_request("POST", path, b"", heads, length=False) + chunks

        def chunks_of(body: bytes, size: int) -> bytes:
            return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                            for i in range(0, len(body), size)) + b"0\r\n\r\n"

        makers: list[Callable[[str, bytes], tuple[bytes, bool]]] = [
            lambda p, body: (framed(p, chunks_of(body, rng.randrange(1, 8))), False),
            lambda p, body: (framed(p, chunks_of(body, 1)), False),
            lambda p, body: (framed(p, b"zz\r\n" + body + b"\r\n0\r\n\r\n"), False),
            lambda p, body: (framed(p, b"-1\r\n" + body + b"\r\n0\r\n\r\n"), False),
            lambda p, body: (framed(p, b"ffffffffffffffffffff\r\n" + body + b"\r\n0\r\n\r\n"), False),
            lambda p, body: (framed(p, b"7fffffff\r\n" + body), True),
            lambda p, body: (framed(p, b"%x;%s\r\n%s\r\n0\r\n\r\n" % (len(body), b"e" * 70_000, body)), False),
            lambda p, body: (framed(p, b"%x\r\n%sXX0\r\n\r\n" % (len(body), body)), False),
            lambda p, body: (framed(p, chunks_of(body, 4)[:-2] + b"Authorization: " + self.ctx.admin.encode()
                                    + b"\r\nX-Trailer: 1\r\n\r\n"), False),
            lambda p, body: (framed(p, chunks_of(body, 3)[:-2] + b"X-T: " + b"t" * 70_000 + b"\r\n\r\n"), False),
            lambda p, body: (framed(p, chunks_of(body, 5) + b"GARBAGE\r\n\r\n"), True),
            lambda p, body: (framed(p, chunks_of(body, 5)[:-5]), True),  # no last chunk, then the close
            lambda p, body: (framed(p, chunks_of(body, 2), [("Content-Length", str(len(body)))]), False),
            lambda p, body: (framed(p, chunks_of(self.bomb("over"), 65536), [("Content-Encoding", "gzip")]), False),
            lambda p, body: (framed(p, b"0\r\n\r\n"), False),
            lambda p, body: (framed(p, b"%X\r\n%s\r\n0\r\n\r\n" % (len(body), body)), False),
            lambda p, body: (framed(p, b"0x%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)), False),
            lambda p, body: (framed(p, b" %x \r\n%s\r\n0\r\n\r\n" % (len(body), body)), False),
            lambda p, body: (framed(p, b"%x\n%s\n0\n\n" % (len(body), body)), False),
            lambda p, body: (http_request("GET", "/healthz", b"", [("Transfer-Encoding", "chunked")], length=False)
                             + chunks_of(b"hello", 2), False),
        ]
        for _ in range(n):
            path, body = rng.choice(self.good)
            data, half = rng.choice(makers)(path, body)
            yield Case([self.raw(data, path)], timeout=4, half_close=half or rng.random() < 0.3)

    def gzip(self, rng: random.Random, n: int) -> Iterator[Case]:
        def gz(data: bytes) -> bytes:
            comp = zlib.compressobj(6, zlib.DEFLATED, 31)
            return comp.compress(data) + comp.flush()

        def crc_broken(data: bytes) -> bytes:
            z = bytearray(gz(data))
            z[-8] ^= 0xFF
            return bytes(z)

        makers: list[Callable[[bytes], tuple[bytes, str]]] = [
            lambda body: (gz(body), "gzip"), lambda body: (gz(body)[:-rng.randrange(1, 12)], "gzip"),
            lambda body: (b"\x1f\x8c" + gz(body)[2:], "gzip"), lambda body: (crc_broken(body), "gzip"),
            lambda body: (gz(body) + rng.randbytes(20), "gzip"), lambda body: (gz(body) + gz(body), "gzip"),
            lambda body: (gz(gz(body)), "gzip"), lambda body: (b"", "gzip"), lambda body: (body, "gzip"),
            lambda body: (zlib.compress(body), "gzip"), lambda body: (zlib.compress(body), "deflate"),
            lambda body: (gz(body), "GZIP"), lambda body: (gz(body), "gzip, gzip"), lambda body: (gz(body), "x-gzip"),
            lambda body: (gz(body), "br"), lambda body: (gz(body)[:10], "gzip"),
            lambda body: (gz(rng.randbytes(1000)), "gzip"), lambda body: (gz(b"\xff" * 5000), "gzip"),
        ]
        for i in range(n):
            path, body = rng.choice(self.good)
            if i % 15 == 0:
                data, encoding = self.bomb(rng.choice(["over", "over", "under"])), "gzip"
            else:
                data, encoding = rng.choice(makers)(body)
            reqs = [self.req("POST", path, data, [("Content-Encoding", encoding)])]
            if rng.random() < 0.3:
                reqs.append(self.req("POST", path, body))
            yield Case(reqs, timeout=20, half_close=rng.random() < 0.3)

    def json_bodies(self, rng: random.Random, n: int) -> Iterator[Case]:
        for _ in range(n):
            reqs = []
            for _ in range(rng.randrange(2, 7)):
                path, body, extra = self.hostile_body(rng)
                reqs.append(self.req("POST", path, body, extra, rng.choice(["user"] * 18 + [None, "wrong"])))
            yield Case(reqs, timeout=15)

    def numbers(self, rng: random.Random, n: int) -> Iterator[Case]:
        m = self.ctx.model
        routes = [("POST", "/v1/models/{m}/versions/{v}:predict", b'{"instances": [[2.0]]}'),
                  ("GET", "/v1/models/{m}/versions/{v}", b""), ("GET", "/v1/models/{m}/versions/{v}/metadata", b""),
                  ("POST", "/v1/models/{m}/labels/{v}:predict", b'{"instances": [[2.0]]}'),
                  ("POST", "/v2/models/{m}/versions/{v}/infer",
                   b'{"inputs": [{"name": "inputs", "shape": [1, 1], "datatype": "FP32", "data": [2.0]}]}'),
                  ("GET", "/v2/models/{m}/versions/{v}", b""), ("GET", "/v2/models/{m}/versions/{v}/ready", b""),
                  ("GET", "/v2/models/{m}/versions/{v}/stats", b""), ("GET", "/v2/models/{m}/versions/{v}/config", b""),
                  ("POST", "/v1/models/{m}/versions/{v}:classify", b'{"examples": [{"x": 1}]}')]
        for _ in range(n):
            reqs = []
            for _ in range(rng.randrange(2, 6)):
                if rng.random() < 0.6:
                    method, template, body = rng.choice(routes)
                    version = rng.choice(VERSION_TEXTS)
                    path = template.format(m=rng.choice([m, m, "xgb"] if self.ctx.xgb else [m]), v=version)
                    if rng.random() < 0.3 and not version.isascii():
                        path = quote(path, safe="/:%")
                    reqs.append(self.req(method, path, body))
                else:
                    path, body = number_body(rng, m)
                    reqs.append(self.req("POST", path, body))
            yield Case(reqs, timeout=10)

    def names(self, rng: random.Random, n: int) -> Iterator[Case]:
        routes = [("POST", "/v1/models/{n}:predict", b'{"instances": [[2.0]]}'), ("GET", "/v1/models/{n}", b""),
                  ("GET", "/v1/models/{n}/metadata", b""), ("GET", "/v1/models/{n}/labels/{n}", b""),
                  ("POST", "/v2/models/{n}/infer", b'{"inputs": []}'), ("GET", "/v2/models/{n}", b""),
                  ("GET", "/v2/models/{n}/ready", b""), ("GET", "/v2/models/{n}/stats", b""),
                  ("GET", "/v2/models/{n}/config", b""), ("GET", "/api/predict/{n}", b""),
                  ("POST", "/api/predict/{n}", b"[[2.0]]"), ("POST", "/v2/repository/models/{n}/unload", b""),
                  ("POST", "/v2/repository/models/{n}/load", b"")]
        for _ in range(n):
            reqs = []
            for _ in range(rng.randrange(2, 6)):
                method, template, body = rng.choice(routes)
                name = rng.choice(NAMES)
                who = rng.choice(["user", "user", None, "wrong"])
                if "repository" in template:
                    who = rng.choice(["user", None, "wrong", "admin"])
                    if self.admin_who(who) and template.endswith("load"):  # a load that may only fail on the name
                        body = json.dumps({"parameters": {"path": str(self.ctx.models / "spare")}}).encode() \
                            if self.ctx.models else b""
                if not name.isascii() and rng.random() < 0.5:
                    name = quote(name)
                extra = [("X-Request-Id", rng.choice(NAMES))] if rng.random() < 0.3 else []
                reqs.append(self.req(method, template.format(n=name), body, extra, who))
            yield Case(reqs, timeout=30)

    def routes_methods(self, rng: random.Random, n: int) -> Iterator[Case]:
        m = self.ctx.model
        routes = ["/", "/ui", "/ui/", "/ui/api/status", "/ui/docs", "/healthz", "/readyz", "/metrics",
                  "/monitoring/prometheus/metrics", "/v1/models", "/v1/models/", f"/v1/models/{m}",
                  f"/v1/models/{m}/metadata", f"/v1/models/{m}/versions/1", f"/v1/models/{m}/labels/stable",
                  f"/v1/models/{m}:predict", f"/v1/models/{m}:classify", f"/v1/models/{m}:regress",
                  f"/api/predict/{m}", "/api/predict/", "/v2", "/v2/", "/v2/health/live", "/v2/health/ready",
                  f"/v2/models/{m}", f"/v2/models/{m}/ready", f"/v2/models/{m}/infer", f"/v2/models/{m}/config",
                  f"/v2/models/{m}/stats", "/v2/models/stats", "/v2/repository/index",
                  f"/v2/repository/models/{m}/load", f"/v2/repository/models/{m}/unload", "/nope", "/v3", "/api"]
        combos = [(method, route, who) for method in METHODS for route in routes for who in ("user", None, "wrong")]
        rng.shuffle(combos)
        simple = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
        alone = [c for c in combos if c[0] not in simple]  # HEAD, unknown methods, CONNECT: one a connection
        kept = [c for c in combos if c[0] in simple]  # the rest four a connection, kept alive
        share_alone = n * len(alone) // (len(alone) + len(kept) // 4)
        for i in range(n):
            body_for = {"POST", "PUT", "PATCH"}
            extra = [("Accept", "text/html")] if rng.random() < 0.2 else []
            if i < share_alone:
                method, route, who = alone[i % len(alone)]
                body = b'{"instances": [[2.0]]}' if method in body_for else b""
                yield Case([self.req(method, route, body, extra + [("Connection", "close")], who)], timeout=3)
                continue
            j = (i - share_alone) * 4
            reqs = [self.req(method, route.replace(f"/{m}/unload", "/nosuch/unload") if self.admin_who(who) else route,
                             b'{"instances": [[2.0]]}' if method in body_for else b"", extra, who)
                    for method, route, who in (kept[(j + k) % len(kept)] for k in range(4))]
            yield Case(reqs, timeout=10)

    def ui_since(self, rng: random.Random, n: int) -> Iterator[Case]:
        for _ in range(n):
            reqs = []
            for _ in range(rng.randrange(3, 7)):
                since = rng.choice(SINCE) if rng.random() < 0.8 else str(rng.uniform(-1e12, 1e12))
                if rng.random() < 0.5:
                    since = quote(since, safe="")
                query = rng.choice(UI_QUERIES).format(since)
                reqs.append(self.req("GET", "/ui/api/status?" + query, b"", (), rng.choice(["user"] * 6 + [None])))
            yield Case(reqs, timeout=15)

    def auth(self, rng: random.Random, n: int) -> Iterator[Case]:
        ctx = self.ctx
        literal = ["", "Bearer " + ctx.user, " " + ctx.user + " ", ctx.user.upper(), ctx.user[:-1], ctx.user + "x",
                   ctx.user + "\x00", "EAS ", "EAS", "EAS !!!", "EAS " + "A" * 10_000,
                   "EAS " + base64.b64encode(ctx.admin.encode()).decode(), ctx.user + "\u00e9", "Basic dXNlcjpwYXNz",
                   "\t" + ctx.user]
        for _ in range(n):
            reqs = []
            for _ in range(rng.randrange(2, 5)):
                path, body = rng.choice(self.good + [("/v2/repository/index", b"{}")])
                pick = rng.randrange(10)
                if pick < 3:
                    reqs.append(self.req("POST", path, body, (), rng.choice(["user", "admin", "wrong", None, "eas-user",
                                                                              "eas-admin"])))
                elif pick < 5:
                    reqs.append(self.req("POST", path, body, (), rng.choice(literal)))
                elif pick < 8:  # signed with the user token, something else wrong
                    heads = eas_headers(ctx.user, "POST", path, body, date=rng.choice(DATES + [None]),
                                        md5=rng.choice([None, None, hashlib.md5(body).hexdigest(), "x", ""]))
                    reqs.append(self.req("POST", path, body, heads, None))
                elif pick < 9:  # signed over another path or method
                    heads = eas_headers(ctx.user, rng.choice(["GET", "POST"]), rng.choice(self.good)[0], body)
                    reqs.append(self.req("POST", path, body, heads, None))
                else:
                    reqs.append(self.req("GET", "/ui/api/status", b"", (), rng.choice(["user", None, "wrong", "admin",
                                                                                        "Bearer " + ctx.user])))
            yield Case(reqs, timeout=10)

    def control(self, rng: random.Random, n: int) -> Iterator[Case]:
        if n <= 0:
            return
        spare = str(self.ctx.models / "spare") if self.ctx.models else "/models/spare"
        setup = json.dumps({"parameters": {"path": spare, "config": json.dumps({"backend": "linear"})}}).encode()
        yield Case([self.req("POST", "/v2/repository/models/spare/load", setup, (), "admin")], timeout=60)
        sweep = [(path, outside, form) for path, outside in hostile_paths(self.ctx) for form in range(3)]
        for path, outside, form in sweep[:n - 1]:  # every path, in every place a load names one, as the admin
            parameters: dict[str, str] = [{"path": path}, {"config": json.dumps({"base_path": path})},
                                          {"path": path, "config": json.dumps({"backend": "linear"})}][form]
            body = json.dumps({"parameters": parameters}).encode("utf-8", "surrogatepass")
            yield Case([self.req("POST", "/v2/repository/models/probe/load", body, (), "admin", outside=outside)],
                       timeout=60)
        served = {"lin", "xgb"} if self.ctx.xgb else {"lin"}
        for _ in range(n - 1 - len(sweep[:n - 1])):
            reqs = [self.control_request(rng) for _ in range(rng.randrange(1, 3))]
            touched = [r.path.split("/")[4] for r in reqs if r.admin and r.path.endswith("/load")
                       and r.path.split("/")[4] in served]
            yield Case(reqs, timeout=60, touches=touched[0] if touched else "")

    def control_request(self, rng: random.Random) -> Req:
        ctx = self.ctx
        who = rng.choice(["admin", "admin", "admin", "user", None, "wrong", "eas-user", "eas-admin",
                          ctx.admin.upper(), ctx.admin[:-1], ctx.user + ctx.admin[:3]])
        verb = "unload" if rng.random() < 0.2 else "load"
        served = ["lin", "xgb"] if ctx.xgb else ["lin"]
        pool = ["probe", "p1", "p2", "spare", "leaky", "broken", "link", "shadowlink", "passwdlink", "environlink",
                "nosuch"] + ([] if self.admin_who(who) and verb == "unload" else served)
        name = rng.choice(pool)
        if verb == "unload":
            return self.req("POST", f"/v2/repository/models/{name}/unload", rng.choice([b"", b"{}"]), (), who)
        path, outside = load_path(rng, ctx, name)
        body = load_body(rng, path)
        if rng.random() < 0.05:
            body = random_json(rng, 3).encode("utf-8", "surrogatepass")
        return self.req("POST", f"/v2/repository/models/{name}/load", body, (), who,
                        outside=outside and b"parameters" in body)


def mutate(rng: random.Random, doc: Any) -> bytes:
    """`doc` with one value (or key) replaced by hostile JSON text."""
    places = list(_places(doc))
    path, is_key = rng.choice(places)
    hole = "@@hole@@"
    text = json.dumps(_with_hole(doc, path, is_key, hole))
    value = rng.choice(HOSTILE_KEYS if is_key else HOSTILE_JSON)
    return text.replace(json.dumps(hole), value, 1).encode("utf-8", "surrogatepass")


def _places(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], bool]]:
    yield path, False
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        if isinstance(doc, dict):
            yield (*path, k), True
        yield from _places(v, (*path, k))


def _with_hole(doc: Any, path: tuple[Any, ...], is_key: bool, hole: str) -> Any:
    if not path:
        return hole
    doc = json.loads(json.dumps(doc))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if is_key:
        parent[hole] = parent.pop(path[-1])
    else:
        parent[path[-1]] = hole
    return doc


def random_json(rng: random.Random, depth: int) -> str:
    """A random JSON-ish text (NaN tokens and hostile values among ordinary ones)."""
    pick = rng.random()
    if depth <= 0 or pick < 0.35:
        return rng.choice(JSON_NUMBERS + ['"inputs"', '"x"', "null"] + HOSTILE_JSON[:12])
    if pick < 0.7:
        return "[" + ", ".join(random_json(rng, depth - 1) for _ in range(rng.randrange(0, 5))) + "]"
    keys = ["instances", "inputs", "signature_name", "examples", "context", "data", "shape", "datatype", "name",
            "outputs", "parameters", "id", "b64", "f0", ""]
    return "{" + ", ".join(f'"{rng.choice(keys)}": {random_json(rng, depth - 1)}'
                           for _ in range(rng.randrange(0, 5))) + "}"


def v2_json(rng: random.Random) -> bytes:
    """A KServe V2 JSON request with random types, shapes and data."""
    inputs = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        count = rng.choice([0, 1, 1, 2, 3, 4, 8, 1000])
        data = "[" + ", ".join(rng.choice(JSON_NUMBERS) for _ in range(count)) + "]"
        if rng.random() < 0.2:
            data = rng.choice(['[[1, 2], [3]]', '"abc"', "1", "null", '[["a"]]', '[{"b64": "AAAA"}]', "[" * 300])
        shape = "[" + ", ".join(rng.choice(DIM_TEXTS) for _ in range(rng.randrange(0, 5))) + "]"
        name = json.dumps(rng.choice(["inputs", "inputs", "", "x", "inputs\u0000", "in" * 100]))
        params = rng.choice(["", ', "parameters": {"binary_data_size": ' + rng.choice(DIM_TEXTS) + "}",
                             ', "parameters": []', ', "parameters": {"shared_memory_region": "/dev/shm/x"}'])
        dtype = rng.choice(V2_TYPES)
        inputs.append(f'{{"name": {name}, "shape": {shape}, "datatype": "{dtype}", "data": {data}{params}}}')
    outputs = rng.choice(["", ', "outputs": [{"name": "predictions", "parameters": {"binary_data": true}}]',
                          ', "outputs": [{"name": "nope"}]', ', "outputs": {}', ', "outputs": [{"name": 1}]',
                          ', "parameters": {"binary_data_output": true}', ', "parameters": {"classification": 2}',
                          ', "id": ' + rng.choice(['"x"', "1", "[" * 1000 + "]" * 1000, "null", '"\\ud800"'])])
    return f'{{"inputs": [{", ".join(inputs)}]{outputs}}}'.encode("utf-8", "surrogatepass")


def v2_binary(rng: random.Random) -> tuple[bytes, str]:
    """A KServe V2 request with binary tensor data, its sizes often wrong: (body, header length text)."""
    dtype = rng.choice(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "INT8", "UINT64", "BF16"])
    raw = rng.randbytes(rng.choice([0, 1, 3, 4, 8, 16, 100]))
    if dtype == "BYTES":
        raw = struct.pack("<I", rng.choice([len(raw), 2 ** 32 - 1, len(raw) + 5, 0])) + raw
    declared = rng.choice([str(len(raw))] * 3 + [str(len(raw) + 1), str(max(len(raw) - 1, 0)), "0", "-1",
                                                  "9223372036854775808", "18446744073709551616", '"4"', "1.5"])
    shape = rng.choice(["[1, 1]", "[1, 4]", "[2, 1]", "[0]", "[-1, 1]", "[4611686018427387904, 4]", "[]"])
    header = (f'{{"inputs": [{{"name": "inputs", "shape": {shape}, "datatype": "{dtype}", "parameters": '
              f'{{"binary_data_size": {declared}}}}}], "outputs": [{{"name": "predictions", "parameters": '
              f'{{"binary_data": true}}}}]}}').encode()
    hlen = rng.choice([str(len(header))] * 3 + [str(len(header) + 1), str(len(header) - 1), "0", "-1",
                                                 str(len(header) + len(raw) + 5), "9223372036854775808", "x"])
    return header + raw, hlen


def cloud_proto(rng: random.Random) -> bytes:
    """A cloud processor protobuf body (tf_predict.proto PredictRequest), hostile, or bytes that are none."""
    if rng.random() < 0.3:
        data = rng.randbytes(rng.randrange(1, 300))
        return b"\x0a" + data if data[:1] in (b"[", b"{") else data
    req = tf_predict_pb2.PredictRequest(signature_name=rng.choice(["", "serving_default", "x", "\u00e9" * 50]))
    for _ in range(rng.randrange(0, 3)):
        arr = req.inputs[rng.choice(["inputs", "", "x", "f0"])]
        arr.dtype = rng.choice([*range(0, 24), 99, 2 ** 31 - 1])
        arr.array_shape.dim.extend(rng.choice(DIMS) for _ in range(rng.randrange(0, 4)))
        count = rng.choice([0, 1, 2, 4, 1000])
        pick = rng.randrange(6)
        if pick == 0:
            arr.float_val.extend(rng.choice([0.0, 1.0, float("nan"), float("inf"), 3e38]) for _ in range(count))
        elif pick == 1:
            arr.double_val.extend(rng.choice([0.0, 1e308, float("-inf")]) for _ in range(count))
        elif pick == 2:
            arr.int_val.extend(rng.choice([0, -1, 2 ** 31 - 1, -(2 ** 31)]) for _ in range(count))
        elif pick == 3:
            arr.string_val.extend(rng.randbytes(rng.randrange(0, 20)) for _ in range(count))
        elif pick == 4:
            arr.int64_val.extend(rng.choice([0, 2 ** 63 - 1, -(2 ** 63)]) for _ in range(count))
        else:
            arr.bool_val.extend(rng.choice([True, False]) for _ in range(count))
    req.output_filter.extend(rng.choice(["predictions", "", "x" * 200]) for _ in range(rng.randrange(0, 3)))
    data = req.SerializeToString()
    return data if data[:1] not in (b"[", b"{") else b"\x0a\x00" + data


def number_body(rng: random.Random, m: str) -> tuple[str, bytes]:
    """A predict body whose numbers lie past their type's range."""
    big = rng.choice(JSON_NUMBERS[6:32])
    forms = [
        (f"/v1/models/{m}:predict", f'{{"instances": [[{big}]]}}'),
        (f"/v1/models/{m}:predict", f'{{"inputs": [[{big}], [{big}]]}}'),
        (f"/v1/models/{m}:predict", f'{{"signature_name": {big}, "instances": [[2.0]]}}'),
        (f"/api/predict/{m}", f"[[{big}]]"),
        (f"/v2/models/{m}/infer", f'{{"inputs": [{{"name": "inputs", "shape": [1, 1], "datatype": '
                                  f'"{rng.choice(V2_TYPES[:13])}", "data": [{big}]}}]}}'),
        (f"/v2/models/{m}/infer", f'{{"inputs": [{{"name": "inputs", "shape": [{rng.choice(DIM_TEXTS)}, '
                                  f'{rng.choice(DIM_TEXTS)}], "datatype": "FP32", "data": [1.0]}}]}}'),
        (f"/v1/models/{m}:classify", f'{{"examples": [{{"x": {big}}}, {{"x": [{big}, 1]}}]}}'),
        (f"/v1/models/{m}:regress", f'{{"examples": [{{"x": {{"b64": "{"A" * rng.randrange(1, 9)}"}}}}]}}'),
    ]
    path, text = rng.choice(forms)
    return path, text.encode()


def hostile_paths(ctx: Ctx) -> list[tuple[str, bool]]:
    """Model paths a load may name that must be refused, each with whether it lies outside the load root (a
    relative path, or a folder inside the root that does not exist, is not outside: refused for another reason)."""
    models, outside = ctx.models, ctx.outside
    paths = ["/etc/shadow", "/etc/passwd", "/etc", "/proc/self/environ", "/proc/self/cwd", "/proc/self/root/etc/passwd",
             "/proc/1/environ", "/dev/zero", "/dev/urandom", "/proc/self/fd/0", "/sys/kernel", "/", "//etc/passwd",
             "/etc/passwd\x00", "http://169.254.169.254/latest/meta-data/", "http://169.254.169.254/latest/m.tar.gz",
             "https://169.254.169.254/m.tar.gz", "http://[::ffff:169.254.169.254]/m.tar.gz",
             "http://0xa9fea9fe/m.tar.gz", "http://2852039166/m.tar.gz", "file:///etc/passwd", "s3://bucket/m",
             "gs://bucket/m", "relative/path", "../../etc/passwd", "~root", "", "\\\\server\\share",
             "http://127.0.0.1:1/m.tar.gz#sha256=" + "0" * 64]
    if outside is not None:
        paths += [f"{outside}/secret.json", str(outside), f"{outside}/1", f"{outside}/1/linear.json"]
    if models is not None:
        paths += [f"{models}/link", f"{models}/link/1", f"{models}/../outside", f"{models}/lin/../../outside",
                  f"{models}/lin/../../../etc", f"{models}/lin\x00/../../outside", f"{models}/lin\x00",
                  f"{models}/%2e%2e/outside", f"{models}" + "/x" * 2000, f"{models}-evil", f"{models}/link/secret.json",
                  f"{models}/../outside/secret.json", f"{models}/./../outside"]
    inside = str(models) + "/" if models is not None else None
    return [(p, not (inside and (p.startswith(inside + "%2e") or p.startswith(inside + "x/"))) and p not in
             ("relative/path", "../../etc/passwd", "~root", "")) for p in paths]


def load_path(rng: random.Random, ctx: Ctx, name: str) -> tuple[str, bool]:
    """A model path for a load request, and whether it lies outside the load root."""
    inside_paths = {"leaky", "broken", "shadowlink", "passwdlink", "environlink", "spare", "lin"}
    if ctx.models is not None and name in inside_paths and rng.random() < 0.5:
        return str(ctx.models / name), False
    return rng.choice(hostile_paths(ctx))


def load_body(rng: random.Random, path: str) -> bytes:
    backend = rng.choice(["linear", "xgboost", "lightgbm", "onnx", "pmml", "tensorflow", "pytorch", "", "x" * 300])
    policy = rng.choice([None, {"latest": {"num_versions": -1}}, {"latest": {"num_versions": 2 ** 63}},
                         {"specific": {"versions": [2 ** 63 - 1, -1]}}, {"all": 1}, {"x": {}}, [], {"latest": "1"},
                         {"latest": {"num_versions": 1e300}}, {"all": {}}])
    config: dict[str, Any] = {"base_path": path, "backend": backend}
    if policy is not None:
        config["version_policy"] = policy
    forms: list[Any] = [
        {"parameters": {"path": path}},
        {"parameters": {"config": json.dumps(config)}},
        {"parameters": {"path": path, "config": json.dumps({"backend": backend})}},
        {"parameters": {"config": config}},
        {"parameters": {"path": [path]}}, {"parameters": {"path": {"p": path}}}, {"parameters": {"path": 1}},
        {"parameters": {"config": json.dumps({"base_path": [path]})}},
        {"parameters": {"file:1/linear.json": base64.b64encode(b'{"weights": [1], "bias": 0}').decode(),
                        "path": path}},
        {"parameters": [path]}, {"parameters": None},
    ]
    return json.dumps(rng.choice(forms)).encode("utf-8", "surrogatepass")


# ---- gRPC cases ----

@dataclass
class GrpcCase:
    port: str  # "main" or "mm"
    method: str
    data: bytes
    metadata: tuple[tuple[str, str | bytes], ...]
    control: bool = False
    admin: bool = False
    outside: bool = False
    stream: bool = False  # a server-streaming method (Health/Watch): the first message is read
    reload: bool = False  # HandleReloadConfigRequest: success is an OK status inside the answer too
    timeout: float = 20.0
    touches: str = ""  # a served model (or "*") an admin call reloads: run alone, then checked
    note: str = ""  # noted when the call succeeds


PREDICTION = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]
KSERVE = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
MESH = mm.DESCRIPTOR.services_by_name["ModelRuntime"]
CONTROL_METHODS = {"/inference.GRPCInferenceService/RepositoryModelLoad",
                   "/inference.GRPCInferenceService/RepositoryModelUnload",
                   "/tensorflow.serving.ModelService/HandleReloadConfigRequest"}
DESTRUCTIVE = CONTROL_METHODS | {"/mmesh.ModelRuntime/runtimeStatus", "/mmesh.ModelRuntime/unloadModel"}
REQUEST_TYPES: dict[str, Any] = {}
for _service in (PREDICTION, MODEL_SERVICE, KSERVE, HEALTH, MESH):
    for _m in _service.methods:
        REQUEST_TYPES[f"/{_service.full_name}/{_m.name}"] = _m.input_type
ODD_METHODS = ["/grpc.health.v1.Health/../inference.GRPCInferenceService/RepositoryModelLoad",
               "/grpc.health.v1.Health/Check/../../mmesh.ModelRuntime/runtimeStatus",
               "//mmesh.ModelRuntime/loadModel", "/mmesh.ModelRuntime/loadModel/", "/mmesh.ModelRuntime/LoadModel",
               "/tensorflow.serving.PredictionService/predict", "/x.Y/Z", "/", "/grpc.health.v1.Health/",
               "/inference.GRPCInferenceService/RepositoryModelLoad%00", "/inference.GRPCInferenceService/"]


def is_control(method: str) -> bool:
    """A control call, also under a path that only mentions one (the odd method paths)."""
    return any(part in method for part in ("RepositoryModelLoad", "RepositoryModelUnload", "HandleReloadConfigRequest",
                                           "mmesh.ModelRuntime"))


def raw_message(rng: random.Random, method: str) -> bytes:
    """Bytes that are, or are nearly, or are nothing like, the method's request message."""
    valid = valid_message(rng, method)
    makers: list[Callable[[], bytes]] = [
        lambda: b"", lambda: b"\xff\xff\xff\xff", lambda: rng.randbytes(rng.randrange(1, 512)),
        lambda: valid[:rng.randrange(0, max(len(valid), 1))],
        lambda: bytes(x ^ (0xFF if i == rng.randrange(max(len(valid), 1)) else 0) for i, x in enumerate(valid)),
        lambda: b"\x0a" * 1 + _varint(2 ** 31) + b"abc",  # a length past the message
        lambda: _nested(rng.choice([50, 99, 101, 200, 1000])),
        lambda: b"\x0b" * rng.randrange(1, 300),  # group starts that never end
        lambda: b"\x0e\x01", lambda: b"\x0f\x01",  # wire types 6 and 7
        lambda: b"\x12" + _varint(10 ** 6) + rng.randbytes(100),  # a packed field claiming a million bytes
        lambda: b"\x00\x01", lambda: _varint((2 ** 29 - 1) << 3) + b"\x01",
        lambda: valid + rng.randbytes(rng.randrange(1, 50)),
        lambda: valid_message(rng, rng.choice(list(REQUEST_TYPES))),  # another method's request
        lambda: rng.randbytes(rng.choice([65536, 1 << 20])),
        lambda: b"\x0a\x03\xff\xfe\xfd",  # a string field that is not UTF-8
        lambda: valid,
    ]
    return rng.choice(makers)()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _nested(depth: int) -> bytes:
    data = b""
    for _ in range(depth):
        data = b"\x0a" + _varint(len(data)) + data
    return data


def decodes(method: str, data: bytes) -> bool:
    cls = message_class(method)
    if cls is None:
        return False
    try:
        cls.FromString(data)
    except Exception:  # noqa: BLE001 - any decode failure
        return False
    return True


def message_class(method: str) -> Any:
    descriptor = REQUEST_TYPES.get(method)
    if descriptor is None:
        return None
    return message_factory.GetMessageClass(descriptor)


def model_spec(rng: random.Random, spec: Any, names: list[str]) -> None:
    spec.name = rng.choice(names)
    pick = rng.random()
    if pick < 0.3:
        spec.version.value = rng.choice([0, 1, 1, 2, -1, 2 ** 63 - 1, -(2 ** 63)])
    elif pick < 0.45:
        spec.version_label = rng.choice(["stable", "", "nope", "\u0661", "x" * 1000, "1"])
    if rng.random() < 0.3:
        spec.signature_name = rng.choice(["serving_default", "", "nope", "x" * 5000, "\u00e9", "__saved_model_init_op"])


def tf_tensor(rng: random.Random, t: Any) -> None:
    """A TensorProto with random dtype, shape and contents, often disagreeing."""
    t.dtype = rng.choice([1, 1, 1, 2, 3, 9, 7, 10, 19, 14, 0, 18, 20, 21, 23, 24, 99, 2 ** 31 - 1, -1])
    if rng.random() < 0.1:
        t.tensor_shape.unknown_rank = True
    for _ in range(rng.choice([0, 1, 2, 2, 2, 3, 6])):
        t.tensor_shape.dim.add().size = rng.choice(DIMS)
    count = rng.choice([0, 1, 1, 2, 4, 1000])
    fill: list[Callable[[], None]] = [
        lambda: t.float_val.extend(rng.choice([2.0, float("nan"), float("inf"), 3.4e38, -0.0]) for _ in range(count)),
        lambda: t.double_val.extend(rng.choice([2.0, 1e308, float("-inf")]) for _ in range(count)),
        lambda: t.int_val.extend(rng.choice([0, 1, -(2 ** 31), 2 ** 31 - 1]) for _ in range(count)),
        lambda: t.int64_val.extend(rng.choice([0, 2 ** 63 - 1, -(2 ** 63)]) for _ in range(count)),
        lambda: t.string_val.extend(rng.randbytes(rng.randrange(0, 30)) for _ in range(count)),
        lambda: t.bool_val.extend(rng.choice([True, False]) for _ in range(count)),
        lambda: t.half_val.extend(rng.choice([0, 65535, 70000, -1, 2 ** 31 - 1]) for _ in range(count)),
        lambda: setattr(t, "tensor_content", rng.randbytes(rng.choice([0, 1, 3, 4, 8, 7, 4096]))),
        lambda: t.scomplex_val.extend([1.0] * count), lambda: t.dcomplex_val.extend([1.0] * count),
        lambda: t.uint32_val.extend([2 ** 32 - 1] * count), lambda: t.uint64_val.extend([2 ** 64 - 1] * count),
    ]
    rng.choice(fill)()
    if rng.random() < 0.1:
        rng.choice(fill)()


def example(rng: random.Random, ex: Any) -> None:
    for _ in range(rng.randrange(0, 4)):
        feature = ex.features.feature[rng.choice(["x", "f0", "", "inputs", "\u00e9" * 10])]
        pick = rng.randrange(3)
        if pick == 0:
            feature.float_list.value.extend(rng.choice([1.0, float("nan"), 3e38]) for _ in range(rng.randrange(0, 5)))
        elif pick == 1:
            feature.int64_list.value.extend(rng.choice([0, 2 ** 63 - 1, -(2 ** 63)])
                                            for _ in range(rng.randrange(0, 5)))
        else:
            feature.bytes_list.value.extend(rng.randbytes(rng.randrange(0, 20)) for _ in range(rng.randrange(0, 5)))


def infer_input(rng: random.Random, tensor: Any) -> None:
    tensor.name = rng.choice(["inputs", "inputs", "", "x", "inputs\u0000", "in" * 200])
    tensor.datatype = rng.choice(V2_TYPES[:-2] + ["FP32\u0000"])
    tensor.shape.extend(rng.choice(DIMS) for _ in range(rng.choice([0, 1, 2, 2, 3])))
    count = rng.choice([0, 1, 1, 4, 1000])
    contents = tensor.contents
    rng.choice([
        lambda: contents.fp32_contents.extend([2.0] * count), lambda: contents.fp64_contents.extend([1e308] * count),
        lambda: contents.int_contents.extend([2 ** 31 - 1] * count),
        lambda: contents.int64_contents.extend([-(2 ** 63)] * count),
        lambda: contents.uint_contents.extend([2 ** 32 - 1] * count),
        lambda: contents.uint64_contents.extend([2 ** 64 - 1] * count),
        lambda: contents.bool_contents.extend([True] * count),
        lambda: contents.bytes_contents.extend([rng.randbytes(5)] * count), lambda: None,
    ])()
    if rng.random() < 0.2:
        p = tensor.parameters[rng.choice(["binary_data_size", "shared_memory_region", "x"])]
        rng.choice([lambda: setattr(p, "int64_param", rng.choice([-1, 2 ** 63 - 1])),
                    lambda: setattr(p, "string_param", "/dev/shm/x"), lambda: setattr(p, "bool_param", True)])()


def valid_message(rng: random.Random, method: str, names: list[str] | None = None) -> bytes:
    """A well-formed request of `method` with hostile fields."""
    names = names or ["lin", "lin", "xgb", "", "nope", "..", "lin\u0000", "a" * 129, "\u00e9", "lin\r\nx", "\u0661"]
    name = method.rpartition("/")[2]
    builder = BUILDERS.get(name)
    if builder is None:
        cls = message_class(method)
        return cls().SerializeToString() if cls is not None else b""
    return builder(rng, names).SerializeToString()


def _predict(rng: random.Random, names: list[str]) -> Any:
    r = predict_pb2.PredictRequest()
    model_spec(rng, r.model_spec, names)
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        tf_tensor(rng, r.inputs[rng.choice(["inputs", "inputs", "", "x", "\u0000", "f0"])])
    r.output_filter.extend(rng.choice(["predictions", "", "nope"]) for _ in range(rng.choice([0, 0, 1, 2])))
    return r


def _classify(rng: random.Random, names: list[str]) -> Any:
    r = rng.choice([classification_pb2.ClassificationRequest, regression_pb2.RegressionRequest])()
    model_spec(rng, r.model_spec, names)
    _input(rng, r.input)
    return r


def _input(rng: random.Random, inp: Any) -> None:
    if rng.random() < 0.5:
        for _ in range(rng.choice([0, 1, 2, 100])):
            example(rng, inp.example_list.examples.add())
    else:
        for _ in range(rng.choice([0, 1, 3])):
            example(rng, inp.example_list_with_context.examples.add())
        example(rng, inp.example_list_with_context.context)


def _multi(rng: random.Random, names: list[str]) -> Any:
    r = inference_pb2.MultiInferenceRequest()
    for _ in range(rng.choice([0, 1, 2, 4])):
        task = r.tasks.add()
        model_spec(rng, task.model_spec, names)
        task.method_name = rng.choice(["tensorflow/serving/classify", "tensorflow/serving/regress",
                                       "tensorflow/serving/predict", "", "x"])
    _input(rng, r.input)
    return r


def _metadata(rng: random.Random, names: list[str]) -> Any:
    r = get_model_metadata_pb2.GetModelMetadataRequest()
    model_spec(rng, r.model_spec, names)
    r.metadata_field.extend(rng.choice(["signature_def", "", "x" * 1000, "signature_def"])
                            for _ in range(rng.choice([0, 1, 1, 2, 50])))
    return r


def _status(rng: random.Random, names: list[str]) -> Any:
    r = get_model_status_pb2.GetModelStatusRequest()
    model_spec(rng, r.model_spec, names)
    return r


def _infer(rng: random.Random, names: list[str]) -> Any:
    r = v2.ModelInferRequest(model_name=rng.choice(names), model_version=rng.choice(["", "", "1"] + VERSION_TEXTS),
                             id=rng.choice(["", "x", "i" * 10_000, "\u00e9"]))
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        infer_input(rng, r.inputs.add())
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        r.raw_input_contents.append(rng.randbytes(rng.choice([0, 1, 4, 8, 16, 4097])))
    for _ in range(rng.choice([0, 0, 1, 2])):
        out = r.outputs.add(name=rng.choice(["predictions", "", "nope"]))
        if rng.random() < 0.3:
            out.parameters["binary_data"].bool_param = True
    if rng.random() < 0.2:
        r.parameters[rng.choice(["sequence_id", "priority", "timeout", "x"])].int64_param = rng.choice(DIMS)
    return r


def _named(cls: Any, fields: tuple[str, ...]) -> Callable[[random.Random, list[str]], Any]:
    def build(rng: random.Random, names: list[str]) -> Any:
        r = cls()
        for f in fields:
            setattr(r, f, rng.choice(names) if f in ("name", "model_name", "modelId") else rng.choice(
                ["", "1", "-1", "x" * 5000, "99999999999999999999", "\u0661", "1\u0000"]))
        return r

    return build


def _health(rng: random.Random, names: list[str]) -> Any:
    return health_pb2.HealthCheckRequest(service=rng.choice(
        ["", "", "inference.GRPCInferenceService", "x" * 10_000, "nope", "\u00e9",
         "tensorflow.serving.PredictionService"]))


def _index(rng: random.Random, names: list[str]) -> Any:
    return v2.RepositoryIndexRequest(repository_name=rng.choice(["", "x", "/etc", "..", "x" * 5000]),
                                     ready=rng.random() < 0.5)


BUILDERS: dict[str, Callable[[random.Random, list[str]], Any]] = {
    "Predict": _predict, "Classify": _classify, "Regress": _classify, "MultiInference": _multi,
    "GetModelMetadata": _metadata, "GetModelStatus": _status, "ModelInfer": _infer,
    "ModelReady": _named(v2.ModelReadyRequest, ("name", "version")),
    "ModelMetadata": _named(v2.ModelMetadataRequest, ("name", "version")),
    "ModelConfig": _named(v2.ModelConfigRequest, ("name", "version")),
    "ModelStatistics": _named(v2.ModelStatisticsRequest, ("name", "version")),
    "RepositoryIndex": _index, "RepositoryModelUnload": _named(v2.RepositoryModelUnloadRequest, ("model_name",)),
    "Check": _health, "Watch": _health, "modelSize": _named(mm.ModelSizeRequest, ("modelId",)),
    "unloadModel": _named(mm.UnloadModelRequest, ("modelId",)),
}


class GrpcCases:
    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.served = ["lin", "xgb"] if ctx.xgb else [ctx.model]
        self.targets: list[tuple[str, str]] = []  # (port, method)
        for service in (PREDICTION, MODEL_SERVICE, KSERVE, HEALTH):
            self.targets += [("main", f"/{service.full_name}/{m.name}") for m in service.methods]
        if ctx.mm_port:
            self.targets += [("mm", f"/{MESH.full_name}/{m.name}") for m in MESH.methods]
            self.targets += [("mm", "/tensorflow.serving.PredictionService/Predict"),
                             ("mm", "/grpc.health.v1.Health/Check")]
        self.targets += [("main", f"/{MESH.full_name}/{m.name}") for m in MESH.methods]
        self.targets += [("main", m) for m in ODD_METHODS]

    def metadata(self, rng: random.Random, who: str | None) -> tuple[tuple[str, str | bytes], ...]:
        tokens = {"user": self.ctx.user, "admin": self.ctx.admin, "wrong": "wrong-token",
                  "bearer": "Bearer " + self.ctx.admin, "upper": self.ctx.admin.upper(), "blank": " "}
        md: list[tuple[str, str | bytes]] = []
        if who is not None:
            md.append(("authorization", tokens.get(who, who)))
        if rng.random() < 0.15:
            md.append(rng.choice([("x-request-id", "r" * rng.choice([128, 129, 5000])), ("x-request-id", "a b"),
                                  ("mm-model-id", rng.choice(["lin", "nope", "..", "x" * 1000, "lin x"])),
                                  ("mm-model-id-bin", rng.choice([b"\x00\xff", b"lin", b"\xed\xa0\x80"])),
                                  ("authorization", "wrong-second"), ("traceparent", "garbage"),
                                  ("grpc-timeout-x", "1")]))
        return tuple(md)

    def admin_who(self, who: str | None) -> bool:
        return self.ctx.is_admin({"user": self.ctx.user, "admin": self.ctx.admin}.get(who or "", ""))

    def case(self, rng: random.Random, port: str, method: str, data: bytes, who: str | None, **kw: Any) -> GrpcCase:
        md = self.metadata(rng, who)
        admin = any(k == "authorization" and self.ctx.admin in str(v) for k, v in md)
        return GrpcCase(port, method, data, md, control=is_control(method), admin=admin,
                        stream=method.endswith("/Watch"), reload=method.endswith("/HandleReloadConfigRequest"), **kw)

    def raw(self, rng: random.Random, n: int) -> Iterator[GrpcCase]:
        whos = ["user", "admin", None, "wrong"]
        for i in range(n):
            port, method = self.targets[i % len(self.targets)]
            who = whos[(i // len(self.targets)) % len(whos)]
            data = raw_message(rng, method)
            if self.admin_who(who) and method in DESTRUCTIVE and decodes(method, data):
                data = b"\xff\xff\xff\xff" + data  # kept undecodable: the admin may really reload or unload
            yield self.case(rng, port, method, data, who, timeout=10)

    def tensors(self, rng: random.Random, n: int) -> Iterator[GrpcCase]:
        methods = ["Predict"] * 7 + ["ModelInfer"] * 7 + ["Classify", "Regress", "MultiInference", "MultiInference",
                                                          "GetModelMetadata", "GetModelMetadata"]
        full = {m.name: f"/{s.full_name}/{m.name}" for s in (PREDICTION, KSERVE) for m in s.methods}
        names = self.served * 6 + ["nope", "", "a" * 129, "lin\u0000", "\u0661"]
        for _ in range(n):
            method = full[rng.choice(methods)]
            data = valid_message(rng, method, names)
            yield self.case(rng, "main", method, data, rng.choice(["user"] * 8 + [None, "wrong"]), timeout=15)

    def names(self, rng: random.Random, n: int) -> Iterator[GrpcCase]:
        methods = ["/tensorflow.serving.ModelService/GetModelStatus", "/inference.GRPCInferenceService/ModelReady",
                   "/inference.GRPCInferenceService/ModelMetadata", "/inference.GRPCInferenceService/ModelConfig",
                   "/inference.GRPCInferenceService/ModelStatistics", "/inference.GRPCInferenceService/RepositoryIndex",
                   "/tensorflow.serving.PredictionService/GetModelMetadata", "/grpc.health.v1.Health/Check",
                   "/grpc.health.v1.Health/Watch", "/inference.GRPCInferenceService/ServerMetadata",
                   "/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"]
        names = self.served + ["", "nope", "..", ".", "a" * 129, "a" * 100_000, "lin\u0000",
                               "lin\r\nX-Probe-Injected: 1",
                               "\u00e9", "\U0001f600", "lin/../xgb", "%2e%2e", "\u0661", "lin ", "LIN", "*"]
        for _ in range(n):
            method = rng.choice(methods)
            data = valid_message(rng, method, names)
            yield self.case(rng, "main", method, data, rng.choice(["user", "user", None, "wrong", "admin"]), timeout=10)

    def control(self, rng: random.Random, n: int) -> Iterator[GrpcCase]:
        sweep = [c for path, outside in hostile_paths(self.ctx) for c in self._sweep(rng, path, outside)][:n]
        yield from sweep  # every path in every gRPC place that names one, as the admin
        makers = [self._repo_load, self._repo_load, self._repo_unload, self._reload, self._reload, self._mesh_load,
                  self._mesh_load, self._mesh_other]
        for _ in range(n - len(sweep)):
            yield rng.choice(makers)(rng)

    def _sweep(self, rng: random.Random, path: str, outside: bool) -> list[GrpcCase]:
        load = v2.RepositoryModelLoadRequest(model_name="probe")
        load.parameters["path"].string_param = path
        mesh = mm.LoadModelRequest(modelId="probe", modelType="linear", modelPath=path)
        cases = [self.case(rng, "main", "/inference.GRPCInferenceService/RepositoryModelLoad", load.SerializeToString(),
                           "admin", outside=outside, timeout=60),
                 self.case(rng, "mm" if self.ctx.mm_port else "main", "/mmesh.ModelRuntime/loadModel",
                           mesh.SerializeToString(), "admin", outside=outside, timeout=60)]
        if self.ctx.models is not None:  # a reload that keeps this script's models, plus one at `path`
            r = model_management_pb2.ReloadConfigRequest()
            configs = r.config.model_config_list.config
            configs.add(name="lin", base_path=str(self.ctx.models / "lin"), model_platform="linear") \
                .version_labels["stable"] = 1
            if self.ctx.xgb:
                configs.add(name="xgb", base_path=str(self.ctx.models / "xgb"), model_platform="xgboost")
            configs.add(name="probe", base_path=path, model_platform="linear")
            case = self.case(rng, "main", "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
                             r.SerializeToString(), "admin", outside=outside, timeout=60)
            case.touches = "*"
            cases.append(case)
        return cases

    def _who(self, rng: random.Random) -> str | None:
        return rng.choice(["admin", "admin", "admin", "user", None, "wrong", "bearer", "upper", "blank"])

    def _repo_load(self, rng: random.Random) -> GrpcCase:
        name = rng.choice(["probe", "p1", "spare", "leaky", "broken", "shadowlink", "passwdlink", "environlink",
                           "nosuch", "..", "a\u0000", "lin"])
        path, outside = load_path(rng, self.ctx, name)
        r = v2.RepositoryModelLoadRequest(model_name=name)
        pick = rng.randrange(5)
        if pick == 0:
            r.parameters["config"].string_param = json.dumps({"base_path": path, "backend": "linear"})
        elif pick == 1:
            r.parameters["path"].string_param = path
        elif pick == 2:
            r.parameters["config"].bytes_param = json.dumps({"base_path": path, "platform": "xgboost"}).encode()
        elif pick == 3:
            r.parameters["path"].bytes_param = path.encode("utf-8", "surrogateescape")
            r.parameters["config"].int64_param = rng.choice([0, 2 ** 63 - 1])
        else:
            r.parameters["file:1/linear.json"].bytes_param = b'{"weights": [1], "bias": 0}'
            r.parameters["path"].string_param = path
        case = self.case(rng, "main", "/inference.GRPCInferenceService/RepositoryModelLoad", r.SerializeToString(),
                         self._who(rng), outside=outside and pick != 3, timeout=60)
        case.touches = name if case.admin and name in self.served else ""
        return case

    def _repo_unload(self, rng: random.Random) -> GrpcCase:
        who = self._who(rng)
        pool = ["probe", "p1", "spare", "nosuch", "", "..", "mm-1"] + ([] if self.admin_who(who) else self.served)
        r = v2.RepositoryModelUnloadRequest(model_name=rng.choice(pool))
        return self.case(rng, "main", "/inference.GRPCInferenceService/RepositoryModelUnload", r.SerializeToString(),
                         who, timeout=60)

    def _reload(self, rng: random.Random) -> GrpcCase:
        """A reload that keeps this script's models (so an accepted one does not stop the probe) plus one hostile
        model config."""
        ctx = self.ctx
        r = model_management_pb2.ReloadConfigRequest()
        configs = r.config.model_config_list.config
        if ctx.models is not None:
            lin = configs.add(name="lin", base_path=str(ctx.models / "lin"), model_platform="linear")
            lin.version_labels["stable"] = 1
            if ctx.xgb:
                configs.add(name="xgb", base_path=str(ctx.models / "xgb"), model_platform="xgboost")
        name = rng.choice(["probe", "etc", "p\u0000", "a" * 129, "..", "lin"])
        path, outside = load_path(rng, ctx, name if name != "lin" else "probe")
        extra = configs.add(name=name, base_path=path, model_platform=rng.choice(["linear", "xgboost", "", "x"]))
        pick = rng.randrange(6)
        if pick == 0:
            extra.model_version_policy.specific.versions.extend([2 ** 63 - 1, -1, 0])
        elif pick == 1:
            extra.model_version_policy.latest.num_versions = rng.choice([0, 2 ** 32 - 1])
        elif pick == 2:
            extra.version_labels[rng.choice(["x", "", "\u00e9"])] = rng.choice([-1, 2 ** 63 - 1])
        elif pick == 3:
            extra.version_traffic[rng.choice([1, -1, 2 ** 62])] = rng.choice([0, 100, 2 ** 32 - 1])
        elif pick == 4 and ctx.outside is not None and ctx.models is not None:  # a request log outside the root
            extra.name, extra.base_path, extra.model_platform = "probe", str(ctx.models / "spare"), "linear"
            outside = False
            extra.logging_config.log_collector_config.filename_prefix = str(ctx.outside.parent / "requestlog" / "m")
            extra.logging_config.sampling_config.sampling_rate = 1.0
        if rng.random() < 0.1:
            configs.add(name="lin", base_path="/etc", model_platform="linear")  # a name twice
        who = self._who(rng)
        if ctx.models is None and self.admin_who(who):
            who = "wrong"  # an accepted reload would replace a config this script cannot give back
        case = self.case(rng, "main", "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
                         r.SerializeToString(), who, outside=outside, timeout=60)
        case.touches = "*" if case.admin else ""
        if extra.logging_config.log_collector_config.filename_prefix:
            case.note = ("an admin HandleReloadConfigRequest naming a request-log prefix outside the load root was "
                         "accepted (the admin may have the server write files anywhere it can)")
        return case

    def _mesh_load(self, rng: random.Random) -> GrpcCase:
        model_id = rng.choice(["mm-1", "mm-2", "probe", "..", "a\u0000", "a" * 129, ""])
        path, outside = load_path(rng, self.ctx, rng.choice(["probe", "lin", "leaky", "shadowlink", "passwdlink"]))
        if self.ctx.models is not None and rng.random() < 0.15:
            path, outside = str(self.ctx.models / "lin" / "1" / "linear.json"), False
        key = rng.choice(["", '{"model_type": {"name": "linear"}}', '{"model_type": "x"}', "[" * 2000, "not json",
                          '{"disk_size_bytes": 1e400}', '{"model_type": {"name": "../../etc"}}', '"str"',
                          '{"model_type": {"name": {"a": 1}}}'])
        r = mm.LoadModelRequest(modelId=model_id, modelType=rng.choice(["linear", "xgboost", "", "x", "../../x"]),
                                modelPath=path, modelKey=key)
        return self.case(rng, "mm" if self.ctx.mm_port else "main", "/mmesh.ModelRuntime/loadModel",
                         r.SerializeToString(), self._who(rng), outside=outside, timeout=60)

    def _mesh_other(self, rng: random.Random) -> GrpcCase:
        who = self._who(rng)
        port = "mm" if self.ctx.mm_port else "main"
        pick = rng.randrange(4)
        if pick == 0 or (pick == 3 and self.admin_who(who)):
            key = rng.choice(['{"disk_size_bytes": 1e400}', '{"disk_size_bytes": 9223372036854775808}',
                              '{"disk_size_bytes": -5}', '{"disk_size_bytes": "x"}', "[1]", "[" * 5000, "",
                              '{"disk_size_bytes": 4611686018427387904}', '{"disk_size_bytes": NaN}'])
            r: Any = mm.PredictModelSizeRequest(modelId="x", modelPath="/etc/shadow", modelKey=key)
            return self.case(rng, port, "/mmesh.ModelRuntime/predictModelSize", r.SerializeToString(), who)
        if pick == 1:
            r = mm.ModelSizeRequest(modelId=rng.choice(self.served + ["nope", "", "a" * 5000]))
            return self.case(rng, port, "/mmesh.ModelRuntime/modelSize", r.SerializeToString(), who)
        if pick == 2:
            pool = ["mm-1", "mm-2", "nope", ""] + ([] if self.admin_who(who) else self.served)
            r = mm.UnloadModelRequest(modelId=rng.choice(pool))
            return self.case(rng, port, "/mmesh.ModelRuntime/unloadModel", r.SerializeToString(), who, timeout=60)
        return self.case(rng, port, "/mmesh.ModelRuntime/runtimeStatus", b"", who)


# ---- running and judging ----

class Probe:
    def __init__(self, ctx: Ctx, args: argparse.Namespace) -> None:
        self.ctx, self.args = ctx, args
        self.deadline = time.monotonic() + args.max_seconds
        self.tallies: list[Tally] = []
        self.notes: list[str] = []
        self.by_request_id: dict[str, str] = {}  # request id of a 5xx / UNKNOWN / INTERNAL answer -> its request
        self.channels: dict[str, grpc.Channel] = {}
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        if ctx.grpc_port:
            self.channels["main"] = grpc.insecure_channel(f"{HOST}:{ctx.grpc_port}", options=options)
        if ctx.mm_port:
            self.channels["mm"] = grpc.insecure_channel(f"{HOST}:{ctx.mm_port}", options=options)

    def rng(self, kind: str) -> random.Random:
        return random.Random(f"{self.args.seed}/{kind}")

    # -- HTTP --

    def judge_http(self, tally: Tally, case: Case, out: Outcome) -> None:
        tally.connections += 1
        tally.sent += len(case.reqs)
        tally.resets += out.reset
        owed = case.expect if case.expect is not None else len(case.reqs)
        if out.timed_out and len(out.answers) < owed:
            tally.timeouts += 1
        for i, answer in enumerate(out.answers):
            req = case.reqs[min(i, len(case.reqs) - 1)]
            tally.count_http(answer.status)
            problems = self.http_problems(req, answer)
            if req.control:
                tally.by[f"{'admin' if req.admin else 'no admin'} token -> {answer.status}"] += 1
            if answer.status >= 500:
                self.by_request_id[(answer.header(b"x-request-id") or b"").decode("latin-1")] = excerpt(req.data)
            for check in problems:
                where = f" (request {i + 1} of {len(case.reqs)} on its connection)" if len(case.reqs) > 1 else ""
                if case.half_close:
                    where += " (the client half-closed after sending)"
                tally.find(check, f"HTTP {answer.status}: {excerpt(answer.body, 600)}", excerpt(req.data) + where,
                           key=f"{answer.status} {req.path[:60]!r} {answer.body[:200]!r}", request=req.data)
            if answer.status >= 500 and self.documented_5xx(req, answer):
                tally.notes[f"documented {answer.status} answers, e.g. {answer.body[:120]!r}"] += 1
            if req.path and req.data.startswith(b"HEAD ") and answer.body:
                tally.notes["HEAD answered with a body"] += 1

    def http_problems(self, req: Req, answer: Answer) -> list[str]:
        problems = []
        if answer.status >= 500 and not self.documented_5xx(req, answer):
            problems.append(f"HTTP {answer.status} from client input")
        if req.control and 200 <= answer.status < 300 and not req.admin:
            problems.append("control call succeeded without the admin token")
        if req.outside and 200 <= answer.status < 300:
            problems.append("load naming a path outside the load root succeeded")
        problems += [f"answer holds {what}" for what in self.ctx.leaks(answer.raw, req.data)]
        if any(k.lower() == INJECTED for k, _ in answer.headers):
            problems.append("a header of the client's making in the answer (response splitting)")
        return problems

    @staticmethod
    def documented_5xx(req: Req, answer: Answer) -> bool:
        """501 of :classify / :regress (no such method), 503 for too many connections, a full queue or a model
        with no AVAILABLE version (one a concurrent admin load is loading): the README's answers."""
        if answer.status == 503 and any(why in answer.body for why in (b"too many connections", b"queue full",
                                                                       b"no version is AVAILABLE")):
            return True
        return any(verb in req.path for verb in HTTP_OK_5XX.get(answer.status, ()))

    def run_http(self, kind: str, cases: Iterable[Case]) -> Tally:
        tally = Tally(kind, "HTTP")

        def send(case: Case) -> None:
            out = exchange(self.ctx.port, case.data, case.expect if case.expect is not None else len(case.reqs),
                           case.timeout, case.half_close)
            with tally.lock:
                self.judge_http(tally, case, out)

        return self.send_all(tally, list(cases), send, lambda case: excerpt(case.data))

    def send_all(self, tally: Tally, cases: list[Any], send: Callable[[Any], None],
                 repro: Callable[[Any], str]) -> Tally:
        """Send `cases` from the thread pool until the deadline (later ones counted as skipped); then the admin
        reloads of a served model one at a time, each followed by a predict on it (check_touched)."""

        def one(case: Any) -> None:
            if time.monotonic() > self.deadline:
                with tally.lock:
                    tally.skipped += 1
                return
            send(case)

        with ThreadPoolExecutor(self.args.threads) as pool:
            list(pool.map(one, [c for c in cases if not c.touches]))
        for case in [c for c in cases if c.touches]:
            one(case)
            self.check_touched(tally, case.touches, repro(case))
        return tally

    def check_touched(self, tally: Tally, name: str, repro: str) -> None:
        """After an admin request that reloaded the served model `name` ("*": all), is it still served?"""
        names = ["lin", "xgb"] if name == "*" and self.ctx.xgb else ["lin"] if name == "*" else [name]
        time.sleep(0.2)
        for model in names:
            body = b'{"instances": [[0.1, 0.2, 0.3, 0.4]]}' if model == "xgb" else b'{"instances": [[2.0]]}'
            status, answer = http_get(self.ctx, f"/v1/models/{model}:predict", self.ctx.user, "POST", body)
            if status != 200:
                tally.find("an admin reload of a served model took it out of service", f"predict {model} after it: "
                           f"{status} {answer[:200]!r}", repro, key=f"{model} {status}")
                tally.notes[f"models loaded again after an admin reload took {model} down: {self.restore()}"] += 1
                return

    def run_pipelined(self, kind: str, n: int, gen: HttpCases) -> Tally:
        rng = self.rng(kind)

        def cases() -> Iterator[Case]:
            for i in range(n):
                who = "user" if i % 4 else None
                reqs = []
                for j in range(PIPELINE):
                    if i % 10 == 9:
                        reqs.append(gen.req("GET", rng.choice(["/healthz", f"/v1/models/{self.ctx.model}/metadata",
                                                               "/v2/health/ready", "/metrics"]), b"", (), who))
                    elif rng.random() < 0.7:
                        path, body = rng.choice(gen.good)
                        reqs.append(gen.req("POST", path, body, [("X-Request-Id", f"pipe-{i}-{j}")], who))
                    else:
                        path, body, extra = gen.hostile_body(rng)
                        reqs.append(gen.req("POST", path, body, extra, who))
                yield Case(reqs, timeout=60)

        return self.run_http(kind, cases())

    def run_slowloris(self, kind: str, n: int, gen: HttpCases) -> Tally:
        """`n` clients that trickle a request a byte at a time while a good client is timed; each gives up after
        SLOW_SECONDS (the server's own read time-out is longer)."""
        tally = Tally(kind, "HTTP")
        m = self.ctx.model
        good = gen.req("POST", f"/v1/models/{m}:predict", b'{"instances": [[2.0]]}')
        starts = [b"P", b"POST /v1/models/" + m.encode() + b":pre",
                  good.data[:good.data.index(b"\r\n\r\n")],  # every header but the blank line
                  http_request("POST", f"/v1/models/{m}:predict", b"", [("Authorization", self.ctx.user),
                                                                          ("Content-Length", "100")], length=False)]

        def slow(i: int) -> None:
            start = starts[i % len(starts)]
            out = Outcome()
            try:
                with socket.create_connection((HOST, self.ctx.port), timeout=SLOW_SECONDS) as sock:
                    sock.sendall(start)
                    reader = Reader()
                    end = time.monotonic() + SLOW_SECONDS
                    while time.monotonic() < end:
                        sock.sendall(b"X" if i % len(starts) != 2 else b"-")
                        ready, _, _ = select.select([sock], [], [], 0.25)
                        if ready:
                            chunk = sock.recv(65536)
                            if not chunk:
                                out.closed = True
                                break
                            reader.feed(chunk)
                    out.answers = reader.answers
                    out.timed_out = not reader.answers
            except OSError:
                out.reset = True
            with tally.lock:
                self.judge_http(tally, Case([self.raw_req(start)], timeout=SLOW_SECONDS), out)

        threads = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        slowest = 0.0
        for _ in range(5):
            began = time.monotonic()
            out = exchange(self.ctx.port, good.data, 1, 10)
            slowest = max(slowest, time.monotonic() - began)
            if not out.answers or out.answers[0].status != 200:
                tally.find("a good request failed while slow clients were connected",
                           f"{[a.status for a in out.answers]} reset={out.reset}", excerpt(good.data))
        if slowest > 2.0:
            tally.find("a good request took over 2 s while slow clients were connected", f"{slowest:.2f} s",
                       excerpt(good.data))
        for t in threads:
            t.join(SLOW_SECONDS + 5)
        tally.notes[f"slowest good predict beside the slow clients: {slowest * 1000:.0f} ms"] += 1
        return tally

    def raw_req(self, data: bytes) -> Req:
        return Req(data, "")

    # -- gRPC --

    def call(self, case: GrpcCase) -> tuple[str, str, bytes, bytes]:
        """(code name, details, answer bytes, trailing metadata values)."""
        channel = self.channels.get(case.port)
        if channel is None:
            return "SKIPPED", "", b"", b""
        try:
            if case.stream:
                stream = channel.unary_stream(case.method)(case.data, metadata=case.metadata, timeout=2)
                first = next(iter(stream), b"")
                stream.cancel()
                return "OK", "", first, b""
            answer, call = channel.unary_unary(case.method).with_call(case.data, metadata=case.metadata,
                                                                      timeout=case.timeout)
            return "OK", "", answer, b"\n".join(b(f"{k}={v}") for k, v in call.trailing_metadata() or ())
        except grpc.RpcError as e:
            code = e.code()
            if e.details() == "Invalid metadata":  # grpcio's own refusal: nothing reached the server
                return "CLIENT_REFUSED", e.details(), b"", b""
            trailing = b"\n".join(b(f"{k}={v}") for k, v in (e.trailing_metadata() or ()))
            return (code.name if code else "UNKNOWN"), e.details() or "", b"", trailing
        except ValueError as e:  # metadata the client library refuses to send
            return "CLIENT_REFUSED", str(e), b"", b""

    def judge_grpc(self, tally: Tally, case: GrpcCase, code: str, details: str, answer: bytes,
                   trailing: bytes) -> None:
        tally.sent += 1
        tally.count_grpc(code)
        port = "" if case.port == "main" else " (ModelMesh port)"
        tally.by[f"{case.method}{port}, {'admin' if case.admin else 'no admin'} token -> {code}"] += 1
        problems = []
        payload = answer + b"\n" + trailing
        if code in GRPC_BAD:
            problems.append(f"gRPC {code} from client input")
        succeeded = code == "OK" and not (case.reload and reload_failed(answer))
        if case.control and code == "OK" and not case.admin:
            problems.append("control call succeeded without the admin token")
        if case.outside and succeeded:
            problems.append("load naming a path outside the load root succeeded")
        if case.note and succeeded:
            tally.notes[case.note] += 1
        sent = case.data + b"".join(b(str(v)) for _, v in case.metadata)
        problems += [f"answer holds {what}" for what in self.ctx.leaks(payload + b(details), sent)]
        if INJECTED in payload.lower():
            problems.append("a header of the client's making in the answer")
        if code in GRPC_BAD and (rid := re.search(rb"x-request-id=(\S+)", trailing)):
            self.by_request_id[rid[1].decode("latin-1")] = grpc_repro(case)
        for check in problems:
            tally.find(check, f"{code}: {details[:400]!r} {excerpt(answer, 300)}", grpc_repro(case),
                       key=f"{code} {case.method} {details[:200]!r}", call=case)

    def run_grpc(self, kind: str, cases: Iterable[GrpcCase]) -> Tally:
        tally = Tally(kind, "gRPC")

        def send(case: GrpcCase) -> None:
            code, details, answer, trailing = self.call(case)
            with tally.lock:
                self.judge_grpc(tally, case, code, details, answer, trailing)

        return self.send_all(tally, list(cases), send, grpc_repro)

    def restore(self) -> str:
        """Load this script's models again with the admin token (after a kind took one down), so that the next
        kinds still have them; what each load answered."""
        if self.ctx.models is None or (self.ctx.proc is not None and self.ctx.proc.poll() is not None):
            return ""
        answers = []
        for name, backend in (("lin", "linear"), ("xgb", "xgboost")) if self.ctx.xgb else (("lin", "linear"),):
            body = json.dumps({"parameters": {"path": str(self.ctx.models / name),
                                              "config": json.dumps({"backend": backend})}}).encode()
            status, _ = http_get(self.ctx, f"/v2/repository/models/{name}/load", self.ctx.admin, "POST", body)
            answers.append(f"{name} {status}")
        return ", ".join(answers)

    def admin_runtime_status(self, tally: Tally) -> None:
        """ModelMesh's runtimeStatus with the admin token unloads every model (the contract); send it once, check
        its answer, then load this script's models again."""
        if "mm" not in self.channels or self.ctx.models is None:
            return
        case = GrpcCase("mm", "/mmesh.ModelRuntime/runtimeStatus", b"", (("authorization", self.ctx.admin),),
                        control=True, admin=True)
        code, details, answer, trailing = self.call(case)
        self.judge_grpc(tally, case, code, details, answer, trailing)
        tally.notes[f"admin runtimeStatus answered {code} (it unloads every model); loaded again: "
                    f"{self.restore()}"] += 1

    # -- after each kind --

    def after(self, tally: Tally) -> None:
        time.sleep(0.5)
        tracebacks = self.new_tracebacks()
        tally.tracebacks = len(tracebacks)
        for summary, request_id, text in tracebacks:
            if "serving.load:" in summary:  # documented: a failed model load is logged with its traceback
                tally.notes[f"traceback of a failed model load in the log (documented): {summary[:300]}"] += 1
                continue
            request = self.by_request_id.get(request_id) or (
                f"(request id {request_id}: no 5xx answer carried it)" if request_id else
                "(the log line names no request id: see this kind's 5xx / UNKNOWN findings for the request)")
            tally.find("Traceback in the server log", f"{summary}\n{text}", request, key=summary)
        self.replay(tally)
        time.sleep(0.3)
        self.new_tracebacks()  # the replays' own: counted with the kind already
        ok, why = self.good_predict()
        tally.serves_after = "yes" if ok else "NO"
        if not ok:
            tally.find("the server stopped answering a good predict", why,
                       "POST /v1/models/lin:predict {\"instances\": [[2.0]]}, /v1/models/xgb:predict, gRPC Predict lin")
            restored = self.restore()
            if restored:
                tally.serves_after = f"NO (restored: {restored})"
        documents = (("/v1/models", "GET", None), ("/ui/api/status", "GET", None),
                     ("/v2/repository/index", "POST", b"{}"), (f"/v1/models/{self.ctx.model}", "GET", None))
        for path, method, body in documents:
            status, doc = http_get(self.ctx, path, self.ctx.user, method, body)
            for what in self.ctx.leaks(doc, b""):
                tally.find(f"status document holds {what}", f"{method} {path}: {status} {excerpt(doc, 400)}",
                           f"{method} {path} with the user token, after this kind")

    def new_tracebacks(self) -> list[tuple[str, str, str]]:
        """The server log's tracebacks since the last look: (log line + exception line, request id, the text)."""
        if self.ctx.log is None:
            return []
        with open(self.ctx.log, "rb") as f:
            f.seek(self.ctx.log_offset)
            text = f.read()
        self.ctx.log_offset += len(text)
        lines = [x for x in text.decode(errors="replace").splitlines() if not x.startswith('{"time"')]
        found = []
        for i, line in enumerate(lines):
            if not line.startswith("Traceback (most recent call last)"):
                continue
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or lines[j].startswith("Traceback")
                                      or lines[j].startswith("During handling") or not lines[j].strip()):
                j += 1
            if i and (lines[i - 1].startswith(" ") or lines[i - 1].startswith("During handling")):
                continue  # a chained traceback, counted with its first part
            # the log line it belongs to: the nearest one before it that starts with a time (messages may
            # span lines, as XGBoost's native errors do)
            start = next((k for k in range(i - 1, max(i - 40, -1), -1) if LOG_LINE.match(lines[k])), i)
            exception = lines[j] if j < len(lines) else ""
            rid = re.search(r"request_id=(\w+)", exception) or re.search(r"request_id=(\w+)", lines[start])
            summary = LOG_LINE.sub("", lines[start]) + " | " + re.sub(r"\s*request_id=\w+", "", exception)
            found.append((summary, rid[1] if rid else "", "\n".join(lines[start:j + 1][-30:])))
        return found

    def replay(self, tally: Tally) -> None:
        """Send each kept sample's request again, alone on a fresh connection, and note what it answers."""
        for kept in tally.samples.values():
            for f in kept.values():
                if f.request is not None:
                    out = exchange(self.ctx.port, f.request, 1, 15, half_close=True)
                    f.alone = (f"HTTP {out.answers[0].status} {out.answers[0].body[:160]!r}" if out.answers
                               else f"no answer (reset={out.reset}, closed={out.closed})")
                elif f.call is not None:
                    code, details, _, _ = self.call(f.call)
                    f.alone = f"{code} {details[:160]!r}"

    def good_predict(self) -> tuple[bool, str]:
        if self.ctx.proc is not None and self.ctx.proc.poll() is not None:
            return False, f"the server exited with {self.ctx.proc.returncode}"
        why = ""
        for _ in range(3):
            status, body = http_get(self.ctx, f"/v1/models/{self.ctx.model}:predict", self.ctx.user, "POST",
                                    b'{"instances": [[2.0]]}')
            ok = status == 200 and (not self.ctx.exact or json.loads(body) == {"predictions": [3.0]})
            if ok and self.ctx.xgb:
                status, body = http_get(self.ctx, "/v1/models/xgb:predict", self.ctx.user, "POST",
                                        b'{"instances": [[0.1, 0.2, 0.3, 0.4]]}')
                ok = status == 200
            if ok and "main" in self.channels:
                ok, body = self.grpc_predict()
            if ok:
                return True, ""
            why = f"{status} {body[:300]!r}"
            time.sleep(1)
        return False, why

    def grpc_predict(self) -> tuple[bool, bytes]:
        r = predict_pb2.PredictRequest()
        r.model_spec.name = self.ctx.model
        t = r.inputs["inputs"]
        t.dtype = 1
        t.tensor_shape.dim.add().size = 1
        t.tensor_shape.dim.add().size = 1
        t.float_val.append(2.0)
        try:
            predict = self.channels["main"].unary_unary(
                "/tensorflow.serving.PredictionService/Predict",
                request_serializer=predict_pb2.PredictRequest.SerializeToString,
                response_deserializer=predict_pb2.PredictResponse.FromString)
            answer = predict(r, metadata=(("authorization", self.ctx.user),), timeout=10)
        except grpc.RpcError as e:
            return False, f"gRPC {e.code()}: {e.details()}".encode()
        values = list(answer.outputs["predictions"].float_val)
        return (values == [3.0] or not self.ctx.exact), str(values).encode()

    # -- the whole run --

    def run(self, only: set[str] | None) -> None:
        http_counts = share(HTTP_KINDS, self.args.http_connections)
        grpc_counts = share(GRPC_KINDS, self.args.grpc_messages)
        gen, ggen = HttpCases(self.ctx), GrpcCases(self.ctx)
        plain = {"request-line": gen.request_line, "headers": gen.headers, "content-length": gen.content_length,
                 "chunked": gen.chunked, "gzip": gen.gzip, "json-bodies": gen.json_bodies, "numbers": gen.numbers,
                 "names": gen.names, "routes-methods": gen.routes_methods, "ui-since": gen.ui_since, "auth": gen.auth,
                 "control": gen.control}
        grpc_kinds = {"grpc-raw": ggen.raw, "grpc-tensors": ggen.tensors, "grpc-names": ggen.names,
                      "grpc-control": ggen.control}
        for kind, n in [*http_counts.items(), *grpc_counts.items()]:
            if only and kind not in only:
                continue
            if kind.startswith("grpc-") and "main" not in self.channels:
                continue
            began = time.monotonic()
            print(f"{kind}: {n} ...", end=" ", flush=True)
            if kind == "pipelined":
                tally = self.run_pipelined(kind, n, gen)
            elif kind == "slowloris":
                tally = self.run_slowloris(kind, n, gen)
            elif kind in plain:
                tally = self.run_http(kind, plain[kind](self.rng(kind), n))
            else:
                tally = self.run_grpc(kind, grpc_kinds[kind](self.rng(kind), n))
                if kind == "grpc-control":
                    self.admin_runtime_status(tally)
            self.after(tally)
            tally.seconds = time.monotonic() - began
            self.tallies.append(tally)
            print(f"{tally.seconds:.1f} s, {sum(tally.findings.values())} finding(s)", flush=True)
            if self.ctx.proc is not None and self.ctx.proc.poll() is not None:
                self.notes.append(f"the server exited ({self.ctx.proc.returncode}) during {kind}: the run stopped")
                break
        if self.ctx.outside is not None:
            written = sorted(p.name for p in (self.ctx.outside.parent / "requestlog").glob("*"))
            if written:
                self.notes.append(f"an admin reload put request-log files outside the load root: {written}")


def reload_failed(payload: bytes) -> bool:
    try:
        return model_management_pb2.ReloadConfigResponse.FromString(payload).status.error_code != 0
    except Exception:  # noqa: BLE001 - an answer that does not decode is no success
        return True


def grpc_repro(case: GrpcCase) -> str:
    port = "$GRPC_PORT" if case.port == "main" else "$MODELMESH_PORT"
    data = case.data.hex()
    if len(data) > 1600:
        data = f"{data[:1000]}...({len(case.data)} bytes)...{data[-400:]}"
    return (f"grpc.insecure_channel('127.0.0.1:{port}').unary_unary({case.method!r})"
            f"(bytes.fromhex('{data}'), metadata={case.metadata!r}, timeout={case.timeout:g})")


def share(weights: dict[str, int], total: int) -> dict[str, int]:
    """`total` shared out over the kinds in proportion to their weights (the defaults when they agree)."""
    whole = sum(weights.values())
    counts = {k: (w * total) // whole for k, w in weights.items()}
    order = sorted(weights, key=lambda k: -(weights[k] * total % whole))
    for k in order[:total - sum(counts.values())]:
        counts[k] += 1
    return counts


# ---- the report ----

def table(tallies: list[Tally]) -> str:
    rows = ["| kind | proto | connections | sent | 2xx / OK | 4xx / client codes | 5xx / UNKNOWN, INTERNAL | "
            "resets | time-outs | log tracebacks | good predict after | findings | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    total = Tally("total", "")
    for t in tallies:
        conns = str(t.connections) if t.proto == "HTTP" else "-"
        rows.append(f"| {t.kind} | {t.proto} | {conns} | {t.sent} | {t.ok} | {t.client} | {t.server} | {t.resets} | "
                    f"{t.timeouts} | {t.tracebacks} | {t.serves_after} | {sum(t.findings.values())} | "
                    f"{t.seconds:.1f} |")
        for f in ("connections", "sent", "ok", "client", "server", "resets", "timeouts", "tracebacks", "seconds"):
            setattr(total, f, getattr(total, f) + getattr(t, f))
        total.findings.update(t.findings)
    rows.append(f"| **total** | | {total.connections} | {total.sent} | {total.ok} | {total.client} | {total.server} | "
                f"{total.resets} | {total.timeouts} | {total.tracebacks} | | **{sum(total.findings.values())}** | "
                f"{total.seconds:.1f} |")
    return "\n".join(rows)


def report(probe: Probe, args: argparse.Namespace, exit_code: int | None, began: datetime.datetime) -> str:
    ctx = probe.ctx
    lines = [f"# Hostile probe, {began:%Y-%m-%d-%H%M} UTC", "",
             f"Command: `{shlex.join([sys.executable, *sys.argv])}`", ""]
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--oneline"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = "?"
    lines += [f"Checkout: `{ROOT}` at `{head}` (uncommitted changes included); {os.cpu_count()} cores; seed "
              f"{args.seed}; threads {args.threads}; HTTP connections {args.http_connections}, gRPC messages "
              f"{args.grpc_messages}.", ""]
    if ctx.command:
        lines += [f"Server: `{shlex.join(ctx.command)}` (models made at run time: `lin` linear y = 0.5x + 2"
                  f"{', `xgb` XGBoost 4 features' if ctx.xgb else ''}; ports are free loopback ports of this run).", ""]
    else:
        lines += [f"Server: already running at 127.0.0.1:{ctx.port} (gRPC {ctx.grpc_port}, ModelMesh "
                  f"{ctx.mm_port}); log and SIGTERM checks skipped.", ""]
    lines += [table(probe.tallies), ""]
    lines += ["HTTP columns count answers (a connection may carry many requests; answers a malformed connection "
              "never got are not counted; time-outs are connections still owed an answer when the client gave up, "
              "most of them on purpose: a body shorter than its Content-Length, a request never finished); "
              "the 5xx column includes the README's own 5xx answers (501 of :classify / :regress, documented 503s, "
              "listed in the notes), which are not findings. gRPC columns count calls by status code: OK, the "
              "client-error codes (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED, "
              "...) and UNKNOWN / INTERNAL / DATA_LOSS; gRPC time-outs are DEADLINE_EXCEEDED, resets UNAVAILABLE.", ""]
    lines += ["## Status codes by kind", ""]
    for t in probe.tallies:
        lines.append(f"- {t.kind}: " + ", ".join(f"{k}: {v}" for k, v in sorted(t.statuses.items())))
    findings = [(t, check, count) for t in probe.tallies for check, count in t.findings.items()]
    lines += ["", f"## Findings ({sum(c for _, _, c in findings)})", ""]
    if not findings:
        lines.append("None.")
    for t, check, count in findings:
        kept = t.samples.get(check, {})
        lines += [f"### {t.kind}: {check} ({count}; {len(kept)} distinct answer(s) below"
                  + (f", the first {SAMPLES}" if len(kept) >= SAMPLES else "") + ")", ""]
        for f in kept.values():
            lines += [f"{f.count} x answer:", "", "```", f.what, "```", "", "request (exact bytes):", "", "```",
                      f.repro, "```", ""]
            if f.alone:
                lines += [f"sent again alone on a fresh connection: `{f.alone}`", ""]
    lines += ["## Breakdowns: control calls by token, gRPC codes by method", ""]
    for t in probe.tallies:
        if t.by:
            lines += [f"<details><summary>{t.kind}</summary>", ""]
            lines += [f"- {k}: {v}" for k, v in sorted(t.by.items())] + ["", "</details>", ""]
    notes = [f"{t.kind}: {note}" + (f" ({c})" if c > 1 else "") for t in probe.tallies for note, c in t.notes.items()]
    notes += probe.notes
    notes += [f"{t.kind}: {t.skipped} cases not sent (past --max-seconds)" for t in probe.tallies if t.skipped]
    lines += ["## Notes", ""] + [f"- {n}" for n in notes] + (["- none"] if not notes else [])
    if ctx.proc is not None:
        lines += ["", f"Server exit status on SIGTERM: {exit_code}"
                  + (" (finding: not 0)" if exit_code != 0 else " (clean)")]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--http-connections", type=int, default=sum(HTTP_KINDS.values()))
    parser.add_argument("--grpc-messages", type=int, default=sum(GRPC_KINDS.values()))
    parser.add_argument("--only", default="", help="comma-separated kinds: " + ", ".join([*HTTP_KINDS, *GRPC_KINDS]))
    parser.add_argument("--threads", type=int, default=8, help="connections / calls at once")
    parser.add_argument("--max-seconds", type=float, default=900, help="the whole run's bound; later cases are skipped")
    parser.add_argument("--python", default=sys.executable, help="the python that runs `-m serving`")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--url", help="probe this running server (http://127.0.0.1:PORT) instead of starting one")
    parser.add_argument("--grpc", help="its gRPC address (127.0.0.1:PORT)")
    parser.add_argument("--modelmesh", help="its ModelMesh runtime address (127.0.0.1:PORT)")
    parser.add_argument("--token", help="its --token")
    parser.add_argument("--admin-token", help="its --admin_token")
    parser.add_argument("--model", default="lin", help="a model it serves that takes one float feature")
    parser.add_argument("--load-root", help="its --model_load_roots folder, for loads from inside it")
    args = parser.parse_args()
    only = {k.strip() for k in args.only.split(",") if k.strip()} or None
    unknown = (only or set()) - set(HTTP_KINDS) - set(GRPC_KINDS)
    if unknown:
        parser.error(f"unknown kinds: {sorted(unknown)}")
    began = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        ctx = external(args, Path(tmp)) if args.url else start_server(args, Path(tmp))
        probe = Probe(ctx, args)
        try:
            probe.run(only)
        finally:
            for channel in probe.channels.values():
                channel.close()
            exit_code = stop_server(ctx)
        if ctx.proc is not None:
            tail = ctx.log.read_bytes() if ctx.log else b""
            count = tail[ctx.log_offset:].count(b"Traceback (most recent call last)")
            if count:
                probe.notes.append(f"{count} traceback(s) in the log during the shutdown")
        text = report(probe, args, exit_code, began)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"probe-{began:%Y-%m-%d-%H%M}.md"
    path.write_text(text)
    print(table(probe.tallies))
    found = sum(sum(t.findings.values()) for t in probe.tallies)
    bad_exit = ctx.proc is not None and exit_code != 0
    print(f"\n{found} finding(s){'; the server did not exit 0 on SIGTERM' if bad_exit else ''}; report: {path}")
    return 1 if found or bad_exit or any("exited" in n for n in probe.notes) else 0


if __name__ == "__main__":
    sys.exit(main())
