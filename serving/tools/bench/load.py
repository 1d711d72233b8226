"""One load generator process of `serving bench`: keep-alive HTTP/1.1 connections (httptools) or a gRPC
channel (grpc.aio), a pre-encoded request, and per-second reports back to the parent.

The parent (serving/tools/bench/run.py) starts `processes` of these (spawned, so none inherits its state) and
sends each step as a dict; the process answers with one `("tick", ...)` per second of the step and a last
one for the requests that finished after it (the drain), then `("done", step)`. A tick carries counts,
errors by kind, the latencies of that second as an encoded HdrHistogram (microseconds), the requests in
flight and the CPU this process used: the parent merges the processes' ticks.

Closed loop: `concurrency` connections, each sending its next request when the last one is answered. Open
loop: requests are due at fixed intervals (`rate` per second, the processes interleaved); a due request
that finds no free connection waits for one, and its latency counts from when it was due, not from when it
was sent, so a stalled server shows in the percentiles (no coordinated omission); one that finds a free
connection goes at once and counts from then (the scheduler wakes once a millisecond: its lateness is the
generator's, not the server's).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

#: Latencies are recorded in microseconds, from 1 µs to 1 hour, 3 significant digits.
HIST_RANGE = (1, 3_600_000_000, 3)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(*HIST_RANGE)


class Second:
    """What one second of a step saw in this process. Latencies are kept as a list and go into the
    histogram once, at the tick: appending costs a request 30 ns, HdrHistogram's record_value about 1 µs."""

    __slots__ = ("sent", "ok", "errors", "latencies")

    def __init__(self) -> None:
        self.sent = self.ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []  # seconds

    def histogram(self) -> HdrHistogram:
        hist = new_histogram()
        if self.latencies:
            micros = np.maximum((np.asarray(self.latencies) * 1e6).astype(np.int64), 1)
            values, counts = np.unique(micros, return_counts=True)
            for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                hist.record_value(value, count)
        return hist


class Recorder:
    """Counts of the second running now; `tick()` hands them over and starts the next second. Requests are
    counted in the second they were sent (sent) or finished (answers, errors)."""

    def __init__(self) -> None:
        self.now = Second()
        self.inflight = 0

    def sent(self) -> None:
        self.now.sent += 1
        self.inflight += 1

    def ok(self, latency_s: float) -> None:
        second = self.now
        second.ok += 1
        second.latencies.append(latency_s)
        self.inflight -= 1

    def error(self, kind: str) -> None:
        self.now.errors[kind] += 1
        self.inflight -= 1

    def tick(self, index: int, cpu: float) -> dict[str, Any]:
        second, self.now = self.now, Second()
        return {"t": index, "sent": second.sent, "ok": second.ok, "errors": dict(second.errors),
                "hist": second.histogram().encode() if second.ok else b"", "inflight": self.inflight, "cpu": cpu}


# ---- HTTP: event-driven, no coroutine or future per request ----

class HttpConnection(asyncio.Protocol):
    """One keep-alive connection of the HTTP driver: a request goes out (`send`), its answer is counted
    when httptools has read the whole of it, and the connection asks the driver for its next one."""

    def __init__(self, driver: HttpDriver) -> None:
        import httptools

        self.driver = driver
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.sent_at = self.intended = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport subclass
        self.driver.conns.add(self)
        self.driver.ready(self)

    def send(self, now: float, intended: float) -> None:
        assert self.transport is not None
        self.busy, self.sent_at, self.intended = True, now, intended
        self.driver.recorder.sent()
        self.transport.write(self.driver.next_request())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # noqa: BLE001 - a malformed answer fails its request, not the generator
            self.fail("bad_response")

    def on_message_complete(self) -> None:
        # The hot path of the generator: what a request costs here is taken from the server on one machine.
        if not self.busy:
            return
        now = time.perf_counter()
        driver = self.driver
        recorder = driver.recorder
        status = self.parser.get_status_code()
        if 200 <= status < 300:
            second = recorder.now
            second.ok += 1
            second.latencies.append(now - self.intended)
            recorder.inflight -= 1
        else:
            recorder.error(f"http_{status}")
        if not self.parser.should_keep_alive():
            self.busy = False
            assert self.transport is not None
            self.transport.close()  # connection_lost opens another
        elif driver.closed_loop and not driver.run.stopped:  # the next request, at once
            self.sent_at = self.intended = now
            recorder.now.sent += 1
            recorder.inflight += 1
            self.transport.write(driver.next_request())  # type: ignore[union-attr]
        else:
            self.busy = False
            driver.ready(self)

    def fail(self, kind: str) -> None:
        if self.busy:
            self.busy = False
            self.driver.recorder.error(kind)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.busy = False
            self.driver.recorder.error("connection")
        self.driver.lost(self)


class HttpTarget:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.host, self.port, self.requests = spec["host"], spec["port"], spec["requests"]
        self.timeout = spec["timeout"]
        self.ssl = spec.get("ssl", False)


