"""benchmarks/suite.py's pure part: `serving bench` report.json documents -> summary.json -> summary.md (ratios
to the best peer and to the floor per concurrency), and its command line. No server is started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import suite

Step = tuple[float, float | None, float | None]


def report(steps: dict[int, Step], errors: int = 0, saturated: bool = False) -> dict:
    """A `serving bench` report.json with closed-loop steps {concurrency: (req/s, p50 ms, p99 ms)}."""
    return {"tool": "serving bench", "mode": "closed", "warnings": ["step 1: a load process used 95% of a core"]
            if saturated else [],
            "steps": [{"mode": "closed", "concurrency": c, "achieved_rate": rps, "sent": int(rps * 2) + errors,
                       "ok": int(rps * 2), "errors": {"http 503": errors} if errors else {},
                       "latency_ms": {"p50": p50, "p99": p99}, "generator_saturated": saturated}
                      for c, (rps, p50, p99) in steps.items()]}


def result(server: str, model: str, protocol: str, role: str, doc: dict | None, error: str | None = None) -> dict:
    return {"server": server, "model": model, "protocol": protocol, "role": role, "report": doc,
            "dir": None if doc is None else f"{server}-{model}-{protocol}", "error": error}


META = {"stamp": "2026-11-26-0700", "command": "python benchmarks/suite.py --quick", "duration_s": 2.0,
        "elapsed_s": 150.0, "load_processes": 2,
        "machine": {"cores": 2, "cpu": "test cpu", "memory_gib": 8.0, "system": "Linux", "python": "3.11"},
        "server_args": "--max_batch_size=64", "servers": {"serving-engine": "this server"},
        "not_set_up": [suite.NOT_SET_UP["torchserve"]], "warnings": []}


@pytest.fixture
def summary() -> dict:
    results = [
        result("serving-engine", "xgb", "v2-rest", "ours", report({1: (4000, 0.3, 0.5), 16: (20000, 0.8, 1.5)})),
        result("serving-engine", "xgb", "v2-grpc", "ours", report({1: (900, 1.0, 2.0), 16: (2400, 6.0, 9.0)})),
        result("serving-engine", "mlp", "v2-rest", "ours", report({1: (3000, 0.3, 0.6), 16: (15000, 1.0, 2.0)})),
        result("minimal_path", "xgb", "tf-rest", "floor", report({1: (5000, 0.2, 0.3), 16: (40000, 0.4, 0.9)})),
        result("minimal_grpc", "xgb", "v2-grpc", "floor", None, "minimal_grpc exited with 1 before it was ready"),
        result("pytriton", "xgb", "v2-rest", "peer", report({1: (250, 3.9, 6.1), 16: (2000, 7.5, 9.0)})),
        result("mlserver", "xgb", "v2-rest", "peer", report({1: (800, 1.2, 15.0), 16: (1600, 10.0, 30.0)}, 3, True)),
        result("pytriton", "xgb", "v2-grpc", "peer", report({1: (150, 6.0, 8.0), 16: (0, None, None)}, errors=40)),
    ]
    return suite.summarize(results, {**META, "warnings": suite.warnings_of(results)})


def group(summary: dict, model: str, transport: str) -> dict:
    return next(g for g in summary["groups"] if g["model"] == model and g["transport"] == transport)


def test_ratios_to_the_best_peer_and_the_floor_per_concurrency(summary):
    http = group(summary, "xgb", "HTTP")
    assert [r["server"] for r in http["rows"]] == ["serving-engine", "pytriton", "mlserver", "minimal_path"]
    (ratio,) = http["ratios"]
    by_conc = {p["concurrency"]: p for p in ratio["points"]}
    # c=1: MLServer (800) is the best peer; c=16: PyTriton (2000)
    assert by_conc[1]["best_peer"] == "mlserver" and by_conc[1]["vs_best_peer"] == pytest.approx(5.0)
    assert by_conc[16]["best_peer"] == "pytriton" and by_conc[16]["vs_best_peer"] == pytest.approx(10.0)
    assert by_conc[1]["vs_floor"] == pytest.approx(0.8) and by_conc[16]["vs_floor"] == pytest.approx(0.5)


def test_missing_figures_give_no_ratio(summary):
    grpc = group(summary, "xgb", "gRPC")
    by_conc = {p["concurrency"]: p for p in grpc["ratios"][0]["points"]}
    assert by_conc[1]["vs_best_peer"] == pytest.approx(6.0)
    # PyTriton answered nothing at c=16 and the gRPC floor never started: no ratio, not a division by zero
    assert by_conc[16]["best_peer"] is None and by_conc[16]["vs_best_peer"] is None
    assert by_conc[1]["vs_floor"] is None
    mlp = group(summary, "mlp", "HTTP")
    assert [r["role"] for r in mlp["rows"]] == ["ours", "floor"]  # the xgb floor stands in for the request path
    assert mlp["ratios"][0]["points"][1]["vs_floor"] == pytest.approx(15000 / 40000)
    assert not any(g["model"] in ("lgbm", "tf") for g in summary["groups"])  # no run of ours: no group


def test_summary_json_and_markdown(summary, tmp_path: Path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    again = json.loads(path.read_text())
    assert again["groups"] == summary["groups"]
    failed = {(r["server"], r["protocol"]): r["error"] for r in again["runs"] if r["error"]}
    assert failed == {("minimal_grpc", "v2-grpc"): "minimal_grpc exited with 1 before it was ready"}

    text = suite.render(again)
    assert "Command: `python benchmarks/suite.py --quick` (took 2.5 min)" in text
    assert "Machine: 2 cores (test cpu)" in text and "2 load processes" in text
    assert "TorchServe: not set up" in text and "WITH_TORCHSERVE=1" in text
    assert "## xgb, HTTP" in text and "## xgb, gRPC" in text and "## mlp, HTTP" in text
    assert "| **serving-engine** | v2-rest | 16 | 20,000 | 0.800 | 1.500 | 0 |" in text
    assert "| mlserver | v2-rest | 1 | 800 | 1.200 | 15.000 | 3 |" in text
    assert "| serving-engine v2-rest | 1 | mlserver 800 | 5.00 | 0.80 |" in text
    assert "| serving-engine v2-rest | 16 | pytriton 2,000 | 10.00 | 0.50 |" in text
    assert "| serving-engine v2-grpc | 16 | - | - | - |" in text
    assert "| minimal_path (floor, xgb) | tf-rest | 1 |" in text  # the floor's model named in the mlp table
    assert "No peer was measured for this model and transport" in text  # the mlp group: TorchServe not set up
    assert "minimal_grpc xgb v2-grpc: minimal_grpc exited with 1" in text
    assert "mlserver-xgb-v2-rest: step 1: a load process used 95% of a core" in text


def test_points_keep_closed_loop_steps_in_order():
    doc = report({16: (100.0, 1.0, 2.0), 1: (50.0, 0.5, 1.0)}, errors=2)
    doc["steps"].append({"mode": "open", "concurrency": None, "achieved_rate": 10.0})
    assert [(p["concurrency"], p["rps"], p["errors"]) for p in suite.points(doc)] == [(1, 50.0, 2), (16, 100.0, 2)]


def test_command_line():
    quick = suite.parse_args(["--quick"])
    assert (quick.duration, quick.concurrency) == (2.0, [1, 16])
    assert (suite.parse_args([]).duration, suite.parse_args([]).concurrency) == (10.0, [1, 16, 64])
    args = suite.parse_args(["--quick", "--concurrency", "4,8", "--skip", "mlserver,torchserve"])
    assert (args.duration, args.concurrency, args.skip) == (2.0, [4, 8], ["mlserver", "torchserve"])
    with pytest.raises(SystemExit):
        suite.parse_args(["--skip", "tfserving"])
