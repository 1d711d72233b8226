"""Typed settings, one documented attribute per knob, built from flags and the environment.

Order: defaults < the cloud service JSON (--service_config) < environment (MODEL_NAME, MODEL_BASE_PATH
as the TF Serving container reads them, SERVING_* for the rest) < command-line flags; a
--batching_parameters_file then overrides the batching settings. `serving --help` lists every flag.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Settings:
    #: HTTP port (TF Serving: --rest_api_port).
    rest_api_port: int = 8080
    #: gRPC port (TF Serving: --port); 0 turns the gRPC server off.
    port: int = 9090
    #: Largest gRPC message received or sent, bytes.
    grpc_max_message_bytes: int = 64 * 1024 * 1024
    #: Address to listen on.
    host: str = "0.0.0.0"
    #: Model name in the single-model form.
    model_name: str = "model"
    #: Base path of the single model (its children are integer version directories).
    model_base_path: str = ""
    #: A ModelServerConfig text file; takes precedence over model_name/model_base_path.
    model_config_file: str = ""
    #: Re-read model_config_file every N seconds (0: read once).
    model_config_file_poll_wait_seconds: int = 0
    #: Look for new / removed version directories every N seconds (0: only at start).
    file_system_poll_wait_seconds: int = 1
    #: Allow a new label to point at a version that is not AVAILABLE yet.
    allow_version_labels_for_unavailable_models: bool = False
    #: Deadline of a REST request, milliseconds.
    rest_api_timeout_in_ms: int = 30000
    #: Processor of the single-model form (detected from the files when empty).
    model_platform: str = ""
    #: Device of the models: cpu, cuda, cuda:N, auto (cuda when present).
    device: str = "cpu"
    #: Threads inside one TensorFlow op / one ONNX or torch call (0: the framework's default).
    tensorflow_intra_op_parallelism: int = 0
    #: Threads running independent TensorFlow ops (0: the framework's default).
    tensorflow_inter_op_parallelism: int = 0
    #: GPU memory one model may take, MiB (0: no limit; TensorFlow grows memory as needed).
    gpu_memory_limit_mb: int = 0
    #: Run TorchScript models in half precision on CUDA.
    fp16: bool = False
    #: ONNX Runtime graph optimisation: disabled, basic, extended, all.
    onnx_graph_optimization_level: str = "all"
    #: Largest request body accepted, bytes (413 above; also the limit after gzip decompression).
    rest_api_max_body_bytes: int = 64 * 1024 * 1024
    #: A request whose bytes stall longer than this is answered 408, seconds.
    rest_api_read_timeout_seconds: float = 30.0
    #: An idle keep-alive connection is closed after this, seconds.
    rest_api_idle_timeout_seconds: float = 75.0
    #: Batches running at once per model (and the prediction threads).
    worker_threads: int = 5
    #: Dynamic batching on/off (TF Serving: --enable_batching). Adaptive: no delay when idle.
    enable_batching: bool = True
    #: A BatchingParameters text file (TF Serving); overrides the batching settings below.
    batching_parameters_file: str = ""
    #: Most rows in one batch; larger requests are split.
    max_batch_size: int = 16
    #: Longest wait for a fuller batch while other batches run, microseconds.
    batch_timeout_micros: int = 50_000
    #: Most requests waiting per model queue; more are refused (503 / 450).
    max_queue_size: int = 64
    #: Comma-separated batch sizes to pad up to; the last must equal max_batch_size.
    allowed_batch_sizes: str = ""
    #: Pad inputs whose non-batch dims differ so they can share a batch.
    pad_variable_length_inputs: bool = False
    #: Run a model's batches on the event-loop thread while they average under this many µs (0: never).
    inline_batch_micros: int = 1000
    #: Deadline of a request on the cloud processor route, milliseconds (408 past it).
    keepalive_ms: int = 5000
    #: Requests per second accepted by this instance (0: no limit); more get 429.
    rate_limit: float = 0.0
    #: Accepted for compatibility with the service config; one event loop does the I/O.
    io_threads: int = 4
    #: The cloud service config JSON (name, processor, model_path, warm_up_data_path, token, metadata.rpc).
    service_config: str = ""
    #: Warm-up requests for the service's model: .bin (a processor PredictRequest) or .txt (JSON lines).
    warm_up_data_path: str = ""
    #: How many times each TF Serving warm-up record is replayed.
    num_request_iterations_for_warmup: int = 1
    #: Access token required on predict routes and gRPC calls (empty: none). Env: SERVING_TOKEN.
    token: str = ""
    #: Threads loading models.
    load_threads: int = 2
    #: On SIGTERM, wait at most this long for requests in flight, seconds.
    drain_timeout_seconds: float = 30.0
    #: Logging level name.
    log_level: str = "INFO"

    def apply_env(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        if env.get("MODEL_NAME"):
            self.model_name = env["MODEL_NAME"]
        if env.get("MODEL_BASE_PATH"):
            # As the TF Serving image: the model lives at ${MODEL_BASE_PATH}/${MODEL_NAME}.
            self.model_base_path = os.path.join(env["MODEL_BASE_PATH"], self.model_name)
        for f in fields(self):
            key = "SERVING_" + f.name.upper()
            if key in env:
                setattr(self, f.name, _coerce(type(getattr(self, f.name)), env[key]))

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
            from .processor import parse_processor_code

            self.model_platform, self.device = parse_processor_code(str(flat["processor"]))
        for key in ("warm_up_data_path", "token"):
            if key in flat:
                setattr(self, key, str(flat[key]))
        rpc = {k[len("metadata.rpc."):]: v for k, v in flat.items() if k.startswith("metadata.rpc.")}
        for key, attr, scale in RPC_KEYS:
            if key in rpc:
                value = rpc[key]
                kind = type(getattr(self, attr))
                setattr(self, attr, _coerce(kind, str(value)) if kind is bool else kind(float(value) * scale))
        unknown = sorted(set(rpc) - {k for k, _, _ in RPC_KEYS})
        if unknown:
            log.warning("service config: ignoring unknown metadata.rpc keys %s", ", ".join(unknown))


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


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _coerce(kind: type, text: str) -> object:
    if kind is bool:
        return text.strip().lower() in ("1", "true", "yes", "on")
    return kind(text)
