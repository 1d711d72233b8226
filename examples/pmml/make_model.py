"""A PMML 4.4 linear regression fitted with numpy on 200 made-up rows (y from the fields x1, x2 and a
categorical `color`), written as <dir>/pmml_reg/1/model.pmml. PMML usually comes from an exporter
(sklearn2pmml, R's pmml, Spark's PMMLBuilder, KNIME): any file pypmml evaluates is served the same way.

    python make_model.py /tmp/models
"""

import sys
from pathlib import Path

import numpy as np

version_dir = Path(sys.argv[1]) / "pmml_reg" / "1"  # <base path>/<version>: the server serves every integer folder
rng = np.random.default_rng(0)
x1, x2, red = rng.standard_normal(200), rng.standard_normal(200), rng.integers(0, 2, 200)
y = 2.0 * x1 - 3.0 * x2 + 0.5 * red + 1.0 + 0.1 * rng.standard_normal(200)
(c1, c2, c_red, intercept), *_ = np.linalg.lstsq(np.column_stack([x1, x2, red, np.ones(200)]), y, rcond=None)

PMML = f"""<?xml version="1.0" encoding="UTF-8"?>
<PMML version="4.4" xmlns="http://www.dmg.org/PMML-4_4">
  <Header description="y from x1, x2 and color, least squares"/>
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
    <RegressionTable intercept="{intercept:.6f}">
      <NumericPredictor name="x1" coefficient="{c1:.6f}"/>
      <NumericPredictor name="x2" coefficient="{c2:.6f}"/>
      <CategoricalPredictor name="color" value="red" coefficient="{c_red:.6f}"/>
      <CategoricalPredictor name="color" value="blue" coefficient="0"/>
    </RegressionTable>
  </RegressionModel>
</PMML>
"""
version_dir.mkdir(parents=True, exist_ok=True)
(version_dir / "model.pmml").write_text(PMML)
print(f"wrote {version_dir / 'model.pmml'}")
