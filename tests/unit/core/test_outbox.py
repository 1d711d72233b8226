"""The batch queue holds the writes of an express batch's answers until every answer of the batch is made."""

import asyncio
import concurrent.futures
import threading
import time

import numpy as np

from serving.core.batching import BatchingOptions, BatchQueue
from serving.core.batching.outbox import OUTBOX, Outbox


class Client:
    """An express lane's waiter that answers as the HTTP slot does: its answer is made in set_result, and its write
    goes into the outbox when one is held (else at once)."""

    def __init__(self, name, log):
        self.name, self.log, self.answer = name, log, None
        self.dispatched = self.computed = 0.0

    def done(self):
        return self.answer is not None

    def set_result(self, outputs):
        self.answer = outputs["y"].tolist()
        self.log.append(("made", self.name))
        if OUTBOX.held is not None:
            OUTBOX.held.append(self.write)
        else:
            self.write()

    def set_exception(self, error):
        self.set_result({"y": np.array([str(error)])})

    def write(self):
        self.log.append(("written", self.name))

    def finished(self, _):
        pass


def test_a_batch_s_answers_are_all_made_before_any_is_written():
    async def go():
        log = []
        gate = threading.Event()

        def model(inputs):
            gate.wait(5)
            return {"y": inputs["x"] * 2}

        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            queue = BatchQueue(model, BatchingOptions(max_batch_size=8, max_in_flight=1), executor)
            first = Client("first", log)
            queue.enqueue({"x": np.array([[0.0]], dtype=np.float32)}, 1, time.monotonic() + 30, first)
            await asyncio.sleep(0.05)  # the first batch runs alone, held at the gate: the others queue behind it
            clients = [Client(f"c{i}", log) for i in range(3)]
            for i, client in enumerate(clients):
                queue.enqueue({"x": np.array([[float(i + 1)]], dtype=np.float32)}, 1, time.monotonic() + 30, client)
            gate.set()
            while not all(c.done() for c in clients):
                await asyncio.sleep(0.01)
        assert [c.answer for c in clients] == [[[2.0]], [[4.0]], [[6.0]]]
        batch = [entry for entry in log if entry[1] != "first"]
        assert batch == [("made", "c0"), ("made", "c1"), ("made", "c2"),
                         ("written", "c0"), ("written", "c1"), ("written", "c2")]
        assert OUTBOX.held is None  # released: what comes next is written at once

    asyncio.run(go())


def test_a_failing_write_does_not_keep_the_others_unwritten():
    outbox, written = Outbox(), []

    def broken():
        raise OSError("the socket is gone")

    outbox.held = held = [lambda: written.append(1), broken, lambda: written.append(3)]
    outbox.release(held)
    assert written == [1, 3] and outbox.held is None


def test_each_thread_has_its_own_outbox():
    OUTBOX.held = held = []
    seen = []
    try:
        thread = threading.Thread(target=lambda: seen.append(OUTBOX.held))
        thread.start()
        thread.join()
    finally:
        OUTBOX.release(held)
    assert seen == [None]  # another thread's loop writes at once while this one holds its own
