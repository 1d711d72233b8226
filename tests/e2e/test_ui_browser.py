"""The status page (serving/tools/ui/index.html) driven in a real headless Chromium against real servers: it lists
the models, its charts move under traffic, its try-it console answers, a failed model shows its error, and
with a token it shows nothing until given the token. The JSON it polls is tested in test_ui_status.py.

Debian's `chromium` and `chromium-driver` (`make install-test` installs them) are used, never a browser that
Selenium Manager would download."""

from __future__ import annotations

import base64
import http.client
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Server, make_linear, make_xgb, pbtxt, wait_until

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
                "`make install-test` installs them", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = Options()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        try:
            yield driver
        finally:
            driver.quit()


def open_page(driver: webdriver.Chrome, server: Server) -> None:
    driver.get("about:blank")
    driver.get_log("browser")  # what earlier tests left
    driver.get(f"http://127.0.0.1:{server.port}/ui")


def console_errors(driver: webdriver.Chrome, allow: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow)]


def find(driver: webdriver.Chrome, css: str, timeout: float = 20.0) -> WebElement:
    """The first element matching `css` once there is one (and it is displayed)."""
    def present() -> WebElement | None:
        found = [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        return found[0] if found else None
    return wait_until(present, timeout, css)


def chart_value(driver: webdriver.Chrome, model: str, version: int, metric: str) -> float | None:
    (chart,) = driver.find_elements(
        By.CSS_SELECTOR, f'[data-model="{model}"] [data-version="{version}"] .chart[data-metric="{metric}"]')
    raw = chart.get_attribute("data-value")
    return float(raw) if raw else None


def test_the_page_loads_without_console_errors_and_lists_the_models_of_the_server(tmp_path, browser):
    make_xgb(tmp_path / "xgb", 1)
    make_linear(tmp_path / "lin", 1)
    make_linear(tmp_path / "lin", 2)
    (tmp_path / "config.pbtxt").write_text(pbtxt(
        {"name": "xgb", "base_path": tmp_path / "xgb", "platform": "xgboost"},
        {"name": "lin", "base_path": tmp_path / "lin", "platform": "linear", "policy": "all {}",
         "labels": {"stable": 1, "canary": 2}}))
    with Server(f"--model_config_file={tmp_path / 'config.pbtxt'}") as s:
        open_page(browser, s)
        for model, version in (("xgb", 1), ("lin", 1), ("lin", 2)):
            el = find(browser, f'#models [data-model="{model}"] .version[data-version="{version}"]'
                               '[data-state="AVAILABLE"]')
            assert f"version {version}" in el.text and "AVAILABLE" in el.text
        names = [e.get_attribute("data-model") for e in browser.find_elements(By.CSS_SELECTOR, "#models > .card")]
        assert names == ["lin", "xgb"]
        lin = browser.find_element(By.CSS_SELECTOR, '.card[data-model="lin"]')
        assert "stable → 1" in lin.text and "canary → 2" in lin.text and "float32" in lin.text
        assert "≤ 16 rows, 50000 µs, queue 64" in lin.text  # the batch queue's options (the defaults)
        assert find(browser, "#server-state").text == "ready"
        assert browser.find_element(By.CSS_SELECTOR, "#server-name").text == "serving-engine"
        links = {e.get_attribute("data-link"): e.get_attribute("href")
                 for e in browser.find_elements(By.CSS_SELECTOR, "#links a")}
        assert links["metrics"] == f"http://127.0.0.1:{s.port}/metrics"
        assert not browser.find_element(By.ID, "banner").is_displayed()
        assert not browser.find_element(By.ID, "queues").is_displayed()  # no async service: nothing of queues
        # The configuration (collapsed) holds the flags, grouped; a few polls later still no console error.
        config = browser.find_element(By.ID, "config")
        assert config.get_attribute("open") is None
        config.find_element(By.TAG_NAME, "summary").click()
        group = find(browser, '#config details[data-group="models"]')
        group.find_element(By.TAG_NAME, "summary").click()
        assert "tmp" in find(browser, '#config tr[data-flag="model_config_file"]').text
        time.sleep(1.5)
        assert browser.find_element(By.CSS_SELECTOR, '#config details[data-group="models"]').get_attribute("open")
        assert console_errors(browser) == []


def test_the_charts_move_when_traffic_flows(tmp_path, browser):
    make_linear(tmp_path / "m", 1, weights=[1.0, 2.0], bias=0.5)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m") as s:
        open_page(browser, s)
        find(browser, '[data-model="m"] .version[data-version="1"] .chart[data-metric="rps"]')
        assert chart_value(browser, "m", 1, "rps") in (0.0, None)
        stop = threading.Event()
        sent: list[int] = []

        def load() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            try:
                while not stop.is_set():
                    conn.request("POST", "/v1/models/m:predict", body=b'{"instances": [[1.0, 1.0], [2.0, 0.5]]}')
                    conn.getresponse().read()
                    sent.append(1)
                    time.sleep(0.005)
            finally:
                conn.close()

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        try:
            wait_until(lambda: (chart_value(browser, "m", 1, "rps") or 0) > 0, 20, "the rps chart above 0")
            wait_until(lambda: chart_value(browser, "m", 1, "p50_ms") is not None, 10, "a p50 latency")
        finally:
            stop.set()
            thread.join(10)
        chart = browser.find_element(By.CSS_SELECTOR, '[data-model="m"] [data-version="1"] .chart[data-metric="rps"]')
        value_text = chart.find_element(By.CSS_SELECTOR, ".chart-value").text
        assert float(value_text.removesuffix("/s").replace(",", "")) > 0, value_text
        assert chart.find_element(By.CSS_SELECTOR, "path.line").get_attribute("d").startswith("M")
        assert chart_value(browser, "m", 1, "error_rate") == 0.0
        # Once the traffic stopped, later polls (which fetch only the newest seconds) keep the busy ones.
        wait_until(lambda: chart_value(browser, "m", 1, "rps") == 0.0, 10, "an idle second")
        time.sleep(4)  # a few polls past the 3 s they fetch again
        peak = chart.find_element(By.CSS_SELECTOR, ".chart-max").text
        assert float(peak.removeprefix("max ").removesuffix("/s").replace(",", "")) > 0, peak
        assert sent and console_errors(browser) == []


def test_the_try_it_console_sends_a_request_and_shows_the_prediction(tmp_path, browser):
    make_linear(tmp_path / "m", 1, weights=[1.5, -2.0], bias=0.25)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m") as s:
        open_page(browser, s)
        console = find(browser, "#try-m")
        assert Select(console.find_element(By.CSS_SELECTOR, "select.try-version")).first_selected_option.text == "v1"
        protocol = Select(console.find_element(By.CSS_SELECTOR, "select.try-protocol"))
        assert [o.get_attribute("value") for o in protocol.options][:2] == ["tfserving", "kserve"]
        body = console.find_element(By.CSS_SELECTOR, "textarea.try-body")
        assert json.loads(body.get_attribute("value")) == {"instances": [[0.0, 0.0]]}
        body.clear()
        body.send_keys('{"instances": [[2.0, 1.0], [0.0, 0.0]]}')  # 1.5*2 - 2*1 + 0.25 = 1.25; then the bias
        console.find_element(By.CSS_SELECTOR, "button.try-send").click()
        status = console.find_element(By.CSS_SELECTOR, ".try-status")
        wait_until(lambda: status.get_attribute("data-status"), 10, "an answer")
        assert status.get_attribute("data-status") == "200" and "ms" in status.text, status.text
        answer = json.loads(console.find_element(By.CSS_SELECTOR, ".try-answer").text)
        assert answer == {"predictions": [1.25, 0.25]}
        curl = console.find_element(By.CSS_SELECTOR, ".try-curl").text
        assert f"'http://127.0.0.1:{s.port}/v1/models/m/versions/1:predict'" in curl
        assert """-d '{"instances":[[2,1],[0,0]]}'""" in curl and "Authorization" not in curl
        # The other protocol: its own body, pre-filled (zeros: the bias).
        protocol.select_by_value("kserve")
        assert json.loads(body.get_attribute("value"))["inputs"][0]["datatype"] == "FP32"
        console.find_element(By.CSS_SELECTOR, "button.try-send").click()
        wait_until(lambda: status.get_attribute("data-status") and "/infer" in status.find_element(
            By.XPATH, "ancestor::section").find_element(By.CSS_SELECTOR, ".try-curl").text, 10, "the KServe answer")
        wait_until(lambda: '"outputs"' in console.find_element(By.CSS_SELECTOR, ".try-answer").text, 10, "outputs")
        answer = json.loads(console.find_element(By.CSS_SELECTOR, ".try-answer").text)
        assert answer["outputs"][0]["data"] == [0.25]
        assert console_errors(browser) == []


def test_a_failed_model_shows_its_error(tmp_path, browser):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "linear.json").write_text("{not json")
    (tmp_path / "config.pbtxt").write_text(pbtxt(
        {"name": "broken", "base_path": tmp_path / "broken", "platform": "linear"},
        {"name": "gone", "base_path": tmp_path / "gone", "platform": "linear"}))
    with Server(f"--model_config_file={tmp_path / 'config.pbtxt'}", wait_ready=False) as s:
        open_page(browser, s)
        error = find(browser, '.card[data-model="broken"] .version[data-version="1"] .version-error')
        assert "cannot load linear model" in error.text and "linear.json" in error.text, error.text
        version = browser.find_element(By.CSS_SELECTOR, '.card[data-model="broken"] .version[data-version="1"]')
        assert version.get_attribute("data-failed") == "true"
        assert version.get_attribute("data-state") in ("END", "START", "LOADING")
        assert browser.find_element(By.CSS_SELECTOR, '.card[data-model="broken"] .card-head .badge').text == "failed"
        assert browser.find_element(By.CSS_SELECTOR, "#try-broken .try-none").is_displayed()
        assert find(browser, "#server-state").text == "not ready"
        # A model with no version at all says why: its base path is not there.
        gone = find(browser, '.card[data-model="gone"] .no-versions')
        assert f"the base path {tmp_path / 'gone'} does not exist" in gone.text, gone.text
        assert console_errors(browser) == []


