"""The batching scheduler through its public API: BatchQueue.submit() and the futures it returns."""

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from serving.core import batching
from serving.core.batching import BatchingOptions, BatchQueue, from_batching_parameters
from serving.core.batching.placement import FIRST_BACKOFF
from serving.errors import Code, ServingError


class Recorder:
    """A processor stand-in: records each batch it runs; can be held, or fail on a marker value."""

    def __init__(self, fail_on=None):
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def __call__(self, inputs):
        self.gate.wait(10)
        x = inputs["x"]
        self.batches.append(x.copy())
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ValueError("poisoned batch")
        return {"y": x * 2}


def rows(*values, width=1):
    return {"x": np.array([[v] * width for v in values], dtype=np.float32)}


def far():
    return time.monotonic() + 30


@pytest.fixture
def executor():
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        yield ex


def run(coro):
    return asyncio.run(coro)


def test_idle_queue_dispatches_at_once_without_waiting_for_the_timeout(executor):
    async def go():
        rec = Recorder()
        q = BatchQueue(rec, BatchingOptions(batch_timeout_micros=10_000_000), executor)
        t0 = time.monotonic()
        out = await q.submit(rows(1.0), far())
        assert time.monotonic() - t0 < 1.0  # not the 10 s timeout
        assert out["y"].tolist() == [[2.0]] and len(rec.batches) == 1

    run(go())


def test_requests_accumulate_while_the_model_is_busy_and_go_out_as_one_batch(executor):
    async def go():
        rec = Recorder()
        q = BatchQueue(rec, BatchingOptions(max_batch_size=16, max_in_flight=1), executor)
        rec.gate.clear()
        first = q.submit(rows(0.0), far())
        await asyncio.sleep(0.05)
        rest = [q.submit(rows(float(i)), far()) for i in range(1, 6)]
        rec.gate.set()
        results = await asyncio.gather(first, *rest)
        assert [len(b) for b in rec.batches] == [1, 5]
        assert [r["y"].tolist() for r in results] == [[[2.0 * i]] for i in range(6)]  # each gets its own rows
        assert q.stats.batches == 2 and q.stats.rows == 6

    run(go())


def test_large_request_is_split_and_reassembled_in_order(executor):
    async def go():
        rec = Recorder()
        q = BatchQueue(rec, BatchingOptions(max_batch_size=4), executor)
        out = await q.submit(rows(*range(10)), far())
        assert out["y"][:, 0].tolist() == [2.0 * i for i in range(10)]
        assert sorted(len(b) for b in rec.batches) == [2, 4, 4]

    run(go())


def test_full_queue_refuses_at_once(executor):
    async def go():
        rec = Recorder()
        q = BatchQueue(rec, BatchingOptions(max_queue_size=2, max_in_flight=1), executor, "m")
        rec.gate.clear()
        running = q.submit(rows(0.0), far())
        await asyncio.sleep(0.05)
        queued = [q.submit(rows(1.0), far()), q.submit(rows(2.0), far())]
        with pytest.raises(ServingError) as e:
            q.submit(rows(3.0), far())
        assert e.value.code is Code.UNAVAILABLE and "queue is full" in e.value.message
        rec.gate.set()
        await asyncio.gather(running, *queued)
        assert q.stats.rejected == 1

    run(go())


def test_expired_and_cancelled_requests_are_dropped_without_being_computed(executor):
    async def go():
        rec = Recorder()
        q = BatchQueue(rec, BatchingOptions(max_in_flight=1), executor)
        rec.gate.clear()
        running = q.submit(rows(0.0), far())
        await asyncio.sleep(0.05)
        expiring = q.submit(rows(7.0), time.monotonic() + 0.05)
        cancelled = q.submit(rows(8.0), far())
        kept = q.submit(rows(9.0), far())
        cancelled.cancel()
        await asyncio.sleep(0.1)
        rec.gate.set()
        await running
        with pytest.raises(ServingError) as e:
            await expiring
        assert e.value.code is Code.DEADLINE_EXCEEDED
        assert (await kept)["y"].tolist() == [[18.0]]
        seen = np.concatenate(rec.batches)[:, 0].tolist()
        assert 7.0 not in seen and 8.0 not in seen and 9.0 in seen
        assert q.stats.expired == 1

    run(go())


