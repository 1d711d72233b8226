"""Typed settings, each declared once: name, type, default, unit, help, environment variable and group.

From the declaration come the flags and `serving --help` (serving/cli.py), the SERVING_<NAME>
environment variables (`Settings.apply_env`) and README.md's flag table (`markdown_table`; a test fails
when the README differs: `python -m serving.settings README.md` rewrites it).

Order: defaults < the cloud service JSON (--service_config) < environment (MODEL_NAME, MODEL_BASE_PATH
as the TF Serving container reads them, SERVING_* for the rest) < command-line flags; a
--batching_parameters_file then overrides the batching settings.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import Field, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_PREFIX = "SERVING_"
#: Set by the supervisor (--workers) in each worker's environment: "<index>,<count>,<folder>".
SUPERVISED_ENV = "SERVING_SUPERVISED"
#: --model_archive_max_bytes' default: the largest download, and the most an archive may unpack to.
MAX_BYTES = 16 * 1024 ** 3
#: --model_archive_max_files' default: the most entries (files and folders) an archive may hold. Bytes alone
#: let 100,000 empty files through in a 628 KB archive.
MAX_FILES = 10_000

# Group name -> title of its section in `serving --help`, in the order they are shown.
GROUPS = {
    "network": "listening sockets and shutdown",
    "http": "the HTTP server (TF Serving REST, KServe V2, the cloud processor protocol)",
    "models": "which models are served and how they are loaded",
    "runtime": "devices and framework threads of the models",
    "batching": "dynamic batching, per model queue",
    "modelmesh": "the ModelMesh model runtime (mmesh.ModelRuntime, --modelmesh_port)",
    "cloud": "the cloud service form (--service_config)",
    "queue": "the asynchronous service: its queues and the subscriber (`metadata.type: Async`)",
    "auth": "access tokens",
    "logging": "what the server logs",
}


def setting(default: T, help: str, *, group: str, unit: str = "", env: str = "", shown_default: str = "") -> T:
    """A settings field with its documentation; `env` names a variable read besides SERVING_<NAME>,
    `shown_default` replaces the default where the raw value would say less (an empty string)."""
    assert group in GROUPS, group
    meta = {"help": help, "group": group, "unit": unit, "env": env, "shown_default": shown_default}
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    # network
    rest_api_port: int = setting(8080, "HTTP port", group="network")
    port: int = setting(
        9090, "gRPC port: TF Serving PredictionService and ModelService, grpc.health.v1; 0 turns gRPC off",
        group="network")
    host: str = setting("0.0.0.0", "address to listen on", group="network")
    grpc_max_message_bytes: int = setting(
        64 * 1024 * 1024, "largest gRPC message received or sent", group="network", unit="bytes")
    grpc_compression: str = setting(
        "none", "compression of the gRPC port's answers: `none`, `gzip` or `deflate`, for the clients whose "
        "`grpc-accept-encoding` names it (one naming only the other gets that one, one naming neither none); "
        "compressed requests are read whatever this says", group="network")
    grpc_transport: str = setting(
        "native", "HTTP/2 of the gRPC ports: `native` (our own, serving/transport/h2, on the server's event loop) "
        "or `grpcio` (grpc.aio's server)", group="network")
    grpc_max_connection_idle_seconds: float = setting(
        300.0, "a native gRPC connection with no call open this long is told GOAWAY and closed (0: never)",
        group="network", unit="s")
    grpc_max_connection_age_seconds: float = setting(
        0.0, "a native gRPC connection older than this is drained: GOAWAY, its calls finish, then it closes "
        "(0: never; spreads long-lived clients over new workers or replicas)", group="network", unit="s")
    workers: str = setting(
        "1", "server processes sharing the HTTP and gRPC ports (SO_REUSEPORT), each with its own copy of the "
        "models, under a supervisor that restarts them; `0` or `auto`: the cores this process may use (CPU "
        "affinity and cgroup quota)", group="network")
    drain_delay_seconds: float = setting(
        0.0, "on SIGTERM, keep accepting and serving this long while readiness answers draining, so load "
        "balancers (Kubernetes endpoints) stop sending before the listener closes", group="network", unit="s")
    termination_grace_period_seconds: float = setting(
        30.0, "on SIGTERM, the longest drain, its delay included: requests received are answered within it, "
        "then the process exits 0; as the pod's `terminationGracePeriodSeconds`", group="network", unit="s")
    drain_timeout_seconds: float = setting(
        -1.0, "alias of `--termination_grace_period_seconds` (its older name), used when that one is left at "
        "its default", group="network", unit="s", shown_default="unset")
    # http
    rest_api_timeout_in_ms: int = setting(
        30000, "deadline of a REST request (504 past it)", group="http", unit="ms")
    rest_api_max_body_bytes: int = setting(
        64 * 1024 * 1024, "largest request body, also after gzip or deflate decompression (413 above)",
        group="http", unit="bytes")
    http_compression_min_bytes: int = setting(
        1024, "an answer of at least this size is compressed (gzip or deflate) when the request's "
        "`Accept-Encoding` asks for it; 0: answers are never compressed", group="http", unit="bytes")
    rest_api_max_header_bytes: int = setting(
        65536, "largest request header block: request line and headers (431 above)", group="http", unit="bytes")
    rest_api_read_timeout_seconds: float = setting(
        30.0, "a request whose bytes stall longer than this gets 408", group="http", unit="s")
    rest_api_idle_timeout_seconds: float = setting(
        75.0, "an idle keep-alive connection is closed after this", group="http", unit="s")
    max_connections: int = setting(
        10000, "open HTTP connections at once; one more is answered 503 and closed", group="http",
        unit="connections")
    # models
    model_name: str = setting(
        "model", "model name in the single-model form", group="models", env="MODEL_NAME")
    model_base_path: str = setting(
        "", "base path of the single model, whose children 1/, 2/, ... are versions; from the "
        "environment, as in the TF Serving image, it is `${MODEL_BASE_PATH}/${MODEL_NAME}`",
        group="models", env="MODEL_BASE_PATH")
    model_platform: str = setting(
        "", "processor of the single model (`xgboost`, `lightgbm`, `linear`, ...); detected from the files "
        "when absent", group="models", shown_default="detected")
    model_config_file: str = setting(
        "", "a `ModelServerConfig` text file (model_config.pbtxt) listing the models; takes precedence over "
        "the single-model flags", group="models")
    model_config_file_poll_wait_seconds: int = setting(
        0, "re-read the config file every N s; 0 reads it once", group="models", unit="s")
    file_system_poll_wait_seconds: int = setting(
        1, "look for new / removed version directories every N s; 0: only at start", group="models", unit="s")
    allow_version_labels_for_unavailable_models: bool = setting(
        False, "a *new* label may name a version that is not AVAILABLE yet", group="models")
    num_request_iterations_for_warmup: int = setting(
        1, "times each TF Serving warm-up record is replayed", group="models")
    load_threads: int = setting(2, "threads loading models", group="models")
    model_cache_dir: str = setting(
        "", "where base paths that are URLs (`http(s)://` archives or model files) or local archives are "
        "downloaded and unpacked", group="models", shown_default="~/.cache/serving-engine/models")
    s3_endpoint_url: str = setting(
        "", "the S3 endpoint of `s3://` base paths (MinIO, a local store); else `AWS_ENDPOINT_URL_S3` / "
        "`AWS_ENDPOINT_URL`, else AWS's; credentials and region from the standard AWS variables",
        group="models", shown_default="AWS")
    gcs_endpoint_url: str = setting(
        "", "the Google Cloud Storage endpoint of `gs://` base paths (an emulator, read anonymously); else "
        "`STORAGE_EMULATOR_HOST`, else Google's with its default credentials", group="models",
        shown_default="Google")
    model_archive_max_bytes: int = setting(
        MAX_BYTES, "the largest download, and the most an archive may unpack to (archive bombs)",
        group="models", unit="bytes")
    model_archive_max_files: int = setting(
        MAX_FILES, "the most files and folders an archive may hold (or files an `s3://` / `gs://` prefix): one "
        "more and it is refused before anything is unpacked (archive bombs of many small files)",
        group="models", unit="entries")
    traffic_sticky_header: str = setting(
        "", "an HTTP header (or gRPC metadata key), e.g. a user id, whose value picks a model's weighted version "
        "by hash, so the same value always lands on the same version; none: a random pick per request",
        group="models", shown_default="none")
    model_control_mode: str = setting(
        "poll", "as Triton's: `none` loads every configured model at start and never changes; `poll` also "
        "follows the file system and config polling; `explicit` loads only the `--load_model` models at start "
        "and others when asked (`POST /v2/repository/models/<m>/load`, gRPC `RepositoryModelLoad`); a server "
        "in explicit mode may start with no model; `lazy` knows every configured model at start and loads each "
        "on its first request, unloading the least recently used under `--model_memory_capacity_bytes`",
        group="models")
    load_model: str = setting(
        "", "in explicit mode, the models to load at start: names of the config (comma-separated or the flag "
        "repeated), `*` for all; none: start with no model", group="models", shown_default="none")
    pin_model: str = setting(
        "", "models (comma-separated or the flag repeated) loaded at start in explicit and lazy mode and never "
        "unloaded to make room; as `pinned: true` in model_config.pbtxt", group="models", shown_default="none")
    lazy_load_timeout_seconds: float = setting(
        60.0, "in lazy mode, the longest a request waits for its model's load (less when its own deadline is "
        "sooner): 503 past it, and the load goes on", group="models", unit="s")
    model_min_residency_seconds: float = setting(
        30.0, "a model loaded less than this long ago is not unloaded to make room for another (against load / "
        "unload thrash)", group="models", unit="s")
    model_load_roots: str = setting(
        "", "comma-separated folders (and URL prefixes) that a load request may name a model path in: the V2 "
        "repository API's `path`, ModelMesh's `modelPath`, a `ReloadConfigRequest`'s base paths; a path outside "
        "them, after following links, is refused before anything reads it", group="models",
        shown_default="the configured base paths, the model cache dir, ModelMesh's /models")
    # runtime
    device: str = setting(
        "cpu", "device of the models: `cpu`, `cuda`, `cuda:N`, `auto` (CUDA when present); CUDA asked for "
        "where there is none fails the load with a message", group="runtime")
    tensorflow_intra_op_parallelism: int = setting(
        0, "threads inside one TensorFlow op (also ONNX Runtime's and torch's intra-op threads); 0 = the "
        "framework's default", group="runtime")
    tensorflow_inter_op_parallelism: int = setting(
        0, "threads running independent TensorFlow / ONNX ops; 0 = the framework's default", group="runtime")
    gpu_memory_limit_mb: int = setting(
        0, "GPU memory a TensorFlow model may take; 0: memory growth, as needed", group="runtime", unit="MiB")
    fp16: bool = setting(
        False, "run TorchScript models and ExportedPrograms (`torch_export`) in half precision on CUDA",
        group="runtime")
    onnx_graph_optimization_level: str = setting(
        "all", "ONNX Runtime graph optimisation: `disabled`, `basic`, `extended`, `all`", group="runtime")
    # modelmesh
    modelmesh_port: int = setting(
        0, "gRPC port of the ModelMesh model runtime API (ModelMesh's convention: 8085); 0: off. A server with "
        "it may start with no model; ModelMesh loads and unloads them", group="modelmesh")
    modelmesh_host: str = setting(
        "localhost", "address of the ModelMesh port: ModelMesh reaches its runtime over the pod's loopback, so "
        "nothing outside the pod can load or unload models", group="modelmesh")
    model_memory_capacity_bytes: int = setting(
        0, "the memory ModelMesh may fill with models here, and the budget of `--model_control_mode=lazy` (and "
        "of explicit mode when set), shared out among the workers: a load that would pass it first unloads the "
        "least recently used idle models; 0: the container's memory (next flag, else the cgroup limit, else the "
        "machine's) less this process's size and `--memory_headroom_bytes` (explicit mode: no budget)",
        group="modelmesh", unit="bytes", shown_default="derived")
    container_memory_bytes: int = setting(
        0, "the container's memory, as the Downward API gives it (`requests.memory`); 0: the cgroup limit",
        group="modelmesh", unit="bytes", env="CONTAINER_MEM_REQ_BYTES", shown_default="cgroup")
    memory_headroom_bytes: int = setting(
        256 * 1024 * 1024, "memory kept out of the model capacity for requests in flight", group="modelmesh",
        unit="bytes")
    model_loading_timeout_ms: int = setting(
        90_000, "the longest a model load may take, as told to ModelMesh", group="modelmesh", unit="ms")
    default_model_size_bytes: int = setting(
        1024 * 1024, "the size ModelMesh assumes of a model not yet loaded whose disk size it does not know",
        group="modelmesh", unit="bytes")
    # batching
    enable_batching: bool = setting(
        True, "dynamic batching; adaptive, so it costs nothing when idle (`=false`: one call per request)",
        group="batching")
    batching_parameters_file: str = setting(
        "", "TF Serving `BatchingParameters` text file; overrides the batching flags", group="batching")
    max_batch_size: int = setting(
        16, "most rows in one batch; a larger request is served in pieces, round robin", group="batching", unit="rows")
    batch_timeout_micros: int = setting(
        50_000, "how long a queued request waits for a fuller batch *while other batches run*",
        group="batching", unit="µs")
    max_queue_size: int = setting(
        64, "requests waiting per model queue; more are refused at once (503 / 450)", group="batching",
        unit="requests")
    worker_threads: int = setting(
        5, "batches computed at once per model queue, not a thread count (the name is the service config's "
        "`metadata.rpc.worker_threads`); the shared prediction pool has twice as many threads",
        group="batching", unit="batches")
    allowed_batch_sizes: str = setting(
        "", "comma-separated sizes a batch is padded up to; the last must equal `--max_batch_size`",
        group="batching")
    pad_variable_length_inputs: bool = setting(
        False, "zero-pad inputs whose non-batch dims differ so they share a batch", group="batching")
    inline_batch_micros: int = setting(
        1000, "a model whose batches average under this much compute runs them on the event-loop thread "
        "instead of the prediction pool; 0 = always in the pool", group="batching", unit="µs")
    # cloud
    service_config: str = setting(
        "", "the cloud service JSON: name, processor, model_path, warm_up_data_path, token, metadata.rpc",
        group="cloud")
    warm_up_data_path: str = setting(
        "", "warm-up requests of the service's model: `.bin` (a processor PredictRequest) or `.txt` (JSON "
        "lines)", group="cloud")
    keepalive_ms: int = setting(
        5000, "deadline of a cloud processor protocol request (408 past it)", group="cloud", unit="ms")
    rate_limit: float = setting(
        0.0, "requests accepted by this instance; 0 = no limit (429 over it)", group="cloud",
        unit="requests/s")
    io_threads: int = setting(
        4, "read from the service config for compatibility; one event loop does all I/O", group="cloud")
    # queue
    async_service: bool = setting(
        False, "host the service's input queue at `/api/predict/<model_name>` and its sink at "
        "`/api/predict/<model_name>/sink` (the cloud queue service's API) and subscribe to the input: each item "
        "is run as a cloud-route call of the model and answered to the sink; the service JSON's "
        "`metadata.type: Async` sets it", group="queue")
    queue_store: str = setting(
        "", "where the queues are kept: `sqlite:PATH` (WAL; a put is on disk before its index is answered) or "
        "`redis://host:port/db` (the queues in Redis, shared with every queue service and engine on it)",
        group="queue", shown_default="sqlite: queues/<model_name>.db beside the model cache dir")
    queue_window: int = setting(
        0, "items the subscriber works on at once (the cloud's subscription window); 0: `--max_batch_size`",
        group="queue", unit="items", shown_default="--max_batch_size")
    queue_max_length: int = setting(
        10000, "items the input queue holds; a put past it is refused 429", group="queue", unit="items")
    queue_sink_max_length: int = setting(
        10000, "items the sink holds; while it is full the subscriber takes no input", group="queue", unit="items")
    queue_max_payload_bytes: int = setting(
        8 * 1024 * 1024, "largest queue item; a bigger put is refused 413", group="queue", unit="bytes")
    queue_endpoint: str = setting(
        "", "`http://host:port` of a queue service (`serving queue`): subscribe to `<model_name>` there (its "
        "WebSocket API, `--queue_window` items at once) and answer to its `<model_name>/sink` instead of hosting "
        "the queues", group="queue", shown_default="none: host them")
    queue_token: str = setting(
        "", "the token sent to `--queue_endpoint` (`Authorization`)", group="queue", shown_default="--token")
    # auth
    token: str = setting(
        "", "access token required on predict routes and gRPC calls; it shows in `ps`: prefer "
        "`--token_file` or the environment", group="auth")
    token_file: str = setting(
        "", "read the access token from the first line of this file instead of `--token`", group="auth")
    admin_token: str = setting(
        "", "token required on the calls that load, unload or reconfigure (the V2 repository API, gRPC "
        "`RepositoryModelLoad`/`Unload`, `HandleReloadConfigRequest`, the ModelMesh port) instead of `--token`; "
        "unset: those calls need `--token` when one is set, and are open when none is", group="auth",
        shown_default="--token")
    admin_token_file: str = setting(
        "", "read the admin token from the first line of this file instead of `--admin_token`", group="auth")
    token_max_skew_seconds: float = setting(
        900.0, "a signed (`EAS ...`) request whose `Date` header is further than this from the server's "
        "clock is refused 401; 0 turns the check off", group="auth", unit="s")
    # logging
    request_log_max_bytes: int = setting(
        256 * 1024 * 1024, "a request log file (logging_config, the service JSON's request_log) is closed and "
        "the next one begun past this size", group="logging", unit="bytes")
    log_level: str = setting("INFO", "`DEBUG`, `INFO`, `WARNING` or `ERROR`", group="logging")
    log_format: str = setting(
        "text", "the server's own log on standard error: `text`, or `json` (one object per line: time, level, "
        "logger, message, request_id)", group="logging")
    access_log: str = setting(
        "json", "a line for every failed HTTP request (status 400 or more) and gRPC call (code not OK), every "
        "one slower than `--access_log_slow_ms` and a sample of the rest (`--access_log_sample_rate`), as "
        "`json` or `text`; `all`: a json line for every request and call; `off`", group="logging")
    access_log_slow_ms: float = setting(
        1000.0, "a request that takes this long or longer is always in the access log; 0: every request",
        group="logging", unit="ms")
    access_log_sample_rate: float = setting(
        0.01, "the share of the other requests (succeeded, and faster than `--access_log_slow_ms`) written to "
        "the access log, from 0 to 1", group="logging")
    access_log_health: bool = setting(
        False, "also log /healthz, /readyz, /metrics and /v2/health/*", group="logging")
    access_log_file: str = setting(
        "", "append the access log to this file instead of standard output", group="logging",
        shown_default="standard output")
    otel_exporter_otlp_endpoint: str = setting(
        "", "export an OpenTelemetry span per inference call (with its queue wait and batch) over OTLP/HTTP to "
        "this base URL, e.g. `http://collector:4318`; without it, the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / "
        "`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; needs the `otel` extra", group="logging", shown_default="none")

    def grace_period_s(self) -> float:
        """--termination_grace_period_seconds, or its older alias --drain_timeout_seconds where only that is
        set."""
        default = next(f.default for f in fields(Settings) if f.name == "termination_grace_period_seconds")
        if self.termination_grace_period_seconds == default and self.drain_timeout_seconds >= 0:
            return self.drain_timeout_seconds
        return self.termination_grace_period_seconds

    def apply_env(self, environ: Mapping[str, str] | None = None) -> None:
        """Read the TF Serving container's variables (MODEL_NAME, MODEL_BASE_PATH), then SERVING_<NAME>;
        a value that does not parse is a ValueError naming the variable."""
        env = os.environ if environ is None else environ
        for f in fields(self):
            extra = f.metadata["env"]
            if extra and env.get(extra):
                value = env[extra]
                if f.name == "model_base_path":
                    # As the TF Serving image: the model lives at ${MODEL_BASE_PATH}/${MODEL_NAME}.
                    value = os.path.join(value, self.model_name)
                try:
                    setattr(self, f.name, convert(f, value))
                except ValueError as e:
                    raise ValueError(f"environment {extra}: {e}") from e
        for f in fields(self):
            key = env_name(f)
            if key in env:
                try:
                    setattr(self, f.name, convert(f, env[key]))
                except ValueError as e:
                    raise ValueError(f"environment {key}: {e}") from e

    def apply_service_config(self, path: str) -> None:
        """Read the cloud service JSON: name, processor, model_path, warm_up_data_path, token and
        metadata.rpc.* written nested ({"rpc": {...}}) or as dotted keys ("rpc.keepalive")."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read service config {path}: {e}") from e
        if not isinstance(doc, dict):
            raise ValueError(f"service config {path}: expected a JSON object")
        flat = _flatten(doc)
        if "name" in flat:
            self.model_name = str(flat["name"])
        if "model_path" in flat:
            self.model_base_path = str(flat["model_path"])
        if "processor" in flat:
            self.model_platform, self.device = parse_processor_code(str(flat["processor"]))
        for key in ("warm_up_data_path", "token"):
            if key in flat:
                setattr(self, key, str(flat[key]))
        self._apply_queue_keys(path, flat)
        rpc = {k[len("metadata.rpc."):]: v for k, v in flat.items() if k.startswith("metadata.rpc.")}
        by_name = {f.name: f for f in fields(self)}
        for key, attr, scale in RPC_KEYS:
            if key in rpc:
                try:
                    setattr(self, attr, _scaled(by_name[attr], rpc[key], scale))
                except ValueError as e:
                    raise ValueError(f"service config {path}: metadata.rpc.{key}: {e}") from e
        unknown = sorted(set(rpc) - {k for k, _, _ in RPC_KEYS})
        if unknown:
            log.warning("service config: ignoring unknown metadata.rpc keys %s", ", ".join(unknown))

    def _apply_queue_keys(self, path: str, flat: Mapping[str, Any]) -> None:
        """`metadata.type: Async` and the `queue.*` keys of an asynchronous service."""
        if str(flat.get("metadata.type", "")).lower() == "async":
            self.async_service = True
        by_name = {f.name: f for f in fields(self)}
        for key, attr in QUEUE_KEYS:
            if key in flat:
                try:
                    setattr(self, attr, _scaled(by_name[attr], flat[key], 1))
                except ValueError as e:
                    raise ValueError(f"service config {path}: {key}: {e}") from e


