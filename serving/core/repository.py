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
import bisect
import collections
import concurrent.futures
import contextlib
import enum
import heapq
import logging
import os
import random
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import (
    Code,
    ServingError,
    invalid_argument,
    not_found,
    unavailable,
)
from ..redact import load_failed, redact
from ..settings import Settings
from .budget import Budget, LoadStats, Resident
from .model_config import ConfigError, ModelSpec, list_versions, may_start_empty
from .processor import Processor, canonical_name, detect_platform, processor_class
from .remote import (
    FailingFetch,
    FetchBackoff,
    ModelFetcher,
    is_polled,
    is_remote,
)
from .servable import Runtime, Servable

log = logging.getLogger(__name__)
#: The most model names a NOT_FOUND message lists (`known_models`).
KNOWN_SHOWN = 20


def sticky_value(carrier: Any, name: str, key_bytes: bytes) -> bytes | None:
    """The sticky header's value in a call's carrier: HTTP headers (`key_bytes`, the lower-case name), or a
    gRPC context (`name`)."""
    if carrier is None:
        return None
    if isinstance(carrier, dict):
        return carrier.get(key_bytes)
    for key, value in carrier.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, bytes) else value.encode()
    return None


def resident_bytes() -> int:
    """This process's resident memory in bytes (0 where /proc cannot say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_in_use(device: str) -> tuple[int, int]:
    """(this process's resident memory, the CUDA device's memory in use) in bytes; the second is 0 unless
    the device is CUDA and torch has set it up (TensorFlow's and ONNX Runtime's GPU memory is not seen)."""
    rss = resident_bytes()
    gpu = 0
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_initialized():
        index = int(device.partition(":")[2] or 0)
        free, total = torch.cuda.mem_get_info(index)
        gpu = total - free
    return rss, gpu


def disk_bytes(path: Path) -> int:
    """The size of the files under `path`."""
    on_disk = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                on_disk += os.path.getsize(os.path.join(root, name))
    return on_disk


def measured_size(before: tuple[int, int], after: tuple[int, int], path: Path) -> int:
    """What a load took: the growth of resident plus GPU memory, at least the files' size on disk. Loads
    that run at once each see the other's growth too: an over-estimate, the safe side for ModelMesh."""
    grown = max(after[0] - before[0], 0) + max(after[1] - before[1], 0)
    return max(grown, disk_bytes(path))


#: Why a known model has no version loaded in lazy mode (its status and the repository index say so).
NOT_LOADED = ServingError(Code.UNAVAILABLE, "not loaded")


class State(enum.Enum):
    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


class VersionStatus:
    """The status record of one version of one model: its state, its error if its load failed, its files,
    and, while it is loaded, the `Servable` handle the load produced."""

    __slots__ = ("model", "version", "path", "state", "error", "platform", "servable", "load_seconds",
                 "warmup_seconds", "warmup_requests", "size_bytes")

    def __init__(self, model: str, version: int, path: Path) -> None:
        self.model, self.version, self.path = model, version, path
        self.state = State.START
        self.error: ServingError | None = None
        self.platform = ""
        self.servable: Servable | None = None
        self.load_seconds = 0.0  # the processor's load, once it ended (succeeded or not)
        self.warmup_seconds = 0.0  # the warm-up replay, once it ended
        self.warmup_requests = 0  # the warm-up requests it replayed (each maybe several times)
        self.size_bytes = 0  # the memory its load took (see measured_size), once loaded

    @property
    def available(self) -> bool:
        return self.state is State.AVAILABLE


class ManagedModel:
    """A configured model: its spec, every version it has had, its labels, its newest AVAILABLE one, and
    the traffic split of the requests that name no version (`split`: None when the latest takes them)."""

    __slots__ = ("spec", "versions", "labels", "latest", "traffic", "split", "local_base", "failing_fetch",
                 "last_used", "loaded_at", "waiting")

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.versions: dict[int, VersionStatus] = {}
        self.labels: dict[str, int] = {}
        self.latest: Servable | None = None
        self.traffic: dict[int, int] = {}
        self.split: tuple[tuple[float, ...], tuple[Servable, ...]] | None = None
        self.local_base: str | None = None  # where a remote base path was fetched to (serving/core/remote.py)
        self.failing_fetch: FailingFetch | None = None  # its fetch's failures in a row, while it fails
        self.last_used = 0.0  # time.monotonic() of its last request, or of its last load (the budget's LRU)
        self.loaded_at = 0.0  # time.monotonic() its last load ended
        self.waiting = 0  # requests waiting for its lazy load (serving/core/lazy.py): it is in use, not to unload

    def refresh_latest(self) -> None:
        ready = [s for s in self.versions.values() if s.available]
        self.latest = max(ready, key=lambda s: s.version).servable if ready else None
        self.refresh_split()

    def refresh_split(self) -> None:
        """The weighted versions AVAILABLE now, as cumulative percents: a weighted version that is not
        AVAILABLE (loading, unloading) has its share spread over the others; none: the latest serves."""
        weighted = [(w, status.servable) for v, w in sorted(self.traffic.items())
                    if w > 0 and (status := self.versions.get(v)) is not None and status.available
                    and status.servable is not None]
        total = sum(w for w, _ in weighted)
        if not total:
            self.split = None
            return
        bounds, running = [], 0.0
        for weight, _ in weighted:
            running += weight * 100.0 / total
            bounds.append(running)
        self.split = (tuple(bounds), tuple(servable for _, servable in weighted))

    def pick(self, point: float) -> Servable:
        """The weighted version at `point` in [0, 100)."""
        assert self.split is not None
        bounds, servables = self.split
        return servables[min(bisect.bisect_right(bounds, point), len(servables) - 1)]


