"""Shadow versions: a sample of the calls a model answers also runs on its shadow version (`shadow_version`
in model_config.pbtxt, `"shadow"` in the service JSON), after and apart from the served answer. The shadow's
answer is never returned: it is compared with the served one into metrics, the largest absolute difference
of the numeric outputs (`serving_shadow_divergence`) and, for outputs with a class axis, whether the
argmax agrees (`serving_shadow_agreement_total`). A shadow that is not AVAILABLE, whose queue is full, that
fails or that outlives its deadline is counted (`serving_shadow_requests_total{outcome}`) and dropped, and
so is one sampled while served requests wait in the version's batch queue or a batch of it runs (`shed`):
a shadow runs on the capacity the served traffic leaves, never ahead of it. When the served call was written
to the request log, the shadow's answer is written beside it (same request id, the shadow's version).

Like every observer (serving/core/pipeline.py), the shadow is told on the event loop's turn after the served
answer's own callbacks, which write it to the client, ran; it then queues in its own version's batch queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Any

import numpy as np

from ..core.dataplane import DataPlane, Outputs, error_of
from ..core.model_config import ModelSpec, ShadowSpec
from ..core.pipeline import Call, ModelObserver
from ..core.repository import ModelManager
from ..core.stats import Histogram
from ..errors import ServingError
from .metrics import add_histogram

log = logging.getLogger(__name__)

#: How long a shadow call may take before it is dropped.
SHADOW_TIMEOUT_S = 30.0
#: Bounds of the divergence histogram: absolute differences from 1e-7 to 1e3.
DIVERGENCE_BOUNDS = tuple(10.0 ** e for e in range(-7, 4))


class ShadowRunner:
    """Runs the sampled calls of models with a shadow (through their `ModelObserver`) on it and keeps
    the comparison."""

    def __init__(self, manager: ModelManager, dataplane: DataPlane, request_log: Any = None) -> None:
        self.manager, self.dataplane = manager, dataplane
        self.request_log = request_log  # a RequestLogger: a logged call's shadow answer is logged beside it
        #: (model, shadow version, outcome) -> calls: ok, mismatch (other outputs or shapes), unavailable,
        #: refused (queue full, inputs it does not take), failed, timeout, shed (served requests waiting)
        self.outcomes: collections.Counter[tuple[str, int, str]] = collections.Counter()
        self.agreement: collections.Counter[tuple[str, int, bool]] = collections.Counter()
        self.divergence: dict[tuple[str, int], Histogram] = {}
        self.histogram = Histogram

    def observer_for(self, spec: ModelSpec) -> ModelObserver[ShadowSpec] | None:
        """What shadows the calls of a model whose config has a shadow; chosen when its config is applied
        (ModelManager.observers_for)."""
        return ModelObserver(self.sample, spec.shadow) if spec.shadow is not None else None

    def sample(self, call: Call, error: ServingError | None, shadow: ShadowSpec) -> None:
        """Send one finished call of a model with a shadow to the shadow version, when sampled."""
        servable = call.servable
        if error is not None or servable is None or call.method != "predict" or call.result is None:
            return
        if servable.version == shadow.version:
            return
        if shadow.sample_rate < 1.0 and random.random() >= shadow.sample_rate:
            return
        self._submit(call, servable.model, shadow.version)  # observers run once the answer is handed over

    def _submit(self, call: Call, model: str, version: int) -> None:
        key = (model, version)
        assert call.servable is not None and call.signature is not None
        queue = call.servable.queues.get(call.signature.name)
        if queue is not None and (queue.waiting or queue.in_flight):  # served requests first
            self.outcomes[(model, version, "shed")] += 1
            return
        try:
            servable = self.manager.get(model, version)
        except ServingError:
            self.outcomes[(model, version, "unavailable")] += 1
            return
        assert call.signature is not None and call.inputs is not None
        try:
            signature = servable.signature(call.signature.name)
            future = self.dataplane.infer(servable, signature, call.inputs, time.monotonic() + SHADOW_TIMEOUT_S,
                                          rate_limited=False)
        except ServingError:
            self.outcomes[(model, version, "refused")] += 1
            return
        primary = call.result
        future.add_done_callback(lambda f: self._compare(key, f, primary, call))

    def _compare(self, key: tuple[str, int], future: asyncio.Future[Outputs], primary: Any, call: Call) -> None:
        error = error_of(future)
        if error is not None:
            outcome = "timeout" if error.code.name == "DEADLINE_EXCEEDED" else "failed"
            self.outcomes[(*key, outcome)] += 1
            return
        shadow = future.result()
        self._log(key, call, shadow)
        if any(name not in shadow or shadow[name].shape != served.shape for name, served in primary.items()):
            self.outcomes[(*key, "mismatch")] += 1  # other outputs or shapes: nothing to compare
            return
        self.outcomes[(*key, "ok")] += 1
        worst = 0.0
        for name, served in primary.items():
            other = shadow[name]
            if served.dtype.kind in "fiub" and other.dtype.kind in "fiub":
                if served.size:
                    worst = max(worst, float(np.max(np.abs(served.astype(np.float64) - other.astype(np.float64)))))
                if served.ndim >= 2 and served.shape[-1] > 1:  # a class axis: do the labels agree?
                    agree = bool(np.array_equal(np.argmax(served, axis=-1), np.argmax(other, axis=-1)))
                    self.agreement[(*key, agree)] += 1
            else:
                self.agreement[(*key, bool(np.array_equal(served, other)))] += 1
        histogram = self.divergence.get(key)
        if histogram is None:
            histogram = self.divergence[key] = self.histogram(DIVERGENCE_BOUNDS)
        histogram.observe(worst)

    def _log(self, key: tuple[str, int], call: Call, shadow: Outputs) -> None:
        """The shadow's answer beside the served one in the request log, when that one was logged (same
        request id, the shadow's version in the record)."""
        model = self.manager.models.get(key[0])
        spec = model.spec.request_log if model is not None else None
        if not call.logged or self.request_log is None or spec is None or call.signature is None:
            return
        self.request_log.put(spec, key[0], key[1], call.signature.name, call.request_id, call.inputs, shadow)

    def collect(self) -> Any:
        """The shadow's metric families (a prometheus-client collector)."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        requests = CounterMetricFamily("serving_shadow_requests", "calls run on a shadow version, by outcome",
                                       labels=["model", "version", "outcome"])
        for (model, version, outcome), count in sorted(self.outcomes.items()):
            requests.add_metric([model, str(version), outcome], float(count))
        agreement = CounterMetricFamily("serving_shadow_agreement", "shadow answers whose labels (argmax, or "
                                        "the values of non-numeric outputs) agree with the served ones",
                                        labels=["model", "version", "agree"])
        for (model, version, agree), count in sorted(self.agreement.items()):
            agreement.add_metric([model, str(version), str(agree).lower()], float(count))
        divergence = HistogramMetricFamily("serving_shadow_divergence", "largest absolute difference of a "
                                           "shadow answer's numeric outputs from the served one's",
                                           labels=["model", "version"])
        for (model, version), histogram in sorted(self.divergence.items()):
            add_histogram(divergence, [model, str(version)], histogram)
        yield requests
        yield agreement
        yield divergence
