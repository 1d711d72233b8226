"""The queue service's HTTP API, as the cloud's (its SDK's `QueueClient` and curl work unchanged), under
`/api/predict/<name>` for a service's input queue and `/api/predict/<name>/sink` for its sink:

- `POST` puts the body (query parameters are its tags; `_priority_=1` puts it ahead): the answer is its index,
  with its request id in `X-Eas-Queueservice-Request-Id`.
- `GET` with `_index_` (from this index on, default 0), `_length_` (default 1), `_timeout_` (wait this long,
  `5s` / `500ms` / seconds, for an item when none is there), `_auto_delete_` (default true), `requestId` and
  other tags (only items with them): a protobuf `DataFrameListProto`, or with `_raw_=true` the first item's
  data as is (204 when none). `GET ?_attrs_=true`: the queue's attributes as JSON.
- `DELETE ?_indexes_=1,2` deletes those items, `DELETE ?_index_=N&_trunc_=true` every item under N;
  `PUT ?_indexes_=1,2` commits them (a commit removes an item).
- A WebSocket on the same path with `_watch_=true` (`_index_`, `_window_`, `_index_only_`, `_auto_commit_`,
  tags) is a watcher: it is sent each item as a binary `DataFrameProto`, at most `_window_` uncommitted.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from .._proto.eas import queueservice_pb2
from ..codecs.jsonutil import dumps
from ..errors import ServingError, invalid_argument
from ..protocols.adapters import answer_when
from ..protocols.tfserving.codec import encode_error
from ..transport.http import Deferred, Request, Response
from ..transport.websocket import WebSocket, wants_websocket
from .queue import AnyQueue, PayloadTooLarge, Watcher
from .store import Item

PLAIN = b"text/plain; charset=utf-8"
PROTOBUF = b"application/vnd.google.protobuf"
QUEUE_PATH = re.compile(r"/api/predict/(?P<name>[^/]+)(?P<sink>/sink)?/?$")
#: The longest `_timeout_` of a GET (a long poll); more is cut to it.
MAX_POLL_S = 300.0
#: The largest `_window_` of a watcher.
MAX_WINDOW = 10000
DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d*)?)\s*(?P<unit>ms|s|m|h)?\s*$")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration_s(text: str) -> float:
    """`5s`, `500ms`, `1m`, `2` (seconds) -> seconds."""
    m = DURATION.match(text)
    if m is None:
        raise invalid_argument(f"_timeout_ {text!r}: expected a duration such as 5s or 500ms")
    return min(float(m["n"]) * UNITS[m["unit"]], MAX_POLL_S)


def flag(params: dict[str, str], name: str, default: bool) -> bool:
    value = params.get(name)
    return default if value is None else value.strip().lower() in ("true", "1", "yes", "on")


def number(params: dict[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise invalid_argument(f"{name} {value!r}: expected an integer") from e


def indexes(params: dict[str, str]) -> list[int]:
    text = params.get("_indexes_", "")
    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError as e:
        raise invalid_argument(f"_indexes_ {text!r}: expected comma-separated integers") from e


def split_query(query: str) -> tuple[dict[str, str], dict[str, str]]:
    """(the service's own parameters `_name_`, the tags: every other parameter)."""
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        (params if len(key) > 2 and key.startswith("_") and key.endswith("_") else tags)[key] = value
    return params, tags


def encode_item(item: Item, index_only: bool = False) -> queueservice_pb2.DataFrameProto:
    return queueservice_pb2.DataFrameProto(index=item.index, tags=item.tags, data=b"" if index_only else item.data)


def encode_items(items: list[Item]) -> bytes:
    return queueservice_pb2.DataFrameListProto(index=[encode_item(i) for i in items]).SerializeToString()


def error_response(e: ServingError) -> Response:
    status = 413 if isinstance(e, PayloadTooLarge) else 429 if e.code.name == "RESOURCE_EXHAUSTED" else e.http_status
    return Response(status, encode_error(e.message))


class QueueApi:
    """The HTTP and WebSocket API over the queues `lookup` finds by name (`<service>` or `<service>/sink`)."""

    def __init__(self, lookup: Callable[[str], AnyQueue | None], timeout_s: float = 30.0) -> None:
        self.lookup, self.timeout_s = lookup, timeout_s
        self.sockets: set[WebSocket] = set()

    def queue_of(self, path: str) -> AnyQueue | None:
        m = QUEUE_PATH.match(path)
        return self.lookup(m["name"] + (m["sink"] or "")) if m is not None else None

    def __call__(self, request: Request) -> Response | Deferred | None:
        """The answer to a request for one of the queues; None when its path names none."""
        queue = self.queue_of(request.path)
        if queue is None:
            return None
        try:
            return self._route(queue, request)
        except ServingError as e:
            return error_response(e)

    def _route(self, queue: AnyQueue, request: Request) -> Response | Deferred:
        params, tags = split_query(request.query)
        method = request.method
        if method == "POST":
            if any(c in value for value in tags.values() for c in "\r\n\0"):
                raise invalid_argument("a tag holds a control character")
            return self._later(queue.put(request.body, tags, number(params, "_priority_", 0)), _put_answer)
        if method == "GET":
            return self._get(queue, params, tags)
        if method == "DELETE" and flag(params, "_trunc_", False):
            return self._later(queue.truncate(number(params, "_index_", 0)), _ok)
        if method in ("DELETE", "PUT"):
            return self._later(queue.remove(indexes(params)), _ok)
        raise invalid_argument(f"method {method} is not one of the queue service's (POST, GET, PUT, DELETE)")

    def _get(self, queue: AnyQueue, params: dict[str, str], tags: dict[str, str]) -> Response | Deferred:
        if flag(params, "_attrs_", False):
            return self._later(queue.attrs(), _json_answer)
        if flag(params, "_watch_", False):
            raise invalid_argument("_watch_ needs a WebSocket (Upgrade: websocket)")
        if flag(params, "_search_", False):
            return self._later(queue.search(number(params, "_index_", 0)), _json_answer)
        timeout_s = duration_s(params.get("_timeout_", "0"))
        found = queue.get(number(params, "_index_", 0), max(1, number(params, "_length_", 1)), tags, timeout_s,
                          flag(params, "_auto_delete_", True))
        raw = flag(params, "_raw_", False)
        return self._later(found, _raw_answer if raw else _list_answer, timeout_s + self.timeout_s)

    def _later(self, work: Awaitable[Any], ok: Callable[[Any], Response], timeout_s: float | None = None) -> Deferred:
        return answer_when(work, ok, error_response, timeout_s or self.timeout_s,
                           "the queue store did not answer in time")

    # ---- WebSocket watchers ----

    def upgrade(self, request: Request, transport: asyncio.Transport, rest: bytes) -> Response | None:
        """A watcher's WebSocket: None once it is open (it has the transport), else the answer refusing it."""
        queue = self.queue_of(request.path)
        if queue is None:
            return Response(404, encode_error(f"no queue at {request.path}"))
        if not wants_websocket(request):
            return Response(400, encode_error("expected a WebSocket upgrade"))
        try:
            params, tags = split_query(request.query)
            if not flag(params, "_watch_", False):
                raise invalid_argument("a WebSocket on a queue needs _watch_=true")
            window = min(max(1, number(params, "_window_", 1)), MAX_WINDOW)
            start, index_only = number(params, "_index_", 0), flag(params, "_index_only_", False)
        except ServingError as e:
            return error_response(e)
        socket = WebSocket(lambda message: None, lambda: self._closed(queue, watcher, socket))
        watcher = Watcher(window, lambda item: socket.send(encode_item(item, index_only).SerializeToString()),
                          start, flag(params, "_auto_commit_", False), tags)
        if not socket.accept(request, transport, rest):
            return Response(400, encode_error("not a valid WebSocket handshake"))
        self.sockets.add(socket)
        queue.watch(watcher)
        return None

    def _closed(self, queue: AnyQueue, watcher: Watcher, socket: WebSocket) -> None:
        self.sockets.discard(socket)
        queue.unwatch(watcher)

    def close(self) -> None:
        """Close every watcher's WebSocket (a drain): what they held goes out again."""
        for socket in list(self.sockets):
            socket.close(1001, "the queue service is stopping")


def _put_answer(item: Item) -> Response:
    return Response(200, str(item.index).encode(), PLAIN,
                    b"X-Eas-Queueservice-Request-Id: %s\r\n" % item.tags["requestId"].encode("latin-1", "replace"))


def _ok(_: Any) -> Response:
    return Response(200, b"OK", PLAIN)


def _json_answer(value: dict[str, Any]) -> Response:
    return Response(200, dumps(value))


def _list_answer(items: list[Item]) -> Response:
    return Response(200, encode_items(items), PROTOBUF)


def _raw_answer(items: list[Item]) -> Response:
    return Response(200, items[0].data, b"application/octet-stream") if items else Response(204, b"", PLAIN)

