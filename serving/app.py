"""The server process: reads the model configuration, serves HTTP, polls for changes, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
import orjson
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from .core.batching import options_from_settings
from .core.control import ModelControl, load_roots
from .core.dataplane import DataPlane
from .core.model_config import (
    ConfigError,
    ModelSpec,
    may_start_empty,
    read_model_config_file,
    specs_from_settings,
    with_runtime,
)
from .core.pipeline import Pipeline
from .core.remote import ModelFetcher
from .core.repository import ModelManager
from .core.servable import Runtime
from .errors import Code, ServingError
from .ops.accesslog import AccessLog
from .ops.metrics import Metrics, RequestMetrics
from .ops.requestlog import RequestLogger, worker_index
from .ops.shadow import ShadowRunner
from .ops.statistics import Statistics
from .ops.tracing import tracing_from_settings
from .platform.modelmesh import ModelRuntime
from .platform.workers import START_FAILED, Peers, close_listeners, metric_state
from .protocols.kserve.rpc import InferenceService
from .protocols.router import RestApi
from .protocols.tfserving.rpc import ModelService, PredictionService
from .settings import Settings
from .tools.ui import StatusApi
from .tools.warmup import Warmup
from .transport.auth import TokenAuth, read_token_file
from .transport.http import (
    KEPT_HEADERS,
    DeadlineWheel,
    Deferred,
    HttpConnection,
    HttpLimits,
    Request,
    Response,
)
from .transport.rpc.decode import add_health
from .transport.rpc.server import listen, new_server

log = logging.getLogger("serving")

#: In a drain, an idle keep-alive connection is closed once it had no bytes for this long: a client that
#: just had an answer gets the time to send its next request, which is answered with `Connection: close`,
#: instead of finding its connection closed under it.
DRAIN_IDLE_S = 0.5
#: How often a worker looks at its siblings' readiness (under a supervisor).
SIBLINGS_POLL_S = 0.2
#: The longest a reload may take in a sibling worker (model loads and warm-ups).
RELOAD_TIMEOUT_S = 3600.0


class Server:
    """Everything one serving process runs; `start()` then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.request_metrics = RequestMetrics()
        self.runtime = Runtime(options_from_settings(settings), batch_observers=self.request_metrics.batch_observer)
        self.dataplane = DataPlane(self.runtime, settings.rate_limit)
        token = read_token_file(settings.token_file) if settings.token_file else settings.token
        self.auth = TokenAuth(token, max_skew_s=settings.token_max_skew_seconds) if token else None
        # The calls that load, unload or reconfigure: the admin token when one is set, else the token.
        admin = read_token_file(settings.admin_token_file) if settings.admin_token_file else settings.admin_token
        self.admin_auth = TokenAuth(admin, max_skew_s=settings.token_max_skew_seconds) if admin else None
        warmup = Warmup(self.dataplane, iterations=settings.num_request_iterations_for_warmup,
                        service_model=settings.model_name, warm_up_data_path=settings.warm_up_data_path)
        self.manager = ModelManager(
            runtime=self.runtime,
            fetcher=ModelFetcher(settings.model_cache_dir, settings.model_archive_max_bytes,
                                 settings.s3_endpoint_url, settings.gcs_endpoint_url, settings.model_archive_max_files),
            load_threads=settings.load_threads,
            allow_version_labels_for_unavailable_models=settings.allow_version_labels_for_unavailable_models,
            warmup=warmup,
        )
        self.manager.may_be_empty = may_start_empty(settings)
        if settings.traffic_sticky_header:
            self.manager.sticky_header = settings.traffic_sticky_header.lower()
            KEPT_HEADERS.add(self.manager.sticky_key)  # the HTTP parser keeps its value
        # ModelMesh loads and unloads: its runtime port implies explicit model control.
        mode = "explicit" if settings.modelmesh_port else settings.model_control_mode
        self.control = ModelControl(mode, self.manager, lambda specs: with_runtime(specs, settings))
        self.control.load_timeout_s = settings.model_loading_timeout_ms / 1000
        self.pipeline = Pipeline(self.manager, self.dataplane)
        self.pipeline.observe(self.request_metrics)
        self.access_log = AccessLog.open(settings.access_log, sample_rate=settings.access_log_sample_rate,
                                         health=settings.access_log_health, path=settings.access_log_file)
        #: Under a supervisor (--workers): the sibling workers, for readiness, metrics, statistics, reloads.
        self.peers = Peers.from_env()
        if self.peers is not None:
            self.manager.siblings_ready = self.peers.all_ready
            self.control.siblings = self._control_siblings
            peers = self.peers  # a worker started later loads what the others have loaded then
            self.control.changed = lambda: peers.save_reload([m.spec for m in self.manager.models.values()])
        # Sampled predict calls of the models whose config asks for it (serving/ops/requestlog.py).
        self.request_log = RequestLogger(self.manager, worker_index(), settings.request_log_max_bytes)
        self.pipeline.observe(self.request_log)
        self.shadow = ShadowRunner(self.manager, self.dataplane, self.request_log)  # serving/ops/shadow.py
        self.pipeline.observe(self.shadow)
        self.statistics = Statistics(self.manager, self.peers)  # Triton's statistics extension (KServe V2)
        self.pipeline.observe(self.statistics)
        self.status = StatusApi(self)  # the status page's JSON (serving/ui)
        self.tracing = tracing_from_settings(settings)
        if self.tracing is not None:
            self.pipeline.observe(self.tracing)
        self.specs: list[ModelSpec] = []
        self.connections: set[HttpConnection] = set()
        self.api: RestApi | None = None
        self.http: asyncio.Server | None = None
        #: The HTTP connection factory; stop() also serves with it the connections queued on the listener.
        self.http_connection: Callable[[], HttpConnection] | None = None
        self.internal: asyncio.Server | None = None  # the Unix socket the sibling workers ask
        self.grpc: grpc.aio.Server | None = None
        self.modelmesh: grpc.aio.Server | None = None  # the ModelMesh runtime API (--modelmesh_port)
        self.health: health_aio.HealthServicer | None = None
        self.health_ready = False  # what gRPC health says now
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()
        self.started = False  # the start-up loads are done

    def default_model(self) -> str | None:
        return self.specs[0].name if self.specs else None

    async def start(self) -> None:
        self.specs = specs_from_settings(self.settings)  # a bad config stops the start here, before any port opens
        self.control.roots = load_roots(self.settings, self.specs)
        startup = self.control.startup(self.specs, self.settings.load_model)
        reloaded = self.peers.saved_reload() if self.peers is not None else None
        if reloaded is not None:  # a worker started after a reload (or a load) serves what its siblings serve
            self.specs = startup = with_runtime(reloaded, self.settings)
        s = self.settings
        metrics = Metrics(self.manager, self.request_metrics, self.request_log, self.shadow)
        self.api = api = RestApi(
            self.manager, self.pipeline, timeout_s=s.rest_api_timeout_in_ms / 1000,
            keepalive_s=s.keepalive_ms / 1000, default_model=self.default_model, auth=self.auth,
            metrics=metrics, statistics=self.statistics, peers=self.peers, control=self.control,
            status=self.status, admin_auth=self.admin_auth,
        )
        limits = HttpLimits(s.rest_api_max_body_bytes, s.rest_api_read_timeout_seconds, s.rest_api_idle_timeout_seconds,
                            s.rest_api_max_header_bytes, s.max_connections)
        loop = asyncio.get_running_loop()
        wheel = DeadlineWheel(loop)
        self.tasks.append(asyncio.create_task(self._sweep_connections()))
        self.tasks.append(asyncio.create_task(self.status.sampler.run()))
        if self.peers is not None:
            internal = InternalApi(self, metrics)
            path = self.peers.socket_path(self.peers.index)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by this worker's predecessor
            self.internal = await loop.create_unix_server(
                lambda: HttpConnection(internal, limits, set(), wheel), path)
            self.tasks.append(asyncio.create_task(self._watch_siblings()))
            # A worker joins the shared ports once its models are loaded: a restarted worker must not take
            # connections (SO_REUSEPORT gives it its share at once) that it can only answer 503.
            await self.manager.apply(startup)
            latest = self.peers.saved_reload()
            if latest is not None and latest != reloaded:  # a reload its siblings applied while it loaded
                await self.apply_reload(latest)
        self.http_connection = lambda: HttpConnection(api, limits, self.connections, wheel, access_log=self.access_log)
        self.http = await loop.create_server(self.http_connection, s.host, s.rest_api_port, backlog=1024,
                                             reuse_port=self.peers is not None)
        for sock in self.http.sockets:
            log.info("HTTP (TF Serving REST API) listening on %s", sock.getsockname()[:2])
        if s.port:
            await self._start_grpc()
        if s.modelmesh_port:
            await self._start_modelmesh()
        if self.peers is None:  # one process: liveness and the status routes answer while the models load
            await self.manager.apply(startup)
        self.started = True
        # What start-up made lives as long as the process: keep it out of the collector's full passes,
        # which otherwise stall the event loop for tens of ms under load (a p99 spike).
        gc.collect()
        gc.freeze()
        await self._update_health()
        polled = s.model_control_mode == "poll"  # none and explicit: nothing changes but when asked
        if polled and s.file_system_poll_wait_seconds > 0:
            self.tasks.append(asyncio.create_task(self._poll_files(s.file_system_poll_wait_seconds)))
        if polled and s.model_config_file and s.model_config_file_poll_wait_seconds > 0:
            self.tasks.append(asyncio.create_task(self._poll_config(s.model_config_file_poll_wait_seconds)))

    async def _start_grpc(self) -> None:
        s = self.settings
        timeout_s = s.rest_api_timeout_in_ms / 1000
        services: list[Any] = [PredictionService(self.manager, self.pipeline, timeout_s),
                               ModelService(self.manager, self.reload, self.control.roots),
                               InferenceService(self.manager, self.pipeline, timeout_s, self.statistics,
                                                self.control)]
        self.grpc = new_server(services, auth=self.auth, admin_auth=self.admin_auth, access_log=self.access_log,
                               reuse_port=self.peers is not None, max_message_bytes=s.grpc_max_message_bytes)
        self.health = health_aio.HealthServicer()
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        add_health(self.grpc, self.health)
        await listen(self.grpc, s.host, s.port, "gRPC port",
                     "TF Serving PredictionService + ModelService, KServe V2, health")

    async def _start_modelmesh(self) -> None:
        s = self.settings
        runtime = ModelRuntime(self.control, self.manager, s, copies=self.peers.count if self.peers else 1,
                               started=lambda: self.started)
        self.modelmesh = new_server([runtime], auth=self.auth, admin_auth=self.admin_auth,
                                    access_log=self.access_log, reuse_port=self.peers is not None)
        await listen(self.modelmesh, s.modelmesh_host, s.modelmesh_port, "the ModelMesh port",
                     "ModelMesh mmesh.ModelRuntime")

    async def _control_siblings(self, verb: str, arg: Any) -> None:
        """A load or unload in the sibling workers (ModelControl.siblings); a worker started later serves
        the models loaded now."""
        assert self.peers is not None
        there = await self.peers.ask("POST", "/_worker/control", pickle.dumps((verb, arg)),
                                     timeout=RELOAD_TIMEOUT_S)
        failed = [f"worker {i}: {body.decode(errors='replace')}" for i, (status, body) in sorted(there.items())
                  if status != 200]
        if failed:
            raise ServingError(Code.UNKNOWN, "; ".join(failed))

    async def reload(self, specs: list[ModelSpec]) -> None:
        """Serve a new model config (ModelService.HandleReloadConfigRequest), as the file poller does; under a
        supervisor, in every worker, returning once all of them have applied it."""
        if self.peers is None:
            await self.apply_reload(specs)
            return
        self.peers.save_reload(specs)
        here, there = await asyncio.gather(self.apply_reload(specs), self.peers.ask(
            "POST", "/_worker/reload", pickle.dumps(specs), timeout=RELOAD_TIMEOUT_S),
            return_exceptions=True)
        if isinstance(here, BaseException):
            raise here
        assert not isinstance(there, BaseException)
        failed = [f"worker {i}: {body.decode(errors='replace')}" for i, (status, body) in sorted(there.items())
                  if status != 200]
        if failed:
            raise ConfigError("; ".join(failed))

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

    async def _update_health(self) -> None:
        """grpc.health.v1: SERVING while every configured model has an AVAILABLE version (as /readyz), in
        every worker under a supervisor."""
        if self.peers is not None and not (self.api is not None and self.api.draining):  # Peers.leave() said it
            self.peers.mark(self.manager.ready_here(), starting=not self.started)
        if self.health is not None:
            self.health_ready = ready = self.manager.ready()
            await self.health.set("", health_pb2.HealthCheckResponse.SERVING if ready
                                  else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _watch_siblings(self) -> None:
        """Readiness that depends on the other workers changes without this one doing anything: gRPC health
        follows it within SIBLINGS_POLL_S (the HTTP routes read the shared bytes on every request)."""
        assert self.peers is not None
        while True:
            await asyncio.sleep(SIBLINGS_POLL_S)
            if self.health is not None and self.manager.ready() != self.health_ready:
                await self._update_health()
            elif not (self.api is not None and self.api.draining):  # draining: Peers.leave() said it
                self.peers.mark(self.manager.ready_here(), starting=not self.started)

    async def _sweep_connections(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)

    async def _poll_files(self, every: int) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.manager.poll()
                await self._update_health()
            except Exception:  # noqa: BLE001 - polling must go on
                log.exception("file system poll failed")

    async def _poll_config(self, every: int) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                specs = with_runtime(read_model_config_file(self.settings.model_config_file), self.settings)
            except ConfigError as e:
                log.error("model config file not applied, still serving the previous one: %s", e)
                continue
            if specs == self.specs:
                continue
            log.info("model config file changed: applying it")
            self.specs = specs
            started = time.monotonic()
            try:
                await self.manager.apply(specs)
            except ConfigError as e:
                log.error("model config applied in part: %s", e)
            log.info("model config file applied in %.2f s", time.monotonic() - started)
            await self._update_health()

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
        if self.api is not None:
            self.api.draining = True
        if self.peers is not None:  # the other workers answer for this one while the supervisor restarts it
            self.peers.leave()
        if self.health is not None:
            await self.health.enter_graceful_shutdown()

    async def stop(self, deadline: float | None = None) -> None:
        """Stop accepting, answer every request already received (until `deadline`), then unload."""
        if deadline is None:
            deadline = time.monotonic() + self.settings.grace_period_s()
        log.info("draining: no new connections; finishing requests in flight")
        await self._not_ready()
        if self.http is not None and self.http_connection is not None:
            queued = await close_listeners(self.http)
            if queued:
                log.info("draining: serving the %d connections queued on the listener", len(queued))
            loop = asyncio.get_running_loop()
            for conn in queued:  # into self.connections before _finish_connections looks
                try:
                    await loop.connect_accepted_socket(self.http_connection, conn)
                except OSError as e:
                    log.warning("a connection queued on the listener could not be served: %s", e)
                    conn.close()
        grpc_stopped = None
        if self.grpc is not None:  # refuses new calls, lets calls in flight finish
            grpc_stopped = asyncio.create_task(self.grpc.stop(max(deadline - time.monotonic(), 0.1)))
        await self._finish_connections(deadline)
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

    async def _finish_connections(self, deadline: float) -> None:
        """Answer what each connection was sent, the last answer with `Connection: close`, until `deadline`."""
        # A connection the listener accepted in this pass of the event loop is in self.connections once its
        # connection_made() has run, in the next one: an empty set before that would end the drain without it.
        await asyncio.sleep(0)
        while self.connections and time.monotonic() < deadline:
            now = time.monotonic()
            for conn in list(self.connections):
                # Polled, not marked once: a keep-alive client may send another request after its answer.
                if conn.pending or (conn.request_started is None and now - conn.last_activity >= DRAIN_IDLE_S):
                    conn.shutdown()
            await asyncio.sleep(0.02)
        if self.connections:
            log.warning("grace period over: closing %d HTTP connections with requests unanswered",
                        len(self.connections))
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()


class InternalApi:
    """The routes a worker answers its sibling workers on, over its Unix socket in the supervisor's
    folder (never on the TCP port): its own metrics and statistics, and its part of a reload."""

    def __init__(self, server: Server, metrics: Metrics) -> None:
        self.server, self.metrics = server, metrics

    def __call__(self, request: Request) -> Response | Deferred:
        route = (request.method, request.path)
        if route == ("GET", "/_worker/metrics"):
            return Response(200, orjson.dumps(metric_state(self.metrics.registry.collect())))
        if route == ("GET", "/_worker/ui"):
            return Response(200, orjson.dumps(self.server.status.local()))
        if route == ("POST", "/_worker/statistics"):
            query = orjson.loads(request.body)
            try:
                return Response(200, orjson.dumps(self.server.statistics.report(query["name"], query["version"])))
            except ServingError as e:
                return Response(e.http_status, orjson.dumps({"error": e.message}))
        if route == ("POST", "/_worker/reload"):
            specs = pickle.loads(request.body)  # noqa: S301 - a sibling worker, over a socket only this user reaches
            return Deferred(asyncio.ensure_future(self.server.apply_reload(specs)), _reloaded, None,
                            time.monotonic() + RELOAD_TIMEOUT_S, lambda: Response(504, b"reload timed out"))
        if route == ("POST", "/_worker/control"):
            verb, arg = pickle.loads(request.body)  # noqa: S301 - as above
            return Deferred(asyncio.ensure_future(self.server.control.apply(verb, arg)), _reloaded, None,
                            time.monotonic() + RELOAD_TIMEOUT_S, lambda: Response(504, b"load timed out"))
        return Response(404, b'{"error": "no such worker route"}')


def _reloaded(future: asyncio.Future[None], _: Any) -> Response:
    failure = None if future.cancelled() else future.exception()
    if failure is None and not future.cancelled():
        return Response(200, b"{}")
    return Response(409, str(failure or "cancelled").encode())


async def serve(settings: Settings) -> int:
    # Under a supervisor, a start that cannot succeed says so, and is not restarted.
    failed = START_FAILED if Peers.from_env() is not None else 1
    try:
        server = Server(settings)
    except ValueError as e:
        log.error("%s", e)
        return failed
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not server.stopping.is_set():
            server.stopping.set()
            return
        # A second signal: the operator does not want to wait. Requests in flight stay unanswered.
        log.warning("%s during the drain: exiting now (status %d)", sig.name, 128 + sig)
        logging.shutdown()
        os._exit(128 + sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await server.start()
    except ConfigError as e:
        log.error("%s", e)
        await server.stop()
        return failed
    except OSError as e:
        log.error("cannot listen: %s", e)
        return failed
    await server.stopping.wait()
    await server.drain()
    return 0


def run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
