"""The `serving` command: TF Serving's flags (a drop-in for tensorflow_model_server) and a few of ours."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields

from .settings import Settings

DOCS = {
    "rest_api_port": "HTTP port (default 8080)",
    "port": "gRPC port: TF Serving PredictionService/ModelService, grpc.health.v1 (default 9090; 0 = off)",
    "grpc_max_message_bytes": "largest gRPC message received or sent, bytes (default 67108864)",
    "host": "address to listen on (default 0.0.0.0)",
    "model_name": "name of the model in the single-model form (default 'model'; env MODEL_NAME)",
    "model_base_path": "base path of the single model: integer version dirs below it "
    "(env MODEL_BASE_PATH is the parent: ${MODEL_BASE_PATH}/${MODEL_NAME})",
    "model_config_file": "a ModelServerConfig text file (model_config.pbtxt) listing the models to serve",
    "model_config_file_poll_wait_seconds": "re-read --model_config_file every N s (default 0 = read once)",
    "file_system_poll_wait_seconds": "look for new/removed version dirs every N s (default 1; 0 = at start only)",
    "allow_version_labels_for_unavailable_models": "allow a new label to name a version that is not AVAILABLE",
    "rest_api_timeout_in_ms": "deadline of a REST request in ms (default 30000)",
    "model_platform": "processor of the single model: xgboost, lightgbm, ... (default: detected from files)",
    "device": "device of the models: cpu, cuda, cuda:N, auto = cuda when present (default cpu; cuda without a "
    "GPU fails the load)",
    "tensorflow_intra_op_parallelism": "threads inside one TensorFlow op / ONNX or torch call (default 0 = framework)",
    "tensorflow_inter_op_parallelism": "threads running independent TensorFlow / ONNX ops (default 0 = framework)",
    "gpu_memory_limit_mb": "GPU memory a TensorFlow model may take, MiB (default 0 = grow as needed)",
    "fp16": "run TorchScript models in half precision on CUDA (default false)",
    "onnx_graph_optimization_level": "ONNX Runtime graph optimisation: disabled, basic, extended, all (default all)",
    "rest_api_max_body_bytes": "largest request body in bytes, also after gzip (default 67108864; 413 above)",
    "rest_api_read_timeout_seconds": "a request that stalls mid-way longer than this gets 408 (default 30)",
    "rest_api_idle_timeout_seconds": "idle keep-alive connections are closed after this (default 75)",
    "worker_threads": "batches running at once per model (default 5)",
    "enable_batching": "dynamic batching, adaptive: no delay when idle (default true)",
    "batching_parameters_file": "TF Serving BatchingParameters text file; overrides the batching flags",
    "max_batch_size": "most rows in one batch; larger requests are split (default 16)",
    "batch_timeout_micros": "longest wait for a fuller batch while other batches run, us (default 50000)",
    "max_queue_size": "most requests queued per model; more get 503 / 450 (default 64)",
    "allowed_batch_sizes": "comma-separated sizes a batch is padded up to; last = max_batch_size",
    "pad_variable_length_inputs": "pad inputs whose non-batch dims differ to share a batch (default false)",
    "inline_batch_micros": "run a model's batches on the event-loop thread while they average under this "
    "many us of compute, 0 = always on worker threads (default 1000)",
    "keepalive_ms": "deadline of a cloud processor route request in ms (default 5000; 408 past it)",
    "rate_limit": "requests/s accepted by this instance, 0 = no limit (default 0; 429 over it)",
    "io_threads": "accepted for compatibility with the service config; one event loop does the I/O",
    "service_config": "cloud service config JSON: name, processor, model_path, warm_up_data_path, token, "
    "metadata.rpc.{batching,keepalive,max_batch_size,max_batch_timeout,max_queue_size,worker_threads,"
    "io_threads,rate_limit}",
    "warm_up_data_path": "warm-up requests of the model: .bin (processor PredictRequest) or .txt (JSON lines)",
    "num_request_iterations_for_warmup": "times each TF Serving warm-up record is replayed (default 1)",
    "token": "access token required on predict routes and gRPC calls (env SERVING_TOKEN; default none)",
    "load_threads": "threads loading models (default 2)",
    "drain_timeout_seconds": "on SIGTERM, wait at most this long for requests in flight (default 30)",
    "log_level": "DEBUG, INFO, WARNING or ERROR (default INFO)",
}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="serving",
        description="serving-engine: serve models over TF Serving's REST API (and gRPC, later) with "
        "version management. Flags take TF Serving's names; SERVING_<FLAG> environment variables too.",
    )
    for f in fields(Settings):
        kind = type(f.default)
        if kind is bool:
            ap.add_argument(f"--{f.name}", type=_bool, nargs="?", const=True, default=None, help=DOCS[f.name])
        else:
            ap.add_argument(f"--{f.name}", type=kind, default=None, help=DOCS[f.name])
    return ap


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings()
    service_config = args.service_config or os.environ.get("SERVING_SERVICE_CONFIG", "")
    if service_config:
        try:
            settings.apply_service_config(service_config)
        except ValueError as e:
            parser.exit(1, f"serving: {e}\n")
    settings.apply_env()
    for f in fields(Settings):
        value = getattr(args, f.name)
        if value is not None:
            setattr(settings, f.name, value)
    return settings


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .app import run  # imported after logging is set up

    sys.exit(run(settings))


if __name__ == "__main__":
    main()
