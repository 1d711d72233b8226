"""The cloud processor's protobuf bodies: `tf_predict.proto` (named inputs, for signature models such as
the tabular and TensorFlow processors) and `pytorch_predict.proto` (positional inputs, for processors
with `positional_inputs`, optionally snappy-compressed as its client sends it). Protobuf responses to
protobuf requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...codecs.tensors import ARRAY_FIELDS, DTYPE_ENUMS, array_proto_to_array, conform_all
from ...core.signature import STRING, Signature
from ...errors import invalid_argument, unimplemented


def looks_like_json(body: bytes) -> bool:
    head = body.lstrip()[:1]
    return head in (b"[", b"{")


def _parse(message: Any, body: bytes, what: str) -> Any:
    try:
        message.ParseFromString(body)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError
        raise invalid_argument(f"the body is neither JSON nor a valid {what}: {e}") from e
    return message


def decode_tf(body: bytes, sig_for: Any) -> tuple[Signature, dict[str, np.ndarray], list[str]]:
    """A tf_predict PredictRequest -> (signature, named inputs, output names)."""
    from ..._proto.eas import tf_predict_pb2

    request = _parse(tf_predict_pb2.PredictRequest(), body, "tf_predict PredictRequest")
    sig: Signature = sig_for(request.signature_name)
    raw = {name: array_proto_to_array(array, name) for name, array in request.inputs.items()}
    inputs = conform_all(raw, sig, f"signature {sig.name}")
    names = list(request.output_filter) or list(sig.outputs)
    unknown = [n for n in names if n not in sig.outputs]
    if unknown:
        raise invalid_argument(f"output_filter names unknown output(s) {', '.join(unknown)}; "
                               f"the signature has {', '.join(sig.outputs)}")
    return sig, inputs, names


def decode_pytorch(body: bytes, sig: Signature) -> tuple[dict[str, np.ndarray], list[str]]:
    """A pytorch_predict PredictRequest (maybe snappy-compressed) -> (named inputs, output names)."""
    from ..._proto.eas import pytorch_predict_pb2

    request = pytorch_predict_pb2.PredictRequest()
    try:
        request.ParseFromString(body)
    except Exception:  # noqa: BLE001 - not plain protobuf: the client may have snappy-compressed it
        import cramjam

        try:
            body = bytes(cramjam.snappy.decompress_raw(body))
        except Exception as e:  # noqa: BLE001
            raise invalid_argument(f"the body is neither JSON nor a (snappy-compressed) pytorch PredictRequest: {e}") \
                from e
        request = _parse(pytorch_predict_pb2.PredictRequest(), body, "pytorch PredictRequest")
    names = list(sig.inputs)
    if len(request.inputs) > len(names):
        raise invalid_argument(f"{len(request.inputs)} positional inputs, the model takes {len(names)}")
    inputs = {names[i]: array_proto_to_array(a, names[i]) for i, a in enumerate(request.inputs)}
    inputs.update({n: array_proto_to_array(a, n) for n, a in request.map_inputs.items()})
    inputs = conform_all(inputs, sig, f"signature {sig.name}")
    order = list(sig.output_order or sig.outputs)
    try:
        outputs = [order[i] for i in request.output_filter] or order
    except IndexError:
        raise invalid_argument(f"output_filter index out of range: the model has {len(order)} outputs") from None
    return inputs, outputs


def fill_array(array: np.ndarray, proto: Any) -> None:
    dtype = STRING if array.dtype.kind in "OSU" else array.dtype
    field = "string_val" if dtype == STRING else ARRAY_FIELDS.get(dtype.str[1:])
    if field is None or not hasattr(proto, field):
        raise unimplemented(f"output of type {array.dtype} has no ArrayProto field")
    proto.dtype = DTYPE_ENUMS[dtype]
    proto.array_shape.dim.extend(array.shape)
    if dtype == STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
    else:
        getattr(proto, field).extend(array.ravel().tolist())


def encode_tf(outputs: Mapping[str, np.ndarray], names: list[str]) -> bytes:
    from ..._proto.eas import tf_predict_pb2

    response = tf_predict_pb2.PredictResponse()
    for name in names:
        fill_array(np.asarray(outputs[name]), response.outputs[name])
    return bytes(response.SerializeToString())


def encode_pytorch(outputs: Mapping[str, np.ndarray], names: list[str]) -> bytes:
    from ..._proto.eas import pytorch_predict_pb2

    response = pytorch_predict_pb2.PredictResponse()
    for name in names:
        fill_array(np.asarray(outputs[name]), response.outputs.add())
    return bytes(response.SerializeToString())