class HttpDriver:
    """The step's HTTP connections. Closed loop: a connection sends its next request from the callback that
    counted the last answer (as wrk does). Open loop: a due request goes to an idle connection at once, or
    waits in `due` for the next one that frees. A time-out is found by `expire`, swept every 0.1 s."""

    def __init__(self, run: StepRun, target: HttpTarget) -> None:
        self.run, self.target = run, target
        self.requests, self.turn = target.requests, 0
        self.recorder = run.recorder
        self.closed_loop = run.step["mode"] == "closed"
        self.conns: set[HttpConnection] = set()
        self.idle: list[HttpConnection] = []
        self.due: collections.deque[float] = collections.deque()
        self.connecting: set[asyncio.Task[None]] = set()
        self.finished = False

    def start(self, count: int) -> None:
        for _ in range(count):
            self.connect()

    def next_request(self) -> bytes:
        """The request bytes to send next: the one body, or the replayed ones in turn."""
        requests = self.requests
        if len(requests) == 1:
            return requests[0]
        self.turn = turn = (self.turn + 1) % len(requests)
        return requests[turn]

    def connect(self) -> None:
        if not self.finished:
            task = asyncio.get_running_loop().create_task(self._connect())
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)

    async def _connect(self) -> None:
        target, loop = self.target, asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: HttpConnection(self), target.host, target.port,
                                                          ssl=target.ssl or None), target.timeout)
        except (OSError, TimeoutError) as e:
            # A request this connection would have carried fails: the next one of a closed loop, or the
            # longest due of an open one.
            if self.closed_loop and not self.run.stopped or self.due:
                if self.due:
                    self.due.popleft()
                self.recorder.sent()
                self.recorder.error("refused" if isinstance(e, ConnectionRefusedError) else "connect")
            await asyncio.sleep(0.05)  # not a hot loop against a server that is down
            self.connect()

    def ready(self, conn: HttpConnection) -> None:
        """`conn` is free: give it its next request, or keep it idle."""
        if self.closed_loop:
            if not self.run.stopped:
                now = time.perf_counter()
                conn.send(now, now)
                return
        elif self.due:
            conn.send(time.perf_counter(), self.due.popleft())
            return
        self.idle.append(conn)

    def submit(self, intended: float) -> None:
        """Open loop: a request is due (at `intended`). With a connection free it goes now and counts from
        now: the scheduler's 1 ms timer made it late, not the server. Without one it waits, and counts from
        `intended`: the wait is the server's (coordinated omission otherwise)."""
        while self.idle:
            conn = self.idle.pop()
            if conn in self.conns:
                now = time.perf_counter()
                conn.send(now, now)
                return
        self.due.append(intended)

    def lost(self, conn: HttpConnection) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.connect()  # keep the step's number of connections

    def expire(self, now: float) -> None:
        timeout = self.target.timeout
        for conn in list(self.conns):
            if conn.busy and now - conn.sent_at > timeout:
                conn.fail("timeout")

    def busy(self) -> bool:
        return bool(self.due) or any(conn.busy for conn in self.conns)

    async def finish(self) -> None:
        self.finished = True
        for task in list(self.connecting):
            task.cancel()
        for conn in list(self.conns):
            conn.fail("timeout")  # still unanswered after the drain
            self.conns.discard(conn)
        while self.due:  # due but never sent: the connections could not keep up
            self.due.popleft()
            self.recorder.sent()
            self.recorder.error("unsent")


# ---- gRPC ----

class GrpcTarget:
    """A channel (HTTP/2 carries every call of the process); calls run as coroutines."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import grpc

        self.channel = grpc.aio.insecure_channel(spec["address"], options=[
            ("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)])
        # No serializers: the request goes as the bytes given, the answer is not decoded.
        self.method = self.channel.unary_unary(spec["method"])
        self.requests, self.timeout = spec["requests"], spec["timeout"]
        self.turn = 0
        self.metadata = tuple(tuple(pair) for pair in spec.get("metadata", ()))


class GrpcSession:
    def __init__(self, target: GrpcTarget) -> None:
        self.target = target

    async def call(self, now: float) -> str | None:
        import grpc

        target = self.target
        try:
            target.turn = turn = (target.turn + 1) % len(target.requests)
            await target.method(target.requests[turn], timeout=target.timeout, metadata=target.metadata or None)
        except grpc.aio.AioRpcError as e:
            return f"grpc_{e.code().name}"
        return None

    def close(self) -> None:
        pass


# ---- the step ----

class GrpcDriver:
    """The step's gRPC calls: `connections` coroutines, each one call at a time (closed loop) or taking the
    calls that are due (open loop). grpc applies each call's timeout."""

    def __init__(self, run: StepRun, target: GrpcTarget) -> None:
        self.run, self.recorder = run, run.recorder
        self.sessions: list[GrpcSession] = []
        self.target = target
        self.due: asyncio.Queue[float] = asyncio.Queue()
        self.workers: list[asyncio.Task[None]] = []
        self.waiting = 0  # workers free for the next due call

    def start(self, count: int) -> None:
        work = self.closed if self.run.step["mode"] == "closed" else self.open_worker
        self.sessions = [GrpcSession(self.target) for _ in range(count)]
        self.workers = [asyncio.get_running_loop().create_task(work(s)) for s in self.sessions]

    def submit(self, intended: float) -> None:
        # As HttpDriver.submit: from now when a worker is free, from `intended` when the call must wait.
        self.due.put_nowait(time.perf_counter() if self.waiting > self.due.qsize() else intended)

    def expire(self, now: float) -> None:
        pass

    def busy(self) -> bool:
        return not self.due.empty() or self.recorder.inflight > 0

    async def closed(self, session: GrpcSession) -> None:
        recorder, clock, call = self.recorder, time.perf_counter, session.call
        while not self.run.stopped:
            sent = clock()
            recorder.sent()
            kind = await call(sent)
            if kind is None:
                recorder.ok(clock() - sent)
            else:
                recorder.error(kind)

    async def open_worker(self, session: GrpcSession) -> None:
        recorder = self.recorder
        while True:
            self.waiting += 1
            try:
                intended = await self.due.get()
            finally:
                self.waiting -= 1
            recorder.sent()
            kind = await session.call(time.perf_counter())
            if kind is None:
                recorder.ok(time.perf_counter() - intended)  # from when it was due: waiting counts
            else:
                recorder.error(kind)

    async def finish(self) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        while not self.due.empty():  # due but never sent: the calls could not keep up
            self.due.get_nowait()
            self.recorder.sent()
            self.recorder.error("unsent")
        while self.recorder.inflight > 0:  # sent, unanswered when the drain ended
            self.recorder.error("timeout")


