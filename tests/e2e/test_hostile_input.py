"""Hostile input on the real server: verbs in the wrong case, JSON nested to orjson's limit, lone UTF-16
surrogates, text that cannot be encoded in error answers, and a seeded fuzz of the three predict routes.
Every answer is 200 or a 4xx with a JSON `{"error": ...}` body, and the server goes on serving."""

import json
import os
import random

import grpc
import pytest

from serving._proto.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from serving.codecs.examples import examples_from_json
from serving.errors import Code, ServingError
from tests.helpers import Server, make_linear, make_xgb, pbtxt, wait_until

pytest.importorskip("xgboost", reason="xgboost-cpu is not installed")

NAMES = ["f0", "f1", "f2", "f3"]
ROW = {"f0": 0.1, "f1": 0.2, "f2": 0.3, "f3": 0.4}
SURROGATE = "JSON Parse error: The surrogate pair in string is invalid."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    make_xgb(root / "xgb", 1, names=NAMES)
    make_linear(root / "lin", 1)  # y = 0.5x + 2
    config = root / "model_config.pbtxt"
    config.write_text(pbtxt({"name": "xgb", "base_path": root / "xgb", "platform": "xgboost"},
                            {"name": "lin", "base_path": root / "lin", "platform": "linear"}))
    with Server(f"--model_config_file={config}") as s:
        yield s


def still_serves(server):
    assert server.post("/v1/models/lin:predict", {"instances": [[2.0]]}, fresh=True) == (200, {"predictions": [3.0]})


def nested(depth, leaf="1"):
    return "[" * depth + leaf + "]" * depth


# ---- the verb's case ----

@pytest.mark.parametrize("path", [
    "/v1/models/xgb:PREDICT", "/v1/models/xgb:Predict", "/v1/models/xgb:Classify", "/v1/models/xgb:REGRESS",
    "/v1/models/xgb/versions/1:pREDICT", "/v1/models/xgb/labels/stable:PREDICT",
])
def test_a_verb_in_another_case_is_a_malformed_request_as_tf_serving_dispatches_it(server, path):
    # TF Serving's path regex is (?i), but it dispatches on method == "predict" etc.: nothing matches
    assert server.post(path, {"instances": [ROW]}) == (400, {"error": f"Malformed request: POST {path}"})
    still_serves(server)


def test_the_rest_of_the_path_matches_in_any_case(server):
    status, body = server.post("/v1/models/xgb/VERSIONS/1:predict", {"instances": [ROW]})
    assert status == 200 and len(body["predictions"]) == 1


def test_only_lower_case_metadata_is_the_metadata_route_the_rest_is_the_status(server):
    assert "metadata" in server.get("/v1/models/xgb/metadata")[1]
    status, body = server.get("/v1/models/xgb/METADATA")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


# ---- nesting ----

def test_a_document_nested_1000_deep_answers_400_with_a_short_message(server):
    for depth in (1000, 1024):  # 1024: the deepest orjson parses
        status, body = server.post("/v1/models/xgb:predict", nested(depth).encode())
        assert (status, body) == (400, {"error": "JSON Value: " + "[" * 197 + "... Is not object"})


def test_a_row_nested_1000_deep_on_the_cloud_route_answers_400_with_a_short_message(server):
    body = f'[{json.dumps(ROW)}, {nested(1000)}]'.encode()
    assert server.post("/api/predict/xgb", body) == (
        400, {"error": "request: expecting an object at item 1, got " + "[" * 197 + "..."})


def test_both_row_keys_with_a_value_nested_1000_deep_answer_400(server):
    body = f'{{"instances": {nested(1000)}, "inputs": 1}}'.encode()
    shown = '{"instances":' + "[" * (197 - len('{"instances":')) + "..."
    want = f"JSON Value: {shown} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
    assert server.post("/v1/models/xgb:predict", body) == (400, {"error": want})


def test_nesting_past_1024_is_a_parse_error(server):
    status, body = server.post("/v1/models/xgb:predict", nested(1025).encode())
    assert (status, body) == (400, {"error": "JSON Parse error: depth limit exceeded: line 1 column 1026 (char 1025)"})


