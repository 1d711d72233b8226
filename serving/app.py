"""The server process: builds each part from the settings, wires them, starts them, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from .core.batching import options_from_settings
from .core.budget import Budget
from .core.control import ConfigPolls, ModelControl, load_roots
from .core.dataplane import DataPlane
from .core.lazy import LazyLoads, ResidentPipeline
from .core.model_config import (
    ConfigError,
    ModelSpec,
    specs_from_settings,
    with_runtime,
)
from .core.pipeline import Pipeline
from .core.repository import ModelManager
from .core.servable import Runtime
from .ops.accesslog import AccessLog
from .ops.metrics import Metrics, RequestMetrics
from .ops.requestlog import RequestLogger, worker_index
from .ops.shadow import ShadowRunner
from .ops.statistics import Statistics
from .ops.tracing import tracing_from_settings
from .platform.modelmesh import ModelRuntime, model_capacity
from .platform.siblings import InternalApi, Siblings
from .platform.workers import available_cores
from .protocols.kserve.rpc import InferenceService
from .protocols.router import RestApi
from .protocols.tfserving.rpc import ModelService, PredictionService
from .queue.remote import RemoteQueues
from .queue.service import EmbeddedQueues
from .settings import Settings
from .tools.ui import StatusApi, StatusSources
from .tools.warmup import Warmup
from .transport.auth import tokens_from
from .transport.h2.connection import H2Limits
from .transport.http import HTTP_RESPONSES, KEPT_HEADERS, http_limits
from .transport.listener import HttpListener
from .transport.rpc.decode import add_health
from .transport.rpc.native import NativeServer, new_native_server
from .transport.rpc.server import answer_compression, listen, new_server

log = logging.getLogger("serving")

#: How often a worker looks at its siblings' readiness (under a supervisor).
SIBLINGS_POLL_S = 0.2


def model_budget(s: Settings, processes: int) -> Budget | None:
    """The memory budget of this process's models: in lazy mode always, in explicit mode when
    --model_memory_capacity_bytes is set, never under ModelMesh (which keeps its own); each worker has its
    share of the capacity."""
    lazy, explicit = s.model_control_mode == "lazy", s.model_control_mode == "explicit"
    if s.modelmesh_port or not (lazy or explicit and s.model_memory_capacity_bytes > 0):
        return None
    share = model_capacity(s, processes) // processes
    log.info("model memory budget: %d bytes (of %d, %d worker processes); models loaded less than %g s ago stay",
             share, share * processes, processes, s.model_min_residency_seconds)
    return Budget(share, s.model_min_residency_seconds)


def _first(items: list[str], sep: str = ", ", shown: int = 10) -> str:
    """`items` joined, the first `shown` of them: a log line stays a line with thousands of models."""
    more = f"{sep}... {len(items) - shown} more" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


class Server:
    """Everything one serving process runs; `start()` then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        s = self.settings = settings
        self.grpc_compression = answer_compression(s.grpc_compression)  # a bad name stops the start here
        if s.grpc_transport not in ("native", "grpcio"):
            raise ValueError(f"--grpc_transport: expected native or grpcio, got {s.grpc_transport!r}")
        self.siblings = Siblings.from_env()  # under a supervisor (--workers): the other workers
        processes = self.siblings.count if self.siblings is not None else 1
        self.runtime = Runtime(options_from_settings(s), spare_core=available_cores() > processes)
        self.dataplane = DataPlane(self.runtime, s.rate_limit)
        self.auth, self.admin_auth = tokens_from(s)
        warmup = Warmup(self.dataplane, iterations=s.num_request_iterations_for_warmup,
                        service_model=s.model_name, warm_up_data_path=s.warm_up_data_path)
        self.manager = ModelManager.from_settings(s, self.runtime, warmup)
        self.manager.budget = model_budget(s, processes)
        if self.manager.sticky_header:
            KEPT_HEADERS.add(self.manager.sticky_key)  # the HTTP parser keeps its value
        self.control = ModelControl.from_settings(s, self.manager)
        if self.siblings is not None:
            siblings = self.siblings  # a worker started later loads what the others have loaded then
            self.manager.siblings_ready = siblings.all_ready
            self.control.siblings = siblings.control
            self.control.changed = lambda: siblings.save_reload([m.spec for m in self.manager.models.values()])
        self._observe(s)
        self._serve_http(s)
        self.specs: list[ModelSpec] = []
        self.internal: asyncio.Server | None = None  # the Unix socket the sibling workers ask
        self.grpc: grpc.aio.Server | NativeServer | None = None
        self.modelmesh: grpc.aio.Server | NativeServer | None = None  # the ModelMesh runtime API (--modelmesh_port)
        self.health: health_aio.HealthServicer | None = None
        self.health_ready = False  # what gRPC health says now
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()
        self.started = False  # the start-up loads are done

    def _observe(self, s: Settings) -> None:
        """The request pipeline and what watches it: the server's observers, and a model's own."""
        self.lazy_loads = LazyLoads(self.manager, s.lazy_load_timeout_seconds) if self.manager.lazy else None
        self.pipeline = (ResidentPipeline(self.manager, self.dataplane, self.lazy_loads)
                         if self.lazy_loads is not None or self.manager.budget is not None
                         else Pipeline(self.manager, self.dataplane))
        self.request_metrics = RequestMetrics()
        self.pipeline.observe(self.request_metrics)  # into each version's record (serving/core/stats.py)
        self.tracing = tracing_from_settings(s)
        if self.tracing is not None:
            self.pipeline.observe(self.tracing)
        self.access_log = AccessLog.open(s.access_log, sample_rate=s.access_log_sample_rate,
                                         slow_ms=s.access_log_slow_ms, health=s.access_log_health,
                                         path=s.access_log_file)
        self.request_log = RequestLogger(self.manager, worker_index(), s.request_log_max_bytes)
        self.shadow = ShadowRunner(self.manager, self.dataplane, self.request_log)
        self.manager.observers_for = self._observers_for
        self.statistics = Statistics(self.manager, self.siblings)  # Triton's statistics extension (KServe V2)
        self.metrics = Metrics(self.manager, self.request_metrics, self.request_log, self.shadow, self.siblings,
                               HTTP_RESPONSES)

    def _serve_http(self, s: Settings) -> None:
        """The HTTP port: its routes, its listener and the status page."""
        self.api = RestApi(self.manager, self.pipeline, timeout_s=s.rest_api_timeout_in_ms / 1000,
                           keepalive_s=s.keepalive_ms / 1000, default_model=self.default_model, auth=self.auth,
                           metrics=self.metrics, statistics=self.statistics, control=self.control,
                           admin_auth=self.admin_auth,
                           workers_ready=self.siblings.ready_text if self.siblings is not None else None)
        self.http = HttpListener(self.api, http_limits(s), self.access_log)
        self.status = StatusApi(StatusSources(
            self.manager, self.request_metrics, self.request_log, s, self.http.connections,
            lambda: self.api.draining, self.auth, self.siblings, s.rest_api_timeout_in_ms / 1000,
            lambda: self.queues))
        self.api.pages = self.status.route
        self.queues: EmbeddedQueues | RemoteQueues | None = None  # an async service's queues and subscriber
        if s.queue_endpoint:  # a remote queue service hosts them: each process subscribes there
            self.queues = RemoteQueues(s, self.auth.token.decode() if self.auth is not None else "")
            self.metrics.registry.register(self.queues.collector)
        elif s.async_service:
            if self.siblings is not None:
                raise ValueError("an async service (--async_service, metadata.type Async) runs in one process: "
                                 "leave --workers at 1")
            self.queues = EmbeddedQueues(s)
            self.api.queues = self.queues.api
            self.metrics.registry.register(self.queues.collector)

    def _observers_for(self, spec: ModelSpec) -> tuple[Any, ...]:
        """The observers a model's config asks for, besides the server's."""
        return tuple(o for o in (self.request_log.observer_for(spec), self.shadow.observer_for(spec)) if o is not None)

    def default_model(self) -> str | None:
        return self.specs[0].name if self.specs else None

    async def start(self) -> None:
        s, siblings = self.settings, self.siblings
        self.specs = specs_from_settings(s)  # a bad config stops the start here, before any port opens
        self.control.roots = load_roots(s, self.specs)
        startup = self.control.startup(self.specs, s.load_model, s.pin_model)
        reloaded = siblings.saved_reload() if siblings is not None else None
        if reloaded is not None:  # a worker started after a reload (or a load) serves what its siblings serve
            self.specs = startup = with_runtime(reloaded, s)
        self._task(self.http.sweep())
        self._task(self.status.sampler.run())
        if siblings is not None:
            await self._join_siblings(siblings, startup, reloaded)
        await self.http.listen(s.host, s.rest_api_port, reuse_port=siblings is not None)
        for sock in self.http.server.sockets if self.http.server is not None else ():
            log.info("HTTP (TF Serving REST API) listening on %s", sock.getsockname()[:2])
        if s.port:
            await self._start_grpc()
        if s.modelmesh_port:
            await self._start_modelmesh()
        if siblings is None:  # one process: liveness and the status routes answer while the models load
            await self.manager.apply(startup)
        self.started = True
        log.info("%s", self.summary())
        if self.queues is not None:
            self.queues.subscribe(self.api.cloud, self.api.cloud.error)
        # What start-up made lives as long as the process: keep it out of the collector's full passes,
        # which otherwise stall the event loop for tens of ms under load (a p99 spike).
        gc.collect()
        gc.freeze()
        await self._update_health()
        if s.model_control_mode == "poll":  # none and explicit: nothing changes but when asked
            polls = ConfigPolls(self.manager, lambda: self.specs, self._polled, self._update_health)
            if s.file_system_poll_wait_seconds > 0:
                self._task(polls.files(s.file_system_poll_wait_seconds))
            if s.model_config_file and s.model_config_file_poll_wait_seconds > 0:
                self._task(polls.config(s.model_config_file, s.model_config_file_poll_wait_seconds))

    def summary(self) -> str:
        """The start-up line: what is served (models, versions AVAILABLE, those without one) and where (ports,
        the status page and metrics URLs), e.g. `ready: 2 models, 3 versions (a: 1, 2; b: 3); HTTP ...`."""
        s, manager = self.settings, self.manager
        models = sorted(manager.models.items())
        served = [(name, sorted(v for v, st in m.versions.items() if st.available)) for name, m in models]
        waiting = [name for name, versions in served if not versions]
        listed = _first([f"{name}: {', '.join(map(str, versions))}" for name, versions in served if versions], "; ")
        text = (f"{'ready' if manager.ready_here() else 'not ready'}: {len(models)} model(s), "
                f"{sum(len(versions) for _, versions in served)} version(s) AVAILABLE"
                + (f" ({listed})" if listed else ""))
        if waiting:
            text += (f"; not loaded (lazy mode: on their first request): {_first(waiting)}" if manager.lazy
                     else f"; without an AVAILABLE version: {_first(waiting)}")
        sockets = self.http.server.sockets if self.http.server is not None else ()
        port = sockets[0].getsockname()[1] if sockets else s.rest_api_port
        host = "localhost" if s.host in ("", "0.0.0.0", "::") else f"[{s.host}]" if ":" in s.host else s.host
        text += (f"; HTTP {s.host}:{port} (status page http://{host}:{port}/ui, metrics "
                 f"http://{host}:{port}/metrics), gRPC " + (f"{s.host}:{s.port}" if s.port else "off"))
        if s.modelmesh_port:
            text += f", ModelMesh {s.modelmesh_host}:{s.modelmesh_port}"
        return text

    def _task(self, work: Any) -> None:
        self.tasks.append(asyncio.create_task(work))

    async def _join_siblings(self, siblings: Siblings, startup: list[ModelSpec], reloaded: Any) -> None:
        """Answer the siblings on this worker's socket, and load before joining the shared ports: a restarted
        worker must not take connections (SO_REUSEPORT gives it its share at once) it can only answer 503."""
        internal = InternalApi(metrics=self.metrics.state, status=self.status.local, statistics=self.statistics.report,
                               reload=self.apply_reload, control=self.control.apply)
        self.internal = await siblings.listen(self.http.sibling_connection(internal))
        self._task(self._watch_siblings(siblings))
        await self.manager.apply(startup)
        latest = siblings.saved_reload()
        if latest is not None and latest != reloaded:  # a reload its siblings applied while it loaded
            await self.apply_reload(latest)

    async def _start_grpc(self) -> None:
        s = self.settings
        timeout_s = s.rest_api_timeout_in_ms / 1000
        services: list[Any] = [PredictionService(self.manager, self.pipeline, timeout_s),
                               ModelService(self.manager, self.reload, self.control.roots),
                               InferenceService(self.manager, self.pipeline, timeout_s, self.statistics,
                                                self.control)]
        self.health = health_aio.HealthServicer()
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc = await self._grpc_server(services, s.host, s.port, "gRPC port",
                                            "TF Serving PredictionService + ModelService, KServe V2, health",
                                            health=self.health, compression_level=self.grpc_compression)

    async def _start_modelmesh(self) -> None:
        s = self.settings
        runtime = ModelRuntime(self.control, self.manager, s, copies=self.siblings.count if self.siblings else 1,
                               started=lambda: self.started)
        self.modelmesh = await self._grpc_server([runtime], s.modelmesh_host, s.modelmesh_port, "the ModelMesh port",
                                                 "ModelMesh mmesh.ModelRuntime")

    async def _grpc_server(self, services: list[Any], host: str, port: int, name: str, serves: str, *,
                           health: Any = None, compression_level: int = 0) -> grpc.aio.Server | NativeServer:
        """A gRPC server of `services` listening on `host:port`, on the transport --grpc_transport names."""
        s = self.settings
        if s.grpc_transport == "native":
            native = new_native_server(services, health=health, auth=self.auth, admin_auth=self.admin_auth,
                                       access_log=self.access_log, reuse_port=self.siblings is not None,
                                       max_message_bytes=s.grpc_max_message_bytes,
                                       compression_level=compression_level, max_connections=s.max_connections,
                                       limits=H2Limits(idle_timeout_s=s.grpc_max_connection_idle_seconds,
                                                       max_age_s=s.grpc_max_connection_age_seconds))
            await native.start(host, port)
            log.info("gRPC (%s, native HTTP/2) listening on %s:%d", serves, host, port)
            return native
        server = new_server(services, auth=self.auth, admin_auth=self.admin_auth, access_log=self.access_log,
                            reuse_port=self.siblings is not None, max_message_bytes=s.grpc_max_message_bytes,
                            compression_level=compression_level)
        if health is not None:
            add_health(server, health)
        await listen(server, host, port, name, serves)
        return server

    async def reload(self, specs: list[ModelSpec]) -> None:
        """Serve a new model config (ModelService.HandleReloadConfigRequest), as the file poller does; under a
        supervisor, in every worker, returning once all of them have applied it."""
        if self.siblings is None:
            await self.apply_reload(specs)
            return
        failed = await self.siblings.reload(specs, self.apply_reload(specs))
        if failed:
            raise ConfigError(failed)

    async def apply_reload(self, specs: list[ModelSpec]) -> None:
        """This process's part of a reload."""
        self.specs = with_runtime(specs, self.settings)
        self.control.replace(self.specs)
        started = time.monotonic()
        try:
            await self.manager.apply(self.specs)
        finally:
            log.info("reload (ReloadConfigRequest) of %d models done in %.2f s", len(specs), time.monotonic() - started)
            await self._update_health()

    def _polled(self, specs: list[ModelSpec]) -> list[ModelSpec]:
        """The model config file as read by a poll, with the server's runtime options: what it serves now."""
        self.specs = with_runtime(specs, self.settings)
        return self.specs

    async def _update_health(self) -> None:
        """grpc.health.v1: SERVING while every configured model has an AVAILABLE version (as /readyz), in
        every worker under a supervisor."""
        if self.siblings is not None and not self.api.draining:  # draining: Siblings.leave() said it
            self.siblings.mark(self.manager.ready_here(), starting=not self.started)
        if self.health is not None:
            self.health_ready = ready = self.manager.ready()
            await self.health.set("", health_pb2.HealthCheckResponse.SERVING if ready
                                  else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _watch_siblings(self, siblings: Siblings) -> None:
        """Readiness that depends on the other workers changes without this one doing anything: gRPC health
        follows it within SIBLINGS_POLL_S (the HTTP routes read the shared bytes on every request)."""
        while True:
            await asyncio.sleep(SIBLINGS_POLL_S)
            if self.health is not None and self.manager.ready() != self.health_ready:
                await self._update_health()
            elif not self.api.draining:  # draining: Siblings.leave() said it
                siblings.mark(self.manager.ready_here(), starting=not self.started)

    async def drain(self) -> None:
        """SIGTERM: not ready at once, serve on for --drain_delay_seconds, then `stop()`, all within the
        grace period."""
        deadline = time.monotonic() + self.settings.grace_period_s()
        delay = min(self.settings.drain_delay_seconds, max(deadline - time.monotonic(), 0.0))
        log.info("draining: not ready; serving on for %g s before the listener closes", delay)
        await self._not_ready()
        await asyncio.sleep(delay)
        await self.stop(deadline)

    async def _not_ready(self) -> None:
        """/readyz 503, KServe ready 400, gRPC health NOT_SERVING from now on (later updates are ignored)."""
        self.api.draining = True
        if self.siblings is not None:  # the other workers answer for this one while the supervisor restarts it
            self.siblings.leave()
        if self.health is not None:
            await self.health.enter_graceful_shutdown()

    async def stop(self, deadline: float | None = None) -> None:
        """Stop accepting, answer every request already received (until `deadline`), then unload."""
        if deadline is None:
            deadline = time.monotonic() + self.settings.grace_period_s()
        log.info("draining: no new connections; finishing requests in flight")
        await self._not_ready()
        if self.queues is not None:  # the held items are answered and committed while the models are loaded
            await self.queues.stop()
        await self.http.close()
        grpc_stopped = None
        if self.grpc is not None:  # refuses new calls, lets calls in flight finish
            grpc_stopped = asyncio.create_task(self.grpc.stop(max(deadline - time.monotonic(), 0.1)))
        await self.http.finish(deadline)
        if self.queues is not None:
            self.queues.close()  # every write answered is on disk
        for task in self.tasks:
            task.cancel()
        if grpc_stopped is not None:
            await grpc_stopped
        if self.modelmesh is not None:
            await self.modelmesh.stop(max(deadline - time.monotonic(), 0.1))
        if self.internal is not None:
            self.internal.close()
        await self.manager.shutdown()
        self.runtime.shutdown()
        self.request_log.close()  # what is queued is written
        if self.access_log is not None:
            self.access_log.close()
        if self.tracing is not None:
            self.tracing.shutdown()  # export the spans still buffered
        log.info("stopped")