class StepRun:
    """One step in this process, from `step["start"]` (a time.time() instant shared by the processes) for
    `step["duration"]` seconds: the requests, a tick a second, then the drain of what is due or in flight
    (up to the request timeout)."""

    def __init__(self, step: dict[str, Any], conn: Connection) -> None:
        self.step, self.conn = step, conn
        self.duration = step["duration"]
        self.stopped = False
        self.start = self.end = 0.0
        self.recorder = Recorder()

    async def run(self, target: HttpTarget | GrpcTarget) -> None:
        step = self.step
        await asyncio.sleep(max(step["start"] - time.time(), 0.0))
        self.start = time.perf_counter()
        self.end = self.start + self.duration
        driver = HttpDriver(self, target) if isinstance(target, HttpTarget) else GrpcDriver(self, target)
        driver.start(step["connections"])
        scheduler = None
        if step["mode"] == "open" and step["rate"] > 0:
            scheduler = asyncio.ensure_future(self.schedule(driver, step["rate"], step["offset"]))
        sweeper = asyncio.ensure_future(self.sweep(driver))
        cpu_mark = time.process_time()
        for index in range(int(self.duration)):
            while (left := self.start + index + 1 - time.perf_counter()) > 0:  # timers may fire a little early
                await asyncio.sleep(left)
            now_cpu = time.process_time()
            self.report(self.recorder.tick(index, now_cpu - cpu_mark))
            cpu_mark = now_cpu
        self.stopped = True
        if scheduler is not None:
            scheduler.cancel()
        drain_until = time.perf_counter() + step["timeout"] + 1.0
        while driver.busy() and time.perf_counter() < drain_until:
            await asyncio.sleep(0.005)
        sweeper.cancel()
        await driver.finish()
        self.report(self.recorder.tick(int(self.duration), time.process_time() - cpu_mark))
        self.conn.send(("done", step["id"], None))

    async def sweep(self, driver: HttpDriver | GrpcDriver) -> None:
        while True:
            await asyncio.sleep(0.1)
            driver.expire(time.perf_counter())

    def report(self, tick: dict[str, Any]) -> None:
        if self.step["record"]:
            self.conn.send(("tick", self.step["id"], tick))

    async def schedule(self, driver: HttpDriver | GrpcDriver, rate: float, offset: float) -> None:
        """Make requests due at start + offset + k / rate; a late wake-up makes every missed one due at once,
        each with its own intended time."""
        interval = 1.0 / rate
        k = 0
        while True:
            now = time.perf_counter()
            while (intended := self.start + offset + k * interval) <= now:
                if intended >= self.end:
                    return
                driver.submit(intended)
                k += 1
            if intended >= self.end:
                return
            await asyncio.sleep(max(intended - now, 0.001))  # a timer per request would spin: 1 ms ticks


def main(conn: Connection, target_spec: dict[str, Any]) -> None:
    """The process: build the target, then run each step the parent sends until it sends None."""
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency of the server
        runner = asyncio.run

    async def serve() -> None:
        target: HttpTarget | GrpcTarget = (HttpTarget(target_spec) if target_spec["kind"] == "http"
                                           else GrpcTarget(target_spec))
        conn.send(("ready", None, None))
        while True:
            step = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            if step is None:
                return
            try:
                await StepRun(step, conn).run(target)
            except Exception as e:  # noqa: BLE001 - the parent says what failed and stops the run
                conn.send(("failed", step["id"], f"{type(e).__name__}: {e}"))
                return

    runner(serve())
