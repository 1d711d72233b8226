"""The engine as the subscriber of a remote queue service (`--queue_endpoint http://host:port`, `serving queue`
or the cloud's): it watches its service's input queue over the WebSocket API with its window, runs each item
through the same path as the embedded subscriber (a synchronous cloud-route call of the model), puts the answer
to the remote sink with the item's tags (`requestId` among them; a failed call tagged `status`), then commits
the item. The engine hosts no queue. A dropped connection is opened again (what it held goes to another
watcher meanwhile, maybe this one again: an item already in hand is not served twice); while the sink is full
(429) the answer is put again after a pause, and the window, held, takes nothing more. On SIGTERM it takes
nothing more, finishes and commits what it holds, then closes its WebSocket (what came meanwhile goes out
again to another watcher)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from urllib.parse import quote, urlencode

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ..settings import Settings
from ..transport.http import Request
from .client import QueueClientError, QueueHttp, Watch, endpoint_address
from .store import Item
from .subscriber import RenderError, Route, respond

log = logging.getLogger(__name__)

#: Pauses between tries (a reconnect, a put to a full or unreachable sink), growing to the last.
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def _pause(attempt: int) -> float:
    return BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]


class RemoteSubscriber:
    """Serves the remote queue `<model>` into `<model>/sink` through the model's cloud route."""

    def __init__(self, endpoint: str, model: str, window: int, token: str, route: Route, error: RenderError,
                 timeout_s: float = 30.0) -> None:
        host, port = endpoint_address(endpoint)
        self.host, self.port, self.token, self.timeout_s = host, port, token, timeout_s
        self.model, self.window, self.route, self.error = model, window, route, error
        self.path = "/api/predict/" + quote(model, safe="")
        self.http = QueueHttp(host, port, token, timeout_s)
        self.held: dict[int, asyncio.Task[None]] = {}
        self.stopping = False
        self.watch: Watch | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.counts = {"get": 0, "put": 0, "commit": 0}

    def start(self) -> None:
        self.loop_task = asyncio.get_running_loop().create_task(self._run())
        log.info("subscribing to queue %s at %s:%d with a window of %d", self.model, self.host, self.port,
                 self.window)

    async def _run(self) -> None:
        """Watch, and watch again when the connection ends, until stopped."""
        failures = 0
        target = f"{self.path}?{urlencode({'_watch_': 'true', '_window_': self.window})}"
        while not self.stopping:
            watch = self.watch = Watch(self.host, self.port, target, self.token, self.timeout_s)
            try:
                await watch.open()
                if failures:
                    log.info("subscribed to queue %s at %s:%d again", self.model, self.host, self.port)
                failures = 0
                async for item in watch.items():
                    self._take(item)
                if not self.stopping:
                    log.warning("queue %s at %s:%d: the watcher's connection ended; subscribing again", self.model,
                                self.host, self.port)
            except QueueClientError as e:
                if failures == 0 or failures % 50 == 0:
                    log.warning("cannot subscribe to queue %s: %s (trying again)", self.model, e)
                failures += 1
            except Exception:  # noqa: BLE001 - a message that is no DataFrameProto: open a fresh connection
                log.exception("queue %s: the watcher failed; subscribing again", self.model)
                failures += 1
            finally:
                watch.close()
            if not self.stopping:
                await asyncio.sleep(_pause(failures))

    def _take(self, item: Item) -> None:
        if self.stopping or item.index in self.held:
            return  # stopping: it goes out again when the WebSocket closes; in hand: sent again after a reconnect
        self.counts["get"] += 1
        task = asyncio.get_running_loop().create_task(self._serve(item))
        self.held[item.index] = task
        task.add_done_callback(lambda _: self.held.pop(item.index, None))

    async def _serve(self, item: Item) -> None:
        request = Request("POST", self.path, "", {}, item.data, item.tags.get("requestId", ""))
        response = await respond(self.route, self.error, request)
        tags = dict(item.tags)
        if response.status != 200:
            tags["status"] = str(response.status)
        await self._send("POST", f"{self.path}/sink?{urlencode(tags)}", response.body, "put")
        await self._send("PUT", f"{self.path}?_indexes_={item.index}", b"", "commit")

    async def _send(self, method: str, target: str, body: bytes, op: str) -> None:
        """One request to the queue service, tried again while the service is unreachable or the sink full."""
        attempt = 0
        while True:
            try:
                status, answer = await self.http.request(method, target, body)
            except QueueClientError as e:
                status, answer = 0, str(e).encode()
            if status == 200:
                self.counts[op] += 1
                return
            if status not in (0, 429, 502, 503, 504):
                log.error("queue %s: %s %s refused %d: %s", self.model, method, target.split("?")[0], status,
                          answer[:200].decode("utf-8", "replace"))
                if op == "put" and status == 413:  # the answer is too large: answer that instead
                    body, target = answer, target + "&status=413"
                    continue
                return
            if attempt == 0 or attempt % 50 == 0:
                log.warning("queue %s: %s %s: %s (trying again)", self.model, method, target.split("?")[0],
                            answer[:200].decode("utf-8", "replace") if status else answer.decode())
            await asyncio.sleep(_pause(attempt))
            attempt += 1

    async def stop(self, grace_s: float) -> None:
        """Take nothing more; finish and commit what is held (for up to `grace_s`), then close the WebSocket."""
        self.stopping = True
        held = list(self.held.values())
        if held:
            log.info("finishing the %d queue items held", len(held))
            done, pending = await asyncio.wait(held, timeout=grace_s)
            for task in pending:
                task.cancel()
        if self.watch is not None:
            self.watch.close()
        if self.loop_task is not None:
            self.loop_task.cancel()
            try:
                await self.loop_task
            except asyncio.CancelledError:
                pass
        if self.watch is not None:
            await self.watch.wait_closed()
        await self.http.close()


class RemoteCollector:
    """This subscriber's items in hand and operations, as the embedded queues' families."""

    def __init__(self, remote: RemoteQueues) -> None:
        self.remote = remote

    def collect(self) -> Iterator[Metric]:
        subscriber = self.remote.subscriber
        if subscriber is None:
            return
        inflight = GaugeMetricFamily("serving_queue_inflight", "items sent to a watcher and not yet committed",
                                     labels=["queue"])
        inflight.add_metric([subscriber.model], float(len(subscriber.held)))
        operations = CounterMetricFamily("serving_queue_operations", "queue operations: items put, get requests, "
                                         "items committed or deleted", labels=["queue", "op"])
        for op, count in subscriber.counts.items():
            operations.add_metric([subscriber.model, op], float(count))
        yield from (inflight, operations)


class RemoteQueues:
    """An async service whose queues a remote queue service hosts: the engine subscribes there."""

    api = None  # the engine hosts no queue

    def __init__(self, s: Settings, token: str) -> None:
        endpoint_address(s.queue_endpoint)  # a bad endpoint stops the start
        self.settings, self.token = s, s.queue_token or token
        self.subscriber: RemoteSubscriber | None = None
        self.collector = RemoteCollector(self)

    def subscribe(self, route: Route, error: RenderError) -> None:
        s = self.settings
        self.subscriber = RemoteSubscriber(s.queue_endpoint, s.model_name, s.queue_window or s.max_batch_size,
                                           self.token, route, error, s.rest_api_timeout_in_ms / 1000)
        self.subscriber.start()

    async def stop(self) -> None:
        if self.subscriber is not None:
            started = time.monotonic()
            await self.subscriber.stop(self.settings.grace_period_s())
            log.info("the queue subscriber stopped in %.2f s", time.monotonic() - started)

    def close(self) -> None:
        pass
