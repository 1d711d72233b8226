"""Lazy model control and the memory budget, in process: a real ModelManager, ResidentPipeline and LazyLoads
over linear models made here. Each model's version folder holds a padding file, so that its measured size
(at least its files' size) is known to the byte's order: PAD bytes, far above what a linear model's load
grows the process by."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from serving.core.budget import Budget, Resident
from serving.core.control import ModelControl
from serving.core.dataplane import DataPlane
from serving.core.lazy import LazyLoads, ResidentPipeline
from serving.core.model_config import ModelSpec, VersionPolicy
from serving.core.pipeline import Call
from serving.core.remote import FetchBackoff
from serving.core.repository import ModelManager, State
from serving.core.servable import Runtime
from serving.errors import Code, ServingError
from tests.helpers import in_loop, make_linear

PAD = 8 << 20  # bytes of padding in each model: its size under the budget
#: Holds the pinned model (tiny) and one padded model, never two padded ones.
CAPACITY = PAD + PAD // 2


def padded(root: Path, name: str, bias: float, pad: int = PAD, **extra: object) -> ModelSpec:
    folder = make_linear(root / name, 1, weights=[[1.0]], bias=bias, **extra)
    if pad:
        (folder / "padding.bin").write_bytes(b"\0" * pad)
    return ModelSpec(name=name, base_path=str(root / name), platform="linear")


def lazy_server(budget: Budget | None = None, timeout_s: float = 30.0, backoff: FetchBackoff | None = None
                ) -> tuple[ModelManager, ResidentPipeline]:
    runtime = Runtime()
    manager = ModelManager(runtime=runtime)
    manager.lazy, manager.budget = True, budget
    pipeline = ResidentPipeline(manager, DataPlane(runtime), LazyLoads(manager, timeout_s, backoff))
    return manager, pipeline


def predict(pipeline: ResidentPipeline, model: str, x: float = 1.0, deadline_s: float = 30.0) -> asyncio.Future:
    def decode(call: Call, servable):  # type: ignore[no-untyped-def]
        return servable.signature(None), {"inputs": np.asarray([[x]], np.float32)}

    return pipeline.infer(Call("test", model, None, None, decode, time.monotonic() + deadline_s))


def loaded(manager: ModelManager) -> set[str]:
    return {name for name, m in manager.models.items() if any(s.servable is not None for s in m.versions.values())}


@in_loop
async def test_three_models_under_a_budget_of_one_answer_in_turn_and_the_pinned_one_stays(tmp_path: Path) -> None:
    specs = [padded(tmp_path, name, bias) for name, bias in (("a", 1.0), ("b", 2.0), ("c", 3.0))]
    pinned = padded(tmp_path, "p", 10.0, pad=0)
    manager, pipeline = lazy_server(Budget(CAPACITY, min_residency_s=0))
    await manager.apply([*specs, ModelSpec(**{**pinned.__dict__, "pinned": True})])
    assert loaded(manager) == {"p"} and manager.ready()
    most = 0
    for _ in range(3):
        for name, bias in (("a", 1.0), ("b", 2.0), ("c", 3.0), ("p", 10.0)):
            outputs = await predict(pipeline, name, 2.0)
            assert outputs["predictions"].tolist() == [2.0 + bias]
            most = max(most, len(loaded(manager) - {"p"}))
            assert "p" in loaded(manager)
    assert most == 1
    assert manager.budget is not None and manager.budget.evictions == 8 and manager.budget.over_budget == 0
    assert manager.loads.counts["lazy"] == 9 and manager.loads.counts["poll"] == 1  # the pinned one, at start


@in_loop
async def test_sixteen_concurrent_first_requests_wait_for_one_load(tmp_path: Path) -> None:
    spec = padded(tmp_path, "a", 1.0, pad=0, load_delay_ms=200)
    manager, pipeline = lazy_server()
    await manager.apply([spec])
    outputs = await asyncio.gather(*(predict(pipeline, "a", float(i)) for i in range(16)))
    assert [o["predictions"].tolist() for o in outputs] == [[i + 1.0] for i in range(16)]
    assert manager.loads.counts["lazy"] == 1


@in_loop
async def test_a_model_in_use_is_not_unloaded_under_its_request(tmp_path: Path) -> None:
    slow = padded(tmp_path, "slow", 1.0, delay_ms=300)
    other, third = padded(tmp_path, "other", 2.0), padded(tmp_path, "third", 3.0)
    manager, pipeline = lazy_server(Budget(CAPACITY, min_residency_s=0))
    await manager.apply([slow, other, third])
    await predict(pipeline, "slow")  # loaded
    running = predict(pipeline, "slow", 5.0)
    await asyncio.sleep(0.05)  # in its batch now
    assert (await predict(pipeline, "other"))["predictions"].tolist() == [3.0]  # loaded over the budget
    assert (await running)["predictions"].tolist() == [6.0]
    assert manager.budget is not None and manager.budget.evictions == 0 and manager.budget.over_budget == 1
    assert loaded(manager) == {"slow", "other"}
    assert (await predict(pipeline, "third"))["predictions"].tolist() == [4.0]  # both idle now: both make room
    assert loaded(manager) == {"third"} and manager.budget.evictions == 2


@in_loop
async def test_a_model_loaded_less_than_the_min_residency_ago_stays(tmp_path: Path) -> None:
    specs = [padded(tmp_path, "a", 1.0), padded(tmp_path, "b", 2.0)]
    manager, pipeline = lazy_server(Budget(CAPACITY, min_residency_s=3600))
    await manager.apply(specs)
    await predict(pipeline, "a")
    await predict(pipeline, "b")
    assert loaded(manager) == {"a", "b"} and manager.budget is not None and manager.budget.over_budget == 1


@in_loop
async def test_a_failed_load_answers_unavailable_with_its_error_and_a_later_request_tries_again(tmp_path: Path
                                                                                               ) -> None:
    spec = padded(tmp_path, "a", 1.0, pad=0)
    model_file = tmp_path / "a" / "1" / "linear.json"
    good = model_file.read_text()
    model_file.write_text("{not json")
    now = [0.0]
    manager, pipeline = lazy_server(backoff=FetchBackoff(clock=lambda: now[0]))
    await manager.apply([spec])
    for _ in range(2):  # the second within the back-off: the same answer, no new load
        with pytest.raises(ServingError) as failed:
            await predict(pipeline, "a")
        assert failed.value.code is Code.UNAVAILABLE and "failed to load" in failed.value.message
        assert "linear" in failed.value.message
    assert manager.load_failures["a"] == 1
    assert manager.models["a"].versions[1].state is State.END  # the index and the status say why
    model_file.write_text(good)
    now[0] = 1.5  # the back-off (1 s) is over
    assert (await predict(pipeline, "a"))["predictions"].tolist() == [2.0]


@in_loop
async def test_a_request_waits_at_most_the_lazy_load_timeout_and_the_load_goes_on(tmp_path: Path) -> None:
    spec = padded(tmp_path, "a", 1.0, pad=0, load_delay_ms=500)
    manager, pipeline = lazy_server(timeout_s=0.05)
    await manager.apply([spec])
    with pytest.raises(ServingError) as waited:
        await predict(pipeline, "a")
    assert waited.value.code is Code.UNAVAILABLE and "still loading after 0.05 s" in waited.value.message
    with pytest.raises(ServingError) as deadline:
        await predict(pipeline, "a", deadline_s=0.01)
    assert deadline.value.code is Code.DEADLINE_EXCEEDED
    for _ in range(100):
        if manager.models["a"].latest is not None:
            break
        await asyncio.sleep(0.05)
    assert (await predict(pipeline, "a"))["predictions"].tolist() == [2.0]
    assert manager.loads.counts["lazy"] == 1


@in_loop
async def test_lazy_status_index_and_unload_keep_a_known_model_known(tmp_path: Path) -> None:
    spec = padded(tmp_path, "a", 1.0, pad=0)
    manager, pipeline = lazy_server()
    control = ModelControl("lazy", manager, lambda specs: specs)
    await manager.apply(control.startup([spec], ""))
    assert control.index() == [{"name": "a", "state": "UNAVAILABLE", "reason": "not loaded"}]
    (status,) = manager.status("a")
    assert (status.version, status.state, status.error.message if status.error else "") == (1, State.END,
                                                                                             "not loaded")
    await predict(pipeline, "a")
    assert control.index() == [{"name": "a", "version": "1", "state": "READY"}]
    await control.unload("a")
    assert control.index() == [{"name": "a", "state": "UNAVAILABLE", "reason": "not loaded"}]
    assert (await predict(pipeline, "a"))["predictions"].tolist() == [2.0]


@in_loop
async def test_versions_of_a_traffic_split_load_and_unload_together(tmp_path: Path) -> None:
    make_linear(tmp_path / "split", 1, weights=[[1.0]], bias=1.0)
    make_linear(tmp_path / "split", 2, weights=[[1.0]], bias=2.0)
    for version in (1, 2):
        (tmp_path / "split" / str(version) / "padding.bin").write_bytes(b"\0" * (PAD // 2))
    split = ModelSpec(name="split", base_path=str(tmp_path / "split"), platform="linear",
                      policy=VersionPolicy("specific", versions=frozenset({1, 2})), traffic={1: 50, 2: 50})
    manager, pipeline = lazy_server(Budget(CAPACITY, min_residency_s=0))
    await manager.apply([split, padded(tmp_path, "b", 5.0)])
    answers = {tuple((await predict(pipeline, "split"))["predictions"].tolist()) for _ in range(40)}
    assert answers == {(2.0,), (3.0,)}  # both versions serve
    assert manager.available_versions("split") == [1, 2]
    await predict(pipeline, "b")
    assert loaded(manager) == {"b"}  # both versions went, together
    assert {tuple((await predict(pipeline, "split"))["predictions"].tolist()) for _ in range(40)} == {(2.0,), (3.0,)}


@in_loop
async def test_explicit_mode_with_a_budget_unloads_the_least_recently_used(tmp_path: Path) -> None:
    specs = {name: padded(tmp_path, name, bias) for name, bias in (("a", 1.0), ("b", 2.0))}
    runtime = Runtime()
    manager = ModelManager(runtime=runtime)
    manager.budget = Budget(CAPACITY, min_residency_s=0)
    control = ModelControl("explicit", manager, lambda s: s)
    control.startup(list(specs.values()), "")
    await control.load("a")
    await control.load("b")
    assert set(manager.models) == {"b"} and manager.budget.evictions == 1
    assert manager.loads.counts["explicit"] == 2


def test_the_budget_picks_the_least_recently_used_model_that_may_go() -> None:
    now = 100.0
    budget = Budget(1000, min_residency_s=30, clock=lambda: now)

    def resident(name: str, last_used: float, **kw: object) -> Resident:
        fields = {"size": 10, "loaded_at": 0.0, "pinned": False, "busy": False, **kw}
        return Resident(name, last_used=last_used, **fields)  # type: ignore[arg-type]

    residents = [resident("pinned", 1, pinned=True), resident("busy", 2, busy=True), resident("young", 3, loaded_at=90),
                 resident("old", 50), resident("older", 40)]
    assert budget.victim(residents) == residents[-1]
    assert budget.victim(residents[:3]) is None
    assert budget.why_none(residents[:3]) == ("of the other 3 loaded models 1 are pinned, 1 have requests in flight "
                                              "and 1 were loaded less than 30 s ago")
