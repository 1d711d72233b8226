"""The PMML processor's costs: JVM start-up, model load, and one predict call per batch size, in process.

    python benchmarks/pmml_cost.py

Writes a Markdown table to benchmarks/results/ with the command that made it.
"""

from __future__ import annotations

import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noqa: E402 - a script run from a checkout

from serving.protocols.tfserving.codec import record_rows  # noqa: E402
from tests.e2e.test_pmml import TREE  # noqa: E402 - the hand-checkable tree model of the tests


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pmml-"))
    (work / "1").mkdir()
    (work / "1" / "model.pmml").write_text(TREE)
    t0 = time.perf_counter()
    from processors.pmml_processor import PMMLProcessor

    first = PMMLProcessor()
    first.load(work / "1", "cpu", {})
    start_up = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = PMMLProcessor()
    second.load(work / "1", "cpu", {})
    reload = time.perf_counter() - t0
    sig = first.signature("")
    lines = [f"# PMML processor costs ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)", "",
             "Command: `python benchmarks/pmml_cost.py` (the test suite's tree model, in process)", "",
             f"- JVM start + first model load: {start_up * 1000:.0f} ms",
             f"- another model load in the same process (JVM shared): {reload * 1000:.0f} ms", "",
             "| rows per predict call | median µs per call | µs per row |", "|---|---|---|"]
    for n in (1, 8, 32, 128, 512):
        rows = [{"age": 30 + i % 50, "cp": i % 4, "fbs": bool(i % 2)} for i in range(n)]
        inputs = record_rows(rows, sig, "bench")
        times = []
        for _ in range(50 if n < 512 else 20):
            t0 = time.perf_counter()
            first.validate(inputs, sig)
            first.predict(inputs, sig.name)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times) * 1e6
        lines.append(f"| {n} | {med:,.0f} | {med / n:,.1f} |")
    text = "\n".join(lines) + "\n"
    out = ROOT / "benchmarks" / "results" / f"pmml_cost-{datetime.datetime.now(datetime.UTC):%Y-%m-%d-%H%M}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
