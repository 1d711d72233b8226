"""`serving bench ...`: the command line, the live view and the exit status.

Exit status: 0 when every `--threshold` held (or none was given), 1 when one failed, 2 for a usage error or
a missing bench extra.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import Threshold

EPILOG = """examples:
  serving bench --url http://127.0.0.1:8080/v1/models/m:predict --body request.json --concurrency 1,4,16,64
  serving bench --url http://127.0.0.1:8080/v2/models/m/infer --body v2.json --mode open --rate 500,1000,2000
  serving bench --grpc 127.0.0.1:9090 --api v2 --body infer.json --mode ramp --slo-p99-ms 10 --step 200
  serving bench --url ... --body ... --threshold 'p99<10ms' --threshold 'errors<0.1%'   (exit 1 if one fails)
"""


def _numbers(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="serving bench", epilog=EPILOG, formatter_class=argparse.RawTextHelpFormatter,
                                 description="Load a model server: closed loop, open loop (no coordinated "
                                             "omission) or a ramp to the highest rate an objective holds at.")
    where = ap.add_argument_group("target")
    where.add_argument("--url", help="an HTTP route: TF Serving, KServe V2 (JSON or binary), the cloud route, ...")
    where.add_argument("--grpc", metavar="HOST:PORT", help="a gRPC server (with --api)")
    where.add_argument("--api", choices=("tf", "v2"), default="tf",
                       help="gRPC method: tf = TF Serving Predict, v2 = KServe V2 ModelInfer (default tf)")
    where.add_argument("--body", type=Path, help="the request body: a file (for gRPC: .json or serialized .pb)")
    where.add_argument("--replay", type=Path, nargs="+", metavar="LOG",
                       help="instead of --body: the predict requests of request logs (TFRecord files of "
                            "PredictionLog), sent in turn, as the target's protocol wants them")
    where.add_argument("--method", help="HTTP method (default POST with a body, else GET)")
    where.add_argument("--content-type", help="HTTP Content-Type of the body (default application/json)")
    where.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                       help="an HTTP header or gRPC metadata pair; repeatable")
    where.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s (default 30)")
    mode = ap.add_argument_group("load")
    mode.add_argument("--mode", choices=("closed", "open", "ramp"), default="closed")
    mode.add_argument("--concurrency", type=_numbers(int), default=[1, 4, 16, 64],
                      help="closed loop: requests in flight, one step each (default 1,4,16,64)")
    mode.add_argument("--rate", type=_numbers(float), default=None, help="open loop: requests/s, one step each")
    mode.add_argument("--connections", type=int, default=None,
                      help="open loop and ramp: connections (default 64 over all processes)")
    mode.add_argument("--slo-p99-ms", type=float, default=None, help="ramp: the p99 objective, ms")
    mode.add_argument("--max-error-rate", type=float, default=0.001, help="ramp: the error-rate objective (0.001)")
    mode.add_argument("--start", type=float, default=100.0, help="ramp: first rate, requests/s (100)")
    mode.add_argument("--step", type=float, default=100.0, help="ramp: added per step, requests/s (100)")
    mode.add_argument("--max", type=float, default=100_000.0, help="ramp: highest rate tried (100000)")
    mode.add_argument("--duration", type=float, default=10.0, help="seconds per step (default 10)")
    mode.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load first (default 2)")
    mode.add_argument("--processes", type=int, default=None, help="load processes (default: the cores)")
    out = ap.add_argument_group("results")
    out.add_argument("--out", type=Path, default=None, help="report folder (default bench-<time>/)")
    out.add_argument("--threshold", action="append", default=[], metavar="EXPR",
                     help="'p99<10ms', 'mean<=2ms', 'errors<0.1%%', 'errors<5', 'rate>1000'; repeatable; "
                          "exit 1 when one fails (ramp: judged at the highest rate held)")
    out.add_argument("--quiet", action="store_true", help="no live view")
    return ap


class LiveView:
    """Per second: rate sent and answered, errors by kind, p50/p99 of that second, in flight, load CPU. A
    rich table on a terminal, one plain line per second otherwise."""

    HEADER = ("step", "t s", "sent/s", "ok/s", "errors", "p50 ms", "p99 ms", "in flight", "load CPU")

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.rows: list[tuple[str, ...]] = []
        self.live: Any = None
        if not quiet and sys.stdout.isatty():
            try:
                from rich.live import Live

                self.live = Live(self._table(), refresh_per_second=4, transient=False)
                self.live.start()
            except ImportError:  # rich is in the bench extra: plain lines without it
                self.live = None

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="serving bench", show_lines=False)
        for name in self.HEADER:
            table.add_column(name, justify="right")
        for row in self.rows[-20:]:
            table.add_row(*row)
        return table

    def __call__(self, second: dict[str, Any] | None, label: str) -> None:
        if self.quiet:
            return
        if second is None:
            row = (label, *[""] * 8)
        else:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(second["error_kinds"].items())) or "0"
            row = (label, f"{second['t']:.0f}", f"{second['sent']:,}", f"{second['ok']:,}", kinds,
                   _ms(second["p50_ms"]), _ms(second["p99_ms"]), str(second["inflight"]), f"{second['cpu']:.0%}")
        self.rows.append(row)
        if self.live is not None:
            self.live.update(self._table())
        else:
            print("  ".join(f"{h} {v}" for h, v in zip(self.HEADER, row, strict=True) if v), flush=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


#: The modules of the bench extra `serving bench` cannot run without (rich and matplotlib are optional: plain
#: lines and no plots without them), and the package that holds each.
REQUIRED = {"hdrh": "hdrhistogram"}


def main(argv: list[str]) -> int:
    from ...platform.workers import available_cores
    from . import report as report_files

    try:
        from .run import execute
    except ModuleNotFoundError as e:
        module = (e.name or "").split(".")[0]
        if module not in REQUIRED:
            raise
        print(f"serving bench needs the package {REQUIRED[module]} (module {module}) of the bench extra: "
              "pip install 'serving-engine[bench]'", file=sys.stderr)
        return 2
    ap = build_parser()
    args = ap.parse_args(argv)
    args.argv = argv
    _check_args(ap, args)
    thresholds, target = _thresholds_and_target(ap, args)
    args.processes = args.processes or available_cores()
    out = args.out or Path(time.strftime("bench-%Y%m%d-%H%M%S"))
    view = LiveView(args.quiet)
    try:
        report = execute(args, target, thresholds, view)
    finally:
        view.stop()
    written = report_files.write(report, out)
    print((out / "report.md").read_text())
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0 if report["verdict"]["passed"] else 1


def _check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The usage errors argparse cannot see alone (each exits with status 2)."""
    if bool(args.url) == bool(args.grpc):
        ap.error("give one target: --url or --grpc")
    if args.mode == "open" and not args.rate:
        ap.error("--mode open needs --rate")
    if args.mode == "ramp" and args.slo_p99_ms is None:
        ap.error("--mode ramp needs --slo-p99-ms")
    if args.mode == "ramp" and (args.start <= 0 or args.step <= 0 or args.max < args.start):
        ap.error("--start and --step must be positive and --max at least --start")
    if args.duration < 1:
        ap.error("--duration must be at least 1 s")
    if args.body is not None and args.replay:
        ap.error("give --body or --replay, not both")
    if args.grpc and args.body is None and not args.replay:
        ap.error("--grpc needs --body (the request, .json or .pb) or --replay")


def _thresholds_and_target(ap: argparse.ArgumentParser,
                           args: argparse.Namespace) -> tuple[list[Threshold], dict[str, Any]]:
    """The parsed --threshold options and the target with its requests; a file that cannot be read or a
    threshold that does not parse is a usage error."""
    from ...errors import ServingError
    from .run import Threshold, grpc_body, grpc_target, http_target, replay_bodies

    try:
        thresholds = [Threshold.parse(t) for t in args.threshold]
        if args.replay:
            bodies: list[bytes] | None = replay_bodies(args.replay, "http" if args.url else "grpc",
                                                       args.url or args.api)
        elif args.url:
            bodies = [args.body.read_bytes()] if args.body is not None else None
        else:
            bodies = [grpc_body(args.api, args.body)]
        if args.url:
            target = http_target(args.url, bodies, args.header, args.method, args.timeout, args.content_type)
        else:
            assert bodies is not None
            target = grpc_target(args.grpc, args.api, bodies, args.header, args.timeout)
    except (ValueError, OSError, ServingError) as e:
        ap.error(str(getattr(e, "message", e)))
    return thresholds, target
