"""The one Markdown table every load benchmark writes to benchmarks/results/."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Columns a row may carry, after the server's CPU: shown when some row has them ('—' where one has not).
OPTIONAL = (("client_us", "client CPU µs/req", "{:.0f}"), ("quiet_p99", "p99 quiet ms", "{:.3f}"),
            ("quiet_share", "quiet calls", "{:.0%}"))


def write_report(out: Path, name: str, title: str, intro: Sequence[str], rows: Sequence[dict[str, Any]],
                 comparisons: Sequence[tuple[str, str]]) -> Path:
    """Rows carry server, conc, rps, p50, p99 (ms), cpu_us, errors, and may carry the OPTIONAL figures:
    client_us (the load generator's CPU per request), quiet_p99 and quiet_share (grpc_perf_analyzer's --quiet);
    each comparison (ours, theirs) adds a line of req/s ratios per concurrency."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    extra = [c for c in OPTIONAL if any(c[0] in r for r in rows)]
    lines = [f"# {title}, {stamp} UTC", "", *intro, "",
             "| server | conc | req/s | p50 ms | p99 ms | server CPU µs/req |"
             + "".join(f" {head} |" for _, head, _ in extra) + " errors |",
             "|---|---|---|---|---|---|" + "---|" * len(extra) + "---|"]
    for r in rows:
        mine = "".join(f" {form.format(r[key])} |" if key in r else " — |" for key, _, form in extra)
        lines.append(f"| {r['server']} | {r['conc']} | {r['rps']:,.0f} | {r['p50']:.3f} | {r['p99']:.3f} | "
                     f"{r['cpu_us']:.0f} |{mine} {r['errors']:.0f} |")
    for ours_name, theirs_name in comparisons:
        ours = {r["conc"]: r["rps"] for r in rows if r["server"] == ours_name}
        theirs = {r["conc"]: r["rps"] for r in rows if r["server"] == theirs_name}
        ratios = [f"c={c}: {ours[c] / theirs[c]:.2f}" for c in ours if theirs.get(c)]
        if ratios:
            lines += ["", f"{ours_name} / {theirs_name} req/s: " + ", ".join(ratios)]
    out.mkdir(parents=True, exist_ok=True)
    path = fresh(out, name, stamp)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


def write_text(out: Path | None, name: str, title: str, command: str, text: str) -> Path | None:
    """`text` under its title and the command that made it, as `<out>/<name>-<time>.md` (nothing when `out` is
    None)."""
    if out is None:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    out.mkdir(parents=True, exist_ok=True)
    path = fresh(out, name, stamp)
    path.write_text(f"# {title}, {stamp} UTC\n\nCommand: {command}\n\n{text}\n")
    print(f"wrote {path}")
    return path


def fresh(out: Path, name: str, stamp: str) -> Path:
    """`<out>/<name>-<stamp>.md`, or with -2, -3... when a run of the same minute wrote that one."""
    path, n = out / f"{name}-{stamp}.md", 1
    while path.exists():
        n += 1
        path = out / f"{name}-{stamp}-{n}.md"
    return path