def test_an_async_services_queues_have_a_row_each(tmp_path, browser):
    make_linear(tmp_path / "lin", 1, delay_ms=1000)  # two windows of two held for a second each
    with Server(f"--model_base_path={tmp_path / 'lin'}", "--model_name=lin", "--async_service",
                f"--queue_store=sqlite:{tmp_path / 'q.db'}", "--queue_window=2") as s:
        for _ in range(5):
            assert s.post("/api/predict/lin", [[2.0]])[0] == 200
        open_page(browser, s)
        row = find(browser, '#queue-list tr[data-queue="lin"][data-inflight="2"]')
        cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        assert cells[:2] == ["lin", "input"] and cells[3] == "2" and cells[6] == "2", cells  # held, window
        assert cells[-1] == f"sqlite:{tmp_path / 'q.db'}"
        sink = find(browser, '#queue-list tr[data-queue="lin/sink"]')
        assert "sink" in sink.text and "of 10,000" in sink.text
        assert console_errors(browser) == []


def test_with_a_token_the_page_asks_for_it_and_shows_no_models_until_given(tmp_path, browser):
    make_linear(tmp_path / "m", 1, weights=[1.0], bias=2.0)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m", env={"SERVING_TOKEN": "s3cret'tok"}) as s:
        open_page(browser, s)
        token_input = find(browser, "#auth #token-input")
        assert browser.find_elements(By.CSS_SELECTOR, "[data-model]") == []
        assert browser.find_element(By.ID, "recent").is_displayed() is False
        token_input.send_keys("wrong")
        browser.find_element(By.ID, "token-submit").click()
        assert "refused" in find(browser, "#auth-message").text
        assert browser.find_elements(By.CSS_SELECTOR, "[data-model]") == []
        browser.find_element(By.ID, "token-input").send_keys("s3cret'tok")
        browser.find_element(By.ID, "token-submit").click()
        find(browser, '[data-model="m"] .version[data-version="1"][data-state="AVAILABLE"]')
        assert not browser.find_element(By.ID, "auth").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('serving-engine-token')") == "s3cret'tok"
        # The try-it console sends the token, and its curl command carries it (shell-quoted).
        console = find(browser, "#try-m")
        body = console.find_element(By.CSS_SELECTOR, "textarea.try-body")
        body.clear()
        body.send_keys('{"instances": [[3.0]]}')
        console.find_element(By.CSS_SELECTOR, "button.try-send").click()
        status = console.find_element(By.CSS_SELECTOR, ".try-status")
        wait_until(lambda: status.get_attribute("data-status"), 10, "an answer")
        assert status.get_attribute("data-status") == "200", console.find_element(By.CSS_SELECTOR, ".try-answer").text
        assert json.loads(console.find_element(By.CSS_SELECTOR, ".try-answer").text) == {"predictions": [5.0]}
        assert "-H 'Authorization: s3cret'\\''tok'" in console.find_element(By.CSS_SELECTOR, ".try-curl").text
        # A reload keeps the token (sessionStorage), so the models come back without asking.
        browser.refresh()
        find(browser, '[data-model="m"] .version[data-version="1"][data-state="AVAILABLE"]')
        assert not browser.find_element(By.ID, "auth").is_displayed()
        # The browser reports the refused polls (401) itself; nothing else went to the console.
        assert console_errors(browser, allow=("status of 401",)) == []


