"""Typed settings, one documented attribute per knob, built from flags and the environment.

Order: defaults < environment (MODEL_NAME, MODEL_BASE_PATH as the TF Serving container reads them,
SERVING_* for the rest) < command-line flags. `serving --help` lists every flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass
class Settings:
    #: HTTP port (TF Serving: --rest_api_port).
    rest_api_port: int = 8080
    #: gRPC port (TF Serving: --port); the gRPC server itself arrives with the gRPC issue.
    port: int = 9090
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
    #: Device for the single-model form: cpu, cuda, cuda:N.
    device: str = "cpu"
    #: Largest request body accepted, bytes (413 above; also the limit after gzip decompression).
    rest_api_max_body_bytes: int = 64 * 1024 * 1024
    #: A request whose bytes stall longer than this is answered 408, seconds.
    rest_api_read_timeout_seconds: float = 30.0
    #: An idle keep-alive connection is closed after this, seconds.
    rest_api_idle_timeout_seconds: float = 75.0
    #: Threads running predictions.
    worker_threads: int = 4
    #: Threads loading models.
    load_threads: int = 2
    #: On SIGTERM, wait at most this long for requests in flight, seconds.
    drain_timeout_seconds: float = 30.0
    #: Logging level name.
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        s = cls()
        if env.get("MODEL_NAME"):
            s.model_name = env["MODEL_NAME"]
        if env.get("MODEL_BASE_PATH"):
            # As the TF Serving image: the model lives at ${MODEL_BASE_PATH}/${MODEL_NAME}.
            s.model_base_path = os.path.join(env["MODEL_BASE_PATH"], s.model_name)
        for f in fields(cls):
            key = "SERVING_" + f.name.upper()
            if key in env:
                setattr(s, f.name, _coerce(type(getattr(s, f.name)), env[key]))
        return s


def _coerce(kind: type, text: str) -> object:
    if kind is bool:
        return text.strip().lower() in ("1", "true", "yes", "on")
    return kind(text)
