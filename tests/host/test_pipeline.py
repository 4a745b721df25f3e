import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.onnxfile import ort_session
from edgedeploy.host.pipeline import build
from edgedeploy.core.profiles import load_profile

SMALL = "edgezsad-tinyvit5m-224"


def test_bundle_contents(small_build):
    bundle = small_build.bundle_dir
    assert {p.name for p in bundle.iterdir()} >= {"model.onnx", "manifest.json", "audit.json", "README.md"}
    model = onnx.load(str(bundle / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    for value in [*model.graph.input, *model.graph.output]:
        assert all(d.dim_value > 0 for d in value.type.tensor_type.shape.dim)
    out = ort_session(bundle / "model.onnx").run(None, {"image": np.full((1, 3, 224, 224), 0.5, np.float32)})
    assert out[0].shape == (1,) and out[1].shape == (1, 1, 14, 14)

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["sha256"] == sha256_file(bundle / "model.onnx")
    assert [s["name"] for s in manifest["stages"]][:4] == ["export", "simplify", "gelu", "audit"]  # gelu: QNN's form
    export = manifest["stages"][0]
    assert export["details"]["max_abs_diff"]["score"] <= export["details"]["tolerance"]
    assert all("sha256" in o for s in manifest["stages"] for o in s["outputs"].values())
    assert manifest["checkpoint"]["source"] == "seeded"
    assert {"torch", "onnx", "onnxsim", "onnxruntime"} <= set(manifest["tools"])


def test_warm_build_reuses_stages_and_bytes(small_build, small_recipe):
    out = small_build.bundle_dir.parent
    before = sha256_file(small_build.bundle_dir / "model.onnx")
    again = build(small_recipe, load_profile("rb5-gen2"), out, log=lambda line: None)
    assert [s.cached for s in again.stages[:2]] == [True, True]
    assert sha256_file(again.bundle_dir / "model.onnx") == before


def test_cold_builds_are_byte_identical(tmp_path, small_build, small_recipe):
    fresh = build(small_recipe, load_profile("rb5-gen2"), tmp_path / "fresh", log=lambda line: None)
    assert not fresh.stages[0].cached
    assert sha256_file(fresh.bundle_dir / "model.onnx") == sha256_file(small_build.bundle_dir / "model.onnx")


def test_failed_stage_leaves_nothing_finished(tmp_path, small_recipe, monkeypatch):
    import edgedeploy.host.export as export

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash mid-export")

    monkeypatch.setattr(export, "export_onnx", broken)
    with pytest.raises(RuntimeError):
        build(small_recipe, load_profile("rb5-gen2"), tmp_path, log=lambda line: None)
    assert not list((tmp_path / ".stages").iterdir())
    assert not (tmp_path / "rb5-gen2" / "model.onnx").exists()


def _finished_stage_dirs(out):
    return [d for d in (out / ".stages").iterdir() if not d.name.startswith(".")] if (out / ".stages").exists() else []


@pytest.mark.parametrize("delay", [2.5, 6.0])
def test_kill_9_never_leaves_a_finished_looking_file(tmp_path, delay):
    cmd = [sys.executable, "-m", "edgedeploy.cli", "build", "--target", "rb5-gen2", "--recipe", SMALL, "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stage in _finished_stage_dirs(tmp_path):
        record = json.loads((stage / "stage.json").read_text())
        for out in record["outputs"].values():
            assert sha256_file(tmp_path / ".stages" / out["path"]) == out["sha256"]
    bundle = tmp_path / "rb5-gen2"
    if (bundle / "manifest.json").exists():
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["model"]["sha256"] == sha256_file(bundle / "model.onnx")
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not list((tmp_path / ".stages").glob(".*.tmp-*"))


def test_audit_errors_stop_the_build(tmp_path, small_recipe):
    import yaml

    from edgedeploy.core.profiles import profiles_dir

    data = yaml.safe_load((profiles_dir() / "rb5-gen2.yaml").read_text())
    data["name"] = "no-layernorm"
    data["supported_ops"]["ops"].remove("LayerNormalization")
    (tmp_path / "no-layernorm.yaml").write_text(yaml.safe_dump(data))
    profile = load_profile(tmp_path / "no-layernorm.yaml")
    result = build(small_recipe, profile, tmp_path / "out", log=lambda line: None)
    assert not result.audit.passed and not (result.bundle_dir / "manifest.json").exists()
    allowed = build(small_recipe, profile, tmp_path / "out", allow_audit_errors=True, log=lambda line: None)
    assert json.loads((allowed.bundle_dir / "manifest.json").read_text())["audit"]["allowed_errors"]


@pytest.mark.slow
def test_full_size_rb5_build_has_no_audit_errors(tmp_path):
    from edgedeploy.core.model_recipes import load_recipe

    result = build(load_recipe(), load_profile("rb5-gen2"), tmp_path, log=lambda line: None)
    assert result.audit.passed and result.audit.stats["max_rank"] <= 5
    export = result.manifest["stages"][0]["details"]
    assert max(export["max_abs_diff"].values()) <= export["tolerance"]
