"""The generated protobuf code in serving/_proto is what `python protos/generate.py` makes today."""

import filecmp
import importlib.util
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytest.importorskip("grpc_tools", reason="grpcio-tools (test extra) is not installed")


def load_generator():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_checked_in_code_matches_regeneration(tmp_path):
    fresh = tmp_path / "_proto"
    load_generator().generate(fresh)
    checked_in = ROOT / "serving" / "_proto"
    assert tree(fresh) == tree(checked_in), "run: python protos/generate.py"
    stale = [f for f in tree(fresh) if not filecmp.cmp(fresh / f, checked_in / f, shallow=False)]
    assert stale == [], f"regenerate with python protos/generate.py: {stale}"


def test_text_format_parses_a_tf_serving_config_with_our_protos():
    from google.protobuf import text_format

    from serving._proto.tensorflow_serving.config import model_server_config_pb2 as msc

    config = text_format.Parse(
        "model_config_list { config { name: 'm' base_path: '/m' model_platform: 'tensorflow' "
        "model_version_policy { latest { num_versions: 2 } } version_labels { key: 'a' value: 1 } } }",
        msc.ModelServerConfig(),
    )
    (model,) = config.model_config_list.config
    assert model.model_version_policy.latest.num_versions == 2 and dict(model.version_labels) == {"a": 1}
    # Field numbers as TF Serving's: a serialized config reads back identically.
    assert msc.ModelServerConfig.FromString(config.SerializeToString()) == config
    assert msc.ModelConfig.DESCRIPTOR.fields_by_name["version_labels"].number == 8
    assert msc.ModelConfig.DESCRIPTOR.fields_by_name["model_version_policy"].number == 7


def test_generated_messages_live_in_a_private_pool():
    """TensorFlow or tensorflow-serving-api in the same process register the same message names in
    protobuf's default pool: ours must not be there to clash with them."""
    from google.protobuf import descriptor_pool

    from serving._proto._pool import POOL
    from serving._proto.tensorflow_serving.apis import predict_pb2

    assert predict_pb2.PredictRequest.DESCRIPTOR.file.pool is POOL
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("tensorflow.serving.PredictRequest")
