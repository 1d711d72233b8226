"""Request ids and the access log: a line per HTTP request or gRPC call that operators need, written off the
event loop.

Request ids: a client's `x-request-id` (HTTP header or gRPC metadata) is kept, else one is made from a
per-process random prefix and a counter (no uuid4 per request); the server answers it (`X-Request-Id`
header, `x-request-id` trailing metadata), sets it as the `Call`'s request id and puts it in the access
log line and in the server's own log lines about the request (`request_id` of the log record).

The access log (`--access_log=json|text`) writes every failed request (HTTP status 400 or more, a gRPC code
other than OK), every request that took `--access_log_slow_ms` or longer, and a sample of the rest
(`--access_log_sample_rate`, 1% by default); `--access_log=all` writes every request (json). Which request
gets a line is decided before anything is formatted (`AccessLog.selects`): two comparisons and a random
draw, so that a request left out costs about 0.6 µs of the HTTP path (a line for every request costs 7-11
µs, about a fifth of a small request's CPU). A line chosen: the event loop formats it (orjson for json,
about 2 µs) and appends it to a bounded deque; a writer thread wakes every FLUSH_S and writes what is queued to the
sink. (Formatting in the writer thread cost more in all: its Python work took the GIL from the loop
every few lines; in process, 64 requests in flight, the log cost 14-17 µs a request that way and 7-11 µs
this way; over loopback HTTP the difference was within the machine's noise.) When the sink stalls and the deque is
full, lines are dropped and counted (`serving_access_log_dropped_total`) instead of blocking the loop.
`--access_log=off` is no AccessLog at all: the front ends check for None.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import logging
import os
import random
import re
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

import orjson

from ..errors import encodable

#: Access log lines dropped because the sink stalled, in a one-item list (read by serving/ops/metrics.py).
ACCESS_LOG_DROPPED = [0]

if TYPE_CHECKING:
    from ..core.pipeline import Call

#: A client's request id longer than this is replaced by one of ours (it is echoed and logged).
MAX_ID_LENGTH = 128
#: The writer thread drains the queue this often (seconds).
FLUSH_S = 0.02
#: Routes not logged unless --access_log_health: probes and scrapes would drown the requests.
HEALTH_PATHS = frozenset(("/healthz", "/readyz", "/metrics", "/monitoring/prometheus/metrics", "/v2/health/live",
                          "/v2/health/ready"))
FIELDS = ("time", "request_id", "remote", "protocol", "route", "model", "version", "signature", "status", "rows",
          "queue_ms", "compute_ms", "total_ms", "bytes_in", "bytes_out")

_PREFIX = os.urandom(6).hex()
# Bound once: the selection runs for every request.
_draw = random.random
_clock = time.perf_counter
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A request id unique to this process run: 12 random hex digits, then a hex counter."""
    return f"{_PREFIX}{next(_COUNTER):08x}"


def request_id_of(value: str | bytes | None) -> str:
    """The client's id when it sent a usable one, else a new one."""
    if not value or len(value) > MAX_ID_LENGTH:
        return new_request_id()
    return value if isinstance(value, str) else value.decode("latin-1")


