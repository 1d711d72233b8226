"""`serving warmup-from-log LOGS... --out <version dir>/assets.extra/tf_serving_warmup_requests [--max 1000]`:
a TF Serving warm-up file made from real traffic. Reads request logs (serving/ops/requestlog.py, or any
TFRecord file of PredictionLog records), keeps one request per distinct (kind, model, signature, input
names, shapes and dtypes; for classify, regress and MultiInference the number of tf.Examples), the first
seen, up to `--max`, and writes them with their responses dropped, so the file holds what warm-up replays
and nothing it does not need. TF Serving reads it; so does this engine (serving/tools/warmup.py). A log's truncated
last record (its disk filled up, or the server was killed mid-write) is skipped with a warning; a corrupt record
fails the command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from ..codecs.tfrecord import prediction_logs, write_tfrecords
from ..errors import ServingError
from .warmup import MAX_RECORDS


def distinct_requests(paths: list[Path], limit: int) -> Iterator[bytes]:
    """The serialized warm-up records: a PredictionLog holding only the request (predict, classify, regress or
    MultiInference), one per distinct (kind, model, signatures, input shapes and dtypes), the first seen."""
    from .._proto.tensorflow_serving.apis import prediction_log_pb2

    seen: set[tuple[object, ...]] = set()
    for log in prediction_logs(paths):
        kind = log.WhichOneof("log_type")
        if kind is None:
            continue
        request = getattr(log, kind).request
        if kind == "predict_log":
            shape: tuple[object, ...] = tuple(sorted(
                (name, tensor.dtype, tuple(d.size for d in tensor.tensor_shape.dim))
                for name, tensor in request.inputs.items()))
            key: tuple[object, ...] = (kind, request.model_spec.name, request.model_spec.signature_name, shape)
        elif kind == "multi_inference_log":
            tasks = tuple((t.model_spec.name, t.model_spec.signature_name, t.method_name) for t in request.tasks)
            key = (kind, tasks, examples_count(request.input))
        else:  # classify_log, regress_log: a batch of tf.Examples
            key = (kind, request.model_spec.name, request.model_spec.signature_name,
                   examples_count(request.input))
        if key in seen:
            continue
        seen.add(key)
        kept = prediction_log_pb2.PredictionLog()
        getattr(kept, kind).request.CopyFrom(request)
        yield kept.SerializeToString()
        if len(seen) >= limit:
            return


def examples_count(input: Any) -> int:
    """How many tf.Examples an Input holds (its batch size: what decides the shapes warm-up sees)."""
    which = input.WhichOneof("kind")
    return len(getattr(input, which).examples) if which else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="serving warmup-from-log", description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+", type=Path, help="request log files (.tfrecord of PredictionLog)")
    ap.add_argument("--out", type=Path, required=True,
                    help="the warm-up file: <version dir>/assets.extra/tf_serving_warmup_requests")
    ap.add_argument("--max", type=int, default=1000, help=f"most records kept (1 to {MAX_RECORDS}; default 1000)")
    args = ap.parse_args(argv)
    if not 1 <= args.max <= MAX_RECORDS:
        ap.error(f"--max must be 1 to {MAX_RECORDS}")
    logging.basicConfig(format=f"{ap.prog}: %(message)s")  # the reader's warnings (a truncated last record)
    try:
        records = list(distinct_requests(args.logs, args.max))
    except (OSError, ValueError, ServingError, DecodeError) as e:
        print(f"serving warmup-from-log: {getattr(e, 'message', e)}", file=sys.stderr)
        return 1
    if not records:
        print("serving warmup-from-log: no request in the logs", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tfrecords(args.out, records)
    print(f"wrote {len(records)} warm-up records to {args.out}")
    return 0
