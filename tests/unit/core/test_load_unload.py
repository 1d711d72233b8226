"""A server that loads and unloads models for ever (ModelMesh, the repository API) keeps nothing per model it
no longer serves: what a version did is one record that goes with it (serving/core/stats.py), so the
metrics text and Triton's statistics list only the loaded models, and memory stays flat. In process: the
repository API's ModelControl over a real ModelManager, Pipeline and metrics, a real model made here."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path

import numpy as np

from serving.core.control import LoadRoots, ModelControl
from serving.core.dataplane import DataPlane
from serving.core.pipeline import Call, Pipeline
from serving.core.repository import ModelManager, resident_bytes
from serving.core.servable import Runtime
from serving.ops.metrics import Metrics, RequestMetrics
from serving.ops.statistics import Statistics
from tests.helpers import in_loop, make_linear

ROUNDS = 1000
#: The Python heap (tracemalloc) may grow this much between the 200th and the 1000th round. What each model used
#: to leave behind (its request series and Triton sums, ~1.5 KB) comes to 1.2 MB over those 800 rounds.
HEAP_SLACK = 256 << 10
#: RSS, which also counts native memory, may grow this much (measured: under 100 KB alone, and up to 730 KB after
#: the rest of tests/unit ran in the same process: the allocator's arenas, not this test's models).
RSS_SLACK = 2 << 20


def predict(pipeline: Pipeline, model: str) -> asyncio.Future:
    def decode(call: Call, servable):  # type: ignore[no-untyped-def]
        return servable.signature(None), {"inputs": np.asarray([[2.0]], np.float32)}

    return pipeline.infer(Call("test", model, None, None, decode, time.monotonic() + 30))


@in_loop
async def test_a_thousand_loads_and_unloads_leave_no_per_model_state(tmp_path: Path) -> None:
    make_linear(tmp_path / "lin", 1)
    runtime = Runtime()
    manager = ModelManager(runtime=runtime)
    pipeline = Pipeline(manager, DataPlane(runtime))
    requests = RequestMetrics()
    pipeline.observe(requests)
    metrics, statistics = Metrics(manager, requests), Statistics(manager)
    control = ModelControl("explicit", manager, lambda specs: specs)
    control.roots = LoadRoots([str(tmp_path)])
    await control.load("kept", {"path": str(tmp_path / "lin")})
    rss_at, heap_at = {}, {}
    tracemalloc.start()
    try:
        for i in range(ROUNDS):
            name = f"m{i}"  # a new name each time, as ModelMesh's model ids
            await control.load(name, {"path": str(tmp_path / "lin")})
            assert (await predict(pipeline, name))["predictions"].tolist() == [3.0]
            assert (await predict(pipeline, "kept"))["predictions"].tolist() == [3.0]
            await asyncio.sleep(0)  # the observers run
            if i % 100 == 0:
                assert f'model="{name}"' in metrics.render().decode()  # counted while it is loaded
            await control.unload(name)
            if i + 1 in (200, ROUNDS):
                gc.collect()
                rss_at[i + 1], heap_at[i + 1] = resident_bytes(), tracemalloc.get_traced_memory()[0]
        text = metrics.render().decode()
        assert "model=\"m" not in text  # no series of a model that is gone
        assert 'serving_requests_total{code="OK",method="predict",model="kept",protocol="test",' \
               f'signature="serving_default",version="1"}} {float(ROUNDS)}' in text
        assert [s["name"] for s in statistics.report("", None)["model_stats"]] == ["kept"]
        assert statistics.report("kept", None)["model_stats"][0]["inference_stats"]["success"]["count"] == ROUNDS
        assert set(manager.models) == {"kept"} and not manager._model_locks
        assert not manager.load_failures and not manager.fetch_failures and not requests.unrouted
        assert set(control.repository) == {"kept"}  # the models loaded by path are forgotten at their unload
        assert heap_at[ROUNDS] - heap_at[200] < HEAP_SLACK, heap_at
        assert rss_at[ROUNDS] - rss_at[200] < RSS_SLACK, rss_at
    finally:
        tracemalloc.stop()
        await manager.shutdown()
        runtime.shutdown()
