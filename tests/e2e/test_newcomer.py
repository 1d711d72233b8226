"""Day one with a real server process: the start-up line says what is served and where, a route asked with
the wrong method says which one to use (405 + Allow), an unknown model's 404 names the known ones, and
`GET /` answers curl with the routes and a browser with the status page."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from tests.helpers import Server, make_linear, pbtxt, wait_until

KNOWN = " (known models: lin, two)"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("newcomer")
    make_linear(root / "lin", 1, bias=1.0)
    make_linear(root / "lin", 2)
    make_linear(root / "two", 1)
    (root / "model_config.pbtxt").write_text(pbtxt(
        {"name": "lin", "base_path": root / "lin", "platform": "linear", "policy": "all {}"},
        {"name": "two", "base_path": root / "two", "platform": "linear"}))
    return root


@pytest.fixture(scope="module")
def server(repo: Path):
    with Server(f"--model_config_file={repo / 'model_config.pbtxt'}") as s:
        yield s


def ask(server: Server, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
        ) -> tuple[int, http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def summary(server: Server, starts: str) -> str:
    """The start-up line of the server's log that begins (after the log's prefix) with `starts`."""
    return wait_until(lambda: next((line[line.index(starts):] for line in server.output().splitlines()
                                    if starts in line), None), what=f"a log line with {starts!r}")


def test_the_start_up_line_says_what_is_served_and_where(server: Server) -> None:
    http_at, grpc_at = f"127.0.0.1:{server.port}", f"127.0.0.1:{server.grpc_port}"
    assert summary(server, "ready: ") == (
        f"ready: 2 model(s), 3 version(s) AVAILABLE (lin: 1, 2; two: 1); HTTP {http_at} (status page "
        f"http://{http_at}/ui, metrics http://{http_at}/metrics), gRPC {grpc_at}")
    # the URLs it names answer
    status, resp, page = ask(server, "GET", "/ui")
    assert status == 200 and resp.getheader("Content-Type") == "text/html; charset=utf-8" and b"<html" in page.lower()
    status, _, metrics = ask(server, "GET", "/metrics")
    assert status == 200 and b"# TYPE" in metrics


def test_the_start_up_line_names_a_model_without_an_available_version(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "linear.json").write_text("not json")
    config = tmp_path / "model_config.pbtxt"
    config.write_text(pbtxt({"name": "two", "base_path": repo / "two", "platform": "linear"},
                            {"name": "bad", "base_path": tmp_path / "bad", "platform": "linear"}))
    with Server(f"--model_config_file={config}", "--port=0", wait_ready=False) as s:
        assert summary(s, "not ready: ") == (
            f"not ready: 2 model(s), 1 version(s) AVAILABLE (two: 1); without an AVAILABLE version: bad; HTTP "
            f"127.0.0.1:{s.port} (status page http://127.0.0.1:{s.port}/ui, metrics "
            f"http://127.0.0.1:{s.port}/metrics), gRPC off")


@pytest.mark.parametrize("path", ["/v1/models/lin:predict", "/v1/models/lin:classify", "/v1/models/lin:regress",
                                  "/v1/models/lin/versions/2:predict", "/v2/models/lin/infer"])
def test_get_on_an_inference_route_is_405_allow_post(server: Server, path: str) -> None:
    status, resp, body = ask(server, "GET", path)
    hint = "use POST with a JSON body" + (" (or JSON and binary tensors)" if path.startswith("/v2") else "")
    assert (status, resp.getheader("Allow")) == (405, "POST")
    assert json.loads(body) == {"error": f"Method not allowed: GET {path}: {hint}"}


def test_post_on_a_model_status_route_is_405_allow_get(server: Server) -> None:
    status, resp, body = ask(server, "POST", "/v1/models/lin", b'{"instances": [[1.0]]}')
    assert (status, resp.getheader("Allow")) == (405, "GET")
    assert json.loads(body) == {"error": "Method not allowed: POST /v1/models/lin: use GET for the model's status or "
                                         "metadata; to predict, POST /v1/models/lin:predict"}


@pytest.mark.parametrize("path, body, message", [
    ("/v1/models/nope:predict", {"instances": [[1.0]]}, "Servable not found for request: Latest(nope)" + KNOWN),
    ("/v1/models/nope/versions/3:predict", {"instances": [[1.0]]},
     "Servable not found for request: Specific(nope, 3)" + KNOWN),
    ("/v1/models/lin/versions/3:predict", {"instances": [[1.0]]},
     "Servable not found for request: Specific(lin, 3) (versions of lin: 1, 2)"),
    ("/v2/models/nope/infer", {"inputs": [{"name": "inputs", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]},
     "Servable not found for request: Latest(nope)" + KNOWN),
    ("/api/predict/nope", [[1.0]], "Servable not found for request: Latest(nope)" + KNOWN),
])
def test_an_unknown_model_keeps_tf_servings_text_and_names_the_known_ones(server: Server, path, body, message):
    assert server.post(path, body) == (404, {"error": message})


def test_get_slash_answers_curl_with_the_routes_and_a_browser_with_the_status_page(server: Server) -> None:
    status, resp, body = ask(server, "GET", "/")  # curl sends `Accept: */*`
    assert (status, resp.getheader("Content-Type")) == (200, "text/plain; charset=utf-8")
    text = body.decode()
    assert text.splitlines()[:2] == [
        f"serving-engine {__import__('serving').__version__}: 2 model(s): lin, two",
        "status page: /ui (open it in a browser); documentation: /ui/docs"]
    for route in ("POST /v1/models/<m>:predict", "POST /v2/models/<m>/infer", "POST /api/predict/<m>",
                  "GET  /healthz, /readyz, /metrics"):
        assert route in text, route
    status, resp, page = ask(server, "GET", "/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert status == 200 and resp.getheader("Content-Type") == "text/html; charset=utf-8" and b"<html" in page.lower()
    assert text.splitlines()[-1].endswith("the cloud processor protocol, model lin")
    assert server.post("/", [[2.0]]) == (200, [3.0])  # POST / is still the default model's (lin, y = 0.5x + 2)
