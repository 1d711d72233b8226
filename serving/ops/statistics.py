"""Triton's statistics extension: per loaded (model, version), the counts and durations of its inference calls
and of its batches, as `GET /v2/models[/<name>[/versions/<v>]]/stats` and the gRPC `ModelStatistics` answer
them (tritonclient's `get_inference_statistics()`, perf_analyzer's server-side queue / compute split).

`Statistics` is a request pipeline observer: predict calls of every protocol count (the extension is per
model, whoever called it); a call that named no loaded model counts nowhere. On the hot path it does a dict
lookup and a few adds; the report is built when asked for, from those sums and from the version's batch
queues' own counters (`QueueStats.batch_sizes` / `batch_seconds`), which include warm-up batches.

What Triton splits and we do not: compute_input and compute_output are 0 ns (with compute_infer's count),
the whole compute time is compute_infer's; there is no response cache (cache_hit / cache_miss are 0).
A version without batch queues (batching off, a processor that does not batch) ran each successful
request alone: its execution_count is the success count and it has no batch_stats. Under a supervisor
(--workers) the report adds up every worker's (`report_tree`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from ..core.repository import ManagedModel, ModelManager
from ..core.servable import Servable
from ..errors import Code, ServingError
from ..platform.workers import Peers, merge_statistics

if TYPE_CHECKING:
    from ..core.pipeline import Call, Timings

NS = 1e9


def extensions(statistics: Statistics | None) -> list[str]:
    """What ServerMetadata lists (Triton's names): statistics where they are served."""
    served = ["binary_tensor_data", "model_repository", "model_repository(unload_dependents)"]
    return [*served, "statistics"] if statistics is not None else served


class _Sums:
    """One (model, version)'s calls: counts, seconds, rows and the last call's perf_counter()."""

    __slots__ = ("success", "success_s", "fail", "fail_s", "queue_s", "compute_s", "rows", "last")

    def __init__(self) -> None:
        self.success = self.fail = self.rows = 0
        self.success_s = self.fail_s = self.queue_s = self.compute_s = self.last = 0.0


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": int(seconds * NS)}


class Statistics:
    """A request pipeline observer that keeps Triton's model statistics, and builds their report."""

    def __init__(self, manager: ModelManager, peers: Peers | None = None) -> None:
        self.manager = manager
        self.peers = peers  # under a supervisor: the sibling workers, whose statistics are added in
        self.sums: dict[tuple[str, int], _Sums] = {}

    def finished(self, call: Call, error: ServingError | None, timings: Timings) -> None:
        servable = call.servable
        if servable is None or call.method != "predict":
            return
        key = (servable.model, servable.version)
        sums = self.sums.get(key)
        if sums is None:
            sums = self.sums[key] = _Sums()
        queue, compute, total = timings  # unpacked: faster than three named-field reads
        if error is None:
            sums.success += 1
            sums.success_s += total
            sums.queue_s += queue
            sums.compute_s += compute
            sums.rows += call.rows or 0  # decoded: it succeeded
        else:
            sums.fail += 1
            sums.fail_s += total
        if call.received > sums.last:
            sums.last = call.received

    # ---- the report ----

    def report(self, name: str, version: int | None) -> dict[str, Any]:
        """`{"model_stats": [...]}` of every ready version of every model (name ""), of one model's, or of one
        version; Triton's INVALID_ARGUMENT and message for a model or version that is not ready."""
        return {"model_stats": [self._model_stat(s) for s in self._servables(name, version)]}

    async def report_tree(self, name: str, version: int | None) -> dict[str, Any]:
        """`report()` of every worker under a supervisor, added up; of this process alone without one."""
        report = self.report(name, version)
        if self.peers is None:
            return report
        answers = await self.peers.ask("POST", "/_worker/statistics", orjson.dumps({"name": name, "version": version}))
        return merge_statistics([report, *(orjson.loads(body) for _, (status, body) in sorted(answers.items())
                                           if status == 200)])

    def _servables(self, name: str, version: int | None) -> list[Servable]:
        models = self.manager.models
        if not name:
            return [s for _, model in sorted(models.items()) for s in _ready(model)]
        ready = _ready(models[name]) if name in models else []
        if not ready:
            raise ServingError(Code.INVALID_ARGUMENT, f"requested model '{name}' is not available")
        if version is None:
            return ready
        chosen = [s for s in ready if s.version == version]
        if not chosen:
            raise ServingError(Code.INVALID_ARGUMENT, f"requested model version is not available for model '{name}'")
        return chosen

    def _model_stat(self, servable: Servable) -> dict[str, Any]:
        sums = self.sums.get((servable.model, servable.version)) or _Sums()
        success = sums.success
        executions, batch_stats = _batches(servable)
        if not servable.queues:
            executions = success
        zero = _duration(0, 0.0)
        last_ms = int((time.time() - time.perf_counter() + sums.last) * 1000) if sums.last else 0
        return {
            "name": servable.model,
            "version": str(servable.version),
            "last_inference": last_ms,
            "inference_count": sums.rows,
            "execution_count": executions,
            "inference_stats": {
                "success": _duration(success, sums.success_s),
                "fail": _duration(sums.fail, sums.fail_s),
                "queue": _duration(success, sums.queue_s),
                "compute_input": _duration(success, 0.0),
                "compute_infer": _duration(success, sums.compute_s),
                "compute_output": _duration(success, 0.0),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": batch_stats,
        }


def _ready(model: ManagedModel) -> list[Servable]:
    """A model's AVAILABLE versions, oldest first (Triton reports its ready versions)."""
    return [st.servable for _, st in sorted(model.versions.items()) if st.servable is not None and st.available]


def _batches(servable: Servable) -> tuple[int, list[dict[str, Any]]]:
    """(batches run, Triton's batch_stats by batch size) over the version's batch queues."""
    counts: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for queue in servable.queues.values():
        stats = queue.stats
        for size, n in stats.batch_sizes.items():
            counts[size] = counts.get(size, 0) + n
            seconds[size] = seconds.get(size, 0.0) + stats.batch_seconds.get(size, 0.0)
    batch_stats = [{"batch_size": size, "compute_input": _duration(n, 0.0),
                    "compute_infer": _duration(n, seconds[size]), "compute_output": _duration(n, 0.0)}
                   for size, n in sorted(counts.items())]
    return sum(counts.values()), batch_stats