def _serves(model: ManagedModel, aspired: set[int]) -> bool:
    """Whether a version the policy aspires to is AVAILABLE."""
    return any(model.versions[v].available for v in aspired if v in model.versions)


def _load_error(model: ManagedModel, aspired: set[int]) -> ServingError:
    """Why a load left no aspired version AVAILABLE: the first version's error, else that there is none."""
    errors = [model.versions[v].error for v in sorted(aspired) if v in model.versions]
    return next((e for e in errors if e is not None), None) or ServingError(
        Code.NOT_FOUND, f"model {model.spec.name}: no version to load under {redact(model.spec.base_path)}")


class ModelManager:
    """Loads, unloads and looks up servables; the only place that changes what is served."""

    def __init__(
        self,
        *,
        runtime: Runtime | None = None,
        load_threads: int = 2,
        allow_version_labels_for_unavailable_models: bool = False,
        warmup: Callable[[Servable], Awaitable[int]] | None = None,  # -> requests replayed
        fetcher: ModelFetcher | None = None,
        fetch_backoff: FetchBackoff | None = None,
    ) -> None:
        self.runtime = runtime or Runtime()
        #: Fetches base paths that are URLs or archives (serving/core/remote.py).
        self.fetcher = fetcher or ModelFetcher()
        #: When a poll fetches a base path whose fetch failed again.
        self.fetch_backoff = fetch_backoff or FetchBackoff()
        self.fetch_failures: collections.Counter[str] = collections.Counter()  # by model name
        self.warmup = warmup
        self.models: dict[str, ManagedModel] = {}
        self.allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._loader = concurrent.futures.ThreadPoolExecutor(load_threads, thread_name_prefix="load")
        self._lock = asyncio.Lock()
        self.load_failures: collections.Counter[str] = collections.Counter()  # by model name
        #: Under a supervisor (--workers): whether every worker is ready (serving.platform.workers.Peers.all_ready).
        self.siblings_ready: Callable[[], bool] | None = None
        #: Ready with no model at all (explicit model control, ModelMesh): models come when asked for.
        self.may_be_empty = False
        self.applied = False  # a first configuration was applied: until then the server is not ready
        #: --traffic_sticky_header: the HTTP header / gRPC metadata key whose value picks a model's weighted
        #: version by hash, so one user stays on one version (None: a random pick each request).
        self.sticky_header = None
        #: The last load error of each model that `load_model` removed again (never served), for the index.
        self.failures: dict[str, ServingError] = {}
        #: One lock per model name while its loads and unloads take turns, with how many hold or wait for it.
        self._model_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        #: The per-call observers a model's config asks for (its request log, its shadow), chosen when the
        #: config is applied and given to each of its versions (`Servable.observers`); set by the server.
        self.observers_for: Callable[[ModelSpec], tuple[Any, ...]] | None = None
        self.lazy = False  # --model_control_mode=lazy: models load on their first request (core/lazy.py)
        self.budget: Budget | None = None  # the bytes the models may take (lazy, explicit control); None: none
        self.loads = LoadStats()  # loads that made a version AVAILABLE, by reason, and how long they took

    @classmethod
    def from_settings(cls, s: Settings, runtime: Runtime,
                      warmup: Callable[[Servable], Awaitable[int]] | None = None) -> ModelManager:
        manager = cls(runtime=runtime, fetcher=ModelFetcher.from_settings(s), load_threads=s.load_threads,
                      warmup=warmup,
                      allow_version_labels_for_unavailable_models=s.allow_version_labels_for_unavailable_models)
        manager.may_be_empty = may_start_empty(s)
        manager.lazy = s.model_control_mode == "lazy" and not s.modelmesh_port
        if s.traffic_sticky_header:
            manager.sticky_header = s.traffic_sticky_header.lower()
        return manager

    @property
    def sticky_header(self) -> str | None:
        return self._sticky_header

    @sticky_header.setter
    def sticky_header(self, name: str | None) -> None:
        self._sticky_header = name
        self.sticky_key = name.encode() if name else b""  # as the HTTP parser keeps it, encoded once

    # ---- look-ups (hot path: plain dict reads, no awaits) ----

    def laned(self, name: str, carrier: Any = None) -> Servable | None:
        """The servable a request of `name` that names no version goes to, when it has a lane (the protocols'
        lanes take only those: serving/protocols/express.py); None otherwise, errors included: the general
        path answers them."""
        try:
            servable = self.get(name, None, None, carrier)
        except ServingError:
            return None
        return servable if servable.lane is not None else None

    def get(self, name: str, version: int | None = None, label: str | None = None, carrier: Any = None) -> Servable:
        """The AVAILABLE servable a request names (one that names no version: by the model's traffic split,
        with `carrier`'s sticky header when set, else the latest); NOT_FOUND / INVALID_ARGUMENT /
        UNAVAILABLE otherwise."""
        model = self.models.get(name)
        if label is not None:
            if model is None or label not in model.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        if version is None:
            if model is not None and model.latest is not None:
                if model.split is None:
                    return model.latest
                key = sticky_value(carrier, self.sticky_header, self.sticky_key) if self.sticky_header else None
                return model.pick(zlib.crc32(key) % 10_000 / 100 if key is not None else random.random() * 100)
            if model is None:
                raise not_found(f"Servable not found for request: Latest({name}){self.known_models()}")
            if self.lazy and not model.versions:
                raise unavailable(f"Servable not available for request: Latest({name}): not loaded (an inference "
                                  f"request loads it)")
            raise unavailable(f"Servable not available for request: Latest({name}): no version is AVAILABLE")
        status = model.versions.get(version) if model is not None else None
        if status is None or status.state is State.END:
            raise not_found(f"Servable not found for request: Specific({name}, {version}){self._known(model)}")
        if status.servable is None or not status.available:
            raise unavailable(
                f"Servable not available for request: Specific({name}, {version}): it is {status.state.value}"
            )
        return status.servable

    def known_models(self) -> str:
        """What a NOT_FOUND message adds after TF Serving's text (clients read only the text, so its start stays
        TF Serving's): the names a client that misspelt one could have meant, the first KNOWN_SHOWN in order."""
        if not self.models:
            return " (no model is served)"
        names = heapq.nsmallest(KNOWN_SHOWN + 1, self.models)
        more = f", ... {len(self.models) - KNOWN_SHOWN} more" if len(names) > KNOWN_SHOWN else ""
        return f" (known models: {', '.join(names[:KNOWN_SHOWN])}{more})"

    def _known(self, model: ManagedModel | None) -> str:
        """The known models when `model` is not one; else its known versions."""
        if model is None:
            return self.known_models()
        versions = sorted(v for v, s in model.versions.items() if s.state is not State.END)
        return f" (versions of {model.spec.name}: {', '.join(map(str, versions))})" if versions else ""

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """Every known version of a model (or the one asked for), newest first, as TF Serving reports."""
        model = self.models.get(name)
        if label is not None:
            if model is None or label not in model.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        if model is not None and not model.versions and self.lazy:
            return self._not_loaded(model, version)
        if model is None or not model.versions:
            raise not_found(f"Could not find any versions of model {name}{self._known(model)}")
        if version is not None:
            status = model.versions.get(version)
            if status is None:
                raise not_found(f"Could not find version {version} of model {name}{self._known(model)}")
            return [status]
        return sorted(model.versions.values(), key=lambda s: -s.version)

    @staticmethod
    def _not_loaded(model: ManagedModel, version: int | None) -> list[VersionStatus]:
        """The status of a known model not loaded (lazy mode): the versions its policy would load, in END and
        UNAVAILABLE "not loaded"; a base path that is a URL is not read for it (no version then)."""
        spec = model.spec
        on_disk = {} if is_remote(spec.base_path) else list_versions(spec.base_path, spec.flat)
        versions = sorted(spec.policy.select(set(on_disk)), reverse=True)
        if version is not None:
            if version not in on_disk:
                raise not_found(f"Could not find version {version} of model {spec.name}")
            versions = [version]
        if not versions:
            raise not_found(f"Could not find any versions of model {spec.name}")
        statuses = [VersionStatus(spec.name, v, on_disk[v]) for v in versions]
        for status in statuses:
            status.state, status.error = State.END, NOT_LOADED
        return statuses

    def available_versions(self, name: str) -> list[int]:
        model = self.models.get(name)
        return sorted(v for v, s in model.versions.items() if s.available) if model else []

    def loaded(self) -> list[Servable]:
        """Every loaded version (AVAILABLE, warming up or draining), by model and version."""
        return [s.servable for _, m in sorted(self.models.items()) for _, s in sorted(m.versions.items())
                if s.servable is not None]

    def loaded_models(self) -> list[str]:
        """The models with a version loaded (AVAILABLE, warming up or draining), by name."""
        return [name for name, model in sorted(self.models.items())
                if any(s.servable is not None for s in model.versions.values())]

    def ready(self) -> bool:
        """True when every configured model has an AVAILABLE version, and, under a supervisor, every
        sibling worker says the same of its own models."""
        return self.ready_here() and (self.siblings_ready is None or self.siblings_ready())

    def ready_here(self) -> bool:
        """True when every configured model has an AVAILABLE version in this process (lazy mode: once the
        configuration is applied, whatever is loaded)."""
        if self.lazy:
            return self.applied
        return self.applied and (self.may_be_empty or bool(self.models)) and all(
            m.latest is not None for m in self.models.values())

    # ---- changes ----

    async def apply(self, specs: Iterable[ModelSpec]) -> None:
        """Serve exactly `specs`: add, change and remove models, load new versions, move labels, and only
        then unload what is no longer wanted, so a label never names a version that is going away. Raises
        ConfigError when a label cannot be applied; the model's other changes stand and its old labels stay.
        (Lazy mode: `_apply_lazily`.)"""
        specs = list(specs)
        async with self._lock:
            if self.lazy:
                return await self._apply_lazily(specs)
            wanted = {s.name: s for s in specs}
            for name in [n for n in self.models if n not in wanted]:
                log.info("model %s removed from the config: unloading", name)
                self._forget(name)
                await self._unload_all(self.models.pop(name))
            models, moved = [], {}
            for spec in specs:
                model = self.models.get(spec.name)
                if model is not None and (model.spec.base_path, model.spec.platform) != (spec.base_path, spec.platform):
                    log.info("model %s changed its base path or platform: loading it from there", spec.name)
                    moved[spec.name] = model  # serves until the new one does (availability preserving)
                    model = ManagedModel(spec)
                elif model is None:
                    model = self.models[spec.name] = ManagedModel(spec)
                self._configure(model, spec)
                models.append(model)
            aspired = await asyncio.gather(*(self._load_aspired(m, reason="poll") for m in models))
            for model, versions in zip(models, aspired, strict=True):
                old = moved.get(model.spec.name)
                if old is not None and (old.latest is None or _serves(model, versions)):
                    self.models[model.spec.name] = model
                    await self._unload_all(old)
                elif old is not None:
                    log.error("model %s: nothing loaded from its new base path %s; the old one serves on",
                              model.spec.name, redact(model.spec.base_path))
            errors = [e for m in specs if (e := self._apply_labels(self.models[m.name], m.labels))]
            errors += [e for m, a in zip(models, aspired, strict=True) if (e := self._apply_traffic(m, a))]
            await asyncio.gather(*(self._unload_unaspired(m, a) for m, a in zip(models, aspired, strict=True)))
            self.applied = True
        if errors:
            raise ConfigError("; ".join(errors))

    async def poll(self) -> None:
        """Re-read every base path and load/unload versions to match the policies."""
        async with self._lock:
            await asyncio.gather(*(self._reconcile(m) for m in self.models.values()))

    async def load_model(self, spec: ModelSpec) -> None:
        """Load (or reload) one model and leave the others alone: the versions its policy aspires to are
        loaded and the others unloaded once one serves, as `apply` does. Raises the load's error when no
        aspired version is AVAILABLE afterwards: what served before (from another base path too) serves on,
        and a model that was not serving is removed again (its error stays in `failures`), so a bad load
        never leaves the server unready nor takes a model down. Loads of different models run at
        once (as many as the load threads); loads and unloads of one model take turns."""
        await self._settled(spec.name)
        async with self._model_lock(spec.name):
            old = self.models.get(spec.name)
            moved = old is not None and (old.spec.base_path, old.spec.platform) != (spec.base_path, spec.platform)
            if moved:  # loaded apart: the old model serves until the new one does
                log.info("model %s: loading from a new base path or platform", spec.name)
            model = old if old is not None and not moved else ManagedModel(spec)
            if old is None:
                self.models[spec.name] = model
            before = self._configure(model, spec)
            self.failures.pop(spec.name, None)
            aspired = await self._load_aspired(model, reason="explicit")
            if not _serves(model, aspired):
                error = _load_error(model, aspired)
                if old is not None and old.latest is not None:  # availability preserving: what served, serves
                    if model is old:
                        self._configure(old, before)
                    log.warning("model %s: the load failed; the versions loaded before serve on", spec.name)
                    raise error
                if old is not None and moved:
                    await self._unload_all(old)  # it served nothing
                known = self.lazy and old is not None  # lazy mode: a known model stays known, its error with it
                if not known and not any(s.servable is not None for s in model.versions.values()):
                    self.models.pop(spec.name, None)
                    self.failures[spec.name] = error
                raise error
            if old is not None and moved:
                self.models[spec.name] = model
                await self._unload_all(old)
            label_error = self._apply_labels(model, spec.labels) or self._apply_traffic(model, aspired)
            await self._unload_unaspired(model, aspired)
            if label_error:
                raise ServingError(Code.FAILED_PRECONDITION, label_error)

    async def unload_model(self, name: str, keep: bool = False) -> bool:
        """Stop serving a model: new requests find it gone at once, those in flight finish, then its
        versions are unloaded and this returns. False when no such model was loaded. With `keep` (lazy mode,
        a configured model) it stays known, and its next request loads it again."""
        await self._settled(name)
        async with self._model_lock(name):
            self.failures.pop(name, None)
            if keep and name in self.models:
                await self._unload_all(self.models[name])
                return True
            model = self.models.pop(name, None)
            if model is None:
                return False
            self._forget(name)
            await self._unload_all(model)
            return True

    @contextlib.asynccontextmanager
    async def _model_lock(self, name: str) -> AsyncIterator[None]:
        """The model's turn among its loads and unloads; the lock goes when no one holds or waits for it (a
        server that loads and unloads many names keeps none of them)."""
        lock, users = self._model_locks.get(name) or self._model_locks.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._model_locks[name]

    def _forget(self, name: str) -> None:
        """A model no longer served: its failure counts and its last size go with it."""
        self.load_failures.pop(name, None)
        self.fetch_failures.pop(name, None)
        if self.budget is not None:
            self.budget.sizes.pop(name, None)

    def _configure(self, model: ManagedModel, spec: ModelSpec) -> ModelSpec:
        """Give `model` its config, and its versions the per-call observers that config asks for; the config
        it had before."""
        before, model.spec = model.spec, spec
        observers = self._observers(spec)
        for status in model.versions.values():
            if status.servable is not None:
                status.servable.observers = observers
        return before

    def _observers(self, spec: ModelSpec) -> tuple[Any, ...]:
        return self.observers_for(spec) if self.observers_for is not None else ()

    def size_of(self, name: str) -> int:
        """The memory the loaded versions of a model take (0 when none is loaded)."""
        model = self.models.get(name)
        return sum(s.size_bytes for s in model.versions.values() if s.servable is not None) if model else 0

    async def shutdown(self) -> None:
        async with self._lock:
            for model in list(self.models.values()):
                await self._unload_all(model)
            self.models.clear()
        self._loader.shutdown(wait=False, cancel_futures=True)

    # ---- lazy loading and the memory budget ----

    async def load_lazily(self, name: str, reason: str = "lazy") -> None:
        """Load a known model none of whose versions is loaded (a request asks for it, or it is pinned): the
        versions its policy aspires to, then its labels and traffic split. Raises the load's error when no
        version is AVAILABLE; the failed versions stay, with their errors, until the next try."""
        await self._settled(name)
        async with self._model_lock(name):
            model = self.models.get(name)
            if model is None:
                raise not_found(f"Servable not found for request: Latest({name}){self.known_models()}")
            if model.latest is not None:
                return
            for version in [v for v, s in model.versions.items() if s.state is State.END]:
                del model.versions[version]  # a failed load is tried again
            aspired = await self._load_aspired(model, reason=reason)
            if not _serves(model, aspired):
                raise _load_error(model, aspired)
            error = self._apply_labels(model, model.spec.labels) or self._apply_traffic(model, aspired)
            if error:
                log.error("model %s: %s", name, error)
            await self._unload_unaspired(model, aspired)

    async def _apply_lazily(self, specs: list[ModelSpec]) -> None:
        """Lazy mode's `apply`: know exactly `specs` and load only the pinned ones; a loaded model whose config
        changed is unloaded, so that its next request loads it as configured now."""
        wanted = {s.name for s in specs}
        for name in [n for n in self.models if n not in wanted]:
            log.info("model %s removed from the config: unloading", name)
            await self.unload_model(name)
        for spec in specs:
            model = self.models.get(spec.name)
            if model is None:
                model = self.models[spec.name] = ManagedModel(spec)
            elif model.spec != spec and model.versions:
                log.info("model %s: its config changed; unloading it (its next request loads it)", spec.name)
                await self.unload_model(spec.name, keep=True)
            self._configure(model, spec)
        pinned = [s.name for s in specs if s.pinned and self.models[s.name].latest is None]
        outcomes = await asyncio.gather(*(self.load_lazily(n, "poll") for n in pinned), return_exceptions=True)
        for name, outcome in zip(pinned, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error("pinned model %s did not load: %s", name, getattr(outcome, "message", outcome))
        self.applied = True

    async def _load_within_budget(self, model: ManagedModel, new: list[VersionStatus], reason: str) -> None:
        """Load `new` versions of `model`. Under a budget, first unload what must go for their estimated size
        (the model's last measured size, else its files'), then check again with the sizes measured."""
        if self.budget is None:
            await asyncio.gather(*(self._load(model, status, reason) for status in new))
            return
        name, budget = model.spec.name, self.budget
        estimate = budget.sizes.get(name, 0)
        if not estimate:
            estimate = await asyncio.get_running_loop().run_in_executor(
                self._loader, lambda: sum(disk_bytes(status.path) for status in new))
        budget.reserved[name] = self.size_of(name) + estimate
        try:
            await self._make_room(model, final=False)
            await asyncio.gather(*(self._load(model, status, reason) for status in new))
        finally:
            budget.reserved.pop(name, None)
        if self.size_of(name):
            budget.sizes[name] = self.size_of(name)
        await self._make_room(model, final=True)

    async def _make_room(self, model: ManagedModel, final: bool) -> None:
        """Unload the least recently used models that may go until what is loaded and being loaded fits the
        budget, and wait for those unloads. When nothing more may go the load goes on over the budget: once
        it is done (`final`) that is counted and logged."""
        budget = self.budget
        assert budget is not None
        while (committed := self._committed()) > budget.capacity:
            residents = list(self._residents(model))
            victim = budget.victim(residents)
            if victim is None:
                if final:
                    budget.over_budget += 1
                    log.warning("model %s is loaded over the memory budget (%d of %d bytes): %s", model.spec.name,
                                committed, budget.capacity, budget.why_none(residents))
                break
            self._evict(self.models[victim.name], victim)
        while budget.evicting:
            await asyncio.wait(list(budget.evicting.values()))

    def _committed(self) -> int:
        """The bytes of the models loaded (those being unloaded aside) and of the loads under way."""
        assert self.budget is not None
        reserved, evicting = self.budget.reserved, self.budget.evicting
        return sum(max(self.size_of(name), reserved.get(name, 0)) for name in self.models if name not in evicting)

    def _residents(self, loading: ManagedModel) -> Iterator[Resident]:
        """The other loaded models the budget weighs: every version loaded is AVAILABLE, and no load or unload
        of it is under way."""
        assert self.budget is not None
        busy = {*self._model_locks, *self.budget.evicting, *self.budget.reserved}
        for name, model in self.models.items():
            loaded = [s.servable for s in model.versions.values() if s.servable is not None]
            if (model is loading or not loaded or name in busy or not all(s.available for s in model.versions.values()
                                                          if s.servable is not None)):
                continue
            yield Resident(name, self.size_of(name), model.last_used, model.loaded_at, model.spec.pinned,
                           model.waiting > 0 or any(servable.busy() for servable in loaded))

    def _evict(self, model: ManagedModel, resident: Resident) -> None:
        """Start unloading `model` to make room: from now on no request reaches it (in lazy mode the next one
        loads it again, once this unload is done), and the requests it had finish first."""
        assert self.budget is not None
        for status in model.versions.values():
            if status.available:
                status.state = State.UNLOADING
        model.refresh_latest()
        log.info("unloading model %s to make room: %d bytes, last used %.1f s ago", resident.name, resident.size,
                 time.monotonic() - resident.last_used)
        self.budget.evictions += 1
        self.budget.evicting[resident.name] = asyncio.ensure_future(self._unload_evicted(model))

    async def _unload_evicted(self, model: ManagedModel) -> None:
        name, budget = model.spec.name, self.budget
        assert budget is not None
        try:
            async with self._model_lock(name):
                for status in list(model.versions.values()):
                    if status.servable is not None:
                        await self._unload(model, status)
                model.versions.clear()
                model.refresh_latest()
                if not self.lazy and self.models.get(name) is model:  # explicit mode: it is unloaded
                    del self.models[name]
                    self._forget(name)
        except Exception:  # noqa: BLE001 - a processor's unload that failed is logged; the room is made anyway
            log.exception("unloading model %s to make room failed", name)
        finally:
            del budget.evicting[name]

    async def _settled(self, name: str) -> None:
        """Wait until no unload of `name` to make room is under way."""
        while self.budget is not None and (evicting := self.budget.evicting.get(name)) is not None:
            await asyncio.wait([evicting])

    # ---- internals ----

    def _apply_labels(self, model: ManagedModel, labels: dict[str, int]) -> str | None:
        for label, version in labels.items():
            status = model.versions.get(version)
            if status is not None and status.available:
                continue
            if self.allow_unavailable_labels and label not in model.labels:
                continue
            return (
                f"Request to assign label to version {version} of model {model.spec.name}, "
                f"which is not currently available for inference"
            )
        model.labels = dict(labels)
        return None

    def _apply_traffic(self, model: ManagedModel, aspired: set[int]) -> str | None:
        """The spec's weights, when every weighted version is one its policy serves; else the error, and the
        old weights stay."""
        traffic = model.spec.traffic
        missing = sorted(v for v, w in traffic.items() if w > 0 and v not in aspired)
        shadow = model.spec.shadow
        if shadow is not None and shadow.version not in aspired:
            return (f"the shadow version {shadow.version} of model {model.spec.name} is not one it serves "
                    f"({model.spec.policy.describe()}: {sorted(aspired) or 'none'})")
        if missing:
            return (f"the traffic of model {model.spec.name} names version {', '.join(map(str, missing))}, which "
                    f"is not one it serves ({model.spec.policy.describe()}: {sorted(aspired) or 'none'})")
        model.traffic = dict(traffic)
        model.refresh_split()
        return None

    async def _reconcile(self, model: ManagedModel) -> None:
        await self._unload_unaspired(model, await self._load_aspired(model, fetch=False, reason="poll"))

    async def _local_base(self, model: ManagedModel, fetch: bool) -> str | None:
        """The folder to read a model's versions from: its base path, or where its URL or archive was fetched
        (again when `fetch`: a config change, a reload or a load, tried at once; on a poll, a fetch that
        failed only once its back-off is over). None when the fetch failed or waits: the error is the
        model's (a version 1 in END when none serves), and what serves keeps serving."""
        base = model.spec.base_path
        if not is_remote(base):
            return base
        if model.local_base is not None and not fetch and not is_polled(base):
            return model.local_base
        if fetch:
            model.failing_fetch = None  # asked for: a first attempt, whose failure is an ERROR again
        elif not self.fetch_backoff.due(model.failing_fetch, base):
            return None
        try:
            model.local_base = await asyncio.get_running_loop().run_in_executor(self._loader, self.fetcher.local,
                                                                               base)
        except ServingError as e:  # its message has the URL's credentials masked (remote._failed)
            self._fetch_failed(model, e)
            if not any(s.servable is not None for s in model.versions.values()):
                status = VersionStatus(model.spec.name, 1, Path(redact(base)))
                status.state, status.error = State.END, e
                model.versions[1] = status
            return None
        if model.failing_fetch is not None:
            log.info("model %s: fetched %s after %d failed attempts", model.spec.name, redact(base),
                     model.failing_fetch.attempts)
            model.failing_fetch = None
        return model.local_base

    def _fetch_failed(self, model: ManagedModel, e: ServingError) -> None:
        """Count a failed fetch and log it: an ERROR for the first failure in a row, then a line at most once
        a minute (a poll tries again after a back-off)."""
        name = model.spec.name
        self.load_failures[name] += 1
        self.fetch_failures[name] += 1
        failing = model.failing_fetch = self.fetch_backoff.failed(model.failing_fetch, model.spec.base_path)
        if failing.attempts == 1:
            log.error("model %s: %s (polls try again after %.0f s, then twice as long each time, up to %.0f s)",
                      name, e.message, failing.delay, self.fetch_backoff.max_s)
        elif failing.report:
            log.warning("model %s: the fetch failed again, %d times in a row (%d since the last line): %s (next "
                        "try after %.0f s)", name, failing.attempts, failing.unreported, e.message, failing.delay)

    async def _load_aspired(self, model: ManagedModel, fetch: bool = True, reason: str = "explicit") -> set[int]:
        """Load the versions the policy aspires to that are not loaded (for `reason`, budget.REASONS); the
        aspired versions."""
        base = await self._local_base(model, fetch)
        if base is None:  # the fetch failed: keep what serves, or the failed version that says why
            return {v for v, s in model.versions.items() if s.available or s.error is not None}
        on_disk = list_versions(base, model.spec.flat or base != model.spec.base_path)
        aspired = model.spec.policy.select(set(on_disk))
        if not on_disk:
            log.warning("model %s: no version directories under %s", model.spec.name, redact(model.spec.base_path))
        new = []
        for version in sorted(aspired):
            current = model.versions.get(version)
            # A version that failed is tried again only when its files moved (a flat base path that got a 1/).
            if current is None or (current.state is State.END
                                   and (current.error is None or current.path != on_disk[version])):
                status = VersionStatus(model.spec.name, version, on_disk[version])
                model.versions[version] = status
                new.append(status)
        if new:
            await self._load_within_budget(model, new, reason)
        return aspired

    async def _unload_unaspired(self, model: ManagedModel, aspired: set[int]) -> None:
        # Availability preserving: drop what is no longer aspired only once an aspired version serves
        # (or nothing is aspired at all, e.g. every version directory is gone).
        if aspired and not _serves(model, aspired):
            return
        for status in list(model.versions.values()):
            if status.version not in aspired:
                if status.available:
                    await self._unload(model, status)
                elif status.error is not None and status.state is State.END:
                    del model.versions[status.version]  # a failed version that is gone from disk

    async def _load(self, model: ManagedModel, status: VersionStatus, reason: str) -> None:
        spec = model.spec
        status.state = State.LOADING
        log.info("loading model %s version %d from %s", spec.name, status.version, status.path)
        loop = asyncio.get_running_loop()
        processor: Processor | None = None
        started = time.monotonic()
        try:
            try:
                processor = await loop.run_in_executor(self._loader, self._load_blocking, spec, status)
            finally:
                status.load_seconds = time.monotonic() - started
            status.servable = Servable(spec.name, status.version, status.path, status.platform, processor,
                                       self.runtime)
            status.servable.observers = self._observers(model.spec)
            if self.warmup is not None:
                warming = time.monotonic()
                try:
                    # through the data plane; the version is not AVAILABLE yet
                    status.warmup_requests = await self.warmup(status.servable)
                finally:
                    status.warmup_seconds = time.monotonic() - warming
        except Exception as e:  # noqa: BLE001 - any load failure is reported in the version's status
            error = e if isinstance(e, ServingError) else load_failed(
                f"version {status.version} of model {spec.name} from", status.path, e)
            status.state, status.error = State.END, error
            self.load_failures[spec.name] += 1
            log.error("model %s version %d failed to load after %.2f s: %s", spec.name, status.version,
                      time.monotonic() - started, error.message)
            servable, status.servable = status.servable, None
            if servable is not None:
                servable.close(error)
                await servable.drained()
            if processor is not None:
                await loop.run_in_executor(self._loader, processor.unload)
            return
        self._available(model, status, reason)

    def _available(self, model: ManagedModel, status: VersionStatus, reason: str) -> None:
        """A version whose load and warm-up succeeded serves from now on; counted for `reason`."""
        status.state = State.AVAILABLE
        model.refresh_latest()
        model.loaded_at = model.last_used = time.monotonic()
        self.loads.observe(reason, status.load_seconds + status.warmup_seconds)
        log.info("model %s version %d is AVAILABLE (%s; load %.2f s, warm-up %.2f s)", model.spec.name,
                 status.version, status.platform, status.load_seconds, status.warmup_seconds)

    @staticmethod
    def _load_blocking(spec: ModelSpec, status: VersionStatus) -> Processor:
        platform = spec.platform or detect_platform(status.path)
        if platform is None:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                f"cannot tell which processor loads {status.path}: set model_platform",
            )
        status.platform = canonical_name(platform)
        cls = processor_class(platform)
        device = (spec.device or "cpu").split(":")[0].lower()
        if device not in (*cls.devices, "auto"):
            raise ServingError(Code.FAILED_PRECONDITION,
                               f"processor {status.platform} runs on {', '.join(cls.devices)}, not {spec.device}")
        processor = cls()
        options: dict[str, Any] = dict(spec.options)
        before = memory_in_use(spec.device)
        processor.load(status.path, spec.device, options)
        status.size_bytes = measured_size(before, memory_in_use(spec.device), status.path)
        if not processor.signatures:
            raise ServingError(Code.FAILED_PRECONDITION, f"processor {platform} loaded no signature")
        return processor

    async def _unload(self, model: ManagedModel, status: VersionStatus) -> None:
        status.state = State.UNLOADING
        model.refresh_latest()
        log.info("unloading model %s version %d", model.spec.name, status.version)
        started = time.monotonic()
        servable = status.servable
        if servable is not None:
            await servable.drained()  # requests that resolved this version before it left finish first
            status.servable = None
            await asyncio.get_running_loop().run_in_executor(self._loader, servable.processor.unload)
        status.state = State.END
        log.info("model %s version %d unloaded in %.2f s", model.spec.name, status.version, time.monotonic() - started)

    async def _unload_all(self, model: ManagedModel) -> None:
        for status in list(model.versions.values()):
            if status.available:
                await self._unload(model, status)
        model.versions.clear()
        model.refresh_latest()