def test_when_the_server_goes_away_the_page_shows_a_banner_and_throws_nothing(tmp_path, browser):
    make_linear(tmp_path / "m", 1)
    with Server(f"--model_base_path={tmp_path / 'm'}", "--model_name=m") as s:
        open_page(browser, s)
        find(browser, '[data-model="m"] .version[data-version="1"][data-state="AVAILABLE"]')
        assert not browser.find_element(By.ID, "banner").is_displayed()
        s.stop()
        assert "Cannot get the status" in find(browser, "#banner").text
        assert browser.find_element(By.ID, "server-state").text == "unreachable"
        # The last state stays on show.
        assert browser.find_elements(By.CSS_SELECTOR, '[data-model="m"] .version[data-version="1"]')
        assert console_errors(browser, allow=("ERR_CONNECTION_REFUSED",)) == []


def test_a_file_for_a_binary_input_goes_into_the_body_as_base64(tmp_path, browser):
    pytest.importorskip("tensorflow", reason="TensorFlow (tensorflow extra) is not installed")
    from tests.tf_models import text_model

    text_model(tmp_path / "text" / "1")  # words (string) and scale (float) -> length, echo_bytes (the words)
    upload = tmp_path / "cat.jpg"
    upload.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG \x00\x01")
    with Server(f"--model_base_path={tmp_path / 'text'}", "--model_name=text", "--model_platform=tensorflow") as s:
        open_page(browser, s)
        console = find(browser, "#try-text")
        body = console.find_element(By.CSS_SELECTOR, "textarea.try-body")
        assert json.loads(body.get_attribute("value")) == {"instances": [{"words": "", "scale": 0.0}]}
        assert "words" in console.find_element(By.CSS_SELECTOR, ".try-file").text
        find(browser, "#try-text .try-file-input").send_keys(str(upload))
        wait_until(lambda: "b64" in body.get_attribute("value"), 10, "the file in the body")
        b64 = base64.b64encode(upload.read_bytes()).decode()
        assert json.loads(body.get_attribute("value")) == {"instances": [{"words": {"b64": b64}, "scale": 0.0}]}
        assert b64 in console.find_element(By.CSS_SELECTOR, ".try-curl").text
        console.find_element(By.CSS_SELECTOR, "button.try-send").click()
        status = console.find_element(By.CSS_SELECTOR, ".try-status")
        wait_until(lambda: status.get_attribute("data-status"), 10, "an answer")
        assert status.get_attribute("data-status") == "200", console.find_element(By.CSS_SELECTOR, ".try-answer").text
        answer = json.loads(console.find_element(By.CSS_SELECTOR, ".try-answer").text)
        assert answer == {"predictions": [{"length": 0.0, "echo_bytes": {"b64": b64}}]}  # the file's bytes, back
        assert console_errors(browser) == []
