"""`serving bench`: closed-loop, open-loop and ramp load against any HTTP route or the gRPC Predict /
ModelInfer methods, with live per-second figures, a report folder and thresholds a CI job can gate on.

The parent process plans the steps, starts the load processes (serving/tools/bench/load.py), merges their
per-second ticks (HdrHistogram percentiles), reads the server's own queue / compute split from Triton's
statistics extension before and after each step when the target is this server (or any server with it),
and writes report.json, report.md, report.csv and the plots (serving/tools/bench/plots.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from ... import __version__
from . import load
from .plots import step_label

#: A ramp step holds when its p99 and error rate meet the objective and it reached this share of its rate.
RAMP_REACHED = 0.9
#: A load process busier than this share of a core over a step may have limited the figures.
SATURATED_CPU = 0.9
SPECTRUM = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.9,
            99.95, 99.99, 99.999, 100.0)
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}


@dataclasses.dataclass
class Step:
    mode: str  # closed | open
    concurrency: int | None = None
    rate: float | None = None

    @property
    def label(self) -> str:
        return step_label({"mode": self.mode, "concurrency": self.concurrency, "target_rate": self.rate})


# ---- thresholds ----

THRESHOLD = re.compile(r"^\s*(p50|p90|p95|p99|p99\.9|mean|max|errors|rate)\s*(<=|<|>=|>)\s*([0-9.]+)\s*"
                       r"(ms|us|µs|s|%|/s)?\s*$")
LATENCY_SCALE = {None: 1.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


@dataclasses.dataclass
class Threshold:
    text: str
    metric: str
    op: str
    limit: float
    percent: bool = False

    @classmethod
    def parse(cls, text: str) -> Threshold:
        m = THRESHOLD.match(text)
        if m is None:
            raise ValueError(f"--threshold {text!r}: expected e.g. 'p99<10ms', 'mean<=2ms', 'errors<0.1%', "
                             f"'errors<5', 'rate>1000'")
        metric, op, number, unit = m.groups()
        limit = float(number)
        if metric in ("errors", "rate"):
            if metric == "rate" and unit not in (None, "/s") or metric == "errors" and unit not in (None, "%"):
                raise ValueError(f"--threshold {text!r}: {metric} takes {'a %' if metric == 'errors' else '/s'}")
            return cls(text, metric, op, limit / 100 if unit == "%" else limit, percent=unit == "%")
        if unit not in LATENCY_SCALE:
            raise ValueError(f"--threshold {text!r}: latencies take ms, us or s")
        return cls(text, metric, op, limit * LATENCY_SCALE[unit])

    def value(self, step: dict[str, Any]) -> float | None:
        if self.metric == "rate":
            return float(step["achieved_rate"])
        if self.metric == "errors":
            errors = sum(step["errors"].values())
            return errors / step["sent"] if self.percent and step["sent"] else float(errors)
        return step["latency_ms"].get(self.metric)

    def show(self, value: float | None) -> str:
        if value is None:
            return "-"
        if self.percent:
            return f"{value:.3%}"
        return f"{value:.4g} ms" if self.metric not in ("errors", "rate") else f"{value:.4g}"

    def holds(self, step: dict[str, Any]) -> bool:
        value = self.value(step)
        if value is None:
            return False
        return {"<": value < self.limit, "<=": value <= self.limit, ">": value > self.limit,
                ">=": value >= self.limit}[self.op]


# ---- targets ----

def http_target(url: str, bodies: list[bytes] | None, headers: list[str], method: str | None, timeout: float,
                content_type: str | None) -> dict[str, Any]:
    """The pre-encoded HTTP requests, one per body (a replay has many; they are sent in turn)."""
    requests = ([_http_request(url, body, headers, method, content_type) for body in bodies] if bodies
                else [_http_request(url, None, headers, method, content_type)])
    parts = urllib.parse.urlsplit(url)
    sizes = [len(body) for body in bodies or [b""]]
    return {"kind": "http", "host": parts.hostname, "port": parts.port or (443 if parts.scheme == "https" else 80),
            "requests": requests, "timeout": timeout, "ssl": parts.scheme == "https", "url": url,
            "method": method or ("POST" if bodies else "GET"), "body_bytes": round(sum(sizes) / len(sizes)),
            "bodies": len(requests)}


def _http_request(url: str, body: bytes | None, headers: list[str], method: str | None,
                  content_type: str | None) -> bytes:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url {url!r}: expected http://host:port/path")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    verb = method or ("POST" if body is not None else "GET")
    lines = [f"{verb} {path} HTTP/1.1", f"Host: {parts.netloc}"]
    names = {h.split(":", 1)[0].strip().lower() for h in headers}
    if body is not None:
        if "content-type" not in names:
            lines.append(f"Content-Type: {content_type or 'application/json'}")
        lines.append(f"Content-Length: {len(body)}")
    lines += [h.strip() for h in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


GRPC_METHODS = {"tf": "/tensorflow.serving.PredictionService/Predict",
                "v2": "/inference.GRPCInferenceService/ModelInfer"}


def grpc_target(address: str, api: str, bodies: list[bytes], headers: list[str], timeout: float) -> dict[str, Any]:
    """The serialized requests (a replay has many; they are sent in turn)."""
    metadata = [[h.split(":", 1)[0].strip().lower(), h.split(":", 1)[1].strip()] for h in headers]
    sizes = [len(b) for b in bodies]
    return {"kind": "grpc", "address": address, "method": GRPC_METHODS[api], "api": api, "requests": bodies,
            "timeout": timeout, "metadata": metadata, "body_bytes": round(sum(sizes) / len(sizes)),
            "bodies": len(bodies)}


def grpc_body(api: str, body_path: Path) -> bytes:
    """A --body file as the method's serialized request: `.json` in protobuf's JSON mapping, else as is."""
    raw = body_path.read_bytes()
    if body_path.suffix == ".json":
        from google.protobuf import json_format

        if api == "tf":
            from ..._proto.tensorflow_serving.apis import predict_pb2

            message: Any = predict_pb2.PredictRequest()
        else:
            from ..._proto.inference import grpc_predict_v2_pb2

            message = grpc_predict_v2_pb2.ModelInferRequest()
        try:
            json_format.Parse(raw, message)
        except json_format.ParseError as e:
            raise ValueError(f"--body {body_path}: not a {message.DESCRIPTOR.full_name} in JSON: {e}") from None
        raw = message.SerializeToString()
    return raw


#: Most logged requests a replay holds.
REPLAY_MAX = 10_000


def replay_bodies(paths: list[Path], kind: str, url_or_api: str) -> list[bytes]:
    """The predict requests of request logs (TFRecord files of PredictionLog) as bodies for the target: TF
    Serving's serialized PredictRequest (gRPC tf), KServe V2's ModelInferRequest (gRPC v2) or JSON (a /v2/
    URL), TF Serving's columnar REST JSON (any other URL)."""
    from ...codecs.tfrecord import prediction_logs

    bodies: list[bytes] = []
    for log in prediction_logs(paths):
        if log.WhichOneof("log_type") == "predict_log":
            bodies.append(_replayed(log.predict_log.request, kind, url_or_api))
            if len(bodies) >= REPLAY_MAX:
                return bodies
    if not bodies:
        raise ValueError(f"--replay: no predict request in {', '.join(map(str, paths))}")
    return bodies