def test_processor_exception_fails_only_its_batch(executor):
    async def go():
        rec = Recorder(fail_on=-1.0)
        q = BatchQueue(rec, BatchingOptions(max_in_flight=1), executor)
        rec.gate.clear()
        blocker = q.submit(rows(0.0), far())
        await asyncio.sleep(0.05)
        poisoned = [q.submit(rows(-1.0), far()), q.submit(rows(5.0), far())]
        rec.gate.set()
        await blocker
        for f in poisoned:
            with pytest.raises(ValueError, match="poisoned batch"):
                await f
        assert (await q.submit(rows(3.0), far()))["y"].tolist() == [[6.0]]

    run(go())


def test_different_shapes_are_not_mixed_unless_padding_is_on(executor):
    async def go(pad):
        rec = Recorder()
        q = BatchQueue(rec, BatchingOptions(max_in_flight=1, pad_variable_length_inputs=pad), executor)
        rec.gate.clear()
        blocker = q.submit(rows(0.0), far())
        await asyncio.sleep(0.05)
        a, b, c = q.submit(rows(1.0, width=2), far()), q.submit(rows(2.0, width=3), far()), q.submit(
            rows(3.0, width=2), far())
        rec.gate.set()
        outs = await asyncio.gather(blocker, a, b, c)
        return [bt.shape for bt in rec.batches], outs

    shapes, outs = run(go(False))
    assert shapes == [(1, 1), (2, 2), (1, 3)]  # a and c together, b alone
    assert outs[2]["y"].tolist() == [[4.0, 4.0, 4.0]]
    shapes, outs = run(go(True))
    assert shapes == [(1, 1), (3, 3)]  # padded with zeros to width 3
    assert outs[1]["y"].tolist() == [[2.0, 2.0, 0.0]]


def test_allowed_batch_sizes_pad_the_batch_and_trim_the_answer(executor):
    async def go():
        rec = Recorder()
        q = BatchQueue(rec, BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4, 8)), executor)
        out = await q.submit(rows(1.0, 2.0, 3.0), far())
        assert [len(b) for b in rec.batches] == [4]
        assert out["y"][:, 0].tolist() == [2.0, 4.0, 6.0]

    run(go())


def test_busy_queue_waits_for_a_fuller_batch_until_the_timeout(executor):
    async def go():
        rec = Recorder()
        q = BatchQueue(rec, BatchingOptions(max_batch_size=4, max_in_flight=2, batch_timeout_micros=100_000),
                       executor)
        rec.gate.clear()
        first = q.submit(rows(0.0), far())
        await asyncio.sleep(0.02)
        second = q.submit(rows(1.0), far())  # a slot is free, but a batch runs: wait for more rows
        await asyncio.sleep(0.03)
        assert len(rec.batches) == 0 and q.in_flight == 1
        full = [q.submit(rows(float(i)), far()) for i in range(2, 5)]  # 4 rows queued: a full batch goes
        await asyncio.sleep(0.05)
        assert q.in_flight == 2
        rec.gate.set()
        await asyncio.gather(first, second, *full)
        assert sorted(len(b) for b in rec.batches) == [1, 4]

    run(go())


def test_batching_options_validation_and_tf_serving_parameters():
    with pytest.raises(ValueError, match="must match max_batch_size"):
        BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4)).validate()
    with pytest.raises(ValueError, match="strictly increasing"):
        BatchingOptions(max_batch_size=4, allowed_batch_sizes=(4, 2, 4)).validate()
    text = """
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 10 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32
        pad_variable_length_inputs: true
    """
    o = from_batching_parameters(text, BatchingOptions())
    assert (o.max_batch_size, o.batch_timeout_micros, o.max_queue_size, o.max_in_flight) == (32, 2000, 320, 2)
    assert o.allowed_batch_sizes == (8, 32) and o.pad_variable_length_inputs
    with pytest.raises(ValueError, match="must match max_batch_size"):
        from_batching_parameters("max_batch_size { value: 16 } allowed_batch_sizes: 8", BatchingOptions())
    with pytest.raises(ValueError, match="not a valid BatchingParameters"):
        from_batching_parameters("max_batch_size: oops", BatchingOptions())


class ThreadRecorder(Recorder):
    """Also records the thread each batch ran on; `sleep_s` makes a batch wait without using CPU."""

    def __init__(self, fail_on=None, sleep_s=0.0):
        super().__init__(fail_on)
        self.threads = []
        self.sleep_s = sleep_s

    def __call__(self, inputs):
        self.threads.append(threading.get_ident())
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return super().__call__(inputs)


async def warm(q, n=10):
    for i in range(n):
        assert (await q.submit(rows(float(i)), far()))["y"].tolist() == [[2.0 * i]]


