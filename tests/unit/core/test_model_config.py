"""model_config.pbtxt parsing and validation, and version policies."""

import pytest

from serving.core.model_config import ConfigError, VersionPolicy, list_versions, parse_model_config

GOOD = """
model_config_list {
  config {
    name: 'a'
    base_path: '/models/a'
    model_platform: 'xgboost'
    model_version_policy { specific { versions: 1 versions: 3 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 3 }
  }
  config {
    name: 'b'
    base_path: '/models/b'
    model_platform: 'lightgbm'
    model_version_policy { latest { num_versions: 2 } }
    logging_config { sampling_config { sampling_rate: 0.5 } }
  }
  config { name: 'c' base_path: '/models/c' model_platform: 'linear' model_version_policy { all {} } }
  config { name: 'd' base_path: '/models/d' model_platform: 'linear' }
}
"""


def test_parses_every_field_of_a_tf_serving_config():
    a, b, c, d = parse_model_config(GOOD)
    assert (a.name, a.base_path, a.platform) == ("a", "/models/a", "xgboost")
    assert a.policy == VersionPolicy("specific", versions=frozenset({1, 3}))
    assert a.labels == {"stable": 1, "canary": 3}
    assert b.policy == VersionPolicy("latest", num_versions=2)
    assert c.policy.kind == "all"
    assert d.policy == VersionPolicy("latest", num_versions=1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'linear' } "
         "config { name: 'a' base_path: '/y' model_platform: 'linear' } }", "multiple times"),
        ("model_config_list { config { name: 'a' base_path: 'relative/x' model_platform: 'linear' } }",
         "absolute path"),
        ("model_config_list { config { name: 'a' base_path: '/x' } }", "model_platform to empty"),
        ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'linear' ", "not a valid"),
        ("model_config_list { config { nme: 'a' } }", "not a valid"),
        ("model_config_list { config { base_path: '/x' model_platform: 'linear' } }", "no name"),
        ("custom_model_config { type_url: 'x' }", "custom_model_config"),
        ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'linear' "
         "model_version_policy { specific {} } } }", "lists no versions"),
    ],
)
def test_rejects_what_tf_serving_rejects(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_model_config(text)


def test_urls_and_object_store_prefixes_are_base_paths_too():
    for base in ("http://host/m.tar.gz", "https://host/m.zip", "s3://bucket/m", "gs://bucket/m"):
        text = f"model_config_list {{ config {{ name: 'm' base_path: '{base}' model_platform: 'linear' }} }}"
        assert [s.base_path for s in parse_model_config(text)] == [base]
    with pytest.raises(ConfigError, match="absolute path"):
        parse_model_config("model_config_list { config { name: 'm' base_path: 'm.tar.gz' model_platform: 'x' } }")


def test_version_policies_select_from_disk():
    on_disk = {1, 2, 5, 10}
    assert VersionPolicy().select(on_disk) == {10}
    assert VersionPolicy("latest", num_versions=2).select(on_disk) == {5, 10}
    assert VersionPolicy("all").select(on_disk) == on_disk
    assert VersionPolicy("specific", versions=frozenset({2, 7})).select(on_disk) == {2}
    assert VersionPolicy().select(set()) == set()


def test_version_dirs_are_integer_children(tmp_path):
    for name in ("1", "00000123", "abc", "2.5"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert sorted(list_versions(str(tmp_path))) == [1, 123]
    assert list_versions(str(tmp_path / "missing")) == {}