# The service JSON's queue keys -> settings attribute.
QUEUE_KEYS = [
    ("queue.source.max_length", "queue_max_length"),
    ("queue.sink.max_length", "queue_sink_max_length"),
    ("queue.max_payload_bytes", "queue_max_payload_bytes"),
    ("queue.window", "queue_window"),
]

# metadata.rpc.<key> -> settings attribute, unit scale
RPC_KEYS = [
    ("batching", "enable_batching", 1),
    ("keepalive", "keepalive_ms", 1),
    ("max_batch_size", "max_batch_size", 1),
    ("max_batch_timeout", "batch_timeout_micros", 1000),
    ("max_queue_size", "max_queue_size", 1),
    ("worker_threads", "worker_threads", 1),
    ("io_threads", "io_threads", 1),
    ("rate_limit", "rate_limit", 1),
]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """The one boolean parser of flags, environment and service config: anything but the words below
    is an error, so a typo does not silently turn a feature off."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false (also 1/0, yes/no, on/off), got {text!r}")


def setting_type(f: Field[Any]) -> type:
    """The annotated type of a settings field (int, float, str or bool)."""
    kind = _types()[f.name]
    assert kind in (int, float, str, bool), (f.name, kind)
    return kind


@cache
def _types() -> dict[str, type]:
    return get_type_hints(Settings)


def env_name(f: Field[Any]) -> str:
    return ENV_PREFIX + f.name.upper()


def convert(f: Field[Any], text: str) -> object:
    """Text (a flag or environment value) as the field's type; a ValueError says what was expected."""
    kind = setting_type(f)
    if kind is bool:
        return parse_bool(text)
    try:
        return kind(text)
    except ValueError as e:
        raise ValueError(f"expected {kind.__name__}, got {text!r}") from e


