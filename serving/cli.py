"""The `serving` command: TF Serving's flags (a drop-in for tensorflow_model_server) and a few of ours,
all derived from the declaration in serving/settings.py; `--help` is one screen (commands, examples, the most
used flags), `--help-all` every flag and `--help-<group>` one group's; `serving <command>` runs a tool."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import textwrap
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


#: `serving <command> ...`: the module whose main(argv) runs it, and what it does in a line of `serving --help`.
COMMANDS = {"bench": (".tools.bench.cli", "load a model server: latency and throughput, closed or open loop"),
            "warmup-from-log": (".tools.fromlog", "a TF Serving warm-up file made from request logs"),
            "queue": (".queue.standalone", "the asynchronous service's queue service alone")}

#: The flags `serving --help` shows; `--help-all` shows every one.
COMMON_FLAGS = ("model_name", "model_base_path", "model_config_file", "model_platform", "rest_api_port", "port",
                "host", "workers", "device", "max_batch_size", "batch_timeout_micros", "model_control_mode",
                "token_file", "log_level", "log_format")

EXAMPLES = """\
  serving --model_name=m --model_base_path=/models/m     # one model; 1/, 2/, ... are its versions
  serving --model_config_file=/models/model_config.pbtxt  # several (a ModelServerConfig text file)
  MODEL_NAME=m MODEL_BASE_PATH=/models serving             # as the TF Serving image: /models/m
  serving --service_config=service.json                   # the cloud service form
  serving bench --url http://127.0.0.1:8080/v1/models/m:predict --body request.json  # load it"""


def version_text() -> str:
    """`serving --version`: the installed package's version (the source's where it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"serving-engine {version('serving-engine')}"
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
        from . import __version__

        return f"serving-engine {__version__}"


#: The short `--help`'s line of a flag whose help does not begin with one.
SUMMARIES = {"model_control_mode": "none, poll, explicit or lazy: when models load",
             "batch_timeout_micros": "the longest a request waits for a fuller batch",
             "token_file": "the access token, from the first line of this file"}
#: The widest line of the short `--help`.
WIDTH = 100


def _summary(f: Field[Any], room: int) -> str:
    """A flag's help cut to its first clause and to `room` characters, with its default, for the short `--help`."""
    text = SUMMARIES.get(f.name) or f.metadata["help"].replace("`", "").replace("*", "")
    for stop in ("; ", ": ", " (") if f.name not in SUMMARIES else ():
        text = text.split(stop, 1)[0]
    default = f" (default: {shown_default(f)})" if shown_default(f) else ""
    return textwrap.shorten(text, room - len(default), placeholder=" ...") + default


def short_help() -> str:
    """`serving --help`: one screen (tests/unit/test_cli_help.py holds it to 60 lines)."""
    by_name = {f.name: f for f in fields(Settings)}
    flags = [f"--{name} {_metavar(by_name[name])}" for name in COMMON_FLAGS]
    width = max(map(len, flags)) + 2
    commands = "\n".join(f"  {name:<17}{text}" for name, (_, text) in COMMANDS.items())
    return "\n".join([
        "usage: serving [FLAGS]             serve models",
        f"       serving COMMAND [ARGS]     {' | '.join(COMMANDS)} (each has its own --help)",
        "",
        textwrap.fill(DESCRIPTION, WIDTH),
        "",
        "commands:",
        commands,
        "",
        "examples:",
        EXAMPLES,
        "",
        "most used flags:",
        *(f"  {flag:<{width}}{_summary(by_name[name], WIDTH - 2 - width)}"
          for flag, name in zip(flags, COMMON_FLAGS, strict=True)),
        "",
        "more:",
        f"  --help-all         every flag ({len(by_name)}), by group, with its default and environment variable",
        textwrap.fill(f"one group's flags, GROUP: {', '.join(GROUPS)}", WIDTH,
                      initial_indent=f"  {'--help-GROUP':<19}", subsequent_indent=" " * 21),
        "  --version          the version",
        "  docs               README.md, or GET /ui/docs on a running server; its status page is GET /ui",
        "",
        "Every flag can also be set as SERVING_<FLAG IN CAPITALS>; flags win over the environment.",
    ]) + "\n"


class _PrintAndExit(argparse.Action):
    """A flag that prints a text (`text(parser)`) on standard output and exits 0, as argparse's --help does."""

    def __init__(self, option_strings: list[str], dest: str, text: Callable[[argparse.ArgumentParser], str],
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.text = text

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stdout.write(self.text(parser))
        parser.exit()


def _add_help_flags(ap: argparse.ArgumentParser) -> None:
    section = ap.add_argument_group("help")
    section.add_argument("-h", "--help", action=_PrintAndExit, text=lambda _: short_help(),
                         help="one screen: commands, examples, the most used flags")
    section.add_argument("--help-all", action=_PrintAndExit, text=lambda parser: parser.format_help(),
                         help="every flag, by group")
    for group in GROUPS:
        section.add_argument(f"--help-{group}", action=_PrintAndExit,
                             text=lambda _, group=group: build_parser(group).format_help(),
                             help=GROUPS[group].replace("%", "%%"))
    section.add_argument("--version", action=_PrintAndExit, text=lambda _: version_text() + "\n",
                         help="the version")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every flag (its format_help is `--help-all`), or of group `only`'s flags (`--help-<group>`)."""
    ap = argparse.ArgumentParser(prog="serving", usage="%(prog)s [FLAGS] | %(prog)s COMMAND [ARGS]",
                                 description=DESCRIPTION, epilog=EPILOG, add_help=False)
    if only is None:
        _add_help_flags(ap)
    for group, group_fields in grouped():
        if only is not None and group != only:
            continue
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


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] and args[0] in COMMANDS:
        import importlib

        sys.exit(importlib.import_module(COMMANDS[args[0]][0], __package__).main(args[1:]))
    if args[:1] and not args[0].startswith("-"):  # the server takes flags only: a mistyped command
        sys.exit(f"serving: unknown command {args[0]!r}; the commands are {', '.join(COMMANDS)}, and the server "
                 "takes flags only (serving --help)")
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
