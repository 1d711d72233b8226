"""Compressed requests and answers against the real server, with the clients that send them: tritonclient
HTTP (`request_compression_algorithm`, `response_compression_algorithm`) and gRPC (`compression_algorithm`),
curl --compressed, urllib, grpc stubs; the gRPC answers' bytes counted on the wire by a forwarding proxy."""

import gzip
import json
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
import zlib

import grpc
import numpy as np
import pytest

from serving._proto.tensorflow.core.framework import tensor_pb2
from serving._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tests.helpers import Server, make_linear, run_cli

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient (test extra) is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient (test extra) is not installed")

ROWS = 1000  # answers of 1000 rows are well over the 1024-byte minimum that is compressed
X = np.arange(ROWS, dtype=np.float32).reshape(ROWS, 1)
WANT = 0.5 * X[:, 0] + 2.0  # the linear model y = 0.5x + 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("compression")
    make_linear(root / "lin", 1)
    with Server(f"--model_base_path={root / 'lin'}", "--model_name=lin", "--grpc_compression=gzip",
                "--access_log=off") as s:
        yield s


def post(server, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """urllib, which sends what it is given and decompresses nothing: the answer as it came."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def v2_inputs(binary: bool) -> list:
    inp = httpclient.InferInput("inputs", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    return [inp]


# ---- HTTP: tritonclient ----

@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("answer", ["gzip", "deflate"])
@pytest.mark.parametrize("request_coding", ["gzip", "deflate"])
def test_tritonclient_http_compressed_request_and_answer(server, request_coding, answer, binary):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        result = client.infer("lin", v2_inputs(binary),
                              outputs=[httpclient.InferRequestedOutput("predictions", binary_data=binary)],
                              request_compression_algorithm=request_coding,
                              response_compression_algorithm=answer)
        np.testing.assert_array_equal(result.as_numpy("predictions"), WANT)
    finally:
        client.close()


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_binary_v2_answer_is_compressed_whole_and_its_header_length_counts_the_uncompressed_json(server, coding):
    """What tritonclient's response_compression_algorithm relies on: it decompresses the whole body, then
    splits it at Inference-Header-Content-Length (InferResult)."""
    header = json.dumps({"inputs": [{"name": "inputs", "shape": [ROWS, 1], "datatype": "FP32",
                                     "parameters": {"binary_data_size": X.nbytes}}],
                         "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}]}).encode()
    status, headers, body = post(server, "/v2/models/lin/infer", header + X.tobytes(),
                                 {"Inference-Header-Content-Length": str(len(header)), "Accept-Encoding": coding})
    assert (status, headers["Content-Encoding"], headers["Vary"]) == (200, coding, "Accept-Encoding")
    plain = {"gzip": gzip.decompress, "deflate": zlib.decompress}[coding](body)
    json_length = int(headers["Inference-Header-Content-Length"])
    assert json.loads(plain[:json_length])["outputs"][0]["parameters"] == {"binary_data_size": WANT.nbytes}
    assert plain[json_length:] == WANT.tobytes()
    result = httpclient.InferResult.from_response_body(body, header_length=json_length, content_encoding=coding)
    np.testing.assert_array_equal(result.as_numpy("predictions"), WANT)


def test_a_v2_request_in_an_unknown_coding_is_415_naming_the_codings_read(server):
    body = json.dumps({"inputs": [{"name": "inputs", "shape": [1, 1], "datatype": "FP32", "data": [2.0]}]})
    status, headers, answer = post(server, "/v2/models/lin/infer", body.encode(), {"Content-Encoding": "br"})
    assert (status, json.loads(answer)) == (415, {"error": "unsupported Content-Encoding: br"})
    assert headers["Accept-Encoding"] == "gzip, deflate"


# ---- HTTP: TF Serving REST and the cloud processor protocol ----

@pytest.mark.parametrize(("path", "body", "want"), [
    ("/v1/models/lin:predict", {"instances": X.tolist()}, {"predictions": WANT.tolist()}),
    ("/api/predict/lin", X.tolist(), WANT.tolist()),
], ids=["tf-rest", "cloud"])
def test_accept_encoding_gzip_gets_a_gzipped_answer(server, path, body, want):
    status, headers, answer = post(server, path, json.dumps(body).encode(), {"Accept-Encoding": "gzip"})
    assert (status, headers["Content-Encoding"], headers["Vary"]) == (200, "gzip", "Accept-Encoding")
    assert int(headers["Content-Length"]) == len(answer)
    assert json.loads(gzip.decompress(answer)) == want


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_tf_rest_request_is_read(server, coding):
    body = json.dumps({"instances": [[2.0], [4.0]]}).encode()
    compressed = gzip.compress(body) if coding == "gzip" else zlib.compress(body)
    status, headers, answer = post(server, "/v1/models/lin:predict", compressed, {"Content-Encoding": coding})
    assert (status, json.loads(answer)) == (200, {"predictions": [3.0, 4.0]})
    assert "Content-Encoding" not in headers and "Vary" not in headers  # it did not ask for a compressed answer


def test_a_small_answer_goes_uncompressed(server):
    status, headers, answer = post(server, "/v1/models/lin:predict", b'{"instances": [[2.0]]}',
                                   {"Accept-Encoding": "gzip"})
    assert (status, json.loads(answer)) == (200, {"predictions": [3.0]})
    assert "Content-Encoding" not in headers and headers["Vary"] == "Accept-Encoding"


def test_a_deflate_bomb_is_413(server):
    bomb = zlib.compress(b" " * (65 * 1024 * 1024))  # past the 64 MiB default once inflated
    assert len(bomb) < 100_000
    status, _, answer = post(server, "/v1/models/lin:predict", bomb, {"Content-Encoding": "deflate"})
    assert (status, json.loads(answer)) == (413, {"error": "request body larger than the limit of 67108864 bytes"})


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_compressed_gets_gzip(server):
    body = json.dumps({"instances": X.tolist()})
    out = subprocess.run(["curl", "-sS", "--compressed", "-D", "-", "-H", "Content-Type: application/json",
                          "--data-binary", body, f"http://127.0.0.1:{server.port}/v1/models/lin:predict"],
                         capture_output=True, check=True, timeout=30)
    head, _, answer = out.stdout.partition(b"\r\n\r\n")
    assert b"\r\nContent-Encoding: gzip\r\n" in head  # curl asks for deflate, gzip, br, zstd: gzip it is
    assert json.loads(answer) == {"predictions": WANT.tolist()}  # curl decompressed it


# ---- gRPC ----

def v2_grpc_infer(port: int, rows: int, compression: str | None = None, channel_args: list | None = None):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}", channel_args=channel_args)
    try:
        inp = grpcclient.InferInput("inputs", [rows, 1], "FP32")
        inp.set_data_from_numpy(np.zeros((rows, 1), np.float32))
        return client.infer("lin", [inp], compression_algorithm=compression).as_numpy("predictions")
    finally:
        client.close()


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_tritonclient_grpc_compressed_request_and_compressed_answer_are_decoded(server, compression):
    got = v2_grpc_infer(server.grpc_port, ROWS, compression)
    np.testing.assert_array_equal(got, np.full(ROWS, 2.0, np.float32))


def test_tf_serving_predict_with_a_deflate_request_is_read(server):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lin"
    request.inputs["inputs"].CopyFrom(tensor_pb2.TensorProto(
        dtype=1, tensor_shape={"dim": [{"size": 2}, {"size": 1}]}, float_val=[2.0, 4.0]))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(request, timeout=10, compression=grpc.Compression.Deflate)
    assert list(answer.outputs["predictions"].float_val) == [3.0, 4.0]


class CountingProxy:
    """A TCP forwarder to a server port that counts the bytes the server sends back: what its answers weigh
    on the wire, which no gRPC client tells."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.received = 0  # from the server; only its pump thread adds to it
        self.stopping = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            for args in ((client, upstream, False), (upstream, client, True)):
                thread = threading.Thread(target=self._pump, args=args)
                thread.start()
                self.threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if counted:
                    self.received += len(data)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:  # the other side went away, or the proxy is closing
            pass

    def __enter__(self) -> "CountingProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.threads[0].join(5)
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads[1:]:
            thread.join(5)
        for sock in [*self.sockets, self.listener]:
            sock.close()


def test_grpc_answers_are_gzipped_for_clients_that_accept_it_and_plain_for_those_that_do_not(server):
    rows = 20_000  # 80 KB of the same float32 (2.0): it compresses to almost nothing
    with CountingProxy(server.grpc_port) as accepting, CountingProxy(server.grpc_port) as refusing:
        np.testing.assert_array_equal(v2_grpc_infer(accepting.port, rows), np.full(rows, 2.0, np.float32))
        identity_only = [("grpc.compression_enabled_algorithms_bitset", 1)]
        np.testing.assert_array_equal(v2_grpc_infer(refusing.port, rows, channel_args=identity_only),
                                      np.full(rows, 2.0, np.float32))
    assert refusing.received > rows * 4
    assert accepting.received < refusing.received // 10


def test_an_unknown_grpc_compression_stops_the_start_with_a_message(tmp_path):
    make_linear(tmp_path / "lin", 1)
    out = run_cli(f"--model_base_path={tmp_path / 'lin'}", "--grpc_compression=br", "--rest_api_port=0", "--port=0")
    assert out.returncode != 0
    assert "--grpc_compression: expected none, gzip or deflate, got 'br'" in out.stderr