async def warm_until(q, condition, limit=200):
    """One-row requests, one after another, until `condition()` holds; how many it took."""
    for i in range(limit):
        if condition():
            return i
        await warm(q, 1)
    raise AssertionError(f"not reached after {limit} batches: inline={q.inline}, stats={q.stats}")


def test_a_fast_model_moves_onto_the_loop_thread_and_batches_what_arrived_together(executor):
    async def go():
        rec = ThreadRecorder()
        q = BatchQueue(rec, BatchingOptions(max_batch_size=16, inline_batch_micros=50_000), executor)
        took = await warm_until(q, lambda: q.inline)
        assert took > batching.WINDOW  # a worker window is measured first
        assert rec.threads[0] != threading.get_ident()  # began on a worker
        before = len(rec.batches)
        futures = [q.submit(rows(float(i)), far()) for i in range(5)]  # all in this loop iteration
        results = await asyncio.gather(*futures)
        assert [r["y"].tolist() for r in results] == [[[2.0 * i]] for i in range(5)]
        assert [len(b) for b in rec.batches[before:]] == [5]
        assert rec.threads[-1] == threading.get_ident() and q.stats.inline_batches >= 1

    run(go())


def test_an_inline_processor_exception_fails_only_its_batch(executor):
    async def go():
        rec = ThreadRecorder(fail_on=-1.0)
        q = BatchQueue(rec, BatchingOptions(inline_batch_micros=50_000), executor)
        await warm_until(q, lambda: q.inline)
        poisoned = [q.submit(rows(-1.0), far()), q.submit(rows(5.0), far())]
        for f in poisoned:
            with pytest.raises(ValueError, match="poisoned batch"):
                await f
        assert (await q.submit(rows(3.0), far()))["y"].tolist() == [[6.0]]
        assert q.inline and rec.threads[-1] == threading.get_ident()

    run(go())


def test_a_model_that_holds_the_loop_goes_back_to_the_workers_and_retries_ever_later(executor):
    async def go():
        # Sleeping uses no CPU, so the worker's CPU time says "fast"; the first inline batch shows the wall time.
        rec = ThreadRecorder(sleep_s=0.03)
        q = BatchQueue(rec, BatchingOptions(inline_batch_micros=1000), executor)
        await warm_until(q, lambda: q.inline)
        await warm(q, 1)  # one batch on the loop sends it back
        assert not q.inline and q.stats.inline_batches == 1
        await warm(q, 15)  # the next try waits for 16 worker batches
        assert not q.inline and q.stats.inline_batches == 1
        assert rec.threads[-1] != threading.get_ident()
        await warm_until(q, lambda: q.stats.inline_batches == 2, limit=10)  # a second try
        assert not q.inline
        await warm(q, 31)  # and the next one 32 batches later
        assert q.stats.inline_batches == 2

    run(go())


def test_inline_batch_micros_zero_keeps_every_batch_on_the_workers(executor):
    async def go():
        rec = ThreadRecorder()
        q = BatchQueue(rec, BatchingOptions(inline_batch_micros=0), executor)
        await warm(q, 80)
        assert not q.inline and q.stats.inline_batches == 0
        assert threading.get_ident() not in rec.threads

    run(go())


class ChargedClock:
    """CPU time a test model charges on top of the real clocks: as if it had burnt that much."""

    def __init__(self):
        self.process_extra = 0.0
        self.loop_extra = 0.0
        self.clock = batching.Clock(thread_cpu=lambda: time.thread_time() + self.loop_extra,
                                    process_cpu=lambda: time.process_time() + self.process_extra)


class ChargingModel(ThreadRecorder):
    """Charges `inline_s` of CPU per batch run on the loop thread and `worker_s` per batch on a worker."""

    def __init__(self, charged, inline_s, worker_s):
        super().__init__()
        self.charged, self.inline_s, self.worker_s = charged, inline_s, worker_s
        self.loop_thread = threading.get_ident()

    def __call__(self, inputs):
        if threading.get_ident() == self.loop_thread:
            self.charged.process_extra += self.inline_s
            self.charged.loop_extra += self.inline_s
        else:
            self.charged.process_extra += self.worker_s
        return super().__call__(inputs)


def charged_queue(executor, inline_s, worker_s, spare_core=False):
    charged = ChargedClock()
    model = ChargingModel(charged, inline_s, worker_s)
    return model, BatchQueue(model, BatchingOptions(inline_batch_micros=50_000), executor, clock=charged.clock,
                             spare_core=spare_core)


