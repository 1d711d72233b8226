"""The PNG plots of a `serving bench` report: which files come, that they are real images of the promised
size, and that a report with gaps (no server figures, a step where nothing succeeded) still plots."""

from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from serving.tools.bench.plots import step_label, write_plots  # noqa: E402

ALL = ["latency_vs_throughput.png", "timeline.png", "latency_spectrum.png", "server_split.png"]


def make_step(index: int, mode: str, start_s: float, rate: float, p50: float | None, *,
              concurrency: int | None = None, target_rate: float | None = None,
              server: bool = True) -> dict[str, Any]:
    """A 5-second step whose latencies grow with `p50` (all None when `p50` is None: nothing succeeded)."""
    def ms(factor: float) -> float | None:
        return None if p50 is None else p50 * factor

    percentiles = [] if p50 is None else [
        [0.0, p50 * 0.2], [50.0, p50], [75.0, p50 * 1.2], [90.0, p50 * 1.5], [99.0, p50 * 3],
        [99.9, p50 * 6], [99.99, p50 * 10], [100.0, p50 * 14]]
    mean = ms(1.1)
    return {
        "index": index, "mode": mode, "concurrency": concurrency, "target_rate": target_rate, "duration_s": 5.0,
        "start_s": start_s, "sent": int(rate * 5), "ok": int(rate * 5) - 3, "errors": {"http_503": 3},
        "achieved_rate": rate, "success_rate": 0.999,
        "latency_ms": {"min": ms(0.2), "mean": mean, "stdev": ms(0.3), "p50": ms(1), "p90": ms(1.5),
                       "p95": ms(2), "p99": ms(3), "p99.9": ms(6), "max": ms(14)},
        "percentiles": percentiles,
        "server": None if not server or mean is None else {
            "queue_us": mean * 100, "compute_us": mean * 500, "server_us": mean * 700, "network_us": mean * 300},
        "generator_cpu": 0.4, "generator_saturated": False, "held": None,
        "series": [{"t": start_s + i, "sent": int(rate), "ok": int(rate) - 1, "errors": 1, "p50_ms": ms(1),
                    "p99_ms": ms(3), "inflight": concurrency or 1, "cpu": 0.4} for i in range(5)],
    }


def closed_report() -> dict[str, Any]:
    steps = [make_step(0, "closed", 2.0, 900.0, 0.9, concurrency=1),
             make_step(1, "closed", 8.0, 3500.0, 1.1, concurrency=4),
             make_step(2, "closed", 14.0, 5200.0, 3.0, concurrency=16),
             make_step(3, "closed", 20.0, 5300.0, 12.0, concurrency=64, server=False)]
    return {"tool": "serving bench", "command": "serving bench --mode closed --concurrency 1,4,16,64",
            "target": {"kind": "http", "url": "http://127.0.0.1:8080/v1/models/m:predict", "api": None,
                       "body_bytes": 180},
            "mode": "closed", "slo": None, "steps": steps,
            "verdict": {"passed": True, "thresholds": [], "ramp": None}, "warnings": []}


def ramp_report() -> dict[str, Any]:
    steps = [make_step(i, "ramp", 1.0 + 6 * i, rate * 0.99, p50, target_rate=rate)
             for i, (rate, p50) in enumerate([(500.0, 0.8), (1000.0, 0.9), (2000.0, 2.0), (2500.0, 40.0)])]
    report = closed_report() | {"mode": "ramp", "steps": steps, "slo": {"p99_ms": 10.0, "max_error_rate": 0.001}}
    report["verdict"] = {"passed": False, "thresholds": [],
                         "ramp": {"max_rate_held": 2000.0, "broke_at": 2500.0, "reason": "p99 120 ms > 10 ms"}}
    return report


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_plots(paths: list[Path], out: Path, names: list[str]) -> None:
    assert paths == [out / name for name in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for path in paths:
        assert png_size(path) == (1000, 600), path.name
        assert path.stat().st_size > 10_000, f"{path.name} is nearly empty"


def test_a_closed_report_gets_all_four_plots_of_1000_by_600_pixels(tmp_path: Path) -> None:
    assert_plots(write_plots(closed_report(), tmp_path), tmp_path, ALL)


def test_a_ramp_report_with_an_slo_and_a_verdict_gets_all_four_plots(tmp_path: Path) -> None:
    assert_plots(write_plots(ramp_report(), tmp_path / "plots"), tmp_path / "plots", ALL)


def test_a_report_without_server_figures_has_no_server_split(tmp_path: Path) -> None:
    report = closed_report()
    for step in report["steps"]:
        step["server"] = None
    assert_plots(write_plots(report, tmp_path), tmp_path, ALL[:3])


def test_a_step_where_nothing_succeeded_loses_its_points_but_not_the_plots(tmp_path: Path) -> None:
    report = ramp_report()
    report["steps"].append(make_step(4, "ramp", 25.0, 0.0, None, target_rate=3000.0))
    report["steps"][1]["latency_ms"]["p99.9"] = None
    report["steps"][1]["server"] = {"queue_us": None, "compute_us": 300.0, "server_us": None, "network_us": None}
    report["steps"][2]["percentiles"].append([None, None])
    assert_plots(write_plots(report, tmp_path), tmp_path, ALL)


def test_a_report_where_nothing_succeeded_plots_only_the_timeline(tmp_path: Path) -> None:
    report = copy.deepcopy(ramp_report())
    report["steps"] = [make_step(0, "ramp", 1.0, 0.0, None, target_rate=500.0)]
    assert_plots(write_plots(report, tmp_path), tmp_path, ["timeline.png"])


def test_a_report_without_steps_has_no_plots(tmp_path: Path) -> None:
    assert write_plots(closed_report() | {"steps": []}, tmp_path) == []


def test_steps_are_labelled_by_what_they_asked_for() -> None:
    assert step_label({"mode": "closed", "concurrency": 16, "target_rate": None}) == "c=16"
    assert step_label({"mode": "open", "concurrency": None, "target_rate": 500.0}) == "500/s"
    assert step_label({"mode": "ramp", "concurrency": 8, "target_rate": 1250.5}) == "1250.5/s"