def _scaled(f: Field[Any], value: Any, scale: int) -> object:
    """A service-config JSON value (number, boolean or string) as the field's type, times `scale`."""
    kind = setting_type(f)
    if kind is bool:
        return value if isinstance(value, bool) else parse_bool(str(value))
    try:
        return kind(float(value) * scale)
    except (TypeError, ValueError) as e:
        raise ValueError(f"expected a number, got {value!r}") from e


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# --- documentation derived from the declaration ---------------------------------------------------


def grouped() -> Iterator[tuple[str, list[Field[Any]]]]:
    """(group, its fields in declaration order) in GROUPS order."""
    for group in GROUPS:
        yield group, [f for f in fields(Settings) if f.metadata["group"] == group]


def shown_default(f: Field[Any]) -> str:
    """The default as the docs show it, with its unit: `30 s`, `true`, `` (empty)."""
    if f.metadata["shown_default"]:
        return str(f.metadata["shown_default"])
    value = f.default
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return f"{text} {f.metadata['unit']}" if text and f.metadata["unit"] else text


def meaning(f: Field[Any]) -> str:
    """The help text, naming the TF Serving container variable where one is read too."""
    extra = f" (env `{f.metadata['env']}`)" if f.metadata["env"] else ""
    return f.metadata["help"] + extra


