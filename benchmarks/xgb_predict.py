"""What one XGBoost predict costs, in process: `Booster.inplace_predict`, the processor's direct C call
(`processors.xgboost_processor.DensePredict`) and the bare C call it makes (`XGBoosterPredictFromDense` with its
arguments made once), interleaved round by round, on the model of benchmarks/xgb_http.py (100 trees, 32
features) at batch 1 and 32, one thread.

    python benchmarks/xgb_predict.py [--rounds 20] [--calls 500]

Writes a Markdown table (medians of the rounds, µs per call) to benchmarks/results/ with this command.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noqa: E402 - a script run from a checkout

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402

from benchmarks.xgb_http import prepare_model  # noqa: E402 - the served model
from processors.xgboost_processor import _PREDICT_ARGS, DensePredict  # noqa: E402

BATCHES = (1, 32)


def bare_call(booster: xgb.Booster, x: np.ndarray):  # type: ignore[no-untyped-def]
    """The C call alone, its array interface and out-parameters made once."""
    call, handle, null = xgb.core._LIB.XGBoosterPredictFromDense, booster.handle, ctypes.c_void_p()
    interface = (b'{"data": [%d, true], "strides": null, "descr": [["", "<f4"]], "typestr": "<f4", '
                 b'"shape": [%d, %d], "version": 3}' % (x.ctypes.data, *x.shape))
    shape, dims, preds = ctypes.POINTER(ctypes.c_uint64)(), ctypes.c_uint64(), ctypes.POINTER(ctypes.c_float)()
    refs = ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(preds)
    return lambda _x: call(handle, interface, _PREDICT_ARGS, null, *refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=500)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xgb-predict-"))
    repo, _row = prepare_model(work)
    booster = xgb.Booster(model_file=str(repo / "1" / "model.json"))
    booster.set_param({"nthread": 1})
    rng = np.random.default_rng(0)
    direct = DensePredict(booster)
    times: dict[tuple[str, int], list[float]] = {}
    for batch in BATCHES:
        x = rng.random((batch, booster.num_features()), dtype=np.float32)
        ways = {
            "Booster.inplace_predict": lambda x: booster.inplace_predict(x, validate_features=False),
            "DensePredict (the processor)": direct,
            "the C call alone": bare_call(booster, x),
        }
        for _ in range(args.rounds):
            for name, fn in ways.items():
                for _ in range(20):
                    fn(x)
                start = time.perf_counter()
                for _ in range(args.calls):
                    fn(x)
                times.setdefault((name, batch), []).append((time.perf_counter() - start) / args.calls * 1e6)
    names = list(dict.fromkeys(name for name, _ in times))
    lines = [f"# XGBoost predict in process ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
             f"`python benchmarks/xgb_predict.py --rounds {args.rounds} --calls {args.calls}`: xgboost "
             f"{xgb.__version__}, the xgb_http model, one thread; median µs per call of {args.rounds} rounds.", "",
             "| call | " + " | ".join(f"batch {b}" for b in BATCHES) + " |", "|---|" + "---|" * len(BATCHES)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{statistics.median(times[name, b]):.1f}" for b in BATCHES) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results" / f"xgb_predict-{datetime.datetime.now():%Y-%m-%d-%H%M}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
