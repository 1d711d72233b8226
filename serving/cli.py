"""The `serving` command: TF Serving's flags (a drop-in for tensorflow_model_server) and a few of ours,
all derived from the declaration in serving/settings.py."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import Field, fields
from typing import Any

from .settings import (
    GROUPS,
    SUPERVISED_ENV,
    Settings,
    convert,
    env_name,
    grouped,
    setting_type,
    shown_default,
)

DESCRIPTION = (
    "serving-engine: serve models over TF Serving's REST and gRPC APIs, KServe V2 and the cloud processor "
    "protocol, with version management and dynamic batching."
)
EPILOG = (
    "Every flag can also be set as an environment variable SERVING_<FLAG IN CAPITALS>. Settings come, in "
    "this order, from the defaults, the --service_config JSON, the environment (MODEL_NAME, MODEL_BASE_PATH, "
    "SERVING_<FLAG>) and the flags. Booleans: true/false, 1/0, yes/no, on/off; a bare boolean flag is true."
)


def _flag_type(f: Field[Any]) -> Callable[[str], object]:
    """The argparse type of a field: the settings' own parser, its message shown as argparse's."""

    def parse(text: str) -> object:
        try:
            return convert(f, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    return parse


def _help(f: Field[Any]) -> str:
    default = shown_default(f) or "none"
    env = env_name(f) + (f" or {f.metadata['env']}" if f.metadata["env"] else "")
    text = f"{f.metadata['help']} (default: {default}; env {env})"
    # Markdown marks are for the README; argparse %-formats help strings.
    return text.replace("`", "").replace("*", "").replace("%", "%%")


def _metavar(f: Field[Any]) -> str:
    return {int: "N", float: "X", bool: "BOOL", str: "TEXT"}[setting_type(f)]


#: Flags that may be given more than once (Triton's `--load-model a --load-model b`): the values are joined
#: with commas, the form the setting takes from the environment.
REPEATABLE = frozenset({"load_model", "pin_model"})


class _Joined(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        before = getattr(namespace, self.dest)
        setattr(namespace, self.dest, values if before is None else f"{before},{values}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="serving", description=DESCRIPTION, epilog=EPILOG)
    for group, group_fields in grouped():
        section = ap.add_argument_group(group, GROUPS[group])
        for f in group_fields:
            # default=None: parse_settings applies only the flags given, over the environment.
            extra: dict[str, Any] = {"nargs": "?", "const": True} if setting_type(f) is bool else {}
            if f.name in REPEATABLE:
                extra["action"] = _Joined
            section.add_argument(f"--{f.name}", type=_flag_type(f), default=None, metavar=_metavar(f),
                                 help=_help(f), **extra)
    return ap


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings()
    service_config = args.service_config or os.environ.get("SERVING_SERVICE_CONFIG", "")
    try:
        if service_config:
            settings.apply_service_config(service_config)
        settings.apply_env()
    except ValueError as e:
        parser.exit(1, f"serving: {e}\n")
    for f in fields(Settings):
        value = getattr(args, f.name)
        if value is not None:
            setattr(settings, f.name, value)
    return settings


def setup_logging(settings: Settings) -> None:
    """The server's own log on standard error, text or JSON lines; records about a request carry its id."""
    from .ops.accesslog import JsonFormatter, RequestIdFilter, TextFormatter

    if settings.log_format not in ("text", "json"):
        sys.exit(f"serving: --log_format: expected text or json, got {settings.log_format!r}")
    handler = logging.StreamHandler()
    supervised = os.environ.get(SUPERVISED_ENV)
    worker = supervised.split(",", 1)[0] if supervised else None
    handler.setFormatter(JsonFormatter(worker) if settings.log_format == "json" else TextFormatter(worker))
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])


#: `serving <command> ...`: the module whose main(argv) runs it.
COMMANDS = {"bench": ".tools.bench.cli",  # the load generator (serving/tools/bench/)
            "warmup-from-log": ".tools.fromlog",  # a warm-up file from request logs
            "queue": ".queue.standalone"}  # the queue service alone (serving/queue/)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] and args[0] in COMMANDS:
        import importlib

        sys.exit(importlib.import_module(COMMANDS[args[0]], __package__).main(args[1:]))
    settings = parse_settings(args)
    setup_logging(settings)
    from .platform.workers import supervise, worker_count

    try:
        workers = worker_count(settings.workers)
    except ValueError as e:
        sys.exit(f"serving: {e}")
    if workers > 1 and not os.environ.get(SUPERVISED_ENV):
        # The supervisor imports no framework: each worker is a fresh `serving` with the same arguments.
        sys.exit(supervise(args, workers))
    sys.exit(run(settings))


async def serve(settings: Settings) -> int:
    """One server process: start, serve until SIGTERM or SIGINT, drain; the exit status."""
    from .app import Server  # imported after logging is set up
    from .core.model_config import ConfigError
    from .platform.workers import START_FAILED

    log = logging.getLogger("serving")
    # Under a supervisor, a start that cannot succeed says so, and is not restarted.
    failed = START_FAILED if os.environ.get(SUPERVISED_ENV) else 1
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


if __name__ == "__main__":
    main()
