"""What watching a request costs: predict calls through the request pipeline (a real ModelManager, batch queue
and the linear test processor, run inline), once with no observer and once observed as serving/app.py wires
the server (request metrics, Triton's statistics, request log and shadow with neither configured), min of 9
repeats of 20,000 sequential calls each. The difference is the per-call cost of the observers. Give a
checkout to time another tree (a `git worktree` of an earlier commit) with the same venv; the tree's own
layout (before or after the role folders) is found by itself.

    python benchmarks/observer_cost.py [CHECKOUT]
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import uvloop  # noqa: E402

NEW = (ROOT / "serving" / "core").is_dir()


def module(new: str, old: str) -> Any:
    return importlib.import_module(new if NEW else old)


pipeline_mod = module("serving.core.pipeline", "serving.pipeline")
repository = module("serving.core.repository", "serving.repository")
servable_mod = module("serving.core.servable", "serving.servable")
dataplane_mod = module("serving.core.dataplane", "serving.dataplane")
model_config = module("serving.core.model_config", "serving.model_config")
metrics_mod = module("serving.ops.metrics", "serving.metrics")
requestlog_mod = module("serving.ops.requestlog", "serving.requestlog")
shadow_mod = module("serving.ops.shadow", "serving.shadow")
statistics_mod = module("serving.ops.statistics", "serving.protocols.kserve.statistics")


def observe(pipeline: Any, manager: Any, dataplane: Any) -> None:
    """The server's observers, as its serving/app.py wires them."""
    requests = metrics_mod.RequestMetrics()
    pipeline.observe(requests)
    request_log = requestlog_mod.RequestLogger(manager)
    shadow = shadow_mod.ShadowRunner(manager, dataplane, request_log)
    if NEW:  # a model's own observers are chosen when its config is applied: none here
        manager.observers_for = lambda spec: tuple(
            o for o in (request_log.observer_for(spec), shadow.observer_for(spec)) if o is not None)
    else:
        pipeline.observe(request_log)
        pipeline.observe(shadow)
        pipeline.observe(statistics_mod.Statistics(manager))


async def run(pipeline: Any, n: int) -> float:
    call_class = pipeline_mod.Call
    row = np.asarray([[2.0]], np.float32)

    def decode(call: Any, servable: Any) -> Any:
        return servable.signature(None), {"inputs": row}

    started = time.perf_counter()
    for _ in range(n):
        await pipeline.infer(call_class("test", "lin", None, None, decode, time.monotonic() + 30))
    await asyncio.sleep(0)  # the last call's observers
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    repo = Path(tempfile.mkdtemp(prefix="observers-"))
    (repo / "lin" / "1").mkdir(parents=True)
    (repo / "lin" / "1" / "linear.json").write_text(json.dumps({"weights": [0.5], "bias": 2.0}))
    results = {}
    for label in ("no observer", "observed as served"):
        runtime = servable_mod.Runtime()
        manager = repository.ModelManager(runtime=runtime)
        dataplane = dataplane_mod.DataPlane(runtime)
        pipeline = pipeline_mod.Pipeline(manager, dataplane)
        if label != "no observer":
            observe(pipeline, manager, dataplane)
        await manager.apply([model_config.ModelSpec("lin", str(repo / "lin"), "linear")])
        await run(pipeline, 2000)  # warm
        results[label] = min([await run(pipeline, 20_000) for _ in range(9)])
        await manager.shutdown()
        runtime.shutdown()
    bare, served = results["no observer"], results["observed as served"]
    print(f"{ROOT.name}: no observer {bare:.2f} µs/call, observed as served {served:.2f} µs/call, "
          f"observers {served - bare:.2f} µs/call")


if __name__ == "__main__":
    uvloop.run(main())
