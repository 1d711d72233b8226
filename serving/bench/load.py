"""One load generator process of `serving bench`: keep-alive HTTP/1.1 connections (httptools) or a gRPC
channel (grpc.aio), a pre-encoded request, and per-second reports back to the parent.

The parent (serving/bench/run.py) starts `processes` of these (spawned, so none inherits its state) and
sends each step as a dict; the process answers with one `("tick", ...)` per second of the step and a last
one for the requests that finished after it (the drain), then `("done", step)`. A tick carries counts,
errors by kind, the latencies of that second as an encoded HdrHistogram (microseconds), the requests in
flight and the CPU this process used: the parent merges the processes' ticks.

Closed loop: `concurrency` workers, each sending its next request when the last one is answered. Open
loop: requests are due at fixed intervals (`rate` per second, the processes interleaved); a due request
waits for a free connection, and its latency counts from when it was due, not from when it was sent, so a
stalled server shows in the percentiles (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Coroutine, Sequence
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


# ---- HTTP ----

class HttpClient(asyncio.Protocol):
    """One keep-alive connection: send the pre-encoded request, resolve a future with the status."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.sent_at = 0.0  # perf_counter() of the request in flight (see expire)
        self.closed = False
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as e:  # noqa: BLE001 - a malformed answer fails the request, not the generator
            self._fail(ConnectionError(f"bad response: {e}"))
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("connection closed"))

    def expire(self, now: float, timeout: float) -> None:
        """Fail the request in flight when it is older than `timeout` (a sweep every 0.1 s stands in for a
        timer per request, which would cost the generator a fifth of its time)."""
        if self.waiter is not None and now - self.sent_at > timeout:
            self._fail(TimeoutError())
            if self.transport is not None:
                self.transport.close()

    def _fail(self, error: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def send(self, request: bytes, now: float) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = waiter = self.loop.create_future()
        self.sent_at = now
        self.transport.write(request)
        return waiter


class HttpTarget:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.host, self.port, self.request = spec["host"], spec["port"], spec["request"]
        self.timeout = spec["timeout"]
        self.ssl = spec.get("ssl", False)

    async def session(self) -> HttpSession:
        return HttpSession(self)


class HttpSession:
    """A worker's connection, reopened after an error."""

    def __init__(self, target: HttpTarget) -> None:
        self.target = target
        self.client: HttpClient | None = None

    async def call(self, now: float) -> str | None:
        """One request sent at `now`: None when it succeeded (2xx), else the kind of error."""
        target = self.target
        try:
            client = self.client
            if client is None or client.closed:
                loop = asyncio.get_running_loop()
                _, client = await asyncio.wait_for(loop.create_connection(
                    HttpClient, target.host, target.port, ssl=target.ssl or None), target.timeout)
                self.client = client
            assert client is not None
            status = await client.send(target.request, now)  # a time-out comes from expire()
        except TimeoutError:
            self.close()
            return "timeout"
        except OSError as e:
            self.close()
            return "connection" if not isinstance(e, ConnectionRefusedError) else "refused"
        return None if 200 <= status < 300 else f"http_{status}"

    def close(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()
        self.client = None

    def expire(self, now: float) -> None:
        if self.client is not None:
            self.client.expire(now, self.target.timeout)


# ---- gRPC ----

class GrpcTarget:
    def __init__(self, spec: dict[str, Any]) -> None:
        import grpc

        self.channel = grpc.aio.insecure_channel(spec["address"], options=[
            ("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)])
        # No serializers: the request goes as the bytes given, the answer is not decoded.
        self.method = self.channel.unary_unary(spec["method"])
        self.request, self.timeout = spec["request"], spec["timeout"]
        self.metadata = tuple(tuple(pair) for pair in spec.get("metadata", ()))

    async def session(self) -> GrpcSession:
        return GrpcSession(self)


class GrpcSession:
    def __init__(self, target: GrpcTarget) -> None:
        self.target = target

    async def call(self, now: float) -> str | None:
        import grpc

        target = self.target
        try:
            await target.method(target.request, timeout=target.timeout, metadata=target.metadata or None)
        except grpc.aio.AioRpcError as e:
            return f"grpc_{e.code().name}"
        return None

    def close(self) -> None:
        pass

    def expire(self, now: float) -> None:
        pass  # grpc applies the call's own timeout


# ---- the step ----

class StepRun:
    """One step in this process, from `step["start"]` (a time.time() instant shared by the processes) for
    `step["duration"]` seconds."""

    def __init__(self, step: dict[str, Any], conn: Connection) -> None:
        self.step, self.conn = step, conn
        self.duration = step["duration"]
        self.stopped = False
        self.due: asyncio.Queue[float] = asyncio.Queue()
        self.start = self.end = 0.0
        self.recorder = Recorder()

    async def run(self, target: HttpTarget | GrpcTarget) -> None:
        step = self.step
        await asyncio.sleep(max(step["start"] - time.time(), 0.0))
        self.start = time.perf_counter()
        self.end = self.start + self.duration
        sessions = [await target.session() for _ in range(step["connections"])]
        worker = self.closed if step["mode"] == "closed" else self.open_worker
        workers = [asyncio.ensure_future(worker(s)) for s in sessions]
        scheduler = None
        if step["mode"] == "open" and step["rate"] > 0:
            scheduler = asyncio.ensure_future(self.schedule(step["rate"], step["offset"]))
        sweeper = asyncio.ensure_future(self.sweep(sessions))
        cpu_mark = time.process_time()
        for index in range(int(self.duration)):
            while (left := self.start + index + 1 - time.perf_counter()) > 0:  # timers may fire a little early
                await asyncio.sleep(left)
            now_cpu = time.process_time()
            self.report(self.recorder.tick(index, now_cpu - cpu_mark))
            cpu_mark = now_cpu
        await self.finish(workers, scheduler)
        sweeper.cancel()
        for session in sessions:
            session.close()
        self.report(self.recorder.tick(int(self.duration), time.process_time() - cpu_mark))
        self.conn.send(("done", step["id"], None))

    async def sweep(self, sessions: Sequence[HttpSession | GrpcSession]) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.perf_counter()
            for session in sessions:
                session.expire(now)

    def report(self, tick: dict[str, Any]) -> None:
        if self.step["record"]:
            self.conn.send(("tick", self.step["id"], tick))

    async def closed(self, session: HttpSession | GrpcSession) -> None:
        recorder, clock, call = self.recorder, time.perf_counter, session.call
        while not self.stopped:
            sent = clock()
            recorder.sent()
            kind = await call(sent)
            if kind is None:
                recorder.ok(clock() - sent)
            else:
                recorder.error(kind)

    async def open_worker(self, session: HttpSession | GrpcSession) -> None:
        recorder = self.recorder
        while True:
            intended = await self.due.get()
            if intended < 0:
                return
            recorder.sent()
            kind = await session.call(time.perf_counter())
            if kind is None:
                recorder.ok(time.perf_counter() - intended)  # from when it was due: waiting for a connection counts
            else:
                recorder.error(kind)

    async def schedule(self, rate: float, offset: float) -> None:
        """Make requests due at start + offset + k / rate; a late wake-up makes every missed one due at once,
        each with its own intended time."""
        interval = 1.0 / rate
        k = 0
        while True:
            now = time.perf_counter()
            while (intended := self.start + offset + k * interval) <= now:
                if intended >= self.end:
                    return
                self.due.put_nowait(intended)
                k += 1
            if intended >= self.end:
                return
            await asyncio.sleep(max(intended - now, 0.001))  # a timer per request would spin: 1 ms ticks

    async def finish(self, workers: Sequence[asyncio.Future[None]], scheduler: asyncio.Future[None] | None) -> None:
        """The step is over: nothing more is due; what is due or sent finishes, up to the request timeout."""
        self.stopped = True
        if scheduler is not None:
            scheduler.cancel()
        for _ in workers:
            self.due.put_nowait(-1.0)  # behind the requests still due: the workers send those first
        if workers:
            await asyncio.wait(workers, timeout=self.step["timeout"] + 1.0)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        while not self.due.empty():  # due but never sent before the drain ended: the client fell behind
            if self.due.get_nowait() >= 0:
                self.recorder.sent()
                self.recorder.error("unsent")
        while self.recorder.inflight > 0:  # sent, unanswered when the drain ended
            self.recorder.error("timeout")


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