def test_rows_that_cost_more_inline_on_a_busy_loop_go_back_to_the_workers(executor):
    async def go():
        # As gRPC's one-by-one requests do: inline they make one-row batches that cost the process more
        # CPU a row than the worker batches did.
        model, q = charged_queue(executor, inline_s=0.002, worker_s=0.0001)
        await warm_until(q, lambda: q.inline)
        start, n = len(model.threads), 2 * batching.WINDOW + 4
        await warm(q, n)
        on_loop = [t == model.loop_thread for t in model.threads[start:]]
        assert all(on_loop[:batching.WINDOW])  # one whole measuring window inline, ...
        assert not all(on_loop[batching.WINDOW:batching.WINDOW + 16])  # then back on the workers

    run(go())


async def warm_in_pairs(q, n):
    """`n` rounds of two requests at once: with the model busy on one, the next batches hold more rows."""
    for i in range(n):
        answers = await asyncio.gather(q.submit(rows(float(i)), far()), q.submit(rows(float(i)), far()))
        assert [a["y"].tolist() for a in answers] == [[[2.0 * i]]] * 2


def test_with_a_spare_core_a_busy_loop_hands_rows_that_cost_it_more_to_the_workers(executor):
    async def go():
        # Inline the process pays less a row (no hand-off) but the loop pays the whole model; with a core free
        # for the workers, and requests waiting while the model runs, the loop's own CPU is what bounds the
        # requests served, so the batches go back.
        model, q = charged_queue(executor, inline_s=0.002, worker_s=0.004, spare_core=True)
        await warm_until(q, lambda: q.inline)
        start, n = len(model.threads), 2 * batching.WINDOW + 4
        await warm_in_pairs(q, n)
        on_loop = [t == model.loop_thread for t in model.threads[start:]]
        assert all(on_loop[:batching.WINDOW])  # one whole measuring window inline, ...
        backoff = 2 * FIRST_BACKOFF  # ... then on the workers until the next try (the turn's may be either)
        assert not any(on_loop[batching.WINDOW + 1:batching.WINDOW + backoff])
        assert q.placement.backoff == backoff

    run(go())


def test_with_a_spare_core_one_row_batches_on_a_busy_loop_stay_inline(executor):
    async def go():
        # One client waiting for each answer: nothing would run beside the model, so no hand-off.
        model, q = charged_queue(executor, inline_s=0.002, worker_s=0.004, spare_core=True)
        await warm_until(q, lambda: q.inline)
        start, n = len(model.threads), 3 * batching.WINDOW
        await warm(q, n)
        assert q.inline and model.threads[start:] == [model.loop_thread] * n

    run(go())


def test_a_worker_figure_gone_stale_is_measured_again_and_the_batches_go_back(executor):
    async def go():
        # At warm-up a worker batch looked dear (one row each); under load worker batches grow and cost
        # less a row than the inline ones: the queue must find out, not judge by the warm-up figure forever.
        model, q = charged_queue(executor, inline_s=0.002, worker_s=0.004)
        await warm_until(q, lambda: q.inline)
        model.worker_s = 0.0001
        start, n = len(model.threads), (batching.REPROBE_WINDOWS + 4) * batching.WINDOW
        await warm(q, n)
        on_loop = [t == model.loop_thread for t in model.threads[start:]]
        assert all(on_loop[:(batching.REPROBE_WINDOWS - 1) * batching.WINDOW])  # inline on the old figure
        assert not all(on_loop[-batching.WINDOW:]) and not q.inline  # measured again: back on the workers

    run(go())


def test_rows_that_cost_less_inline_stay_on_the_loop(executor):
    async def go():
        model, q = charged_queue(executor, inline_s=0.0001, worker_s=0.002)
        await warm_until(q, lambda: q.inline)
        start, n = len(model.threads), 3 * batching.WINDOW
        await warm(q, n)
        assert q.inline and model.threads[start:] == [model.loop_thread] * n

    run(go())


def test_rows_that_cost_more_inline_on_an_idle_loop_stay_on_it(executor):
    async def go():
        # the loop waits 5 ms between requests: not busy, so the cheaper hand-off does not matter
        model, q = charged_queue(executor, inline_s=0.0002, worker_s=0.0001)
        await warm_until(q, lambda: q.inline)
        start, n = len(model.threads), 2 * batching.WINDOW + 4
        for i in range(n):
            await asyncio.sleep(0.005)
            assert (await q.submit(rows(float(i)), far()))["y"].tolist() == [[2.0 * i]]
        assert q.inline and model.threads[start:] == [model.loop_thread] * n

    run(go())


