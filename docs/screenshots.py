"""Screenshots of the status page (`GET /ui`) for the README: docs/img/ui-idle.png (idle), docs/img/ui-load.png
(under load, charts moving) and docs/img/ui-failed.png (a model whose files are broken).

    .venv/bin/python docs/screenshots.py [--out docs/img] [--load-seconds 30]

It makes the demo models (`python -m serving.tools.demo`) and a linear model in a temporary folder, serves them on
free loopback ports, and drives Debian's headless Chromium (`make install-test` installs `chromium` and
`chromium-driver`; nothing is downloaded). The broken model is added to the served config file while the page
is open: the page shows it within a poll.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a script run from a checkout
    sys.path.insert(0, str(ROOT))
from serving._proto.tensorflow_serving.config import model_server_config_pb2  # noqa: E402

ROW = [0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.9, 0.2]

def config_text(demo: str, root: Path, broken: bool = False) -> str:
    """The demo's model config (`demo`, as serving.tools.demo wrote it) with a 90/10 traffic split on xgb, a request log
    of 5 % of lgbm's calls and, when `broken`, a model whose file is cut short."""
    config = text_format.Parse(demo, model_server_config_pb2.ModelServerConfig())
    models = {m.name: m for m in config.model_config_list.config}
    models["xgb"].version_traffic[1] = 90
    models["xgb"].version_traffic[2] = 10
    models["lgbm"].logging_config.log_collector_config.filename_prefix = str(root / "logs" / "lgbm")
    models["lgbm"].logging_config.sampling_config.sampling_rate = 0.05
    if broken:
        config.model_config_list.config.add(name="ranker", base_path=str(root / "ranker"), model_platform="linear")
    return text_format.MessageToString(config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, method: str, path: str, body: object = None, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode())
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def traffic(port: int, stop: threading.Event, seed: int) -> None:
    """Predictions at a rate that swells and ebbs, a few malformed ones (the error charts and table)."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    start = time.monotonic()
    try:
        while not stop.is_set():
            phase = (time.monotonic() - start) / 12.0
            rows = [[round(rng.gauss(0, 1), 3) for _ in ROW] for _ in range(rng.randint(1, 4))]
            path, body = rng.choice([("/v1/models/xgb:predict", {"instances": rows}),
                                     ("/v1/models/lgbm:predict", {"instances": rows}),
                                     ("/api/predict/lgbm", rows)])
            if rng.random() < 0.03 * (1 + math.sin(phase * 2)):
                body = {"instances": [[1.0, 2.0]]}  # the wrong number of features: INVALID_ARGUMENT
            conn.request("POST", path, body=json.dumps(body).encode())
            conn.getresponse().read()
            time.sleep(rng.expovariate(60 * (1.2 + math.sin(phase))))
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()


def browser(width: int, height: int, profile: str) -> webdriver.Chrome:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
                f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    # The viewport itself at exactly width x height (a window's size would include its frame).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--load-seconds", type=float, default=40.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="serving-shots-") as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "serving.tools.demo", str(root)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        (root / "logs").mkdir()
        (root / "ranker" / "1").mkdir(parents=True)
        (root / "ranker" / "1" / "linear.json").write_text('{"weights": [0.5, 0.25,')  # cut short: invalid JSON
        config = root / "model_config.pbtxt"
        demo = config.read_text()
        config.write_text(config_text(demo, root))
        port = free_port()
        log = (root / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "serving", "--host=127.0.0.1", f"--rest_api_port={port}", f"--port={free_port()}",
             f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        stop = threading.Event()
        threads = [threading.Thread(target=traffic, args=(port, stop, i), daemon=True) for i in range(6)]
        driver = None
        try:
            wait(lambda: request(port, "GET", "/readyz")[0] == 200, 60, "the server to be ready")
            driver = browser(args.width, args.height, str(root / "profile"))
            driver.get(f"http://127.0.0.1:{port}/ui")
            wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, '.version[data-state="AVAILABLE"]')) == 4, 30,
                 "the page to list the models")
            time.sleep(4)
            driver.save_screenshot(str(args.out / "ui-idle.png"))
            print("wrote", args.out / "ui-idle.png")

            for t in threads:
                t.start()
            time.sleep(args.load_seconds)
            driver.execute_script("window.scrollTo(0, 0)")
            time.sleep(1.2)  # the next poll drawn
            driver.save_screenshot(str(args.out / "ui-load.png"))
            print("wrote", args.out / "ui-load.png")
            stop.set()
            for t in threads:
                t.join(10)

            config.write_text(config_text(demo, root, broken=True))
            card = wait(lambda: driver.find_elements(By.CSS_SELECTOR, '.card[data-model="ranker"] .version-error'),
                        30, "the broken model's error on the page")[0]
            driver.execute_script(
                "const el = document.querySelector('.card[data-model=\"ranker\"]');"
                "window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY"
                " - document.getElementById('top').offsetHeight - 12)")
            time.sleep(1.5)
            print("error shown:", card.text[:120])
            driver.save_screenshot(str(args.out / "ui-failed.png"))
            print("wrote", args.out / "ui-failed.png")
        finally:
            stop.set()
            if driver is not None:
                driver.quit()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()


if __name__ == "__main__":
    main()