#: The request id of the gRPC method running in this task (each gRPC call runs in its own task), set by
#: adapters.grpc_errors for the log records written meanwhile and read by nothing else: the request path
#: hands the id on explicitly (the method's exchange, its Calls).
GRPC_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("grpc_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Gives a log record written while a gRPC method runs that call's `request_id` (HTTP log sites pass
    theirs with `extra=`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = GRPC_REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def blocks(lines: list[bytes], size: int = select.PIPE_BUF) -> Iterator[bytes]:
    """Lines joined into blocks of at most `size` bytes (a longer line alone): a write of at most PIPE_BUF
    bytes to a pipe is never interleaved with another process's, so workers sharing standard output never
    split each other's lines."""
    block: list[bytes] = []
    length = 0
    for line in lines:
        if block and length + len(line) > size:
            yield b"".join(block)
            block, length = [], 0
        block.append(line)
        length += len(line)
    if block:
        yield b"".join(block)


class JsonFormatter(logging.Formatter):
    """`--log_format=json`: one object per line: time, level, logger, message, request_id when known, and
    the worker's index under a supervisor (--workers)."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": rfc3339(record.created), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        if self.worker is not None:
            doc["worker"] = self.worker
        rid = getattr(record, "request_id", None)
        if rid:
            doc["request_id"] = rid
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class TextFormatter(logging.Formatter):
    """`--log_format=text`: the classic line, with `request_id=...` appended when the record has one."""

    def __init__(self, worker: str | None = None) -> None:
        where = "" if worker is None else f"[worker {worker}] "
        super().__init__(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{text} request_id={_text_value(rid)}" if rid else text


_SECOND = [(-1, "")]  # the last second formatted, one tuple so that threads read it whole


def rfc3339(t: float) -> str:
    """RFC 3339 UTC with milliseconds: 2026-01-02T03:04:05.678Z (the seconds formatted once a second)."""
    ms = int(t * 1000)
    second, text = _SECOND[0]
    if ms // 1000 != second:
        second = ms // 1000
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SECOND[0] = (second, text)
    return f"{text}.{ms % 1000:03d}Z"


def call_details(call: Call | None) -> tuple[str, int | None, str, int | None, float | None, float | None]:
    """(model, version, signature, rows, queue s, compute s) of a call; the timings are the call's clocks,
    which the pipeline sets while it is observed (the server's request metrics always observe)."""
    if call is None:
        return "", None, "", None, None, None
    servable, sig = call.servable, call.signature
    queue = compute = None
    if call.dispatched:
        queue = call.dispatched - call.received
        compute = (call.computed or time.perf_counter()) - call.dispatched
    return (servable.model if servable is not None else call.model,
            servable.version if servable is not None else call.version,
            sig.name if sig is not None else "", call.rows, queue, compute)


# An entry: what the loop knows of a request, formatted at once into its line.
# (time, request id, remote, protocol, route, call details, status, total s, bytes in, bytes out)
Entry = tuple[float, str, Any, str, str, tuple[Any, ...], "int | str", float, int, int]


class AccessLog:
    """The access log: `http(...)` and `grpc(...)` from the event loop, a writer thread to the sink.

    `fmt` is `json` or `text` (failures, slow requests and a sample of the rest, as `selects` decides) or
    `all` (a json line for every request: the sample rate taken as 1)."""

    def __init__(self, fmt: str = "json", *, sample_rate: float = 0.01, slow_ms: float = 1000.0,
                 health: bool = False, sink: IO[bytes] | None = None, max_queued: int = 8192) -> None:
        self.format = _formatter(fmt)
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"--access_log_sample_rate: expected a number from 0 to 1, got {sample_rate:g}")
        if not slow_ms >= 0.0:  # NaN too
            raise ValueError(f"--access_log_slow_ms: expected 0 or more, got {slow_ms:g}")
        # random() < 1.0 always: `all` needs no test of its own on the request path
        self.sample_rate = 1.0 if fmt == "all" else sample_rate
        self.slow_s, self.health = slow_ms / 1000, health
        self.sink = sink if sink is not None else sys.stdout.buffer
        self.max_queued = max_queued
        self.entries: collections.deque[bytes] = collections.deque()  # formatted lines
        self.wake = threading.Event()
        self.dropped = 0
        self.closed = False
        self.thread = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
        self.thread.start()

    @classmethod
    def open(cls, fmt: str, *, sample_rate: float, slow_ms: float, health: bool, path: str) -> AccessLog | None:
        """The access log the settings ask for; None for `off`. Raises ValueError."""
        if fmt == "off":
            return None
        _formatter(fmt)  # refused before a file is opened (and created) for nothing
        sink = None
        if path:
            try:
                sink = open(path, "ab")  # noqa: SIM115 - the writer thread owns it until close()
            except OSError as e:
                raise ValueError(f"cannot open --access_log_file {path}: {e.strerror}") from e
        return cls(fmt, sample_rate=sample_rate, slow_ms=slow_ms, health=health, sink=sink)

    # ---- the event loop's side: the selection, then for a line chosen a few checks and a deque append ----

    def selects(self, failed: bool, total_s: float) -> bool:
        """Whether a request that took `total_s` gets a line: always when it `failed` or was slow, else by the
        sample. Nothing is formatted or allocated before this answers: most requests stop here."""
        return failed or total_s >= self.slow_s or _draw() < self.sample_rate

    def http(self, request: Any, request_id: str, remote: Any, status: int, started: float, bytes_in: int,
             bytes_out: int) -> None:
        """An HTTP answer was written. `request` is the Request (None when it never parsed whole). Decides
        itself whether the request gets a line (its arguments cost the caller nothing to make)."""
        if not self.selects(status >= 400, _clock() - started):
            return
        self.http_line(request, request_id, remote, status, started, bytes_in, bytes_out)

    def http_line(self, request: Any, request_id: str, remote: Any, status: int, started: float, bytes_in: int,
                  bytes_out: int) -> None:
        """`http` for a request the caller asked `selects` about already."""
        total = _clock() - started
        if request is None:
            route, protocol, call = "", "http", None
        else:
            path = request.path
            if not self.health and (path in HEALTH_PATHS or path.startswith("/v2/health/")):
                return
            route, call = f"{request.method} {path}", request.call
            protocol = call.protocol if call is not None else "http"
        self._put((time.time(), request_id, remote, protocol, route, call_details(call), status, total, bytes_in,
                   bytes_out))

    def grpc(self, route: str, request_id: str, remote: str, call: Call | None, code: str, started: float,
             bytes_in: int, bytes_out: int) -> None:
        """A gRPC call finished with `code` (a gRPC status code name): written as it is. The caller asks
        `selects(code != "OK", ...)` first, before it makes the arguments (the peer string and the message
        sizes cost more than the decision)."""
        protocol = call.protocol if call is not None else "grpc"
        self._put((time.time(), request_id, remote, protocol, route, call_details(call), code,
                   time.perf_counter() - started, bytes_in, bytes_out))

    def _put(self, entry: Entry) -> None:
        entries = self.entries
        if len(entries) >= self.max_queued:  # the sink stalls: drop, never block the loop
            self.dropped += 1
            ACCESS_LOG_DROPPED[0] += 1
            return
        try:
            line = self.format(entry)
        except (TypeError, ValueError, OverflowError):  # a value orjson cannot write (an int past 64 bits)
            line = self.format(_plain(entry))
        entries.append(line)  # no wake-up per line: the writer drains every FLUSH_S (a wake-up per line, with
        # its GIL hand-offs, cost the loop more than the line itself)

    # ---- the writer thread ----

    def _write_loop(self) -> None:
        entries, wake = self.entries, self.wake
        while True:
            wake.wait(FLUSH_S)
            wake.clear()
            lines = []
            while entries:
                lines.append(entries.popleft())
            if lines:
                try:
                    for block in blocks(lines):
                        self.sink.write(block)
                        self.sink.flush()  # one write() a block: whole lines beside other workers' on one pipe
                except (OSError, ValueError):  # a full disk or a closed sink must not kill the thread
                    self.dropped += len(lines)
                    ACCESS_LOG_DROPPED[0] += len(lines)
            if self.closed and not entries:
                return

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for up to `timeout_s`), then close a file sink."""
        self.closed = True
        self.wake.set()
        self.thread.join(timeout_s)
        if self.sink is not sys.stdout.buffer and not self.thread.is_alive():
            self.sink.close()


def _formatter(fmt: str) -> Callable[[Entry], bytes]:
    """The line formatter of an --access_log value other than off. Raises ValueError."""
    if fmt not in ("json", "text", "all"):
        raise ValueError(f"--access_log: expected off, json, text or all, got {fmt!r}")
    return _text_line if fmt == "text" else _json_line


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else int(seconds * 1_000_000) / 1000  # µs precision, cheaper than round()


def _remote(peer: Any) -> str:
    """'host:port' of a socket peer name (a tuple), or gRPC's peer string as is."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