def _replayed(request: Any, kind: str, url_or_api: str) -> bytes:
    from ...codecs.arrays import encode_strings
    from ...codecs.tensors import tensor_to_array
    from ...protocols.kserve.codec import datatype_of, raw_bytes

    if kind == "grpc" and url_or_api == "tf":
        return bytes(request.SerializeToString())
    arrays = {name: tensor_to_array(tensor, name) for name, tensor in request.inputs.items()}
    if kind == "grpc":
        from ..._proto.inference import grpc_predict_v2_pb2

        infer = grpc_predict_v2_pb2.ModelInferRequest(model_name=request.model_spec.name)
        for name, array in arrays.items():
            infer.inputs.add(name=name, datatype=datatype_of(array.dtype), shape=list(array.shape))
            infer.raw_input_contents.append(raw_bytes(array))
        return bytes(infer.SerializeToString())

    def plain(array: Any) -> Any:  # JSON values, strings as {"b64": ...}
        return encode_strings(array, True) if array.dtype.kind in "OSU" else array.tolist()

    if "/v2/" in urllib.parse.urlsplit(url_or_api).path:
        return json.dumps({"inputs": [{"name": name, "shape": list(a.shape), "datatype": datatype_of(a.dtype),
                                       "data": plain(a.ravel())} for name, a in arrays.items()]}).encode()
    doc: dict[str, Any] = {"inputs": {name: plain(a) for name, a in arrays.items()}}
    if request.model_spec.signature_name:
        doc["signature_name"] = request.model_spec.signature_name
    return json.dumps(doc).encode()


# ---- the server's own figures ----

