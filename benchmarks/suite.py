"""`make bench`: serving-engine beside the peer servers and the two floors of a Python request path, every
load made by `serving bench`, in one run on this machine.

Models: the peers' XGBoost and LightGBM (100 trees x 32 float features, `$ANCHOR_MODELS`, default
/tmp/anchors/models, made by ../shared/peers/make_models.py when missing), the TorchScript MLP 32-64-64-1 of
../shared/peers/torchserve/make_mlp.py and a Keras MLP of the same shape exported as a TensorFlow SavedModel
at run time. Every request is one row.

Servers, one at a time (each started for its own measurements, stopped after):
- serving-engine, one process serving the four models (`--server-args`), over KServe V2 and TF Serving REST
  and gRPC;
- the floors `../shared/peers/minimal_path.py` (HTTP) and `minimal_grpc.py` (gRPC, KServe V2 ModelInfer):
  the least a Python request path does, with the xgb model;
- the peers that ../shared/peers/setup.sh set up under /tmp/anchors: PyTriton (xgb, lgbm; V2 REST and gRPC;
  batching on), MLServer (xgb, lgbm; V2 REST and gRPC; batching on), TorchServe (the MLP; V2 REST; batching on).

Load: `serving bench` in closed loop at each concurrency, `--warmup 2`. Writes
benchmarks/results/<YYYY-MM-DD-HHMM>/ with each run's report folder (`<server>-<model>-<protocol>/`),
summary.md (a table per model and transport, ours / best peer and ours / floor per concurrency) and
summary.json (the same figures).

    python benchmarks/suite.py [--duration 10] [--concurrency 1,16,64] [--quick] [--skip mlserver,...]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a script run from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.xgb_http import ANCHORS, PEERS, PYTRITON_PY, free_port  # noqa: E402

T = Path("/tmp/anchors")  # where ../shared/peers/setup.sh puts the peers
MLSERVER_BIN = T / "venv" / "bin" / "mlserver"
TS_VENV = T / "venv-ts"
TS_MAR = T / "ts" / "model-store" / "mlp.mar"
N_FEATURES = 32
SEED = 20240601
WARMUP = 2
MODELS = ("xgb", "lgbm", "mlp", "tf")
SERVERS = ("serving-engine", "minimal_path", "minimal_grpc", "pytriton", "mlserver", "torchserve")
SETUP = "PHASES=\"setup models\" bash ../shared/peers/run_all.sh"
NOT_SET_UP = {
    "pytriton": f"PyTriton: not set up (no {PYTRITON_PY}): run `{SETUP}`",
    "mlserver": f"MLServer: not set up (no {MLSERVER_BIN}): run `{SETUP}`",
    "torchserve": f"TorchServe: not set up (no {TS_VENV}/bin/torchserve or {TS_MAR}): run `WITH_TORCHSERVE=1 {SETUP}`",
}
#: How each server is configured, for the summary.
ABOUT = {
    "serving-engine": "this server, one process, the four models",
    "minimal_path": "../shared/peers/minimal_path.py, the floor of a Python HTTP request path (xgb only, "
                    "`{\"instances\": [[32 floats]]}` body)",
    "minimal_grpc": "../shared/peers/minimal_grpc.py, the floor of a Python gRPC path (grpc.aio, xgb only, "
                    "KServe V2 ModelInfer with raw_input_contents)",
    "pytriton": "PyTriton (Triton core), batching on: max_batch_size 32, max_queue_delay 2 ms",
    "mlserver": "MLServer, batching on: max_batch_size 32, max_batch_time 2 ms",
    "torchserve": "TorchServe, batching on: batchSize 32, maxBatchDelay 2 ms",
}


# ---- the pure part: reports -> summary.json -> summary.md ----

def points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The closed-loop steps of a `serving bench` report.json: req/s, p50, p99 and errors per concurrency."""
    out = []
    for step in report.get("steps", []):
        if step.get("mode") != "closed":
            continue
        latency = step.get("latency_ms") or {}
        out.append({"concurrency": int(step["concurrency"]), "rps": float(step["achieved_rate"]),
                    "p50_ms": latency.get("p50"), "p99_ms": latency.get("p99"),
                    "errors": int(sum(step.get("errors", {}).values())), "sent": int(step.get("sent", 0)),
                    "generator_saturated": bool(step.get("generator_saturated", False))})
    return sorted(out, key=lambda p: p["concurrency"])


