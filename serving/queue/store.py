"""Where queue items are kept: an item is durable before its index is answered.

`SqliteStore` (`sqlite:PATH`) keeps every queue of a process in one SQLite file in WAL mode with
`synchronous=FULL`: a transaction is on disk when its commit returns, so an index answered survives kill -9
and a power cut. One writer thread takes whatever was asked meanwhile and writes it as one transaction (a
group commit: one fsync for many puts under load); the event loop is told when its writes are in. At start
the queues are read back whole: their items (undelivered again: what a dead process held goes out anew) and
the last index each gave, so an index is never given twice.
"""

from __future__ import annotations

import asyncio
import logging
import queue as threading_queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Item:
    """One queue item: its index (1, 2, ... per queue, never reused), its data and tags (`requestId` always)."""

    index: int
    data: bytes
    tags: dict[str, str]
    priority: int = 0
    created: float = field(default_factory=time.time)


@dataclass
class Stored:
    """A queue as a store kept it: the last index it gave and its items, in index order."""

    last_index: int = 0
    items: list[Item] = field(default_factory=list)


class Store(Protocol):
    """What a queue asks of its store; each write resolves once it is durable."""

    def load(self) -> dict[str, Stored]: ...

    def put(self, queue: str, item: Item) -> asyncio.Future[None]: ...

    def delete(self, queue: str, indexes: list[int]) -> asyncio.Future[None]: ...

    def truncate(self, queue: str, below: int) -> asyncio.Future[None]: ...

    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, last_index INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items (queue TEXT NOT NULL, idx INTEGER NOT NULL, priority INTEGER NOT NULL,
  created REAL NOT NULL, tags BLOB NOT NULL, data BLOB NOT NULL, PRIMARY KEY (queue, idx)) WITHOUT ROWID;
"""
#: Most writes in one transaction.
GROUP_MAX = 512

#: One write: (statement runner, the future told when it is durable).
Write = tuple[Callable[[sqlite3.Connection], None], asyncio.Future[None]]


class SqliteStore:
    """Every queue of this process in one SQLite file (WAL, synchronous=FULL), written by one thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)
        self.writes: threading_queue.SimpleQueue[Write | None] = threading_queue.SimpleQueue()
        self.thread = threading.Thread(target=self._writer, name="queue-store", daemon=True)
        self.thread.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def load(self) -> dict[str, Stored]:
        found: dict[str, Stored] = {}
        with self._connect() as db:
            for name, last in db.execute("SELECT name, last_index FROM queues"):
                found[name] = Stored(last)
            rows = db.execute("SELECT queue, idx, priority, created, tags, data FROM items ORDER BY queue, idx")
            for name, idx, priority, created, tags, data in rows:
                found.setdefault(name, Stored(idx)).items.append(Item(idx, data, orjson.loads(tags), priority, created))
        return found

    def put(self, queue: str, item: Item) -> asyncio.Future[None]:
        tags = orjson.dumps(item.tags)

        def run(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                       (queue, item.index, item.priority, item.created, tags, item.data))
            db.execute("INSERT INTO queues VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET last_index = "
                       "max(last_index, excluded.last_index)", (queue, item.index))
        return self._submit(run)

    def delete(self, queue: str, indexes: list[int]) -> asyncio.Future[None]:
        def run(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM items WHERE queue = ? AND idx = ?", [(queue, i) for i in indexes])
        return self._submit(run)

    def truncate(self, queue: str, below: int) -> asyncio.Future[None]:
        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM items WHERE queue = ? AND idx < ?", (queue, below))
        return self._submit(run)

    def _submit(self, run: Callable[[sqlite3.Connection], None]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writes.put((run, future))
        return future

    def _writer(self) -> None:
        db = self._connect()
        while True:
            first = self.writes.get()
            if first is None:
                db.close()
                return
            group = [first]
            while len(group) < GROUP_MAX:
                try:
                    more = self.writes.get_nowait()
                except threading_queue.Empty:
                    break
                if more is None:
                    self.writes.put(None)  # stop after this group
                    break
                group.append(more)
            self._write_group(db, group)

    @staticmethod
    def _write_group(db: sqlite3.Connection, group: list[Write]) -> None:
        error: BaseException | None = None
        try:
            db.execute("BEGIN IMMEDIATE")
            for run, _ in group:
                run(db)
            db.execute("COMMIT")
        except sqlite3.Error as e:  # nothing of the group is kept: each write is told
            log.error("queue store write failed: %s", e)
            error = e
            if db.in_transaction:
                db.execute("ROLLBACK")
        for _, future in group:
            future.get_loop().call_soon_threadsafe(_resolve, future, error)

    def close(self) -> None:
        self.writes.put(None)
        self.thread.join(timeout=10)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
