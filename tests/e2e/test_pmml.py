"""The PMML processor on hand-written PMML documents, values checked by hand, in process and over HTTP."""

import numpy as np
import pytest

from serving.core.processor import processor_class
from serving.errors import Code, ServingError
from serving.protocols.tfserving.codec import record_rows
from tests.helpers import Server

pytest.importorskip("pypmml", reason="pypmml (extra pmml) is not installed")

REGRESSION = """<?xml version="1.0" encoding="UTF-8"?>
<PMML version="4.4" xmlns="http://www.dmg.org/PMML-4_4">
  <Header description="y = 2*x1 + 3*x2 + 1, +0.5 when color is red"/>
  <DataDictionary numberOfFields="4">
    <DataField name="x1" optype="continuous" dataType="double"/>
    <DataField name="x2" optype="continuous" dataType="double"/>
    <DataField name="color" optype="categorical" dataType="string"><Value value="red"/><Value value="blue"/></DataField>
    <DataField name="y" optype="continuous" dataType="double"/>
  </DataDictionary>
  <RegressionModel functionName="regression">
    <MiningSchema>
      <MiningField name="x1"/><MiningField name="x2"/><MiningField name="color"/>
      <MiningField name="y" usageType="target"/>
    </MiningSchema>
    <RegressionTable intercept="1">
      <NumericPredictor name="x1" coefficient="2"/>
      <NumericPredictor name="x2" coefficient="3"/>
      <CategoricalPredictor name="color" value="red" coefficient="0.5"/>
      <CategoricalPredictor name="color" value="blue" coefficient="0"/>
    </RegressionTable>
  </RegressionModel>
</PMML>
"""

TREE = """<?xml version="1.0" encoding="UTF-8"?>
<PMML version="4.4" xmlns="http://www.dmg.org/PMML-4_4">
  <Header description="heart: sick when cp is 3, else when age over 60"/>
  <DataDictionary numberOfFields="4">
    <DataField name="age" optype="continuous" dataType="integer"/>
    <DataField name="cp" optype="categorical" dataType="integer">
      <Value value="0"/><Value value="1"/><Value value="2"/><Value value="3"/>
    </DataField>
    <DataField name="fbs" optype="categorical" dataType="boolean"/>
    <DataField name="target" optype="categorical" dataType="string"><Value value="0"/><Value value="1"/></DataField>
  </DataDictionary>
  <TreeModel functionName="classification" splitCharacteristic="binarySplit">
    <MiningSchema>
      <MiningField name="age" missingValueReplacement="50"/>
      <MiningField name="cp"/>
      <MiningField name="fbs"/>
      <MiningField name="target" usageType="target"/>
    </MiningSchema>
    <Output>
      <OutputField name="predicted_target" feature="predictedValue" dataType="string" optype="categorical"/>
      <OutputField name="p_0" feature="probability" value="0" dataType="double" optype="continuous"/>
      <OutputField name="p_1" feature="probability" value="1" dataType="double" optype="continuous"/>
    </Output>
    <Node id="0" score="0">
      <True/>
      <Node id="1" score="1">
        <SimplePredicate field="cp" operator="equal" value="3"/>
        <ScoreDistribution value="0" recordCount="1"/><ScoreDistribution value="1" recordCount="9"/>
      </Node>
      <Node id="2" score="0">
        <SimplePredicate field="cp" operator="notEqual" value="3"/>
        <Node id="3" score="1">
          <SimplePredicate field="age" operator="greaterThan" value="60"/>
          <ScoreDistribution value="0" recordCount="3"/><ScoreDistribution value="1" recordCount="7"/>
        </Node>
        <Node id="4" score="0">
          <SimplePredicate field="age" operator="lessOrEqual" value="60"/>
          <ScoreDistribution value="0" recordCount="8"/><ScoreDistribution value="1" recordCount="2"/>
        </Node>
      </Node>
    </Node>
  </TreeModel>
</PMML>
"""


def write(base, text, version=1, name="model.pmml"):
    d = base / str(version)
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    return d


def load(version_dir):
    proc = processor_class("pmml")()
    proc.load(version_dir, "cpu", {})
    return proc