def transport(protocol: str) -> str:
    return "gRPC" if protocol.endswith("grpc") else "HTTP"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def summarize(results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """`results`: one dict a run (server, model, protocol, role = ours | peer | floor, dir, report = its
    report.json or None, error = why it has none). The summary.json document: one group per model and
    transport (HTTP, gRPC) with its rows and, for each of ours, ours / best peer and ours / floor per
    concurrency. A floor serves xgb only: it stands in every group of its transport, marked with its model."""
    rows = []
    for r in results:
        pts = points(r["report"]) if r.get("report") else []
        if r.get("report") and not any(p["rps"] for p in pts):
            r = {**r, "error": r.get("error") or "no request succeeded"}
        rows.append({"server": r["server"], "model": r["model"], "protocol": r["protocol"], "role": r["role"],
                     "dir": r.get("dir"), "error": r.get("error"), "points": pts})
    groups = []
    for model in MODELS:
        for kind in ("HTTP", "gRPC"):
            mine = [r for r in rows
                    if r["model"] == model and transport(r["protocol"]) == kind and r["role"] != "floor"]
            if not any(r["role"] == "ours" for r in mine):
                continue
            floors = [r for r in rows if r["role"] == "floor" and transport(r["protocol"]) == kind]
            members = mine + floors
            groups.append({"model": model, "transport": kind, "rows": members,
                           "ratios": [ratios(ours, members) for ours in mine if ours["role"] == "ours"]})
    return {**meta, "runs": [{k: r[k] for k in ("server", "model", "protocol", "role", "dir", "error")}
                             for r in rows], "groups": groups}


def ratios(ours: dict[str, Any], members: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def rps(row: dict[str, Any], conc: int) -> float | None:
        return next((p["rps"] for p in row["points"] if p["concurrency"] == conc and p["rps"]), None)

    floor = next((r for r in members if r["role"] == "floor" and r["points"]), None)
    out = []
    for p in ours["points"]:
        conc = p["concurrency"]
        peers = [(rps(r, conc), r["server"]) for r in members if r["role"] == "peer"]
        best = max(((v, name) for v, name in peers if v), default=(None, None))
        floor_rps = rps(floor, conc) if floor else None
        out.append({"concurrency": conc, "ours_rps": p["rps"], "best_peer": best[1], "best_peer_rps": best[0],
                    "vs_best_peer": _ratio(p["rps"], best[0]), "floor": floor["server"] if floor else None,
                    "floor_rps": floor_rps, "vs_floor": _ratio(p["rps"], floor_rps)})
    return {"server": ours["server"], "protocol": ours["protocol"], "points": out}


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(summary: dict[str, Any]) -> str:
    """summary.md from the summary.json document."""
    m = summary["machine"]
    lines = [f"# serving-engine beside the peers and the floors, {summary['stamp']} UTC", "",
             f"Command: `{summary['command']}` (took {summary['elapsed_s'] / 60:.1f} min)", "",
             f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['system']}, Python {m['python']}. "
             f"Load: `serving bench`, closed loop, {summary['duration_s']:g} s a step after {WARMUP} s of warm-up, "
             f"{summary.get('load_processes') or '?'} load processes, one-row requests over loopback; each server "
             "alone on the machine in turn, sharing its cores with the load processes.", "",
             "Protocols: v2-rest = KServe V2 JSON over HTTP, tf-rest = TF Serving REST `{\"instances\": [row]}`, "
             "v2-grpc = KServe V2 ModelInfer (raw_input_contents), tf-grpc = TF Serving Predict.", "",
             f"serving-engine flags: `{summary['server_args']}`.", "", "Servers:"]
    for name, about in summary["servers"].items():
        lines.append(f"- {name}: {about}")
    for line in summary["not_set_up"]:
        lines.append(f"- {line}")
    failed = [r for r in summary["runs"] if r["error"]]
    if failed:
        lines += ["", "Runs with no figures:"]
        lines += [f"- {r['server']} {r['model']} {r['protocol']}: {r['error']}" for r in failed]
    for group in summary["groups"]:
        lines += ["", f"## {group['model']}, {group['transport']}", "",
                  "| server | protocol | conc | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
        members = [r for r in group["rows"] if r["points"]]
        for conc in sorted({p["concurrency"] for r in members for p in r["points"]}):
            for r in members:
                for p in r["points"]:
                    if p["concurrency"] == conc:
                        lines.append(f"| {_label(r, group)} | {r['protocol']} | {conc} | {p['rps']:,.0f} | "
                                     f"{_f(p['p50_ms'], '.3f')} | {_f(p['p99_ms'], '.3f')} | {p['errors']:,} |")
        if not any(r["role"] == "peer" for r in group["rows"]):
            lines += ["", "No peer was measured for this model and transport (see Servers above)."]
        lines += ["", "| ours | conc | best peer | ours / best peer | ours / floor |", "|---|---|---|---|---|"]
        for ratio in group["ratios"]:
            for p in ratio["points"]:
                best = f"{p['best_peer']} {p['best_peer_rps']:,.0f}" if p["best_peer"] else "-"
                lines.append(f"| {ratio['server']} {ratio['protocol']} | {p['concurrency']} | {best} | "
                             f"{_f(p['vs_best_peer'], '.2f')} | {_f(p['vs_floor'], '.2f')} |")
        floor = next((r for r in group["rows"] if r["role"] == "floor" and r["points"]), None)
        if floor and floor["model"] != group["model"]:
            lines += ["", f"({floor['server']} serves {floor['model']}, not {group['model']}: it is the floor of "
                          "the request path, not the same model.)"]
    if summary.get("warnings"):
        lines += ["", "Warnings:", *(f"- {w}" for w in summary["warnings"])]
    lines += ["", "Each run's report (report.json/md/csv and plots) is in its folder `<server>-<model>-<protocol>/`; "
              "the figures above are in summary.json."]
    return "\n".join(lines) + "\n"


def _label(row: dict[str, Any], group: dict[str, Any]) -> str:
    if row["role"] == "floor":
        return f"{row['server']} (floor{', ' + row['model'] if row['model'] != group['model'] else ''})"
    return f"**{row['server']}**" if row["role"] == "ours" else row["server"]


def warnings_of(results: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        for w in (r.get("report") or {}).get("warnings", []):
            out.append(f"{r['server']}-{r['model']}-{r['protocol']}: {w}")
    return out


# ---- models and bodies ----

def ensure_anchor_models() -> None:
    """The peers' xgb and lgbm models and request body, made by ../shared/peers/make_models.py when missing
    (it needs scikit-learn: the anchors' venv has it)."""
    if (ANCHORS / "xgb" / "model.json").exists() and (ANCHORS / "lgbm" / "model.txt").exists() \
            and (ANCHORS / "request_b1.json").exists():
        return
    pythons = [p for p in (T / "venv" / "bin" / "python", Path(sys.executable)) if p.exists()]
    for python in pythons:
        print(f"making the peers' models in {ANCHORS} with {python}", flush=True)
        done = subprocess.run([str(python), str(PEERS / "make_models.py")], env={**os.environ,
                              "ANCHOR_MODELS": str(ANCHORS)}, check=False, timeout=600)
        if done.returncode == 0:
            return
    raise SystemExit(f"could not make {ANCHORS}: make_models.py needs xgboost, lightgbm and scikit-learn "
                     f"(`{SETUP}` installs them)")


def ensure_mlp(work: Path) -> Path:
    """The TorchScript MLP: the anchors' (what TorchServe's mlp.mar holds) or one made here by make_mlp.py."""
    mlp = ANCHORS / "mlp" / "mlp.pt"
    if mlp.exists():
        return mlp
    subprocess.run([sys.executable, str(PEERS / "torchserve" / "make_mlp.py")], check=True, timeout=600,
                   env={**os.environ, "ANCHOR_MODELS": str(work), "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    return work / "mlp" / "mlp.pt"


def make_tf_model(path: Path) -> None:
    """A Keras MLP 32-64-64-1 (untrained, fixed seed) as a SavedModel: `serving_default` takes input__0
    float32 [-1, 32] and answers predict [-1, 1]."""
    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential([keras.Input((N_FEATURES,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1, activation="sigmoid")])

    class Export(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32, name="input__0")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"predict": self.model(x)}

    module = Export()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def prepare(work: Path) -> tuple[Path, dict[str, Path]]:
    """The models in a model repository under work/models with its model_config.pbtxt, and the bodies."""
    repo = work / "models"
    for name, src in (("xgb", ANCHORS / "xgb" / "model.json"), ("lgbm", ANCHORS / "lgbm" / "model.txt"),
                      ("mlp", ensure_mlp(work))):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, repo / name / "1" / {"xgb": "model.json", "lgbm": "model.txt", "mlp": "model.pt"}[name])
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
            "from benchmarks.suite import make_tf_model; make_tf_model(Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(repo / "tf" / "1")], check=True, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    platforms = {"xgb": "xgboost", "lgbm": "lightgbm", "mlp": "torchscript", "tf": "tensorflow"}
    config = ["model_config_list {"]
    for name in MODELS:
        config += ["  config {", f'    name: "{name}"', f'    base_path: "{repo / name}"',
                   f'    model_platform: "{platforms[name]}"', "  }"]
    (repo / "model_config.pbtxt").write_text("\n".join(config + ["}"]) + "\n")
    row = json.loads((ANCHORS / "request_b1.json").read_text())["inputs"][0]["data"]
    return repo / "model_config.pbtxt", write_bodies(work, row)


#: The input name of each of serving-engine's models (its tabular processors call their one input `inputs`);
#: every peer's is `input__0`, as in the peers' request_b1.json.
OURS_INPUT = {"xgb": "inputs", "lgbm": "inputs", "mlp": "input__0", "tf": "input__0"}


def write_bodies(work: Path, row: list[float]) -> dict[str, Path]:
    """One row as each protocol's body, per model and input name: `v2-rest-<m>-<input>`, `tf-rest` (no
    name in it), `v2-grpc-<m>-<input>` and `tf-grpc-<m>-<input>` (serving bench's JSON form of the
    protobuf message)."""
    bodies: dict[str, Any] = {"tf-rest": {"instances": [row]}}
    raw = base64.b64encode(struct.pack(f"<{len(row)}f", *row)).decode()
    shape = [1, len(row)]
    for model in MODELS:
        for name in {OURS_INPUT[model], "input__0"}:
            bodies[f"v2-rest-{model}-{name}"] = {"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                                                             "data": row}]}
            bodies[f"v2-grpc-{model}-{name}"] = {"model_name": model, "inputs": [{"name": name, "datatype": "FP32",
                                                                                  "shape": shape}],
                                                 "raw_input_contents": [raw]}
            bodies[f"tf-grpc-{model}-{name}"] = {"model_spec": {"name": model}, "inputs": {name: {
                "dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "1"}, {"size": str(len(row))}]},
                "float_val": row}}}
    out = {}
    for key, body in bodies.items():
        out[key] = work / f"{key}.json"
        out[key].write_text(json.dumps(body, separators=(",", ":")))
    return out


# ---- servers ----

def _stat(pid: int | str) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...; [19] the start time)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every descendant of pid."""
    kids: dict[int, list[tuple[int, str]]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = _stat(d)
            except (OSError, IndexError):
                continue
            kids.setdefault(int(fields[1]), []).append((int(d), fields[19]))
    out, stack = [], [pid]
    while stack:
        for child in kids.get(stack.pop(), []):
            out.append(child)
            stack.append(child[0])
    return out


def answers(url: str, text: str | None = None) -> bool:
    try:
        if url.startswith("tcp://"):  # a server with no GET route: a connection is enough
            host, port = url[6:].rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        with urllib.request.urlopen(url, timeout=2) as answer:
            return text is None or text in answer.read().decode(errors="replace")
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def server(name: str, cmd: list[str], ready: Sequence[str], env: dict[str, str], log: Path, cwd: Path | None = None,
           ready_text: str | None = None, timeout: float = 300) -> Iterator[None]:
    """Start a server (its own session), wait until every `ready` URL answers, stop it and its process tree."""
    print(f"== {name}: starting", flush=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        deadline, t0 = time.monotonic() + timeout, time.monotonic()
        pending = list(ready)
        while pending:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s ({pending[0]})")
            if answers(pending[0], ready_text):
                pending.pop(0)
            else:
                time.sleep(0.3)
        print(f"== {name}: ready in {time.monotonic() - t0:.1f} s", flush=True)
        yield
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left of its tree (a pid whose start time
    changed is another process now, and left alone)."""
    tree = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    for pid, started in tree:  # what left the group (setsid) or outlived its parent
        with contextlib.suppress(OSError, IndexError):
            if _stat(pid)[19] == started:
                os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


# ---- load ----

@dataclasses.dataclass
class Run:
    server: str
    model: str
    protocol: str  # v2-rest | tf-rest | v2-grpc | tf-grpc
    role: str  # ours | peer | floor
    target: list[str]  # serving bench's target flags
    body: Path

    @property
    def name(self) -> str:
        return f"{self.server}-{self.model}-{self.protocol}"


def probe(run: Run) -> str | None:
    """One request over HTTP before the load: None when it is answered 200, else why not."""
    if run.target[0] != "--url":
        return None
    request = urllib.request.Request(run.target[1], data=run.body.read_bytes(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30):
            return None
    except urllib.error.HTTPError as e:
        return f"{run.target[1]} answered {e.code}: {e.read()[:300].decode(errors='replace')}"
    except OSError as e:
        return f"{run.target[1]}: {e}"


def bench(run: Run, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`serving bench` on one run; the result dict summarize() takes."""
    result: dict[str, Any] = {"server": run.server, "model": run.model, "protocol": run.protocol, "role": run.role,
                              "dir": run.name, "report": None, "error": None}
    why = probe(run)
    if why:
        result["error"] = why
        print(f"   {run.name}: {why}", flush=True)
        return result
    folder = out / run.name
    cmd = [sys.executable, "-m", "serving", "bench", *run.target, "--body", str(run.body), "--concurrency",
           ",".join(map(str, args.concurrency)), "--duration", f"{args.duration:g}", "--warmup", str(WARMUP),
           "--quiet", "--out", str(folder)]
    limit = WARMUP + len(args.concurrency) * (args.duration + 10) + 120
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        result["error"] = f"serving bench ran past {limit:.0f} s"
        return result
    report = folder / "report.json"
    if done.returncode != 0 or not report.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        result["error"] = f"serving bench exited {done.returncode}: {' / '.join(tail)}"
        print(f"   {run.name}: {result['error']}", flush=True)
        return result
    result["report"] = json.loads(report.read_text())
    for p in points(result["report"]):
        print(f"   {run.name:36s} c={p['concurrency']:<3d} {p['rps']:>9,.0f} req/s  p50 {_f(p['p50_ms'], '.3f')} ms"
              f"  p99 {_f(p['p99_ms'], '.3f')} ms  errors {p['errors']}", flush=True)
    return result


def measure(name: str, cmd: list[str], ready: Sequence[str], env: dict[str, str], runs: Sequence[Run],
            args: argparse.Namespace, out: Path, work: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Start one server, run its loads, stop it. A server that does not start fails its runs (its log is
    copied into the results folder)."""
    log = work / f"{name}.log"
    results = []
    try:
        with server(name, cmd, ready, env, log, **kwargs):
            for run in runs:
                results.append(bench(run, args, out))
    except RuntimeError as e:
        (out / "logs").mkdir(exist_ok=True)
        shutil.copy(log, out / "logs" / log.name)
        print(f"   {e} (log: {out / 'logs' / log.name})", flush=True)
        done = {r["dir"] for r in results}
        results += [{"server": r.server, "model": r.model, "protocol": r.protocol, "role": r.role, "dir": None,
                     "report": None, "error": f"{e} (logs/{log.name})"} for r in runs if r.name not in done]
    return results


def mlserver_folder(work: Path, model: str) -> Path:
    """The peers' MLServer settings for `model` (batching on) with the model's uri in $ANCHOR_MODELS."""
    folder = work / "mlserver" / model
    shutil.copytree(PEERS / "mlserver" / f"{model}_batch_on", folder, dirs_exist_ok=True)
    settings = folder / model / "model-settings.json"
    doc = json.loads(settings.read_text())
    doc["parameters"]["uri"] = str(ANCHORS / model / ("model.json" if model == "xgb" else "model.bst"))
    settings.write_text(json.dumps(doc, indent=1))
    return folder


def peer_version(venv: Path, dist: str) -> str:
    found = sorted(venv.glob(f"lib/python3*/site-packages/{dist}-*.dist-info"))
    return found[-1].name.removeprefix(f"{dist}-").removesuffix(".dist-info") if found else "?"


def available(name: str) -> bool:
    if name == "pytriton":
        return PYTRITON_PY.exists() and (PEERS / "serve_pytriton.py").exists()
    if name == "mlserver":
        return MLSERVER_BIN.exists() and (PEERS / "mlserver").is_dir()
    if name == "torchserve":
        return (TS_VENV / "bin" / "torchserve").exists() and TS_MAR.exists()
    return (PEERS / f"{name}.py").exists()


def run_all(args: argparse.Namespace, out: Path, work: Path) -> tuple[list[dict[str, Any]], list[str]]:
    config, body = prepare(work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANCHOR_MODELS": str(ANCHORS)}
    results: list[dict[str, Any]] = []
    not_set_up = [NOT_SET_UP[n] for n in ("pytriton", "mlserver", "torchserve") if not available(n)]
    todo = [s for s in SERVERS if s not in args.skip]

    if "serving-engine" in todo:
        http, grpc = free_port(), free_port()
        url, rpc = f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        runs = []
        for model in MODELS:
            runs.append(Run("serving-engine", model, "v2-rest", "ours", ["--url", f"{url}/v2/models/{model}/infer"],
                            body[f"v2-rest-{model}-{OURS_INPUT[model]}"]))
            if model in ("xgb", "tf"):
                runs.append(Run("serving-engine", model, "tf-rest", "ours",
                                ["--url", f"{url}/v1/models/{model}:predict"], body["tf-rest"]))
            if model in ("xgb", "lgbm"):
                runs.append(Run("serving-engine", model, "v2-grpc", "ours", ["--grpc", rpc, "--api", "v2"],
                                body[f"v2-grpc-{model}-{OURS_INPUT[model]}"]))
            if model == "xgb":
                runs.append(Run("serving-engine", model, "tf-grpc", "ours", ["--grpc", rpc, "--api", "tf"],
                                body[f"tf-grpc-{model}-{OURS_INPUT[model]}"]))
        results += measure("serving-engine", [sys.executable, "-m", "serving", f"--model_config_file={config}",
                                              "--host=127.0.0.1", f"--rest_api_port={http}", f"--port={grpc}",
                                              "--log_level=WARNING", *shlex.split(args.server_args)],
                           [f"{url}/v2/models/{m}/ready" for m in MODELS], env, runs, args, out, work)
    if "minimal_path" in todo and available("minimal_path"):
        port = free_port()
        results += measure("minimal_path", [sys.executable, str(PEERS / "minimal_path.py"), "--port", str(port)],
                           [f"tcp://127.0.0.1:{port}"], env,
                           [Run("minimal_path", "xgb", "tf-rest", "floor", ["--url", f"http://127.0.0.1:{port}/"],
                                body["tf-rest"])], args, out, work)
    if "minimal_grpc" in todo and available("minimal_grpc"):
        port = free_port()
        floor_env = {**env, "PYTHONPATH": os.pathsep.join([str(PEERS), env.get("PYTHONPATH", "")])}
        results += measure("minimal_grpc", [sys.executable, str(PEERS / "minimal_grpc.py"), "--port", str(port)],
                           [f"tcp://127.0.0.1:{port}"], floor_env,
                           [Run("minimal_grpc", "xgb", "v2-grpc", "floor", ["--grpc", f"127.0.0.1:{port}", "--api",
                                                                            "v2"], body["v2-grpc-xgb-input__0"])],
                           args, out, work)
    if "pytriton" in todo and available("pytriton"):
        for model in ("xgb", "lgbm"):
            http, grpc, metrics = free_port(), free_port(), free_port()
            runs = [Run("pytriton", model, "v2-rest", "peer", ["--url", f"http://127.0.0.1:{http}/v2/models/{model}/infer"],
                        body[f"v2-rest-{model}-input__0"]),
                    Run("pytriton", model, "v2-grpc", "peer", ["--grpc", f"127.0.0.1:{grpc}", "--api", "v2"],
                        body[f"v2-grpc-{model}-input__0"])]
            # the bundled python_backend stub needs this interpreter's libpython (see run_all.sh)
            results += measure(f"pytriton-{model}", [str(PYTRITON_PY), str(PEERS / "serve_pytriton.py"), "--model",
                                                     model, "--batching", "on", "--http-port", str(http),
                                                     "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                               [f"http://127.0.0.1:{http}/v2/models/{model}/ready"],
                               {**env, "LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR"))}, runs, args, out,
                               work)
    if "mlserver" in todo and available("mlserver"):
        for model in ("xgb", "lgbm"):  # the ports are the peers' settings.json's
            runs = [Run("mlserver", model, "v2-rest", "peer", ["--url", f"http://127.0.0.1:18080/v2/models/{model}/infer"],
                        body[f"v2-rest-{model}-input__0"]),
                    Run("mlserver", model, "v2-grpc", "peer", ["--grpc", "127.0.0.1:18081", "--api", "v2"],
                        body[f"v2-grpc-{model}-input__0"])]
            folder = mlserver_folder(work, model)
            results += measure(f"mlserver-{model}", [str(MLSERVER_BIN), "start", str(folder)],
                               [f"http://127.0.0.1:18080/v2/models/{model}/ready"], env, runs, args, out, work,
                               cwd=folder)
    if "torchserve" in todo and available("torchserve"):
        ts_dir = work / "ts"
        ts_dir.mkdir(exist_ok=True)
        runs = [Run("torchserve", "mlp", "v2-rest", "peer", ["--url", "http://127.0.0.1:18100/v2/models/mlp/infer"],
                    body["v2-rest-mlp-input__0"])]
        results += measure("torchserve", [str(TS_VENV / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
                                          "--ts-config", str(PEERS / "torchserve" / "batch_on" / "config.properties")],
                           ["http://127.0.0.1:18101/models/mlp"],
                           {**env, "PATH": f"{TS_VENV / 'bin'}:{env['PATH']}"}, runs, args, out, work, cwd=ts_dir,
                           ready_text='"status": "READY"')
    return results, not_set_up


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "?")
    memory = 0.0
    with contextlib.suppress(OSError, ValueError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return {"cores": len(os.sched_getaffinity(0)), "cpu": cpu, "memory_gib": round(memory, 1),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=None, help="seconds a step (default 10; --quick 2)")
    ap.add_argument("--concurrency", default=None, help="closed-loop steps (default 1,16,64; --quick 1,16)")
    ap.add_argument("--quick", action="store_true", help="a fast check: 2 s a step at concurrency 1,16")
    ap.add_argument("--server-args", default="--max_batch_size=64 --worker_threads=1 --access_log=off",
                    help="serving-engine's flags (default: %(default)s)")
    ap.add_argument("--skip", default="", help=f"servers left out, comma-separated: {', '.join(SERVERS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="where the results folder goes (default: %(default)s)")
    args = ap.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 10.0)
    text = args.concurrency or ("1,16" if args.quick else "1,16,64")
    try:
        args.concurrency = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        ap.error(f"--concurrency {text!r}: expected comma-separated numbers")
    args.skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    unknown = set(args.skip) - set(SERVERS)
    if unknown:
        ap.error(f"--skip: unknown {', '.join(sorted(unknown))} (known: {', '.join(SERVERS)})")
    if args.duration < 1 or not args.concurrency or min(args.concurrency) < 1:
        ap.error("--duration must be at least 1 s and --concurrency positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    raw = list(sys.argv[1:] if argv is None else argv)
    now = datetime.datetime.now(datetime.UTC)
    stamp = now.strftime("%Y-%m-%d-%H%M")
    out = args.out / stamp
    for n in range(2, 100):
        if not out.exists():
            break
        out = args.out / f"{stamp}-{n}"
    out.mkdir(parents=True)
    t0 = time.monotonic()
    ensure_anchor_models()
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        results, not_set_up = run_all(args, out, Path(tmp))
    servers = {s: ABOUT[s] for s in SERVERS if any(r["server"] == s for r in results)}
    processes = next((r["report"]["generator"]["processes"] for r in results if r.get("report")), None)
    for name, venv, dist in (("pytriton", T / "venv-pytriton", "nvidia_pytriton"), ("mlserver", T / "venv", "mlserver"),
                             ("torchserve", TS_VENV, "torchserve")):
        if name in servers:
            servers[name] = f"{servers[name]} ({dist} {peer_version(venv, dist)})"
    summary = summarize(results, {
        "stamp": stamp, "command": shlex.join(["python", "benchmarks/suite.py", *raw]), "started_utc": now.isoformat(),
        "elapsed_s": round(time.monotonic() - t0, 1), "machine": machine(), "duration_s": args.duration,
        "warmup_s": WARMUP, "load_processes": processes, "concurrency": args.concurrency,
        "server_args": args.server_args, "servers": servers,
        "not_set_up": not_set_up, "skipped": args.skip, "warnings": warnings_of(results)})
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = render(summary)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote {out} in {summary['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