def test_a_kserve_id_that_is_not_a_string_answers_400_before_inference(server):
    # the id is echoed in the answer: nested 1000 deep it could not be written (orjson stops at 255)
    body = f'{{"id": {nested(1000)}, "inputs": [{{"name": "inputs", "shape": [1, 1], "datatype": "FP32", ' \
           f'"data": [2.0]}}]}}'.encode()
    assert server.post("/v2/models/lin/infer", body) == (
        400, {"error": "Unable to parse 'id': attempt to access JSON non-string as string"})
    still_serves(server)


# ---- lone surrogates ----

@pytest.mark.parametrize("path, body", [
    ("/api/predict/xgb", b'[{"f0\\ud800": 1}]'),
    ("/v1/models/xgb:predict", b'{"instances": [{"f0\\ud800": 1}]}'),
    ("/v1/models/xgb:predict", b'{"signature_name": "\\udc00", "instances": [[1, 2, 3, 4]]}'),
    ("/v1/models/xgb:predict", b'{"instances": [[NaN, 2, 3, 4]], "x": "\\ud800"}'),  # the stdlib's slow path
    ("/v1/models/xgb:predict", b'{"instances": [[1, 2, 3, 4]], "x": "\xed\xa0\x80"}'),  # UTF-8-encoded surrogate
    ("/v2/models/lin/infer", b'{"inputs": [{"name": "in\\ud800", "shape": [1], "datatype": "FP32", "data": [1]}]}'),
    ("/v2/models/lin/infer", b'{"inputs": [{"name": "inputs", "shape": [1], "datatype": "F\\ud800", "data": [1]}]}'),
])
def test_a_lone_surrogate_is_a_parse_error_as_in_rapidjson(server, path, body):
    assert server.post(path, body) == (400, {"error": SURROGATE})
    still_serves(server)


def test_a_surrogate_pair_is_text_like_any_other(server):
    # NaN sends the body through the stdlib parser, which joins the pair into one character
    body = b'[{"f0": NaN, "f1": 2, "f2": 3, "f3": 4, "\\ud83d\\ude00": 5}]'
    assert server.post("/api/predict/xgb", body) == (400, {"error": "request: item 0: unknown feature(s) \U0001f600"})


def load_ended(server, model):
    """The status answer once the load has ended (or once it is not a status document); None while the
    model is not listed yet (404) or still loading."""
    status, body = server.get(f"/v1/models/{model}")
    if status == 404:
        return None
    return (status, body) if status != 200 or body["model_version_status"][0]["state"] == "END" else None


def test_a_message_naming_an_undecodable_file_is_answered_with_its_escape(tmp_path):
    # a base path that is not UTF-8 reaches Python as a lone surrogate (surrogateescape)
    base = tmp_path / os.fsdecode(b"m\xff")
    (make_linear(base, 1) / "linear.json").write_text("{broken")
    want = f"cannot load linear model {tmp_path}/m\\udcff/1/linear.json"
    with Server(f"--model_base_path={base}", "--model_name=bad", wait_ready=False) as s:
        status, body = wait_until(lambda: load_ended(s, "bad"), what="the load to fail")
        assert status == 200 and body["model_version_status"][0]["status"]["error_message"].startswith(want)
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "bad"
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
        assert response.model_version_status[0].status.error_message.startswith(want)


# ---- classify / regress examples ----

def test_an_example_integer_past_int64_is_invalid_argument_not_a_proto_error():
    assert len(examples_from_json({"examples": [{"a": -(2**63)}, {"a": 2**63 - 1}]}, "classify")) == 2
    with pytest.raises(ServingError) as e:
        examples_from_json({"examples": [{"a": 2**63}]}, "classify")
    assert (e.value.code, e.value.message) == (
        Code.INVALID_ARGUMENT, "Feature: a has an integer that does not fit in int64: 9223372036854775808")


# ---- fuzz ----

