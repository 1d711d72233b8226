"""The express lane of TF Serving's REST predict (serving/protocols/express.py) through a real HttpConnection on a
fake transport, beside the same connection with the lane off: the same bytes on the wire, the same statistics,
the same errors; what the lane does not take goes the general way; deadlines, clients that leave, a full queue,
pipelined requests and the access log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.core.batching import BatchingOptions
from serving.ops.accesslog import AccessLog
from serving.transport.auth import TokenAuth
from serving.transport.http import DeadlineWheel, HttpConnection, HttpLimits
from tests.e2e.test_cloud_protocol import tf_request
from tests.helpers import in_loop, make_linear
from tests.unit.ops.test_access_log import Sink
from tests.unit.protocols.test_lanes import general_only
from tests.unit.protocols.test_routes import Served, serving, specs
from tests.unit.transport.test_http_protocol import FakeTransport, parse


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("express")
    make_linear(root / "lin", 1, bias=1.0)
    make_linear(root / "lin", 2)
    make_linear(root / "two", 1, weights=[[1.0, 0.0], [0.0, 2.0]], bias=[0.5, -0.5])
    make_linear(root / "slow", 1, delay_ms=300)
    return root


class Conn:
    """One HttpConnection of the served router on a fake transport; `express=False` turns its lane off."""

    def __init__(self, s: Served, *, express: bool = True, access_log: AccessLog | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.protocol = HttpConnection(s.api, HttpLimits(), set(), DeadlineWheel(loop, 0.001), access_log=access_log)
        if not express:
            self.protocol.express = None
        self.transport = FakeTransport(self.protocol)
        self.protocol.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    async def answers(self, n: int = 1, timeout: float = 5.0) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(parse(bytes(self.transport.written))) < n:
            assert asyncio.get_running_loop().time() < deadline, "no answer in time"
            await asyncio.sleep(0.001)
        return parse(bytes(self.transport.written))


def post(target: bytes, body: bytes, *headers: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s" % (
        target, len(body), b"".join(h + b"\r\n" for h in headers), body)


def predict(model: str, doc: Any, *headers: bytes, rid: bytes = b"rid-1") -> bytes:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return post(b"/v1/models/%s:predict" % model.encode(), body, b"X-Request-Id: " + rid, *headers)


def express_only(s: Served, taken: list[str]) -> None:
    """Count the requests the express lane takes (by URL)."""
    take = s.api.express.take

    def counted(conn: HttpConnection, slot: Any, body: bytes) -> bool:
        took = take(conn, slot, body)
        if took:
            taken.append(conn.url.decode())
        return took

    s.api.express.take = counted  # type: ignore[method-assign]


async def both(s: Served, request: bytes) -> tuple[bytes, bytes]:
    """The bytes answered to `request` with the lane on and with it off."""
    out = []
    for express in (True, False):
        c = Conn(s, express=express)
        c.send(request)
        await c.answers()
        out.append(bytes(c.transport.written))
    return out[0], out[1]


async def counted(s: Served, model: str, calls: int, timeout: float = 10.0) -> Any:
    """The model's one series once it has counted `calls` calls."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        series = list(s.manager.get(model).record.series.values())
        if series and sum(series[0].latency.counts) >= calls:
            return series[0]
        assert asyncio.get_running_loop().time() < deadline, "not counted in time"
        await asyncio.sleep(0.01)


REQUESTS = [
    ("lin", {"instances": [[2.0]]}),
    ("lin", {"instances": [[2.0], [4.0], [5.0]]}),
    ("two", {"instances": [[1.0, 1.0], [2.0, 3.0]]}),
]