TABLE_HEADER = "| flag | default | meaning |\n|---|---|---|\n"


def markdown_table() -> str:
    """README.md's flag table: a bold row per group, then one row per setting."""
    rows = [TABLE_HEADER]
    for group, group_fields in grouped():
        rows.append(_row(f"**{group}**", "", ""))
        rows += [_row(f"`--{f.name}`", shown_default(f), meaning(f)) for f in group_fields]
    return "".join(rows)


def _row(*cells: str) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|\n"


def table_span(readme: str) -> tuple[int, int]:
    """Where README.md's flag table is: from TABLE_HEADER to the first line not starting with `|`."""
    start = end = readme.index(TABLE_HEADER)
    for line in readme[start:].splitlines(keepends=True):
        if not line.startswith("|"):
            break
        end += len(line)
    return start, end


def replace_table(readme: str) -> str:
    """`readme` with its flag table rendered anew from the declaration."""
    start, end = table_span(readme)
    return readme[:start] + markdown_table() + readme[end:]


def parse_processor_code(code: str) -> tuple[str, str]:
    """A cloud processor code -> (processor name, device): `xgboost`, `lightgbm`, `pmml`,
    `tensorflow_cpu_2.x` / `tensorflow_gpu_2.x`, `pytorch_cpu_*` / `pytorch_gpu_*`, `onnx*` (gpu when the
    code says so); any other name is taken as a processor name on the cpu."""
    key = code.strip().lower()
    device = "cuda" if "_gpu" in key or key.endswith("gpu") else "cpu"
    for prefix, name in (("tensorflow", "tensorflow"), ("pytorch", "torchscript"), ("torch", "torchscript"),
                         ("onnx", "onnx"), ("xgboost", "xgboost"), ("lightgbm", "lightgbm"), ("pmml", "pmml")):
        if key.startswith(prefix):
            return name, device
    return key, device


def default(name: str) -> Any:
    """The default of setting `name`: what an options object built without the settings (a test, a benchmark)
    takes, so that no default is written twice."""
    return _DEFAULTS[name]


_DEFAULTS = {f.name: f.default for f in fields(Settings)}


if __name__ == "__main__":
    # python -m serving.settings README.md: rewrite README.md's flag table from the declaration.
    readme = Path(sys.argv[1])
    readme.write_text(replace_table(readme.read_text()))
