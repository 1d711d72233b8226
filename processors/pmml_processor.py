"""PMML processor: PMML 4.x documents (`*.pmml` / `*.xml`) evaluated by pypmml, which runs a JVM.

The JVM (a py4j gateway started by pypmml) is started once per process and shared by every PMML model.
Each batch is evaluated in ONE call across the Python/JVM boundary (the "split" JSON form), not row by
row. Fields come from the document itself (DataDictionary + MiningSchema): every active field is an
input, every output field an output, so the metadata routes show names, types and allowed values.

Rows are objects naming any subset of the active fields (a record signature). Missing fields take the
PMML defaults (booleans false, numbers 0, strings empty) unless the model declares a missing-value
treatment for them (`missingValueReplacement` / `missingValueTreatment`), in which case the evaluator
sees them as missing. Unknown fields, wrong types and values outside a field's allowed values are a
400 that names the field, checked per request before batching.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pypmml import Model

from serving.codecs.jsonutil import loads
from serving.core.processor import Processor, find_model_file
from serving.core.signature import DEFAULT_SIGNATURE, STRING, Signature, TensorSpec
from serving.errors import Code, ServingError, invalid_argument
from serving.redact import load_failed

NUMERIC = {"double": np.float64, "float": np.float64, "integer": np.int64}
DEFAULTS = {"boolean": False, "string": "", "double": 0.0, "float": 0.0, "integer": 0}


@dataclass(frozen=True)
class Field:
    name: str
    data_type: str  # PMML dataType: string, integer, float, double, boolean, date...
    optype: str  # categorical, ordinal, continuous
    values: tuple[str, ...]  # allowed values (categorical), empty when any
    missing_treatment: bool  # the model says what a missing value means

    @property
    def dtype(self) -> np.dtype:
        if self.data_type in NUMERIC:
            return np.dtype(NUMERIC[self.data_type])
        if self.data_type == "boolean":
            return np.dtype(np.bool_)
        return STRING


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_fields(path: Path) -> list[Field]:
    """The model's active input fields, in MiningSchema order, with their DataDictionary types."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise load_failed("PMML document", path, e) from e
    dictionary: dict[str, ET.Element] = {}
    mining: list[ET.Element] = []
    for element in root.iter():
        tag = _local(element.tag)
        if tag == "DataField":
            dictionary[element.get("name", "")] = element
        elif tag == "MiningSchema" and not mining:  # the top model's schema
            mining = [m for m in element if _local(m.tag) == "MiningField"]
    fields = []
    for m in mining:
        usage = m.get("usageType", "active")
        if usage not in ("active",):
            continue
        name = m.get("name", "")
        data = dictionary.get(name)
        if data is None:
            continue
        values = tuple(v.get("value", "") for v in data if _local(v.tag) == "Value"
                       and v.get("property", "valid") == "valid")
        missing = m.get("missingValueReplacement") is not None or m.get("missingValueTreatment") is not None
        fields.append(Field(name, data.get("dataType", "string"), data.get("optype", "continuous"), values, missing))
    return fields


class PMMLProcessor(Processor):
    name = "pmml"

    def __init__(self) -> None:
        super().__init__()
        self.model: Any = None
        self.fields: list[Field] = []
        self.output_types: dict[str, np.dtype] = {}

    def load(self, version_dir: Path, device: str, options: Mapping[str, Any]) -> None:
        if device != "cpu":
            raise ServingError(Code.FAILED_PRECONDITION, f"processor pmml serves on the cpu only, not {device}")
        path = find_model_file(version_dir, ("*.pmml", "*.xml"), "PMML")
        self.fields = read_fields(path)
        try:
            self.model = Model.load(str(path))  # the first load in a process starts the JVM
        except Exception as e:  # noqa: BLE001 - py4j / the evaluator's own errors
            raise load_failed("PMML model", path, e) from e
        for out in self.model.outputFields:
            kind = str(out.dataType)
            self.output_types[str(out.name)] = (np.dtype(np.float64) if kind in NUMERIC else
                                                np.dtype(np.bool_) if kind == "boolean" else STRING)
        inputs = {f.name: TensorSpec(f.name, f.dtype, (-1,), allowed=f.values or None) for f in self.fields}
        outputs = {n: TensorSpec(n, dt, (-1,)) for n, dt in self.output_types.items()}
        self.signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, outputs,
                                                        output_order=tuple(outputs), records=True)}

    def validate(self, inputs: dict[str, np.ndarray], signature: Signature) -> None:
        for f in self.fields:
            column = inputs[f.name]
            for row, value in enumerate(column):
                if value is None:
                    continue
                if isinstance(value, bytes):  # a BYTES tensor (KServe V2, TF's b64, tritonclient): UTF-8 text
                    try:
                        value = column[row] = value.decode()
                    except UnicodeDecodeError:
                        raise invalid_argument(f"field '{f.name}' (row {row}): {value!r} is not UTF-8 text") from None
                _check(f, value, row)

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        assert self.model is not None, "predict before load"
        columns = [f.name for f in self.fields]
        filled = [[_default(f) if v is None else v for v in inputs[f.name]] for f in self.fields]
        rows = [list(r) for r in zip(*filled, strict=True)]
        result = loads(self.model.call("predict", orjson.dumps({"columns": columns, "data": rows},
                                                               option=orjson.OPT_SERIALIZE_NUMPY).decode()))
        names = result["columns"]
        data = result["data"]
        out = {}
        for j, name in enumerate(names):
            dtype = self.output_types.get(name, STRING)
            column = [r[j] for r in data]
            if dtype == STRING:
                array = np.empty(len(column), dtype=object)
                array[:] = ["" if v is None else str(v) for v in column]
            else:
                array = np.array([math.nan if v is None else v for v in column], dtype=dtype)
            out[name] = array
        return out

    def unload(self) -> None:
        self.model = None


def _default(f: Field) -> Any:
    if f.missing_treatment:
        return None
    return DEFAULTS.get(f.data_type, "")


def _check(f: Field, value: Any, row: int) -> None:
    where = f"field '{f.name}' (row {row})"
    if f.data_type in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid_argument(f"{where}: expected a number ({f.data_type}), got {value!r}")
    elif f.data_type == "integer":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise invalid_argument(f"{where}: expected an integer, got {value!r}")
    elif f.data_type == "boolean":
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise invalid_argument(f"{where}: expected true or false, got {value!r}")
    elif not isinstance(value, str | int | float) or isinstance(value, bool):
        raise invalid_argument(f"{where}: expected a {f.data_type} value, got {value!r}")
    if f.values and str(value) not in f.values and not (
        isinstance(value, int | float) and _number_in(value, f.values)
    ):
        raise invalid_argument(f"{where}: {value!r} is not one of the allowed values {', '.join(f.values)}")


def _number_in(value: float, allowed: tuple[str, ...]) -> bool:
    for text in allowed:
        try:
            if float(text) == float(value):
                return True
        except ValueError:
            continue
    return False