@in_loop
async def test_the_express_answer_is_byte_for_byte_the_general_paths_and_skips_the_general_step(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        general: list[str] = []
        general_only(s.pipeline, general)
        taken: list[str] = []
        express_only(s, taken)
        for model, doc in REQUESTS:
            fast, slow = await both(s, predict(model, doc))
            assert fast == slow, (model, doc)
            [(status, headers, body)] = parse(fast)
            assert status == 200 and headers[b"x-request-id"] == b"rid-1" and headers[b"x-model-version"]
            assert "predictions" in json.loads(body)
        assert taken == ["/v1/models/lin:predict", "/v1/models/lin:predict", "/v1/models/two:predict"]
        assert general == []  # neither took the general step: the lane off, the TF REST adapter's lane answers


@in_loop
async def test_an_express_call_is_counted_in_the_versions_record_as_a_general_one(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        c = Conn(s)
        for rows in ([[2.0]], [[2.0], [4.0], [5.0]]):
            c.send(predict("lin", {"instances": rows}))
        await c.answers(2)
        record = s.manager.get("lin").record
        [(key, series)] = record.series.items()
        assert key == ("serving_default", "tfserving_rest", "predict")
        assert series.ok == 2 and series.rows.sum == 4 and sum(series.latency.counts) == 2
        assert sum(series.queue.counts) == 2  # both reached a batch: their queue wait is measured
        assert record.success == 2 and record.rows == 4 and record.last > 0


@in_loop
async def test_what_the_lane_does_not_take_goes_the_general_way_with_the_same_answer(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        taken: list[str] = []
        express_only(s, taken)
        declined = [
            predict("lin", {"instances": [[2.0]], "signature_name": "other"}),  # another signature: 400
            predict("lin", {"inputs": [[2.0]]}),  # the columnar format
            predict("lin", {"instances": [[1.0, 2.0]]}),  # a wrong width: 400
            predict("lin", {"instances": [["a"]]}),  # a wrong type: 400
            predict("lin", {"instances": []}),  # no rows: 400
            predict("lin", b"{not json"),  # 400
            post(b"/v1/models/lin/versions/1:predict", b'{"instances": [[2.0]]}', b"X-Request-Id: rid-1"),
            post(b"/v1/models/lin:predict?x=1", b'{"instances": [[2.0]]}', b"X-Request-Id: rid-1"),
            predict("lin", {"instances": [[2.0]]}, b"Accept-Encoding: gzip"),  # the answer may be compressed
        ]
        for request in declined:
            fast, slow = await both(s, request)
            assert fast == slow, request
        assert taken == []
        fast, slow = await both(s, predict("lin", {"instances": [[2.0]], "signature_name": "serving_default"}))
        assert fast == slow and parse(fast)[0][0] == 200 and taken == ["/v1/models/lin:predict"]  # its own: taken
        taken.clear()
        fast, slow = await both(s, predict("nope", {"instances": [[2.0]]}))  # an unknown model: 404 either way
        assert fast == slow and parse(fast)[0][0] == 404


@in_loop
async def test_a_token_is_checked_and_a_refusal_answered_by_the_general_path(repo: Path) -> None:
    async with serving(specs(repo), auth=TokenAuth("secret")) as s:
        taken: list[str] = []
        express_only(s, taken)
        fast, slow = await both(s, predict("lin", {"instances": [[2.0]]}, b"Authorization: secret"))
        assert fast == slow and parse(fast)[0][0] == 200 and taken == ["/v1/models/lin:predict"]
        for wrong in (b"Authorization: guess", b"X-Other: 1"):
            fast, slow = await both(s, predict("lin", {"instances": [[2.0]]}, wrong))
            assert fast == slow and parse(fast)[0][0] == 401
        assert taken == ["/v1/models/lin:predict"]


@in_loop
async def test_no_express_lane_with_an_observer_it_cannot_tell(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        taken = []
        express_only(s, taken)

        class Tracer:  # an observer the lane does not tell (tracing is one)
            def finished(self, *_: Any) -> None: ...

        s.pipeline.observe(Tracer())  # type: ignore[arg-type]
        c = Conn(s)
        c.send(predict("lin", {"instances": [[2.0]]}))
        assert (await c.answers())[0][0] == 200 and taken == []


@in_loop
async def test_an_express_request_past_its_deadline_is_answered_504_and_counted(repo: Path) -> None:
    async with serving(specs(repo), timeout_s=0.05) as s:
        fast, slow = await both(s, predict("slow", {"instances": [[2.0]]}))
        [(status, _, body)] = parse(fast)
        assert status == 504 and json.loads(body) == {"error": "Deadline Exceeded"}
        # The general path's answer races between the deadline wheel (the same bytes) and the queue's own check
        # as the running batch ends ("... before it was computed"): a 504 either way.
        assert slow == fast or parse(slow)[0][0] == 504
    async with serving(specs(repo), timeout_s=0.05) as s:  # counted alone: the general path's count races
        c = Conn(s)  # (the deadline wheel cancels its future: CANCELLED; the queue's own check: DEADLINE_EXCEEDED)
        c.send(predict("slow", {"instances": [[2.0]]}))
        assert (await c.answers())[0][0] == 504
        series = await counted(s, "slow", 1)  # the batch finishes; the queue tells the call it is done with it
        assert series.codes == {"DEADLINE_EXCEEDED": 1} and series.ok == 0


@in_loop
async def test_a_request_expired_in_the_queue_is_never_computed_and_answered_its_error(repo: Path) -> None:
    async with serving(specs(repo), timeout_s=0.1) as s:
        queue = s.manager.get("lin").lane[2]  # type: ignore[index]
        queue.in_flight = queue.options.max_in_flight  # nothing dispatches
        queue.placement.inline = False
        c = Conn(s)
        c.send(predict("lin", {"instances": [[2.0]]}))
        [(status, _, _)] = await c.answers()
        assert status == 504
        batches = queue.stats.batches
        queue.in_flight = 0
        queue._schedule()
        await asyncio.sleep(0.05)
        assert queue.stats.batches == batches and queue.waiting == 0  # let go of uncomputed
        series = next(iter(s.manager.get("lin").record.series.values()))
        assert series.codes["DEADLINE_EXCEEDED"] == 1 and series.ok == 0


@in_loop
async def test_a_client_that_leaves_drops_its_request_and_it_is_counted_cancelled(repo: Path) -> None:
    async with serving(specs(repo), batching=BatchingOptions(max_in_flight=1)) as s:
        c = Conn(s)
        c.send(predict("slow", {"instances": [[2.0]]}) + predict("slow", {"instances": [[3.0]]}))
        await asyncio.sleep(0.05)  # the first is computing, the second queued behind it
        c.protocol.connection_lost(None)
        series = await counted(s, "slow", 2)
        assert bytes(c.transport.written) == b""
        assert series.codes["CANCELLED"] == 2 and series.ok == 0
        queue = s.manager.get("slow").lane[2]  # type: ignore[index]
        assert queue.waiting == 0 and queue.stats.batches == 1  # the queued one was never computed


@in_loop
async def test_a_full_queue_refuses_through_the_general_path(repo: Path) -> None:
    options = BatchingOptions(max_queue_size=1)
    async with serving(specs(repo), batching=options) as s:
        queue = s.manager.get("lin").lane[2]  # type: ignore[index]
        queue.in_flight = queue.options.max_in_flight
        queue.placement.inline = False
        first, second = Conn(s), Conn(s)
        first.send(predict("lin", {"instances": [[2.0]]}))
        second.send(predict("lin", {"instances": [[2.0]]}))
        [(status, _, body)] = await second.answers()
        assert status == 503 and "queue is full" in json.loads(body)["error"]
        assert queue.stats.rejected == 1
        queue.in_flight = 0
        queue._schedule()
        assert (await first.answers())[0][0] == 200


@in_loop
async def test_pipelined_express_requests_are_answered_in_order(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        c = Conn(s)
        c.send(predict("slow", {"instances": [[2.0]]}, rid=b"a") + predict("lin", {"instances": [[2.0]]}, rid=b"b")
               + predict("lin", {"instances": [[4.0]]}, rid=b"c"))
        answers = await c.answers(3)
        assert [a[1][b"x-request-id"] for a in answers] == [b"a", b"b", b"c"]
        assert [json.loads(a[2]) for a in answers] == [{"predictions": [3.0]}, {"predictions": [3.0]},
                                                      {"predictions": [4.0]}]


@in_loop
async def test_the_access_log_writes_an_express_request_with_its_route_model_and_rows(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        sink = Sink()
        log = AccessLog("all", sink=sink)  # type: ignore[arg-type]
        c = Conn(s, access_log=log)
        c.send(predict("lin", {"instances": [[2.0], [3.0]]}))
        await c.answers()
        log.close()
        [line] = [json.loads(x) for x in sink.data.decode().splitlines()]
        assert {k: line[k] for k in ("request_id", "protocol", "route", "model", "version", "signature", "status",
                                     "rows")} == {
            "request_id": "rid-1", "protocol": "tfserving_rest", "route": "POST /v1/models/lin:predict",
            "model": "lin", "version": 2, "signature": "serving_default", "status": 200, "rows": 2}
        assert line["queue_ms"] is not None and line["compute_ms"] is not None


def infer(model: str, doc: Any, *headers: bytes, binary: bytes = b"", path: bytes = b"") -> bytes:
    """A KServe V2 REST infer: JSON, or JSON then `binary` (Inference-Header-Content-Length)."""
    body = json.dumps(doc).encode()
    extra = (b"Inference-Header-Content-Length: %d" % len(body),) if binary else ()
    return post(path or b"/v2/models/%s/infer" % model.encode(), body + binary, b"X-Request-Id: rid-1", *extra,
                *headers)


def v2_input(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    return {"name": "inputs", "datatype": "FP32", "shape": [len(rows), len(rows[0])], **extra}


@in_loop
async def test_kserve_v2_rest_infer_takes_its_lane_json_and_binary_byte_for_byte(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        taken: list[str] = []
        express_only(s, taken)
        rows = [[2.0], [4.0]]
        raw = np.asarray(rows, np.float32).tobytes()
        requests = [
            infer("lin", {"inputs": [v2_input(rows, data=rows)]}),
            infer("lin", {"id": "a-1", "inputs": [v2_input(rows, data=[2.0, 4.0])],
                          "outputs": [{"name": "predictions"}]}),
            # perf_analyzer's and tritonclient's binary form both ways
            infer("lin", {"inputs": [v2_input(rows, parameters={"binary_data_size": len(raw)})],
                          "parameters": {"binary_data_output": True}}, binary=raw),
        ]
        for request in requests:
            fast, slow = await both(s, request)
            assert fast == slow, request
            [(status, headers, _)] = parse(fast)
            assert status == 200 and headers[b"x-model-version"] == b"2"
        assert taken == ["/v2/models/lin/infer"] * 3
        assert json.loads(parse(fast)[0][2][:int(parse(fast)[0][1][b"inference-header-content-length"])])[
            "outputs"][0]["parameters"] == {"binary_data_size": 8}
        series = s.manager.get("lin").record.series[("serving_default", "kserve_rest", "predict")]
        assert series.ok == 6 and series.rows.sum == 12  # three requests each way, two rows each


@in_loop
async def test_what_the_v2_lane_does_not_take_goes_the_general_way_with_the_same_answer(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        taken: list[str] = []
        express_only(s, taken)
        rows = [[2.0]]
        declined = [
            infer("lin", {"inputs": [v2_input(rows, data=rows)]}, path=b"/v2/models/lin/versions/1/infer"),
            infer("lin", {"inputs": [v2_input(rows, data=rows)], "outputs": [{"name": "nope"}]}),  # 400
            infer("lin", {"inputs": [v2_input(rows, data=rows)], "parameters": {"signature_name": "nope"}}),
            infer("lin", {"inputs": [{**v2_input(rows, data=rows), "datatype": "FP64"}]}),  # 400
            infer("lin", {"inputs": [v2_input([[1.0, 2.0]], data=[1.0, 2.0])]}),  # a wrong width: 400
            infer("lin", {"inputs": [v2_input(rows, data=[1.0, 2.0])]}),  # too many values: 400
            infer("lin", {"inputs": "x"}),  # 400
        ]
        for request in declined:
            fast, slow = await both(s, request)
            assert fast == slow, request
            assert parse(fast)[0][0] in (200, 400, 404), request
        assert taken == []


@in_loop
async def test_the_cloud_protocol_takes_its_lane_json_and_tf_predict_byte_for_byte(repo: Path) -> None:
    async with serving(specs(repo)) as s:
        taken: list[str] = []
        express_only(s, taken)
        url = b"/api/predict/lin"
        for body in (b"[[2.0], [4.0]]", b'{"instances": [[2.0]]}', tf_request([2.0, 4.0])):
            fast, slow = await both(s, post(url, body, b"X-Request-Id: rid-1"))
            assert fast == slow, body
            assert parse(fast)[0][0] == 200
        assert taken == ["/api/predict/lin"] * 3
        series = s.manager.get("lin").record.series[("serving_default", "cloud", "predict")]
        assert series.ok == 6
        declined = [b"[[1.0, 2.0]]", b"[]", b"{not json", tf_request([1.0], output_filter=("nope",)),
                    tf_request([1.0], signature_name="x")]
        for body in declined:
            fast, slow = await both(s, post(url, body, b"X-Request-Id: rid-1"))
            assert fast == slow and parse(fast)[0][0] == 400, body
        s.api.queues = lambda request: None  # type: ignore[assignment] # an async service: its queues' paths first
        fast, slow = await both(s, post(url, b"[[2.0]]", b"X-Request-Id: rid-1"))
        assert fast == slow and taken == ["/api/predict/lin"] * 3


@in_loop
async def test_a_cloud_request_past_its_keepalive_is_answered_408(repo: Path) -> None:
    async with serving(specs(repo), keepalive_s=0.05) as s:
        c = Conn(s)
        c.send(post(b"/api/predict/slow", b"[[2.0]]", b"X-Request-Id: rid-1"))
        [(status, _, body)] = await c.answers()
        assert status == 408 and json.loads(body) == {"error": "request timed out"}
        series = await counted(s, "slow", 1)
        assert series.codes == {"DEADLINE_EXCEEDED": 1}


async def batched(s: Served, model: str, rows: list[list[list[float]]], express: bool) -> list[bytes]:
    """Each request of `rows` sent on its own connection in one turn of the loop (so the queue batches them: the
    first alone, the rest together behind it); the bytes each connection got."""
    conns = [Conn(s, express=express) for _ in rows]
    for i, (c, instances) in enumerate(zip(conns, rows, strict=True)):
        c.send(predict(model, {"instances": instances}, rid=b"rid-%d" % i))
    for c in conns:
        await c.answers()
    return [bytes(c.transport.written) for c in conns]


@in_loop
async def test_a_batch_of_one_row_requests_is_encoded_at_once_with_the_bytes_of_one_by_one(repo: Path) -> None:
    make_linear(repo / "nan", 1, bias=float("nan"))  # NaN answers: JSON's NaN token, as one by one
    async with serving(specs(repo, "lin", "two", "nan")) as s:
        from serving.protocols import express as lanes

        made: list[int | None] = []
        bodies = lanes.TfRestLane.bodies
        original = lanes.TfRestLane.__dict__["bodies"]  # the staticmethod itself, to put back as it was

        def dumped(outputs: Any, rows: int) -> list[bytes] | None:
            out = bodies(outputs, rows)
            made.append(None if out is None else len(out))
            return out

        lanes.TfRestLane.bodies = staticmethod(dumped)  # type: ignore[method-assign,assignment]
        try:
            cases = [
                ("lin", [[[float(i)]] for i in range(6)], [5]),  # 1-D output: cut at the commas
                ("two", [[[float(i), 1.5 * i]] for i in range(5)], [4]),  # [n, 2]: cut at "],["
                ("nan", [[[float(i)]] for i in range(4)], [None]),  # NaN in the dump: one by one
                ("lin", [[[1.0]], [[2.0]], [[3.0], [4.0]], [[5.0]]], []),  # a request of two rows: one by one
            ]
            for model, rows, calls in cases:
                made.clear()
                fast = await batched(s, model, rows, express=True)
                assert made == calls, model
                slow = await batched(s, model, rows, express=False)
                assert fast == slow, model
                for i, answer in enumerate(fast):
                    [(status, headers, body)] = parse(answer)
                    assert status == 200 and headers[b"x-request-id"] == b"rid-%d" % i
                    if model != "nan":
                        expected = [r[0] for r in rows[i]] if model == "lin" else rows[i]
                        assert len(json.loads(body)["predictions"]) == len(expected)
            # Counted as the general path counts: "two" answered 5 requests each way, every one from a batch.
            series = await counted(s, "two", 10)
            assert series.ok == 10 and series.rows.sum == 10 and sum(series.queue.counts) == 10
        finally:
            lanes.TfRestLane.bodies = original  # type: ignore[method-assign]
