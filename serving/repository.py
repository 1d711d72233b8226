"""Version management as data: what should be served (ModelSpec + files on disk) vs. what is loaded.

One `ModelManager` owns every model. `apply()` takes a whole new configuration (start-up, config-file
poll, reload RPC); `poll()` re-reads the base paths. Both reconcile each model: versions the policy
aspires to are loaded (off the event loop, in the load executor), versions it no longer aspires to are
unloaded once an aspired version is AVAILABLE (availability-preserving: a failed load leaves the old
version serving). Each version moves START -> LOADING -> AVAILABLE -> UNLOADING -> END, or ends in END
with an error when its load fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Code, ServingError, invalid_argument, not_found, unavailable
from .model_config import ConfigError, ModelSpec, list_versions
from .processor import Processor, canonical_name, detect_platform, processor_class
from .signature import Signature

log = logging.getLogger(__name__)


class State(enum.Enum):
    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


class Servable:
    """One version of one model: its state, its error if any, and its loaded processor."""

    __slots__ = ("model", "version", "path", "state", "error", "processor", "platform", "inflight", "_drained",
                 "queues")

    def __init__(self, model: str, version: int, path: Path) -> None:
        self.model, self.version, self.path = model, version, path
        self.state = State.START
        self.error: ServingError | None = None
        self.processor: Processor | None = None
        self.platform = ""
        self.inflight = 0
        self._drained: asyncio.Event | None = None
        self.queues: dict[str, Any] = {}  # signature name -> its batch queue (serving.batching.BatchQueue)

    @property
    def available(self) -> bool:
        return self.state is State.AVAILABLE

    def signature(self, name: str | None) -> Signature:
        assert self.processor is not None
        return self.processor.signature(name)

    def run(self, method: str, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        """Blocking: call the processor (in an executor thread); framework errors become INTERNAL."""
        proc = self.processor
        assert proc is not None
        try:
            return getattr(proc, method)(inputs, signature_name)  # type: ignore[no-any-return]
        except ServingError:
            raise
        except Exception as e:
            raise ServingError(
                Code.INTERNAL, f"model {self.model} version {self.version} failed in {method}: "
                f"{type(e).__name__}: {e}"
            ) from e

    def acquire(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._drained is not None:
            self._drained.set()

    async def drained(self) -> None:
        """Wait until no request uses this version: none in flight, every batch queue empty."""
        if self.inflight:
            self._drained = asyncio.Event()
            await self._drained.wait()
        for queue in list(self.queues.values()):
            await queue.drained()


class ManagedModel:
    """A configured model: its spec, every version it has had, its labels, its newest AVAILABLE one."""

    __slots__ = ("spec", "versions", "labels", "latest")

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.versions: dict[int, Servable] = {}
        self.labels: dict[str, int] = {}
        self.latest: Servable | None = None

    def refresh_latest(self) -> None:
        ready = [s for s in self.versions.values() if s.available]
        self.latest = max(ready, key=lambda s: s.version) if ready else None


class ModelManager:
    """Loads, unloads and looks up servables; the only place that changes what is served."""

    def __init__(
        self,
        *,
        load_threads: int = 2,
        allow_version_labels_for_unavailable_models: bool = False,
        warmup: Callable[[Servable], Awaitable[None]] | None = None,
    ) -> None:
        self.warmup = warmup
        self.models: dict[str, ManagedModel] = {}
        self.allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._loader = concurrent.futures.ThreadPoolExecutor(load_threads, thread_name_prefix="load")
        self._lock = asyncio.Lock()

    # ---- look-ups (hot path: plain dict reads, no awaits) ----

    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The AVAILABLE servable a request names; NOT_FOUND / INVALID_ARGUMENT / UNAVAILABLE otherwise."""
        model = self.models.get(name)
        if label is not None:
            if model is None or label not in model.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        if version is None:
            if model is not None and model.latest is not None:
                return model.latest
            if model is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            raise unavailable(f"Servable not available for request: Latest({name}): no version is AVAILABLE")
        servable = model.versions.get(version) if model is not None else None
        if servable is None or servable.state is State.END:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        if not servable.available:
            raise unavailable(
                f"Servable not available for request: Specific({name}, {version}): it is {servable.state.value}"
            )
        return servable

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[Servable]:
        """Every known version of a model (or the one asked for), newest first, as TF Serving reports."""
        model = self.models.get(name)
        if label is not None:
            if model is None or label not in model.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        if model is None or not model.versions:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            servable = model.versions.get(version)
            if servable is None:
                raise not_found(f"Could not find version {version} of model {name}")
            return [servable]
        return sorted(model.versions.values(), key=lambda s: -s.version)

    def available_versions(self, name: str) -> list[int]:
        model = self.models.get(name)
        return sorted(v for v, s in model.versions.items() if s.available) if model else []

    def ready(self) -> bool:
        """True when every configured model has an AVAILABLE version."""
        return bool(self.models) and all(m.latest is not None for m in self.models.values())

    # ---- changes ----

    async def apply(self, specs: Iterable[ModelSpec]) -> None:
        """Serve exactly `specs`: add, change and remove models; then move labels.

        Raises ConfigError when a label cannot be applied; the model's other changes stand and its
        old labels stay.
        """
        specs = list(specs)
        async with self._lock:
            wanted = {s.name: s for s in specs}
            for name in [n for n in self.models if n not in wanted]:
                log.info("model %s removed from the config: unloading", name)
                await self._unload_all(self.models.pop(name))
            jobs = []
            for spec in specs:
                model = self.models.get(spec.name) or ManagedModel(spec)
                self.models[spec.name] = model
                if (model.spec.base_path, model.spec.platform) != (spec.base_path, spec.platform):
                    log.info("model %s changed its base path or platform: reloading", spec.name)
                    await self._unload_all(model)
                model.spec = spec
                jobs.append(self._reconcile(model))
            await asyncio.gather(*jobs)
            errors = [e for m in specs if (e := self._apply_labels(self.models[m.name], m.labels))]
        if errors:
            raise ConfigError("; ".join(errors))

    async def poll(self) -> None:
        """Re-read every base path and load/unload versions to match the policies."""
        async with self._lock:
            await asyncio.gather(*(self._reconcile(m) for m in self.models.values()))

    async def shutdown(self) -> None:
        async with self._lock:
            for model in list(self.models.values()):
                await self._unload_all(model)
            self.models.clear()
        self._loader.shutdown(wait=False, cancel_futures=True)

    # ---- internals ----

    def _apply_labels(self, model: ManagedModel, labels: dict[str, int]) -> str | None:
        for label, version in labels.items():
            servable = model.versions.get(version)
            if servable is not None and servable.available:
                continue
            if self.allow_unavailable_labels and label not in model.labels:
                continue
            return (
                f"Request to assign label to version {version} of model {model.spec.name}, "
                f"which is not currently available for inference"
            )
        model.labels = dict(labels)
        return None

    async def _reconcile(self, model: ManagedModel) -> None:
        on_disk = list_versions(model.spec.base_path, model.spec.flat)
        aspired = model.spec.policy.select(set(on_disk))
        if not on_disk:
            log.warning("model %s: no version directories under %s", model.spec.name, model.spec.base_path)
        loads = []
        for version in sorted(aspired):
            current = model.versions.get(version)
            if current is None or (current.state is State.END and current.error is None):
                servable = Servable(model.spec.name, version, on_disk[version])
                model.versions[version] = servable
                loads.append(self._load(model, servable))
        await asyncio.gather(*loads)
        # Availability preserving: drop what is no longer aspired only once an aspired version serves
        # (or nothing is aspired at all, e.g. every version directory is gone).
        if aspired and not any(model.versions[v].available for v in aspired if v in model.versions):
            return
        for servable in list(model.versions.values()):
            if servable.version not in aspired:
                if servable.available:
                    await self._unload(model, servable)
                elif servable.error is not None and servable.state is State.END:
                    del model.versions[servable.version]  # a failed version that is gone from disk

    async def _load(self, model: ManagedModel, servable: Servable) -> None:
        spec = model.spec
        servable.state = State.LOADING
        log.info("loading model %s version %d from %s", spec.name, servable.version, servable.path)
        loop = asyncio.get_running_loop()
        try:
            servable.processor = await loop.run_in_executor(self._loader, self._load_blocking, spec, servable)
            if self.warmup is not None:
                await self.warmup(servable)  # through the data plane; the version is not AVAILABLE yet
        except Exception as e:  # noqa: BLE001 - any load failure is reported in the version's status
            error = e if isinstance(e, ServingError) else ServingError(Code.UNKNOWN, f"{type(e).__name__}: {e}")
            servable.state, servable.error = State.END, error
            log.error("model %s version %d failed to load: %s", spec.name, servable.version, error.message)
            processor, servable.processor = servable.processor, None
            servable.queues.clear()
            if processor is not None:
                await loop.run_in_executor(self._loader, processor.unload)
            return
        servable.state = State.AVAILABLE
        model.refresh_latest()
        log.info("model %s version %d is AVAILABLE (%s)", spec.name, servable.version, servable.platform)

    @staticmethod
    def _load_blocking(spec: ModelSpec, servable: Servable) -> Processor:
        platform = spec.platform or detect_platform(servable.path)
        if platform is None:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                f"cannot tell which processor loads {servable.path}: set model_platform",
            )
        servable.platform = canonical_name(platform)
        processor = processor_class(platform)()
        options: dict[str, Any] = dict(spec.options)
        processor.load(servable.path, spec.device, options)
        if not processor.signatures:
            raise ServingError(Code.FAILED_PRECONDITION, f"processor {platform} loaded no signature")
        return processor

    async def _unload(self, model: ManagedModel, servable: Servable) -> None:
        servable.state = State.UNLOADING
        model.refresh_latest()
        log.info("unloading model %s version %d", model.spec.name, servable.version)
        await servable.drained()
        processor, servable.processor = servable.processor, None
        servable.queues.clear()
        if processor is not None:
            await asyncio.get_running_loop().run_in_executor(self._loader, processor.unload)
        servable.state = State.END

    async def _unload_all(self, model: ManagedModel) -> None:
        for servable in list(model.versions.values()):
            if servable.available:
                await self._unload(model, servable)
        model.versions.clear()
        model.refresh_latest()
