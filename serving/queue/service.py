"""The queues of one process by name, over one store: the embedded async service's two (`<service>` and
`<service>/sink`), or any name asked for (`serving queue`)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from ..core.remote import default_cache_dir
from ..settings import Settings
from .api import QueueApi
from .metrics import QueueCollector
from .queue import AnyQueue, Queue, QueueLimits
from .store import SqliteStore, Store
from .store_redis import RedisStore
from .subscriber import RenderError, Route, Subscriber

SINK = "/sink"


class QueueService:
    """Queues by name, made on first use (only `names` when given), each with the limits of its kind."""

    def __init__(self, store: Store | RedisStore, limits: QueueLimits, sink_limits: QueueLimits | None = None,
                 names: Collection[str] | None = None) -> None:
        self.store, self.limits, self.sink_limits = store, limits, sink_limits or limits
        self.names = set(names) if names is not None else None
        self.stored = store.load()
        self.queues: dict[str, AnyQueue] = {}
        for name in list(self.stored) if self.names is None else self.names:
            self.lookup(name)

    def lookup(self, name: str) -> AnyQueue | None:
        queue = self.queues.get(name)
        if queue is None and (self.names is None or name in self.names):
            limits = self.sink_limits if name.endswith(SINK) else self.limits
            queue = self.queues[name] = self._open(name, limits)
        return queue

    def _open(self, name: str, limits: QueueLimits) -> AnyQueue:
        if isinstance(self.store, RedisStore):  # the queue is in Redis, shared with the other replicas
            return self.store.queue(name, limits)
        return Queue(name, self.store, limits, self.stored.pop(name, None))

    def close(self) -> None:
        self.store.close()


def default_store_path(s: Settings) -> Path:
    """The embedded service's SQLite file: beside the model cache (`--model_cache_dir`)."""
    return Path(os.path.dirname(s.model_cache_dir or default_cache_dir()) or ".") / "queues" / f"{s.model_name}.db"


def embedded_service(s: Settings) -> QueueService:
    """The async service's input queue and sink, on `--queue_store` (else SQLite beside the model cache)."""
    store = open_store(s.queue_store, default_store_path(s))
    return QueueService(store, QueueLimits(s.queue_max_length, s.queue_max_payload_bytes),
                        QueueLimits(s.queue_sink_max_length, s.queue_max_payload_bytes),
                        names=(s.model_name, s.model_name + SINK))


class EmbeddedQueues:
    """An async service in the engine's process: its two queues, their API on the engine's HTTP port, and the
    subscriber that serves the input through the model's cloud route."""

    def __init__(self, s: Settings) -> None:
        self.service = embedded_service(s)
        self.model, self.window = s.model_name, s.queue_window or s.max_batch_size
        self.api = QueueApi(self.service.lookup, s.rest_api_timeout_in_ms / 1000)
        self.subscriber: Subscriber | None = None
        self.collector = QueueCollector(lambda: list(self.service.queues.values()))

    def subscribe(self, route: Route, error: RenderError) -> None:
        """Start taking input (once the model is loaded)."""
        source, sink = self.service.lookup(self.model), self.service.lookup(self.model + SINK)
        assert source is not None and sink is not None
        self.subscriber = Subscriber(source, sink, self.model, self.window, route, error)
        self.subscriber.start()

    async def stop(self) -> None:
        """SIGTERM: take nothing more, finish and commit what is held, close the watchers' WebSockets."""
        if self.subscriber is not None:
            await self.subscriber.stop()
        self.api.close()

    def close(self) -> None:
        self.service.close()


def open_store(url: str, default_path: Path) -> Store | RedisStore:
    """The store an URL names: `sqlite:PATH` (or a bare path), `redis://host:port/db` (serving/queue/store_redis.py);
    empty: SQLite at `default_path`."""
    if not url:
        return SqliteStore(default_path)
    if url.startswith(("redis://", "rediss://")):
        return RedisStore(url)
    return SqliteStore(url[len("sqlite:"):] if url.startswith("sqlite:") else url)
