"""`:classify` / `:regress` bodies: JSON examples (TF Serving's `examples` + optional `context`) or an
`Input` proto (gRPC) -> serialized tf.Example strings, and classification / regression results back
into TF Serving's JSON and protos. Rules and texts follow tensorflow_serving/util/json_tensor.cc."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._proto.tensorflow_serving.apis import classification_pb2, regression_pb2
from ..core.processor import implements
from ..core.servable import Servable
from ..core.signature import CLASSIFY_METHOD, REGRESS_METHOD, Signature
from ..errors import invalid_argument, unimplemented
from .arrays import is_b64
from .jsonutil import dumps, dumps_with_nonfinite, short

KINDS = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}
#: The method names of classify / regress signatures -> the processor's method ("verb").
EXAMPLE_VERBS = {CLASSIFY_METHOD: "classify", REGRESS_METHOD: "regress"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _add_value(feature: Any, name: str, value: Any) -> None:
    kind = feature.WhichOneof("kind")

    def need(wanted: str) -> None:
        if kind not in (None, wanted):
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {KINDS[kind]}")

    if isinstance(value, bool):
        need("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, int):
        need("int64_list")
        if not INT64_MIN <= value <= INT64_MAX:  # the proto would raise a plain ValueError: a 500
            raise invalid_argument(f"Feature: {name} has an integer that does not fit in int64: {short(value)}")
        feature.int64_list.value.append(value)
    elif isinstance(value, float):
        need("float_list")
        feature.float_list.value.append(value)
    elif isinstance(value, str):
        need("bytes_list")
        feature.bytes_list.value.append(value.encode())
    elif is_b64(value):
        need("bytes_list")
        try:
            feature.bytes_list.value.append(base64.b64decode(value["b64"], validate=True))
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from None
    else:
        kind_name = "Null" if value is None else type(value).__name__
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {kind_name}")


def _example(doc: Any) -> Any:
    from .._proto.tensorflow.core.example import example_pb2

    if not isinstance(doc, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {short(doc)}")
    example = example_pb2.Example()
    for name, content in doc.items():
        feature = example.features.feature[name]
        for value in content if isinstance(content, list) else [content]:
            _add_value(feature, name, value)
    return example


def examples_from_json(doc: dict[str, Any], verb: str) -> np.ndarray:
    """Serialized tf.Examples of a classify/regress request; context features go into every example."""
    if "examples" not in doc:
        raise invalid_argument(f"JSON Value: {short(doc)} When method is {verb}, key 'examples' is expected and "
                               "was not found")
    items = doc["examples"]
    if not isinstance(items, list):
        raise invalid_argument(f"JSON Value: {short(doc)} Expecting 'examples' value to be an list/array")
    if not items:
        raise invalid_argument(f"JSON Value: {short(doc)} 'examples' value is an empty array")
    context = _example(doc["context"]) if "context" in doc else None
    return _serialize([_example(item) for item in items], context)


def _serialize(items: list[Any], context: Any) -> np.ndarray:
    """Serialized Examples, each with the context's features merged in (the example's own win)."""
    out = np.empty(len(items), dtype=object)
    for i, example in enumerate(items):
        if context is not None:
            merged = type(example)()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            example = merged
        out[i] = example.SerializeToString()
    return out


def examples_from_input(input_proto: Any) -> np.ndarray:
    """Serialized tf.Examples of a gRPC Input (example_list, or example_list_with_context merged)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        items = list(input_proto.example_list.examples)
        context = None
    elif kind == "example_list_with_context":
        items = list(input_proto.example_list_with_context.examples)
        context = input_proto.example_list_with_context.context
    else:
        raise invalid_argument("Input is empty")
    if not items:
        raise invalid_argument("Input is empty")
    return _serialize(items, context)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def classification_pairs(outputs: Mapping[str, np.ndarray], n: int) -> list[list[tuple[str, float]]]:
    """Per example, (label, score) pairs from `classes` and/or `scores` outputs ([n] or [n, k])."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        raise invalid_argument("classification signature has neither 'classes' nor 'scores' outputs")
    cls = None if classes is None else np.asarray(classes).reshape(n, -1)
    sco = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(n, -1)
    k = (cls if cls is not None else sco).shape[1]  # type: ignore[union-attr]
    return [[(_text(cls[i, j]) if cls is not None else "", float(sco[i, j]) if sco is not None else 0.0)
             for j in range(k)] for i in range(n)]


def encode_classify(outputs: Mapping[str, np.ndarray], n: int) -> bytes:
    results = [[[label, score] for label, score in row] for row in classification_pairs(outputs, n)]
    body = dumps({"results": results})
    return body if b"null" not in body else dumps_with_nonfinite({"results": results})


def regression_values(outputs: Mapping[str, np.ndarray], n: int) -> list[float]:
    values = outputs.get("outputs", next(iter(outputs.values())) if len(outputs) == 1 else None)
    if values is None:
        raise invalid_argument("regression signature has no 'outputs' output")
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(n)]


def encode_regress(outputs: Mapping[str, np.ndarray], n: int) -> bytes:
    values = regression_values(outputs, n)
    body = dumps({"results": values})
    return body if b"null" not in body else dumps_with_nonfinite({"results": values})


def examples_input(servable: Servable, sig: Signature, verb: str, method: str) -> str:
    """The input a classify / regress call feeds its serialized tf.Examples to. UNIMPLEMENTED where the
    processor has no `verb` (`method` names the call in the message), INVALID_ARGUMENT where the signature
    does not take exactly one input."""
    if not implements(servable.processor, verb):
        raise unimplemented(f"model {servable.model} ({servable.platform}) does not implement {method}")
    if len(sig.inputs) != 1:
        raise invalid_argument(f"signature {sig.name} takes {len(sig.inputs)} inputs, not one of examples")
    return next(iter(sig.inputs))


def multi_inference_spec(tasks: Any) -> Any:
    """The one ModelSpec a MultiInference's tasks share (the first task's), with TF Serving's checks."""
    if not tasks:
        raise invalid_argument("MultiInferenceRequest has no tasks")
    name = tasks[0].model_spec.name
    if any(task.model_spec.name != name for task in tasks):
        raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    return tasks[0].model_spec