HOSTILE = [  # JSON texts put in place of a value (or a key, for the strings) of a valid request
    nested(1000), '{"a":' * 1000 + "1" + "}" * 1000, nested(1024, ""), nested(1025, ""), nested(63), nested(65),
    '"\\ud800"', '"\\udfff"', '{"\\ud800": 1}', '"\\ud83d\\ude00"', '"\ud800"', '{"": 1}', '""',
    '"\u00e9\u2713\u4e2d"', '"' + "x" * 10_000 + '"',
    "NaN", "Infinity", "-Infinity", "nan", "1e999", "-1e999", "1" + "0" * 400, "1" + "0" * 5000,
    "18446744073709551616", "9223372036854775808", "-9223372036854775809", "1.5e-400", "-0",
    "true", "false", "null", "[]", "{}", "[[]]", "[1, [2]]", '[1, "a"]', '{"b64": "!!"}', '{"b64": 1}',
    "[" + ",".join(["1"] * 5000) + "]", "-1", "4294967296",
]
V2_BASE = {"id": "r1",
           "inputs": [{"name": "inputs", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}],
           "outputs": [{"name": "predictions", "parameters": {"binary_data": False}}],
           "parameters": {"binary_data_output": False}}
TARGETS = [  # (path, a valid request)
    ("/v1/models/xgb:predict", {"instances": [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]]}),
    ("/v1/models/xgb:predict", {"instances": [ROW]}),
    ("/v1/models/xgb:predict", {"signature_name": "serving_default", "inputs": {k: [v] for k, v in ROW.items()}}),
    ("/v1/models/lin:predict", {"inputs": [[2.0], [4.0]]}),
    ("/v2/models/xgb/infer", V2_BASE),
    ("/v2/models/lin/infer", {"inputs": [{"name": "inputs", "shape": [2, 1], "datatype": "FP32", "data": [2, 4]}]}),
    ("/api/predict/xgb", [[0.1, 0.2, 0.3, 0.4]]),
    ("/api/predict/xgb", [ROW, ROW]),
    ("/api/predict/lin", {"instances": [[2.0]]}),
]
HOLE = "@@hole@@"


def _places(doc, path=()):
    """Every place in `doc` as (path, is_key): values, and the keys of objects."""
    yield path, False
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        if isinstance(doc, dict):
            yield (*path, k), True
        yield from _places(v, (*path, k))


def _with_hole(doc, path, is_key):
    if not path:
        return HOLE
    doc = json.loads(json.dumps(doc))  # a copy
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if is_key:
        parent[HOLE] = parent.pop(path[-1])
    else:
        parent[path[-1]] = HOLE
    return doc


def fuzzed_body(rng, doc):
    """A valid request with one hostile value or key, or its text cut or spliced with a stray byte."""
    text = json.dumps(doc).encode()
    if rng.random() < 0.2:
        at = rng.randrange(len(text) + 1)
        if rng.random() < 0.5:
            return text[:at]
        return text[:at] + bytes([rng.choice(b'\xff\x00{}[],:"\\-e.')]) + text[at:]
    path, is_key = rng.choice(list(_places(doc)))
    hostile = rng.choice([h for h in HOSTILE if h.startswith('"')] if is_key else HOSTILE)
    text = json.dumps(_with_hole(doc, path, is_key)).replace(f'"{HOLE}"', hostile)
    return text.encode("utf-8", "surrogatepass")  # '"\ud800"' goes as the bytes ED A0 80


def test_a_seeded_fuzz_of_the_predict_routes_gets_200_or_a_4xx_json_error_and_the_server_goes_on(server):
    rng = random.Random(20240611)
    wrong = []
    for _ in range(300):  # bounded: 300 requests, each bounded by the client's timeout
        path, doc = rng.choice(TARGETS)
        body = fuzzed_body(rng, doc)
        status, answer = server.post(path, body)
        if status != 200 and not (400 <= status < 500 and isinstance(answer, dict)
                                  and isinstance(answer.get("error"), str)):
            wrong.append((path, body[:120], status, str(answer)[:200]))
    assert wrong == []
    still_serves(server)
    assert "Traceback" not in server.output()
