"""Triton's statistics extension: per loaded (model, version), the counts and durations of its inference calls
and of its batches, as `GET /v2/models[/<name>[/versions/<v>]]/stats` and the gRPC `ModelStatistics` answer
them (tritonclient's `get_inference_statistics()`, perf_analyzer's server-side queue / compute split).

Predict calls of every protocol count (the extension is per model, whoever called it); a call that named no
loaded model counts nowhere. The report is built when asked for from the version's record
(serving/core/stats.py: its predict calls' sums, and its batches by size, warm-up batches included).

What Triton splits and we do not: compute_input and compute_output are 0 ns (with compute_infer's count),
the whole compute time is compute_infer's; there is no response cache (cache_hit / cache_miss are 0).
A version without batch queues (batching off, a processor that does not batch) ran each successful
request alone: its execution_count is the success count and it has no batch_stats. Under a supervisor
(--workers) the report adds up every worker's (`report_tree`).
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

from ..core.repository import ManagedModel, ModelManager
from ..core.servable import Servable
from ..errors import Code, ServingError

if TYPE_CHECKING:
    from .metrics import Tree

NS = 1e9


def extensions(statistics: Statistics | None) -> list[str]:
    """What ServerMetadata lists (Triton's names): statistics where they are served."""
    served = ["binary_tensor_data", "model_repository", "model_repository(unload_dependents)"]
    return [*served, "statistics"] if statistics is not None else served


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": int(seconds * NS)}


class Statistics:
    """Triton's model statistics report, built when asked for from each ready version's record
    (`Servable.record`, serving/core/stats.py)."""

    def __init__(self, manager: ModelManager, tree: Tree | None = None) -> None:
        self.manager = manager
        self.tree = tree  # under a supervisor: the sibling workers, whose statistics are added in

    # ---- the report ----

    def report(self, name: str, version: int | None) -> dict[str, Any]:
        """`{"model_stats": [...]}` of every ready version of every model (name ""), of one model's, or of one
        version; Triton's INVALID_ARGUMENT and message for a model or version that is not ready."""
        return {"model_stats": [self._model_stat(s) for s in self._servables(name, version)]}

    async def report_tree(self, name: str, version: int | None) -> dict[str, Any]:
        """`report()` of every worker under a supervisor, added up; of this process alone without one."""
        report = self.report(name, version)
        return report if self.tree is None else await self.tree.statistics(report, name, version)

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
        sums = servable.record
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
    counts: collections.Counter[int] = collections.Counter()
    seconds: dict[int, float] = collections.defaultdict(float)
    for batches in servable.record.batches.values():
        counts.update(batches.by_size)
        for size, s in batches.seconds_by_size.items():
            seconds[size] += s
    batch_stats = [{"batch_size": size, "compute_input": _duration(n, 0.0),
                    "compute_infer": _duration(n, seconds[size]), "compute_output": _duration(n, 0.0)}
                   for size, n in sorted(counts.items())]
    return sum(counts.values()), batch_stats
