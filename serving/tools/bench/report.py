"""The report folder of a `serving bench` run: report.json (everything), report.md (the summary table and
the verdict), report.csv (perf_analyzer's columns, so its spreadsheets and scripts read it) and the plots."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .plots import step_label as label
from .plots import write_plots

log = logging.getLogger(__name__)

#: perf_analyzer's -f CSV columns (µs), the first one the step's concurrency or request rate.
CSV_COLUMNS = ["Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
               "Server Compute Infer", "Server Compute Output", "Client Recv", "p50 latency", "p90 latency",
               "p95 latency", "p99 latency"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.csv", out / "report.md"]
    written[0].write_text(json.dumps(report, indent=1) + "\n")
    write_csv(report, written[1])
    plots: list[Path] = []
    try:
        plots = write_plots(report, out)
    except ImportError as e:  # matplotlib is in the bench extra; the figures are in report.json anyway
        log.warning("no plots: %s (pip install serving-engine[bench])", e)
    written[2].write_text(markdown(report, [p.name for p in plots]))
    return written + plots


def write_csv(report: dict[str, Any], path: Path) -> None:
    first = "Concurrency" if report["mode"] == "closed" else "Request Rate"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([first, "Inferences/Second", *CSV_COLUMNS])
        for step in report["steps"]:
            lat = step["latency_ms"]
            server = step.get("server") or {}

            def us(value: float | None) -> int:
                return round(value) if value is not None else 0

            compute = server.get("compute_us")
            writer.writerow([
                step["concurrency"] if report["mode"] == "closed" else step["target_rate"],
                round(step["achieved_rate"], 1), 0, us(server.get("network_us")), us(server.get("queue_us")), 0,
                us(compute), 0, 0, *(us(lat[k] * 1e3 if lat[k] is not None else None)
                                     for k in ("p50", "p90", "p95", "p99"))])


def markdown(report: dict[str, Any], plots: Sequence[str] = ()) -> str:
    lines = _heading(report)
    lines += [_step_row(step) for step in report["steps"]]
    verdict = report["verdict"]
    lines.append("")
    ramp = verdict.get("ramp")
    if ramp is not None:
        lines.append(_ramp_line(ramp, report["slo"]))
    for item in verdict["thresholds"]:
        mark = "pass" if item["passed"] else "FAIL"
        lines.append(f"- threshold `{item['threshold']}`: {mark} (value {item['shown']}, step {item['step']})")
    if verdict["thresholds"]:
        lines.append(f"\n**Verdict:** {'passed' if verdict['passed'] else 'FAILED'}")
    for warning in report["warnings"]:
        lines.append(f"\nWarning: {warning}")
    lines += ["", *(f"![{p}]({p})" for p in plots)]
    return "\n".join(lines) + "\n"


def _heading(report: dict[str, Any]) -> list[str]:
    """The title, the command, the run's circumstances and the head of the steps' table."""
    target = report["target"]
    where = target.get("url") or f"{target.get('address')} {target.get('method')}"
    return [f"# serving bench: {report['mode']} load on {where}", "",
            f"`{report['command']}`", "",
            f"Started {report['started']}; host {report['host']['hostname']} with {report['host']['cores']} cores; "
            f"{report['generator']['processes']} load processes; body {target.get('body_bytes', 0)} bytes"
            + (f"; server {report['server']['name']} {report['server']['version']}" if report.get("server") else "")
            + ".", "",
            "| step | sent | ok | errors | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server queue / "
            "compute / network µs | load CPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def _step_row(step: dict[str, Any]) -> str:
    lat = step["latency_ms"]
    errors = ", ".join(f"{k} {v}" for k, v in sorted(step["errors"].items())) or "0"
    server = step.get("server")
    split = (f"{server['queue_us']:.0f} / {server['compute_us']:.0f} / {server.get('network_us', 0):.0f}"
             if server else "-")
    held = {True: " held", False: " broke", None: ""}.get(step.get("held"), "")
    return (f"| {label(step)}{held} | {step['sent']:,} | {step['ok']:,} | {errors} | "
            f"{step['achieved_rate']:,.0f} | {_ms(lat['p50'])} | {_ms(lat['p90'])} | {_ms(lat['p99'])} | "
            f"{_ms(lat['p99.9'])} | {_ms(lat['max'])} | {split} | {step['generator_cpu']:.0%} |")


def _ramp_line(ramp: dict[str, Any], slo: dict[str, Any]) -> str:
    """The ramp's outcome: the highest rate that held the objective, and what broke it."""
    if ramp["max_rate_held"] is None:
        return (f"**Ramp:** no rate held p99 <= {slo['p99_ms']:g} ms with errors <= "
                f"{slo['max_error_rate']:.2%} ({ramp['reason']}).")
    broke = (f"; {ramp['broke_at']:g}/s broke it: {ramp['reason']}" if ramp["broke_at"] is not None
             else "; the ramp's top rate held")
    return (f"**Ramp:** the highest rate that held p99 <= {slo['p99_ms']:g} ms with errors <= "
            f"{slo['max_error_rate']:.2%} is {ramp['max_rate_held']:g}/s (achieved "
            f"{ramp['achieved_at_max']:,.0f}/s){broke}.")