def run(proc, rows):
    sig = proc.signature("")
    inputs = record_rows(rows, sig, "test")
    proc.validate(inputs, sig)
    return proc.predict(inputs, sig.name)


def test_regression_by_hand(tmp_path):
    proc = load(write(tmp_path, REGRESSION))
    out = run(proc, [{"x1": 1, "x2": 2, "color": "red"}, {"x1": 0.5, "x2": -1, "color": "blue"},
                     {"x1": 1, "color": "blue"}])  # x2 missing: the PMML default 0
    assert out["predicted_y"].tolist() == [9.5, -1.0, 3.0]
    sig = proc.signature("")
    assert list(sig.inputs) == ["x1", "x2", "color"] and sig.inputs["color"].allowed == ("red", "blue")
    assert list(sig.outputs) == ["predicted_y"]


def test_values_as_binary_protocols_send_them_bytes_and_numpy_scalars(tmp_path):
    """KServe V2 BYTES and TF's b64 strings arrive as bytes, V2 FP64 numbers as numpy scalars in the object column."""
    proc = load(write(tmp_path, REGRESSION))
    sig = proc.signature("")
    inputs = {"x1": np.array([np.float64(1.0)], dtype=object), "x2": np.array([np.float64(2.0)], dtype=object),
              "color": np.array([b"red"], dtype=object)}
    proc.validate(inputs, sig)
    assert proc.predict(inputs, sig.name)["predicted_y"].tolist() == [9.5]
    inputs["color"] = np.array([b"\xff"], dtype=object)
    with pytest.raises(ServingError, match="is not UTF-8 text"):
        proc.validate(inputs, sig)


def test_tree_with_probabilities_and_missing_value_treatment(tmp_path):
    proc = load(write(tmp_path, TREE, name="heart.xml"))
    out = run(proc, [{"age": 70, "cp": 1, "fbs": True}, {"age": 40, "cp": 3, "fbs": False}, {"cp": 0}])
    assert out["predicted_target"].tolist() == ["1", "1", "0"]  # the last: age replaced by 50 as the model says
    np.testing.assert_allclose(out["p_1"], [0.7, 0.9, 0.2])
    np.testing.assert_allclose(out["p_0"], [0.3, 0.1, 0.8])


@pytest.mark.parametrize(
    "row, message",
    [
        ({"x1": "abc"}, "field 'x1' (row 0): expected a number (double), got 'abc'"),
        ({"x1": True}, "field 'x1' (row 0): expected a number"),
        ({"color": "green"}, "field 'color' (row 0): 'green' is not one of the allowed values red, blue"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_bad_input_names_the_field(tmp_path, row, message):
    proc = load(write(tmp_path, REGRESSION))
    with pytest.raises(ServingError) as e:
        run(proc, [row])
    assert e.value.code is Code.INVALID_ARGUMENT and message in e.value.message


def test_pmml_over_http(tmp_path):
    write(tmp_path / "heart", TREE)
    with Server(f"--model_base_path={tmp_path / 'heart'}", "--model_name=heart") as s:
        status, body = s.post("/api/predict/heart", [{"age": 70, "cp": 1, "fbs": 1}, {"cp": 3}])
        assert status == 200
        assert [r["predicted_target"] for r in body] == ["1", "1"]
        assert body[0]["p_1"] == pytest.approx(0.7)
        status, body = s.post("/v1/models/heart:predict", {"instances": [{"age": 30, "cp": 0, "fbs": False}]})
        assert status == 200 and body["predictions"][0]["predicted_target"] == "0"
        status, body = s.post("/api/predict/heart", [{"age": 70, "cp": 9}])
        assert status == 400 and "field 'cp' (row 0)" in body["error"]
        status, body = s.request("GET", "/api/predict/heart")
        cp = next(i for i in body["inputs"] if i["name"] == "cp")
        assert cp["values"] == ["0", "1", "2", "3"] and cp["type"] == "DT_INT64"
        assert s.post("/api/predict/heart", [{"age": 61, "cp": 2, "fbs": 0}])[1][0]["predicted_target"] == "1"
