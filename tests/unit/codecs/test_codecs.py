"""TF Serving REST JSON rules (tensorflow_serving/util/json_tensor.cc) and the cloud processor JSON body."""

import base64
import json

import numpy as np
import pytest

from serving.codecs.jsonutil import loads
from serving.core.signature import STRING, Signature, TensorSpec
from serving.errors import Code, ServingError
from serving.protocols.cloud import codec as cloud
from serving.protocols.tfserving import codec as tfserving

F32 = np.dtype(np.float32)


def sig(*specs, outputs=("y",)):
    inputs = {s.name: s for s in specs}
    return Signature("serving_default", inputs, {o: TensorSpec(o, F32, (-1,)) for o in outputs})


ONE = sig(TensorSpec("x", F32, (-1, 3)))
TABULAR = sig(TensorSpec("inputs", F32, (-1, 2), columns=("a", "b")))
TWO = sig(TensorSpec("x", F32, (-1, 2)), TensorSpec("k", np.dtype(np.int64), (-1,)))
TEXT = sig(TensorSpec("s", STRING, (-1,)))


def err(fn, *a):
    with pytest.raises(ServingError) as e:
        fn(*a)
    assert e.value.code is Code.INVALID_ARGUMENT, e.value
    return e.value.message


def test_row_format_single_input():
    inputs, row = tfserving.decode_predict({"instances": [[1, 2, 3], [4, 5, 6.5]]}, ONE)
    assert row is True
    assert inputs["x"].dtype == np.float32 and inputs["x"].tolist() == [[1, 2, 3], [4, 5, 6.5]]


def test_columnar_format_single_and_named():
    inputs, row = tfserving.decode_predict({"inputs": [[1, 2, 3]]}, ONE)
    assert row is False and inputs["x"].shape == (1, 3)
    inputs, _ = tfserving.decode_predict({"inputs": {"x": [[1, 2]], "k": [7]}}, TWO)
    assert inputs["k"].dtype == np.int64 and inputs["k"].tolist() == [7]


def test_row_format_named_inputs():
    inputs, _ = tfserving.decode_predict({"instances": [{"x": [1, 2], "k": 3}, {"x": [3, 4], "k": 4}]}, TWO)
    assert inputs["x"].tolist() == [[1, 2], [3, 4]] and inputs["k"].tolist() == [3, 4]


def test_feature_objects_for_tabular_models_in_model_column_order():
    inputs, _ = tfserving.decode_predict({"instances": [{"b": 2, "a": 1}, {"a": 3, "b": 4}]}, TABULAR)
    assert inputs["inputs"].tolist() == [[1, 2], [3, 4]]
    inputs, _ = tfserving.decode_predict({"inputs": {"b": [2, 4], "a": [1, 3]}}, TABULAR)
    assert inputs["inputs"].tolist() == [[1, 2], [3, 4]]
    assert "missing feature(s) b" in err(tfserving.decode_predict, {"instances": [{"a": 1}]}, TABULAR)
    assert "unknown feature(s) c" in err(tfserving.decode_predict, {"instances": [{"a": 1, "b": 2, "c": 3}]},
                                         TABULAR)


def test_b64_and_strings():
    raw = b"\x00\xffbytes"
    inputs, _ = tfserving.decode_predict(
        {"instances": [{"b64": base64.b64encode(raw).decode()}, "text"]}, TEXT
    )
    assert inputs["s"].tolist() == [raw, b"text"]
    assert err(tfserving.decode_predict, {"instances": [{"b64": "%%%"}]}, TEXT) == "Unable to base64 decode"
    assert "is not of expected type: string" in err(tfserving.decode_predict, {"instances": [1]}, TEXT)


def test_string_outputs_are_text_or_b64_for_bytes_names():
    out = {"word": np.array([b"hi"], dtype=object), "blob_bytes": np.array([b"\x01"], dtype=object)}
    doc = json.loads(tfserving.encode_predict(out, row_format=False))
    assert doc == {"outputs": {"word": ["hi"], "blob_bytes": [{"b64": "AQ=="}]}}


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]}, "expecting only one of 'inputs' or 'instances'"),
        ({"instances": {"x": 1}}, "Excepting 'instances' to be an list/array"),
        ({"instances": []}, "No values in 'instances' array"),
        ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key"),
        ({"instances": [["a", "b", "c"]]}, 'JSON Value: "a" Type: String is not of expected type: float'),
        ({"instances": [[True, False, True]]}, "Type: Bool is not of expected type: float"),
        ({"instances": [[1, 2, None]]}, "is not of expected type: float"),
        ({"instances": [[1, 2, 3], [1, 2]]}, "ragged"),
    ],
)
def test_request_errors(doc, message):
    assert message in err(tfserving.decode_predict, doc, ONE)