def _fields(entry: Entry) -> tuple[Any, ...]:
    t, rid, remote, protocol, route, (model, version, sig, rows, queue, compute), status, total, b_in, b_out = entry
    return (rfc3339(t), rid, _remote(remote), protocol, route, model, version, sig, status, rows, _ms(queue),
            _ms(compute), _ms(total), b_in, b_out)


def _plain(entry: Entry) -> Entry:
    """`entry` with every value a client may have chosen as text: what the formatters can always write, so
    that no request can cost its log line (or, raising on the event loop, its connection)."""
    t, rid, remote, protocol, route, details, status, total, b_in, b_out = entry
    model, version, sig, rows, queue, compute = details
    text = [encodable(str(v)) for v in (rid, _remote(remote), protocol, route, model, sig)]
    return (t, text[0], text[1], text[2], text[3],
            (text[4], None if version is None else encodable(str(version)), text[5], rows, queue, compute),
            status if isinstance(status, int) and abs(status) < 2**63 else encodable(str(status)), total, b_in, b_out)


def _json_line(entry: Entry) -> bytes:
    t, rid, remote, protocol, route, (model, version, sig, rows, queue, compute), status, total, b_in, b_out = entry
    return orjson.dumps({
        "time": rfc3339(t), "request_id": rid, "remote": _remote(remote), "protocol": protocol, "route": route,
        "model": model, "version": version, "signature": sig, "status": status, "rows": rows,
        "queue_ms": _ms(queue), "compute_ms": _ms(compute), "total_ms": _ms(total), "bytes_in": b_in,
        "bytes_out": b_out}, option=orjson.OPT_APPEND_NEWLINE)


_PLAIN = re.compile(r"[\w.:/@+-]+\Z")


def _text_value(value: Any) -> str:
    """A value as text: words as they are, anything with spaces, quotes or control bytes JSON-quoted (a
    client's path or request id cannot forge a line or a field)."""
    if value is None or value == "":
        return "-"
    text = str(value)
    return text if _PLAIN.match(text) else orjson.dumps(text).decode()


def _text_line(entry: Entry) -> bytes:
    values = _fields(entry)
    head = " ".join(_text_value(v) for v in values[:3])
    rest = " ".join(f"{k}={_text_value(v)}" for k, v in zip(FIELDS[3:], values[3:], strict=True))
    return f"{head} {rest}\n".encode()
