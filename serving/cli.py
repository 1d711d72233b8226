"""The `serving` command: TF Serving's flags (a drop-in for tensorflow_model_server) and a few of ours."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from .settings import Settings

DOCS = {
    "rest_api_port": "HTTP port (default 8080)",
    "port": "gRPC port (default 9090)",
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
    "device": "device of the single model: cpu, cuda, cuda:N (default cpu)",
    "rest_api_max_body_bytes": "largest request body in bytes, also after gzip (default 67108864; 413 above)",
    "rest_api_read_timeout_seconds": "a request that stalls mid-way longer than this gets 408 (default 30)",
    "rest_api_idle_timeout_seconds": "idle keep-alive connections are closed after this (default 75)",
    "worker_threads": "threads running predictions (default 4)",
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
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
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