def multi_inference_plan(servable: Servable, tasks: Any) -> list[tuple[str, Signature, str]]:
    """(verb, signature, input name) of each MultiInference task, with TF Serving's checks."""
    multi_inference_spec(tasks)
    plan: list[tuple[str, Signature, str]] = []
    tensors = set()
    for task in tasks:
        sig = servable.signature(task.model_spec.signature_name)
        if any(sig.name == s.name for _, s, _ in plan):
            raise invalid_argument(f"Duplicate evaluation of signature: {sig.name}")
        verb = EXAMPLE_VERBS.get(task.method_name)
        if verb is None:
            raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
        name = examples_input(servable, sig, verb, "MultiInference")
        tensors.add(sig.inputs[name].tensor_name or name)
        if len(tensors) > 1:
            raise invalid_argument("Input tensor must be the same for all Signatures.")
        plan.append((verb, sig, name))
    return plan


# ---- gRPC answers (and the request log's records of them) ----

def fill_classification(result: Any, outputs: dict[str, Any], n: int) -> None:
    """A ClassificationResult: per example, its (label, score) classes."""
    for pairs in classification_pairs(outputs, n):
        entry = result.classifications.add()
        for label, score in pairs:
            entry.classes.add(label=label, score=score)


def fill_regression(result: Any, outputs: dict[str, Any], n: int) -> None:
    for value in regression_values(outputs, n):
        result.regressions.add(value=value)


EXAMPLE_ANSWERS: dict[str, tuple[Callable[[], Any], Callable[[Any, dict[str, Any], int], None]]] = {
    "classify": (classification_pb2.ClassificationResponse, fill_classification),
    "regress": (regression_pb2.RegressionResponse, fill_regression),
}
