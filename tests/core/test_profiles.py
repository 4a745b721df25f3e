import shutil

import pytest
import yaml

from edgedeploy.core.errors import ProfileError
from edgedeploy.core.profiles import list_profiles, load_profile, profiles_dir


def test_shipped_profiles_load():
    assert {"jetson-orin-nano", "rb5-gen2"} <= set(list_profiles())
    jetson, rb5 = load_profile("jetson-orin-nano"), load_profile("rb5-gen2")
    assert jetson.runtime == "tensorrt" and jetson.runtime_version == "10.3" and jetson.precision == "fp16"
    assert rb5.runtime == "qnn" and rb5.max_rank == 5 and "Resize" in rb5.denied_ops
    for profile in (jetson, rb5):
        assert profile.opset_min >= 17
        assert "INT64" not in profile.allowed_dtypes and "DOUBLE" not in profile.allowed_dtypes
        assert {"Conv", "MatMul", "LayerNormalization", "Softmax"} <= profile.supported_ops
        assert profile.ops_source.startswith("http")


def test_unknown_target_lists_known():
    with pytest.raises(ProfileError, match="known targets are .*jetson-orin-nano.*rb5-gen2"):
        load_profile("jetson-nano-classic")


def _write_variant(tmp_path, edit):
    data = yaml.safe_load((profiles_dir() / "rb5-gen2.yaml").read_text())
    edit(data)
    path = tmp_path / "rb5-gen2.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_typo_is_named(tmp_path):
    def typo(d):
        d["graph"]["max_rnak"] = d["graph"].pop("max_rank")
    with pytest.raises(ProfileError, match=r"rb5-gen2.yaml: unknown field graph.max_rnak"):
        load_profile(_write_variant(tmp_path, typo))


def test_missing_field_is_named(tmp_path):
    with pytest.raises(ProfileError, match=r"missing field runtime.version"):
        load_profile(_write_variant(tmp_path, lambda d: d["runtime"].pop("version")))


def test_wrong_type_is_named(tmp_path):
    def wrong(d):
        d["graph"]["max_rank"] = "five"
    with pytest.raises(ProfileError, match=r"graph.max_rank must be int"):
        load_profile(_write_variant(tmp_path, wrong))


def test_bad_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(path)


def test_adding_a_device_is_adding_a_file(tmp_path, monkeypatch):
    folder = tmp_path / "profiles"
    folder.mkdir()
    shutil.copy(profiles_dir() / "rb5-gen2.yaml", folder / "rb5-gen2.yaml")
    data = yaml.safe_load((profiles_dir() / "jetson-orin-nano.yaml").read_text())
    data["name"] = "jetson-agx-orin"
    data["device"]["memory_gb"] = 64
    (folder / "jetson-agx-orin.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("EDGEDEPLOY_PROFILES", str(folder))
    assert list_profiles() == ["jetson-agx-orin", "rb5-gen2"]
    assert load_profile("jetson-agx-orin").memory_gb == 64


def test_reference_latency_is_optional_and_checked(tmp_path):
    assert load_profile(_write_variant(tmp_path, lambda d: d.pop("reference_latency"))).reference_latency is None

    def wrong(d):
        d["reference_latency"]["ms"] = "fast"
    with pytest.raises(ProfileError, match=r"reference_latency.ms must be int or float"):
        load_profile(_write_variant(tmp_path, wrong))
