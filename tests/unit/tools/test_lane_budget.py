"""benchmarks/lane_budget.py times the path a request takes as served: every stage it names is run by each path it
names it for (a stage left at zero would mean the budget no longer follows the request, e.g. a lane bypassed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks.lane_budget import FLOOR, PATHS, STAGES, Bench, stage_of


@pytest.mark.parametrize("path", PATHS)
def test_each_stage_of_each_path_is_on_the_path_the_request_takes(path: str, tmp_path: Path) -> None:
    if path == "floor" and not FLOOR.exists():  # a peer's file, beside the checkout, not in it
        pytest.skip(f"the floor's path needs {FLOOR} (../shared/peers beside the checkout)")
    async def go() -> tuple[float, dict[str, float], Bench]:
        bench = Bench()
        await bench.build(tmp_path)
        await bench.run(path, 200)  # warm: a gRPC layout is read by protobuf once, then by its bytes
        cpu, spent = await bench.clocked(path, 640)
        return cpu, spent, bench

    cpu, spent, bench = asyncio.run(go())
    stages = {name: stage_of(spent, bench, by_path[path]) for name, by_path in STAGES if path in by_path}
    assert stages and not [name for name, us in stages.items() if us <= 0], stages
    assert sum(stages.values()) < cpu * 1.5  # self times: nothing counted twice