def server_totals(target: dict[str, Any]) -> dict[str, float] | None:
    """Sums over every model of Triton's statistics extension, or None where the target has none."""
    try:
        if target["kind"] == "http":
            parts = urllib.parse.urlsplit(target["url"])
            with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/v2/models/stats", timeout=5) as answer:
                doc = json.loads(answer.read())
        else:
            import grpc
            from google.protobuf import json_format

            from ..._proto.inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

            with grpc.insecure_channel(target["address"]) as channel:
                stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
                reply = stub.ModelStatistics(grpc_predict_v2_pb2.ModelStatisticsRequest(), timeout=5)
            doc = json_format.MessageToDict(reply, preserving_proto_field_name=True)
    except Exception:  # noqa: BLE001 - not this server, or no statistics: the report says nothing of it
        return None
    totals = {"count": 0.0, "ns": 0.0, "queue_ns": 0.0, "compute_ns": 0.0}
    for model in doc.get("model_stats", []):
        stats = model.get("inference_stats", {})
        totals["count"] += float(stats.get("success", {}).get("count", 0))
        totals["ns"] += float(stats.get("success", {}).get("ns", 0))
        totals["queue_ns"] += float(stats.get("queue", {}).get("ns", 0))
        for part in ("compute_input", "compute_infer", "compute_output"):
            totals["compute_ns"] += float(stats.get(part, {}).get("ns", 0))
    return totals


def server_split(before: dict[str, float] | None, after: dict[str, float] | None,
                 client_mean_ms: float | None) -> dict[str, float] | None:
    if before is None or after is None or after["count"] <= before["count"]:
        return None
    count = after["count"] - before["count"]
    server_us = (after["ns"] - before["ns"]) / count / 1e3
    split = {"queue_us": (after["queue_ns"] - before["queue_ns"]) / count / 1e3,
             "compute_us": (after["compute_ns"] - before["compute_ns"]) / count / 1e3, "server_us": server_us}
    if client_mean_ms is not None:
        split["network_us"] = max(client_mean_ms * 1e3 - server_us, 0.0)
    return split


def server_metadata(target: dict[str, Any]) -> dict[str, Any] | None:
    if target["kind"] != "http":
        return None
    parts = urllib.parse.urlsplit(target["url"])
    try:
        with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/v2", timeout=5) as answer:
            doc = json.loads(answer.read())
        return {"name": doc.get("name"), "version": doc.get("version")} if isinstance(doc, dict) else None
    except (OSError, ValueError, urllib.error.URLError):
        return None


# ---- figures ----

def latency_summary(hist: HdrHistogram) -> dict[str, float | None]:
    if hist.get_total_count() == 0:
        return {key: None for key in ("min", "mean", "stdev", *PERCENTILES, "max")}
    out: dict[str, float | None] = {"min": hist.get_min_value() / 1e3, "mean": hist.get_mean_value() / 1e3,
                                    "stdev": hist.get_stddev() / 1e3}
    for key, percentile in PERCENTILES.items():
        out[key] = hist.get_value_at_percentile(percentile) / 1e3
    out["max"] = hist.get_max_value() / 1e3
    return out


def merged(encoded: list[bytes]) -> HdrHistogram:
    hist = load.new_histogram()
    for data in encoded:
        if data:
            hist.decode_and_add(data)
    return hist


#: The ticks of a step by second: (the load process's index, its tick) of each.
Ticks = dict[int, list[tuple[int, dict[str, Any]]]]