def test_int_inputs_refuse_fractions():
    doc = {"inputs": {"x": [[1, 2]], "k": [1.5]}}
    assert "JSON Value: 1.5 Type: Number is not of expected type: int64" in err(tfserving.decode_predict, doc, TWO)


def test_plain_list_for_several_inputs_is_refused():
    assert "expecting list of objects" in err(tfserving.decode_predict, {"instances": [[1, 2]]}, TWO)
    assert "Missing named input: k in 'inputs' object." == err(tfserving.decode_predict, {"inputs": {"x": [[1, 2]]}},
                                                                TWO)


def test_signature_name_and_document_shape():
    assert tfserving.signature_name({"signature_name": "s", "instances": []}) == "s"
    assert tfserving.signature_name({"instances": []}) == ""
    assert "'signature_name' key must be a string value" in err(tfserving.signature_name, {"signature_name": 1})
    assert "Is not object" in err(tfserving.signature_name, [1, 2])


def test_json_parse_errors_and_nan_tokens():
    assert err(loads, b"") == "JSON Parse error: The document is empty"
    assert err(loads, b'{"instances": [1,').startswith("JSON Parse error")
    doc = loads(b'{"instances": [[NaN, Infinity, -Infinity]]}')
    inputs, _ = tfserving.decode_predict(doc, ONE)
    x = inputs["x"][0]
    assert np.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf


def test_predictions_row_and_columnar_encoding():
    y = np.array([0.25, 1.5], dtype=np.float32)
    assert json.loads(tfserving.encode_predict({"y": y}, True)) == {"predictions": [0.25, 1.5]}
    assert json.loads(tfserving.encode_predict({"y": y}, False)) == {"outputs": [0.25, 1.5]}
    two = {"y": y, "c": np.array([3, 4], dtype=np.int64)}
    assert json.loads(tfserving.encode_predict(two, True)) == {"predictions": [{"y": 0.25, "c": 3}, {"y": 1.5, "c": 4}]}
    assert json.loads(tfserving.encode_predict(two, False)) == {"outputs": {"y": [0.25, 1.5], "c": [3, 4]}}


def test_float32_is_written_shortest_and_int64_as_exact_numbers():
    body = tfserving.encode_predict({"y": np.array([0.1], np.float32), "k": np.array([2**62 + 1], np.int64)}, False)
    assert b"0.1," in body or b"[0.1]" in body
    assert str(2**62 + 1).encode() in body


def test_nonfinite_outputs_are_written_as_tokens():
    body = tfserving.encode_predict({"y": np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)}, True)
    assert body == b'{"predictions":[NaN,Infinity,-Infinity,0.5]}'


def test_rows_with_different_batch_sizes_cannot_be_rows():
    out = {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}
    assert "different 0th dimensions" in err(tfserving.encode_predict, out, True)


def test_cloud_json_rows_and_objects():
    assert cloud.decode_json([[1, 2], [3, 4]], TABULAR)["inputs"].tolist() == [[1, 2], [3, 4]]
    assert cloud.decode_json([{"a": 1, "b": 2}], TABULAR)["inputs"].tolist() == [[1, 2]]
    assert cloud.decode_json({"instances": [[1, 2]]}, TABULAR)["inputs"].tolist() == [[1, 2]]
    assert "non-empty JSON list" in err(cloud.decode_json, [], TABULAR)
    assert "non-empty JSON list" in err(cloud.decode_json, "x", TABULAR)
    assert json.loads(cloud.encode_json({"y": np.array([0.5, 1.0], np.float32)})) == [0.5, 1.0]


def test_half_precision_over_json_is_unimplemented_as_in_tf_serving():
    half = sig(TensorSpec("x", np.dtype(np.float16), (-1,)))
    with pytest.raises(ServingError) as e:
        tfserving.decode_predict({"instances": [1.0]}, half)
    assert e.value.code is Code.UNIMPLEMENTED and "to type: half" in e.value.message


def test_string_lists_nested_past_the_recursion_limit_are_a_client_error():
    from serving.codecs.arrays import convert
    from serving.core.signature import STRING

    nested: object = "a"
    for _ in range(1020):  # orjson reads 1024 levels; Python recurses about 1000 deep
        nested = [nested]
    with pytest.raises(ServingError) as e:
        convert(nested, STRING, "x")
    assert (e.value.code, e.value.message) == (Code.INVALID_ARGUMENT, "string input: the lists are nested too deep")