async def busy_queue(executor, **options):
    """A queue of one worker whose model is held, running one request: later ones wait."""
    rec = Recorder()
    q = BatchQueue(rec, BatchingOptions(max_in_flight=1, **options), executor, "m")
    rec.gate.clear()
    running = q.submit(rows(0.0), far())
    await asyncio.sleep(0.05)
    return rec, q, running


def test_a_large_request_counts_once_against_the_queue_bound(executor):
    async def go():
        rec, q, running = await busy_queue(executor, max_batch_size=4, max_queue_size=2)
        big = q.submit(rows(*range(10)), far())  # three pieces, one request
        small = q.submit(rows(1.0), far())
        with pytest.raises(ServingError, match=r"queue is full \(2 requests waiting\)"):
            q.submit(rows(2.0), far())
        rec.gate.set()
        assert (await big)["y"][:, 0].tolist() == [2.0 * i for i in range(10)]
        await asyncio.gather(running, small)

    run(go())


def test_cancelled_requests_stop_counting_against_the_queue_bound_at_once(executor):
    async def go():
        rec, q, running = await busy_queue(executor, max_batch_size=4, max_queue_size=2)
        gone = [q.submit(rows(*range(8)), far()), q.submit(rows(1.0), far())]
        for f in gone:
            f.cancel()  # the clients went away
        assert not q.full  # looking for room lets the settled requests go
        assert q.waiting == 0
        kept = [q.submit(rows(5.0), far()), q.submit(rows(6.0), far())]
        rec.gate.set()
        await running
        assert [(await f)["y"].tolist() for f in kept] == [[[10.0]], [[12.0]]]
        assert 1.0 not in np.concatenate(rec.batches)[:, 0].tolist()

    run(go())


def test_a_small_request_behind_large_ones_waits_for_one_piece_of_each(executor):
    async def go():
        rec = Recorder()
        q = BatchQueue(rec, BatchingOptions(max_batch_size=4, max_in_flight=1), executor)
        rec.gate.clear()
        bigs = [q.submit(rows(*[float(10 * b + i) for i in range(8)]), far()) for b in range(3)]
        small = q.submit(rows(-1.0), far())
        rec.gate.set()
        outs = await asyncio.gather(*bigs, small)
        firsts = [batch[0, 0] for batch in rec.batches]
        # round robin (not the small one last); a large request's piece fills the small one's batch
        assert firsts == [0.0, 4.0, 10.0, 20.0, -1.0, 24.0, 17.0]
        assert rec.batches[4][:, 0].tolist() == [-1.0, 14.0, 15.0, 16.0]
        for b, out in enumerate(outs[:3]):
            assert out["y"][:, 0].tolist() == [2.0 * (10 * b + i) for i in range(8)]
        assert outs[3]["y"].tolist() == [[-2.0]]

    run(go())


class WallCharge:
    """A fake wall clock that only a model moves: each batch 'takes' `batch_s`."""

    def __init__(self, batch_s):
        self.now, self.batch_s = 0.0, batch_s
        self.clock = batching.Clock(wall=lambda: self.now)


def test_inline_batches_yield_the_loop_after_a_slice(executor):
    async def go():
        wall = WallCharge(0.0004)  # 0.4 ms a batch; the slice is --inline_batch_micros = 1 ms
        events = []

        class Model(ThreadRecorder):
            def __call__(self, inputs):
                if threading.get_ident() == loop_thread:
                    wall.now += wall.batch_s
                    events.append("batch")
                return super().__call__(inputs)

        loop_thread = threading.get_ident()
        q = BatchQueue(Model(), BatchingOptions(max_batch_size=2, inline_batch_micros=1000), executor,
                       clock=wall.clock)
        await warm_until(q, lambda: q.inline)
        events.clear()
        big = q.submit(rows(*range(40)), far())  # 20 batches inline

        def tick():
            events.append("tick")
            if not big.done():
                asyncio.get_running_loop().call_soon(tick)

        asyncio.get_running_loop().call_soon(tick)
        await big
        runs = "".join("b" if e == "batch" else "|" for e in events).split("|")
        assert max(len(r) for r in runs) == 3  # 3 x 0.4 ms passes the 1 ms slice; then the loop goes on
        assert events.count("batch") == 20 and q.inline

    run(go())
