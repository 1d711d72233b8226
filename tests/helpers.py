"""Test helpers: tiny real models made at test time, and a real server process on a free loopback port."""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def training_data(n_features: int = 4, n: int = 200, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_features)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)


def make_xgb(base: Path, version: int, *, n_features: int = 4, trees: int = 5, names: list[str] | None = None,
             filename: str = "model.json", objective: str = "binary:logistic", num_class: int = 0) -> Path:
    import xgboost as xgb

    x, y = training_data(n_features)
    if num_class:
        y = (np.abs(x[:, 0] * 2).astype(int) % num_class).astype(np.float32)
    params: dict[str, Any] = {"objective": objective, "max_depth": 3, "nthread": 1, "seed": 1}
    if num_class:
        params["num_class"] = num_class
    booster = xgb.train(params, xgb.DMatrix(x, label=y, feature_names=names), trees)
    d = base / str(version)
    d.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(d / filename))
    return d / filename


def make_lgbm(base: Path, version: int, *, n_features: int = 4, trees: int = 5, names: list[str] | None = None,
              filename: str = "model.txt") -> Path:
    import lightgbm as lgb

    x, y = training_data(n_features)
    params = {"objective": "binary", "num_leaves": 7, "verbose": -1, "num_threads": 1, "seed": 1}
    model = lgb.train(params, lgb.Dataset(x, label=y, feature_name=names or "auto"), trees)
    d = base / str(version)
    d.mkdir(parents=True, exist_ok=True)
    model.save_model(str(d / filename))
    return d / filename


def make_linear(base: Path, version: int | str, weights: Any = (0.5,), bias: Any = 2.0, **extra: Any) -> Path:
    d = base / str(version)
    d.mkdir(parents=True, exist_ok=True)
    (d / "linear.json").write_text(json.dumps({"weights": list(weights), "bias": bias, **extra}))
    return d


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (pytest-asyncio is not a dependency)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m serving` in a subprocess on a free loopback port; talks to it with http.client."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, wait_ready: bool = True) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"serving-test-{self.port}.log"
        self.log = self.log_path.open("w+b")
        cmd = [sys.executable, "-m", "serving", "--host", "127.0.0.1", f"--rest_api_port={self.port}",
               f"--port={self.grpc_port}", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})})
        self.conn: http.client.HTTPConnection | None = None
        try:
            self.wait_for("/healthz" if not wait_ready else "/readyz")
        except BaseException:  # no `with` block will stop it: do it here, then fail
            self.stop(signal.SIGKILL, timeout=5)
            self.log.close()
            raise

    def wait_for(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, _ = self.request("GET", path, fresh=True)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not answering 200 on {path}:\n{self.output()}")

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                fresh: bool = False) -> tuple[int, Any]:
        """One request on the kept-alive connection; JSON bodies decoded (NaN tokens included)."""
        if fresh or self.conn is None:
            if self.conn is not None:
                self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data, headers=headers or {})
            resp = self.conn.getresponse()
            raw = resp.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = None
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return self.request("POST", path, body, **kw)

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def raw(self, data: bytes, read_timeout: float = 5.0, close_after_send: bool = False) -> bytes:
        """Send raw bytes on a new connection; return everything the server answers until it closes or idles."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=read_timeout) as s:
            s.sendall(data)
            if close_after_send:
                s.shutdown(socket.SHUT_WR)
            chunks = []
            try:
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except TimeoutError:
                pass
            return b"".join(chunks)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.conn is not None:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m serving ARGS` to completion (for start-up failures)."""
    return subprocess.run([sys.executable, "-m", "serving", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, **(env or {})})


def wait_until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pbtxt(*models: dict[str, Any]) -> str:
    """A model_config.pbtxt text for models given as dicts (name, base_path, platform, policy, labels,
    traffic)."""
    out = ["model_config_list {"]
    for m in models:
        out.append("  config {")
        out.append(f'    name: "{m["name"]}"')
        out.append(f'    base_path: "{m["base_path"]}"')
        if m.get("platform"):
            out.append(f'    model_platform: "{m["platform"]}"')
        if m.get("policy"):
            out.append(f"    model_version_policy {{ {m['policy']} }}")
        for k, v in m.get("labels", {}).items():
            out.append(f'    version_labels {{ key: "{k}" value: {v} }}')
        for k, v in m.get("traffic", {}).items():
            out.append(f"    version_traffic {{ key: {k} value: {v} }}")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"
