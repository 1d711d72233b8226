"""The engine as its queue's subscriber: it takes items from the input queue up to its window, runs each
through the same pipeline as a synchronous cloud-route call of the model (so a window of 32 batches), puts the
answer to the sink with the item's tags (`requestId` among them), then commits the item. A failed call is
answered all the same: the sink item is the error body the synchronous route gives, tagged `status` (`"400"`).
While the sink is full it takes nothing. On stop it takes nothing more, and finishes and commits what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..errors import Code, ServingError
from ..transport.http import Deferred, Request, Response
from .queue import AnyQueue, Watcher
from .store import Item

log = logging.getLogger(__name__)

#: How an HTTP request is answered: the cloud route's adapter (a Response, a Deferred, or a ServingError raised,
#: which `error` answers).
Route = Callable[[Request], Response | Deferred]
RenderError = Callable[[ServingError], Response]


async def respond(route: Route, error: RenderError, request: Request) -> Response:
    """What the HTTP route answers `request`, without a connection."""
    try:
        result = route(request)
    except ServingError as e:
        return error(e)
    if isinstance(result, Response):
        return result
    try:
        await asyncio.wait_for(asyncio.shield(result.future), max(0.0, result.deadline - time.monotonic()))
    except TimeoutError:
        result.future.cancel()
        return result.on_timeout()
    except Exception:  # noqa: BLE001 - the call's failure: finish() answers it
        pass
    return result.finish(result.future, result.context)


class Subscriber:
    """Serves the items of `source` into `sink` through the model `model`'s cloud route."""

    def __init__(self, source: AnyQueue, sink: AnyQueue, model: str, window: int, route: Route,
                 error: RenderError) -> None:
        self.source, self.sink, self.model = source, sink, model
        self.route, self.error = route, error
        self.watcher = Watcher(window, self._take, room=self._room)
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.sink_room = asyncio.Event()

    def _room(self) -> bool:
        return not self.stopping and not self.sink.full()

    def start(self) -> None:
        self.sink.room_listeners.append(self._sink_shrunk)
        self.source.watch(self.watcher)
        log.info("subscribed to queue %s with a window of %d; answers go to %s", self.source.name,
                 self.watcher.window, self.sink.name)

    def _sink_shrunk(self) -> None:
        self.sink_room.set()
        self.source.dispatch()

    def _take(self, item: Item) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(item))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, item: Item) -> None:
        request = Request("POST", f"/api/predict/{self.model}", "", {}, item.data, item.tags.get("requestId", ""))
        response = await respond(self.route, self.error, request)
        tags = dict(item.tags)
        if response.status != 200:
            tags["status"] = str(response.status)
        await self._answer(response.body, tags)
        await self.source.remove([item.index])

    async def _answer(self, body: bytes, tags: dict[str, str]) -> None:
        """Put to the sink, waiting for room while it is full."""
        while True:
            try:
                await self.sink.put(body, tags)
                return
            except ServingError as e:
                if e.code != Code.RESOURCE_EXHAUSTED or "full" not in e.message:
                    body, tags = self.error(e).body, {**tags, "status": str(self.error(e).status)}
                    continue
            self.sink_room.clear()
            await self.sink_room.wait()

    async def stop(self) -> None:
        """Take nothing more; finish and commit what is held."""
        self.stopping = True
        if self.tasks:
            log.info("finishing the %d queue items held", len(self.tasks))
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.source.unwatch(self.watcher)
