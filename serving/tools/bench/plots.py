"""PNG plots of a `serving bench` report: the knee, the timeline, the percentile spectrum and the server split.

Each plot is drawn on its own `Figure` with an Agg canvas, never through pyplot, so that nothing of one call
(the current figure, a figure left open) leaks into the next or into a program that imports this module, and
a headless machine needs no display. matplotlib is imported only when plots are asked for, so `serving bench`
runs without it. A plot whose figures the report lacks is skipped rather than drawn empty, and a step whose
values are None (no request succeeded) loses those points rather than failing the whole report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: 1000 x 600 pixels.
SIZE_IN = (10.0, 6.0)
DPI = 100
#: The percentiles of the knee, as keys of `step["latency_ms"]`.
KNEE_PERCENTILES = ("p50", "p90", "p99", "p99.9")
SPECTRUM_TICKS = (50.0, 90.0, 99.0, 99.9, 99.99)
#: The highest percentile the spectrum's 1/(1-p) axis can show: 100 would be infinitely far right.
SPECTRUM_MAX = 99.999
#: A latency axis becomes logarithmic when its largest value is more than this many times its smallest.
LOG_RATIO = 50.0


def step_label(step: dict[str, Any]) -> str:
    """`c=16` for a closed-loop step, `500/s` for an open or ramp step: what the step asked of the server."""
    rate = _number(step.get("target_rate"))
    if step.get("mode") != "closed" and rate is not None:
        return f"{rate:g}/s"
    concurrency = step.get("concurrency")
    return f"c={concurrency}" if concurrency is not None else f"step {step.get('index', '?')}"


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """Write the plots the report has figures for into the folder `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, Callable[[dict[str, Any]], Figure | None]]] = [
        ("latency_vs_throughput.png", _knee), ("timeline.png", _timeline),
        ("latency_spectrum.png", _spectrum), ("server_split.png", _server_split)]
    written = []
    for name, draw in plots:
        fig = draw(report)
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(out / name, dpi=DPI, format="png")
        written.append(out / name)
    return written


# ---- helpers ----

def _number(value: Any) -> float | None:
    """The value as a float, or None for None, NaN, infinities and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: Any) -> float:
    """A count that may come as a number or as counts by kind ({"http_503": 10}); missing counts as 0."""
    if isinstance(value, dict):
        return sum(_number(v) or 0.0 for v in value.values())
    return _number(value) or 0.0


def _figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _title(report: dict[str, Any], what: str) -> str:
    target = report.get("target") or {}
    kind, url = target.get("kind"), target.get("url") or target.get("api")
    where = f"{kind} {url}" if kind and url else str(url or kind or "unknown target")
    if len(where) > 90:
        where = where[:89] + "…"
    return f"{what}: {where}, {report.get('mode') or 'unknown'} mode"


def _latency_scale(ax: Axes, values: Iterable[float]) -> None:
    """Log scale when the values span more than LOG_RATIO and all are positive: a tail 100x the median would
    squash everything else to the floor of a linear axis."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > LOG_RATIO:
        ax.set_yscale("log")


def _steps(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in report.get("steps") or [] if isinstance(s, dict)]


# ---- the plots ----

def _knee(report: dict[str, Any]) -> Figure | None:
    """Latency percentiles against achieved throughput, one point per step: where the curve turns up is the
    most the server sustains at an acceptable latency."""
    points: dict[str, list[tuple[float, float]]] = {p: [] for p in KNEE_PERCENTILES}
    tops: list[tuple[float, float, str]] = []  # where each step's label goes: above its highest point
    for step in _steps(report):
        x = _number(step.get("achieved_rate"))
        latency = step.get("latency_ms") or {}
        ys = {p: y for p in KNEE_PERCENTILES if (y := _number(latency.get(p))) is not None}
        if x is None or not ys:
            continue
        for p, y in ys.items():
            points[p].append((x, y))
        tops.append((x, max(ys.values()), step_label(step)))
    if not tops:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for p, xy in points.items():
        if xy:
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=p)
    for x, y, label in tops:
        ax.annotate(label, (x, y), xytext=(4, 6), textcoords="offset points", fontsize=8)
    all_ys = [y for xy in points.values() for _, y in xy]
    slo = _number((report.get("slo") or {}).get("p99_ms"))
    if slo is not None:
        ax.axhline(slo, color="red", linestyle="--", label=f"SLO p99 {slo:g} ms")
        all_ys.append(slo)
    held = _number(((report.get("verdict") or {}).get("ramp") or {}).get("max_rate_held"))
    if held is not None:
        ax.axvline(held, color="green", linestyle="-.", label=f"max rate held {held:g}/s")
    _latency_scale(ax, all_ys)
    ax.set_xlabel("achieved throughput (req/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(_title(report, "Latency vs throughput"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def _timeline(report: dict[str, Any]) -> Figure | None:
    """Rates and latency second by second, so that warm-up, stalls and a server falling behind within a step
    show; steps are separated by a gap in the lines and a dotted line with the step's label."""
    columns, starts = _timeline_columns(report)
    if not any(math.isfinite(t) for t in columns["t"]):
        return None
    fig = _figure()
    top, bottom = fig.subplots(2, 1, sharex=True)
    _rates_panel(top, columns)
    _latency_panel(bottom, columns)
    for start, label in starts:
        for ax in (top, bottom):
            ax.axvline(start, color="gray", linestyle=":")
        top.text(start, 1.01, label, transform=top.get_xaxis_transform(), fontsize=8, va="bottom")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.suptitle(_title(report, "Timeline"))
    return fig


def _timeline_columns(report: dict[str, Any]) -> tuple[dict[str, list[float]], list[tuple[float, str]]]:
    """The series of every step one after the other, column by column (a value that is not a number: NaN),
    and where each step starts with its label."""
    nan = math.nan
    columns: dict[str, list[float]] = {k: [] for k in ("t", "sent", "ok", "errors", "p50_ms", "p99_ms")}
    starts: list[tuple[float, str]] = []
    for step in _steps(report):
        rows = [r for r in step.get("series") or [] if isinstance(r, dict) and _number(r.get("t")) is not None]
        start = _number(step.get("start_s"))
        if start is None and rows:
            start = _number(rows[0]["t"])
        if start is not None:
            starts.append((start, step_label(step)))
        for row in rows:
            for key, column in columns.items():
                value = _number(row.get(key)) if key in ("t", "p50_ms", "p99_ms") else _count(row.get(key))
                column.append(nan if value is None else value)
        for column in columns.values():  # NaN breaks the lines between steps
            column.append(nan)
    return columns, starts


def _rates_panel(top: Axes, columns: dict[str, list[float]]) -> None:
    """Sent and ok per second, and errors per second on their own axis."""
    t = columns["t"]
    top.plot(t, columns["ok"], label="ok/s")
    top.plot(t, columns["sent"], linestyle="--", label="sent/s")
    errors = top.twinx()  # its own scale: 5 errors/s would be a flat line at the foot of 5000 ok/s
    errors.plot(t, columns["errors"], color="red", label="errors/s")
    errors.set_ylabel("errors per second", color="red")
    errors.set_ylim(bottom=0)
    top.set_ylabel("requests per second")
    top.legend(*[a + b for a, b in zip(top.get_legend_handles_labels(), errors.get_legend_handles_labels(),
                                       strict=True)], loc="upper left", fontsize=8)


def _latency_panel(bottom: Axes, columns: dict[str, list[float]]) -> None:
    t = columns["t"]
    bottom.plot(t, columns["p50_ms"], label="p50")
    bottom.plot(t, columns["p99_ms"], label="p99")
    _latency_scale(bottom, columns["p50_ms"] + columns["p99_ms"])
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds since the run started")
    bottom.legend(loc="upper left", fontsize=8)


def _spectrum(report: dict[str, Any]) -> Figure | None:
    """Latency by percentile on a 1/(1-p) axis, as HdrHistogram plots it: the tail gets as much room as the
    median, so a step that is fine at p99 but not at p99.9 shows."""
    lines: list[tuple[str, list[tuple[float, float]]]] = []
    for step in _steps(report):
        xy = []
        for pair in step.get("percentiles") or []:
            p, ms = (_number(v) for v in pair) if isinstance(pair, list | tuple) and len(pair) == 2 else (None, None)
            if p is not None and ms is not None:
                xy.append((1.0 / (1.0 - min(max(p, 0.0), SPECTRUM_MAX) / 100.0), ms))
        if xy:
            lines.append((step_label(step), xy))
    if not lines:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for label, xy in lines:
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker=".", markersize=4, label=label)
    ax.set_xscale("log")
    ax.set_xticks([1.0 / (1.0 - p / 100.0) for p in SPECTRUM_TICKS], labels=[f"{p:g}%" for p in SPECTRUM_TICKS])
    ax.minorticks_off()
    _latency_scale(ax, [y for _, xy in lines for _, y in xy])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title(_title(report, "Latency by percentile"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="step", fontsize=8)
    return fig


def _server_split(report: dict[str, Any]) -> Figure | None:
    """Where the client's mean latency went: waiting in the server's queue, computing, the rest of the server
    (decoding, encoding), and outside the server. The bar's height is the client-measured mean."""
    labels: list[str] = []
    parts: dict[str, list[float]] = {"server queue": [], "server compute": [], "server, other": [],
                                     "network + client": []}
    for step in _steps(report):
        server = step.get("server")
        if not isinstance(server, dict):
            continue
        queue, compute = _number(server.get("queue_us")) or 0.0, _number(server.get("compute_us")) or 0.0
        total_server = _number(server.get("server_us"))
        in_server = max(total_server, queue + compute) if total_server is not None else queue + compute
        mean_ms = _number((step.get("latency_ms") or {}).get("mean"))
        rest = mean_ms * 1000.0 - in_server if mean_ms is not None else _number(server.get("network_us"))
        if not (queue or compute or total_server or rest):
            continue
        labels.append(step_label(step))
        for name, value in zip(parts, (queue, compute, in_server - queue - compute, max(rest or 0.0, 0.0)),
                               strict=True):
            parts[name].append(value)
    if not labels:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    positions = list(range(len(labels)))
    bottoms = [0.0] * len(labels)
    for name, values in parts.items():
        if any(values):
            ax.bar(positions, values, bottom=bottoms, label=name)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_xticks(positions, labels=labels)
    ax.set_xlabel("step")
    ax.set_ylabel("mean latency (µs)")
    ax.set_title(_title(report, "Server time vs the rest"))
    ax.grid(True, axis="y", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], names[::-1], fontsize=8)  # in the order of the stack
    return fig