class Bench:
    """The processes and the steps of one run."""

    def __init__(self, target: dict[str, Any], processes: int, connections: int | None,
                 show: Callable[[dict[str, Any] | None, str], None]) -> None:
        self.target, self.show = target, show
        self.connections = connections
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this one is shared
        self.pipes: list[Connection] = []
        self.procs = []
        for _ in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=load.main, args=(child, target), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            kind, _, _ = pipe.recv()
            assert kind == "ready"
        self.clock = time.time()  # the run's start: the series' `t` counts from here
        self.step_id = 0

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()

    def run(self, step: Step, duration: float, record: bool = True) -> dict[str, Any]:
        """One step; its figures (record) or nothing (warm-up)."""
        self.step_id += 1
        start = time.time() + 0.2
        self._send(step, start, duration, record)
        before = server_totals(self.target) if record else None
        ticks, cpu, seconds, shown = self._gather(step, start, duration)
        if not record:
            return {}
        after = server_totals(self.target)
        every = [t for second in ticks.values() for _, t in second]
        hist = merged([t["hist"] for t in every])
        sent = sum(t["sent"] for t in every)
        ok = sum(t["ok"] for t in every)
        errors = _sum_kinds(t["errors"] for t in every)
        # A second a load process never completed was not shown: it is reported all the same.
        seconds += [self._second(step, start, s, ticks[s]) for s in sorted(ticks) if shown <= s < int(duration)]
        in_window = sum(s["ok"] for s in seconds)
        latency = latency_summary(hist)
        generator_cpu = max(cpu) / duration if cpu else 0.0
        spectrum = hist.get_percentile_to_value_dict(list(SPECTRUM)) if ok else {}
        return {
            "mode": step.mode, "concurrency": step.concurrency, "target_rate": step.rate, "duration_s": duration,
            "start_s": round(start - self.clock, 3), "sent": sent, "ok": ok, "errors": errors,
            "achieved_rate": in_window / duration, "success_rate": ok / sent if sent else 0.0,
            "latency_ms": latency, "percentiles": [[p, v / 1e3] for p, v in spectrum.items()],
            "server": server_split(before, after, latency["mean"]),
            "generator_cpu": round(generator_cpu, 3), "generator_saturated": generator_cpu > SATURATED_CPU,
            "series": seconds,
            "hdr": hist.encode().decode() if ok else "",
        }

    def _send(self, step: Step, start: float, duration: float, record: bool) -> None:
        """Give each load process its share of the step: of the connections (closed loop) or of the rate."""
        n = len(self.pipes)
        for i, pipe in enumerate(self.pipes):
            if step.mode == "closed":
                assert step.concurrency is not None
                share = step.concurrency // n + (i < step.concurrency % n)
                spec = {"mode": "closed", "connections": share}
            else:
                assert step.rate is not None
                connections = self.connections or 64
                spec = {"mode": "open", "rate": step.rate / n, "offset": i / step.rate if step.rate else 0.0,
                        "connections": max(math.ceil(connections / n), 1)}
            pipe.send({**spec, "id": self.step_id, "start": start, "duration": duration, "record": record,
                       "timeout": self.target["timeout"]})

    def _gather(self, step: Step, start: float,
                duration: float) -> tuple[Ticks, list[float], list[dict[str, Any]], int]:
        """The load processes' ticks until every one is done: the ticks by second, each process's CPU seconds,
        the figures of the seconds shown live (each once every process has sent it) and how many they are."""
        n = len(self.pipes)
        ticks: Ticks = {}
        cpu = [0.0] * n
        done = 0
        shown = 0
        seconds: list[dict[str, Any]] = []  # each second's figures, made once: shown live, then reported
        while done < n:
            for ready in wait(self.pipes):
                assert isinstance(ready, Connection)
                pipe = ready
                try:
                    kind, step_id, tick = pipe.recv()
                except EOFError:
                    raise RuntimeError("a load process died; see its output above") from None
                if kind == "failed":
                    raise RuntimeError(f"a load process failed: {tick}")
                if kind == "done":
                    done += 1
                    continue
                index = self.pipes.index(pipe)
                ticks.setdefault(tick["t"], []).append((index, tick))
                cpu[index] += tick["cpu"]
                while len(ticks.get(shown, ())) == n and shown < int(duration):
                    seconds.append(self._second(step, start, shown, ticks[shown]))
                    self.show(seconds[-1], step.label)
                    shown += 1
        return ticks, cpu, seconds, shown

    def _second(self, step: Step, start: float, index: int, group: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        hist = merged([t["hist"] for _, t in group])
        summary = latency_summary(hist)
        return {"t": round(start - self.clock + index, 3), "sent": sum(t["sent"] for _, t in group),
                "ok": sum(t["ok"] for _, t in group), "errors": sum(sum(t["errors"].values()) for _, t in group),
                "error_kinds": _sum_kinds(t["errors"] for _, t in group), "p50_ms": summary["p50"],
                "p99_ms": summary["p99"], "inflight": sum(t["inflight"] for _, t in group),
                "cpu": round(max(t["cpu"] for _, t in group), 3)}


def _sum_kinds(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for kind, count in d.items():
            out[kind] = out.get(kind, 0) + count
    return out


def plan(args: Any) -> list[Step]:
    if args.mode == "closed":
        return [Step("closed", concurrency=c) for c in args.concurrency]
    if args.mode == "open":
        return [Step("open", rate=r) for r in args.rate]
    return []  # ramp: planned as it goes


def ramp_rates(start: float, step: float, top: float) -> Iterator[float]:
    rate = start
    while rate <= top + 1e-9:
        yield rate
        rate += step


def ramp_holds(result: dict[str, Any], slo_ms: float, max_error_rate: float) -> str | None:
    """None when a ramp step held its objective, else why not."""
    p99 = result["latency_ms"]["p99"]
    error_rate = 1.0 - result["success_rate"] if result["sent"] else 1.0
    if p99 is None:
        return "no request succeeded"
    if p99 > slo_ms:
        return f"p99 {p99:.3g} ms > {slo_ms:g} ms"
    if error_rate > max_error_rate:
        return f"error rate {error_rate:.3%} > {max_error_rate:.3%}"
    if result["achieved_rate"] < RAMP_REACHED * result["target_rate"]:
        return f"achieved {result['achieved_rate']:.0f}/s of {result['target_rate']:g}/s"
    return None


def host_info() -> dict[str, Any]:
    from ...platform.workers import available_cores

    return {"cores": available_cores(), "hostname": socket.gethostname(), "python": sys.version.split()[0]}


def execute(args: Any, target: dict[str, Any], thresholds: list[Threshold],
            show: Callable[[dict[str, Any] | None, str], None]) -> dict[str, Any]:
    """Run the whole plan; the report (a dict ready for report.json)."""
    bench = Bench(target, args.processes, args.connections, show)
    try:
        steps, ramp = _run_plan(bench, args, show)
    finally:
        bench.close()
    for i, step_result in enumerate(steps):
        step_result["index"] = i
    judged = [s for s in steps if s["held"]][-1:] if args.mode == "ramp" else steps
    verdicts = _verdicts(thresholds, judged)
    warnings = [f"step {s['index']}: a load process used {s['generator_cpu']:.0%} of a core: the figures may be "
                f"the load generator's limit, not the server's" for s in steps if s["generator_saturated"]]
    return {
        "tool": "serving bench", "version": __version__, "command": "serving bench " + " ".join(args.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(bench.clock)),
        "target": {k: v for k, v in target.items() if k not in ("requests", "metadata")},
        "host": host_info(), "generator": {"processes": args.processes, "connections": args.connections},
        "server": server_metadata(target), "mode": args.mode,
        "slo": {"p99_ms": args.slo_p99_ms, "max_error_rate": args.max_error_rate} if args.mode == "ramp" else None,
        "steps": steps,
        "verdict": {"passed": all(v["passed"] for v in verdicts), "thresholds": verdicts, "ramp": ramp},
        "warnings": warnings,
    }


def _run_plan(bench: Bench, args: Any, show: Callable[[dict[str, Any] | None, str], None]) -> tuple[
        list[dict[str, Any]], dict[str, Any] | None]:
    """The warm-up, then the planned steps or the ramp: each step's figures, and the ramp's outcome (None
    but for a ramp)."""
    planned = plan(args)
    first = planned[0] if planned else Step("open", rate=args.start)
    if args.warmup > 0:
        show(None, f"warm-up {args.warmup:g} s at {first.label}")
        bench.run(first, args.warmup, record=False)
    if args.mode == "ramp":
        return _ramp(bench, args)
    steps: list[dict[str, Any]] = []
    for step in planned:
        result = bench.run(step, args.duration)
        result["held"] = None
        steps.append(result)
    return steps, None


def _ramp(bench: Bench, args: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Open-loop steps at rising rates until one misses the objective: each step's figures, and the highest
    rate that held with the one that broke it."""
    steps: list[dict[str, Any]] = []
    ramp: dict[str, Any] = {"max_rate_held": None, "achieved_at_max": None, "broke_at": None, "reason": None}
    for rate in ramp_rates(args.start, args.step, args.max):
        result = bench.run(Step("open", rate=rate), args.duration)
        why = ramp_holds(result, args.slo_p99_ms, args.max_error_rate)
        result["held"] = why is None
        steps.append(result)
        if why is not None:
            ramp.update(broke_at=rate, reason=why)
            break
        ramp.update(max_rate_held=rate, achieved_at_max=result["achieved_rate"])
    return steps, ramp


def _verdicts(thresholds: list[Threshold], judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each threshold against the judged steps: passed when it held at every one (and there is one); its
    value at the first step where it failed, else at the last."""
    verdicts: list[dict[str, Any]] = []
    for threshold in thresholds:
        failing = [s for s in judged if not threshold.holds(s)]
        worst = failing[0] if failing else (judged[-1] if judged else None)
        value = threshold.value(worst) if worst is not None else None
        verdicts.append({"threshold": threshold.text, "passed": bool(judged) and not failing, "value": value,
                         "shown": threshold.show(value), "step": worst["index"] if worst is not None else None})
    return verdicts
