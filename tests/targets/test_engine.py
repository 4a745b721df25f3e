"""`edgedeploy engine build` through the TensorRT Python API (faked): FP16, workspace, timing cache, FP32 layers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgedeploy.cli import main

SOFTMAX = "/stages.1/blocks/blocks.0/attn/Softmax"
LAYERNORM = "/stages.1/blocks/blocks.0/attn/norm/LayerNormalization"


def _engine_build(bundle, *extra):
    return CliRunner().invoke(main, ["engine", "build", str(bundle), *extra])


def test_engine_build_sets_fp16_workspace_level_and_timing_cache(fake_trt, jetson_bundle):
    result = _engine_build(jetson_bundle)
    assert result.exit_code == 0, result.output
    config = fake_trt.LOG["configs"][-1]
    assert config.flags == {fake_trt.BuilderFlag.FP16}
    assert config.pool_limits == {fake_trt.MemoryPoolType.WORKSPACE: 1024 * 1024 * 1024}
    assert config.builder_optimization_level == 3
    assert config.created_caches == [b""]  # no timing.cache yet: an empty cache
    assert fake_trt.LOG["parsed"] == [str(jetson_bundle / "model.onnx")]
    assert (jetson_bundle / "model.engine").read_bytes()[:4] == b"ftrt"
    assert (jetson_bundle / "timing.cache").read_bytes() == b"+timed"
    meta = json.loads((jetson_bundle / "model.engine.json").read_text())
    manifest = json.loads((jetson_bundle / "manifest.json").read_text())
    assert meta["tensorrt_version"] == "10.3.0.30" and meta["compute_capability"] == "8.7" and meta["precision"] == "fp16"
    assert meta["onnx_sha256"] == manifest["model"]["sha256"] and meta["built_by"] == "edgedeploy engine build"
    assert manifest["compile"]["engine"] == meta and manifest["compile"]["status"] == "engine-built"
    assert manifest["compile"]["engine_bench"] is None  # a new engine: bench_engine.sh times it again
    assert "compute capability 8.7" in result.output

    assert _engine_build(jetson_bundle).exit_code == 0  # the rebuild reuses the saved timing cache
    assert fake_trt.LOG["configs"][-1].created_caches == [b"+timed"]
    assert (jetson_bundle / "timing.cache").read_bytes() == b"+timed+timed"


def test_keep_fp32_constrains_layers_and_obeys(fake_trt, jetson_bundle):
    result = _engine_build(jetson_bundle, "--keep-fp32", SOFTMAX, "--keep-fp32", LAYERNORM)
    assert result.exit_code == 0, result.output
    config = fake_trt.LOG["configs"][-1]
    assert config.flags == {fake_trt.BuilderFlag.FP16, fake_trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    network = fake_trt.LOG["built"][-1]["network"]
    kept = {layer.name: layer for layer in network.layers if layer.precision_is_set}
    # the Softmax node became two layers, an INT32 shape helper (which got the node's own name) and the
    # softmax (named <node>_<n>): the float one is kept, the integer helper is left alone; the
    # LayerNorm's two float layers are both kept
    softmax_layers = [layer for layer in network.layers if layer.name.startswith(SOFTMAX + "_") or layer.name == SOFTMAX]
    assert len(softmax_layers) == 2
    int_helper = next(layer for layer in softmax_layers if layer.get_output(0).dtype == fake_trt.int32)
    assert int_helper.name == SOFTMAX and int_helper.name not in kept and int_helper.output_types == {}
    float_softmax = next(layer for layer in softmax_layers if layer is not int_helper)
    assert float_softmax.name in kept and float_softmax.output_types == {0: fake_trt.float32}
    layernorm = [name for name in kept if name.startswith(LAYERNORM)]
    assert len(layernorm) == 2
    assert all(kept[n].precision == fake_trt.float32 and kept[n].output_types == {0: fake_trt.float32} for n in kept)
    assert len(kept) == 3
    meta = json.loads((jetson_bundle / "model.engine.json").read_text())
    assert meta["keep_fp32"] == [LAYERNORM, SOFTMAX] and sorted(meta["settings"]["fp32_layers"]) == sorted(kept)


def test_keep_fp32_defaults_to_the_bundle_choice(fake_trt, jetson_bundle):
    manifest = json.loads((jetson_bundle / "manifest.json").read_text())
    manifest["compile"]["keep_fp32"] = [LAYERNORM]
    (jetson_bundle / "manifest.json").write_text(json.dumps(manifest))
    assert _engine_build(jetson_bundle).exit_code == 0
    assert fake_trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS in fake_trt.LOG["configs"][-1].flags


def test_unknown_keep_fp32_node_is_one_line(fake_trt, jetson_bundle):
    result = _engine_build(jetson_bundle, "--keep-fp32", "/stages.9/Softmax")
    assert result.exit_code == 2
    assert result.output.startswith("error: --keep-fp32 '/stages.9/Softmax' matches no node of")
    assert result.output.count("\n") == 1
    assert not fake_trt.LOG["built"]


@pytest.mark.parametrize("cc,version,expected", [
    ("9.0", "10.3.0.30", "has compute capability 9.0, the target needs 8.7"),
    ("8.7", "10.7.0.23", "this is TensorRT 10.7.0.23, the target runs TensorRT 10.3"),
    (None, "10.3.0.30", "no CUDA GPU is visible here"),
])
def test_refuses_to_build_where_the_engine_would_not_load(fake_trt, jetson_bundle, cc, version, expected):
    fake_trt.reset(version)
    fake_trt.gpu.set(cc, "NVIDIA H200")
    result = _engine_build(jetson_bundle)
    assert result.exit_code == 2 and expected in result.output and "build_engine.sh" in result.output
    assert result.output.count("\n") == 1
    assert not (jetson_bundle / "model.engine").exists()


def test_failed_build_keeps_no_engine(fake_trt, jetson_bundle):
    fake_trt.Builder.fail_build = True
    result = _engine_build(jetson_bundle)
    assert result.exit_code == 3 and "TensorRT failed to build the engine" in result.output  # a tool failed
    assert not (jetson_bundle / "model.engine").exists() and not (jetson_bundle / "model.engine.json").exists()


def test_parser_errors_surface(fake_trt, jetson_bundle, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Unsupported", ["image"], ["score"], name="/bad/Op")], "g", [x],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), jetson_bundle / "model.onnx")
    result = _engine_build(jetson_bundle)
    assert result.exit_code == 3  # a tool failed
    assert "TensorRT's ONNX parser rejected" in result.output and "/bad/Op" in result.output


def test_bundle_of_another_target_is_refused(fake_trt, rb5_bundle):
    result = _engine_build(rb5_bundle)
    assert result.exit_code == 2
    assert result.output == (f"error: {rb5_bundle} is a bundle for rb5-gen2 (qnn), but `edgedeploy engine build` needs "
                             "a tensorrt bundle: use out/jetson-orin-nano/ (edgedeploy build --target jetson-orin-nano)\n")


def test_unfinished_bundle_is_refused(fake_trt, jetson_bundle):
    (jetson_bundle / "manifest.json").unlink()
    result = _engine_build(jetson_bundle)
    assert result.exit_code == 2 and "is not a finished edgedeploy bundle" in result.output


def test_bundle_of_an_older_layout_is_refused(fake_trt, jetson_bundle):
    import json

    path = jetson_bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["layout"], manifest["target"]["build"]
    path.write_text(json.dumps(manifest))
    result = _engine_build(jetson_bundle)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "written by an older edgedeploy (bundle layout 1" in result.output
    assert "edgedeploy build --target jetson-orin-nano" in result.output


def test_copied_bundle_needs_no_profile(fake_trt, jetson_bundle, tmp_path, monkeypatch):
    """The device reads what it needs from manifest.json: no device_profiles/ folder to look the target up in."""
    import shutil

    copied = shutil.copytree(jetson_bundle, tmp_path / "elsewhere" / "bundle")
    monkeypatch.setenv("EDGEDEPLOY_PROFILES", str(tmp_path / "no-profiles-here"))
    result = _engine_build(copied)
    assert result.exit_code == 0, result.output
    assert (copied / "model.engine").is_file()


def test_without_tensorrt_one_clear_line(no_trt, jetson_bundle):
    result = _engine_build(jetson_bundle)
    assert result.exit_code == 2
    assert result.output == (f"error: TensorRT is not installed here: build the engine on the Jetson "
                             f"(see {jetson_bundle / 'build_engine.sh'}); on a Jetson, TensorRT comes from JetPack: use "
                             "a venv made with `python3 -m venv --system-site-packages`\n")


def test_cli_on_this_machine_without_tensorrt(bundles):
    """The real command in a fresh process (no fakes): one line on stderr, non-zero exit."""
    code = "import sys; sys.modules['tensorrt'] = None; from edgedeploy.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", code, "engine", "build", str(bundles.jetson)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: TensorRT is not installed here") and result.stderr.count("\n") == 1


def test_prepare_builds_the_engine_on_a_matching_device(fake_trt, jetson_bundle):
    """`edgedeploy build` run on a Jetson (TensorRT 10.3, SM 8.7) builds the engine too, and keeps it next time."""
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.targets import prepare_target

    manifest = json.loads((jetson_bundle / "manifest.json").read_text())
    args = (jetson_bundle, load_profile("jetson-orin-nano"), load_recipe("edgezsad-tinyvit5m-224"), manifest)
    record = prepare_target(*args, log=lambda line: None)
    assert record["status"] == "engine-built" and record["engine"]["compute_capability"] == "8.7"
    assert (jetson_bundle / "model.engine").is_file()
    assert "TensorRT engine built" in record["notes"][0]
    builds = len(fake_trt.LOG["built"])
    again = prepare_target(*args, log=lambda line: None)
    assert again["status"] == "engine-built" and len(fake_trt.LOG["built"]) == builds  # same model.onnx: kept
    changed = prepare_target(*args, keep_fp32=(SOFTMAX,), log=lambda line: None)
    assert changed["engine"]["keep_fp32"] == [SOFTMAX] and len(fake_trt.LOG["built"]) == builds + 1


def test_prepare_elsewhere_removes_a_stale_engine(no_trt, jetson_bundle):
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.targets import prepare_target

    (jetson_bundle / "model.engine").write_bytes(b"old")
    (jetson_bundle / "model.engine.json").write_text(json.dumps({"onnx_sha256": "other"}))
    manifest = json.loads((jetson_bundle / "manifest.json").read_text())
    record = prepare_target(jetson_bundle, load_profile("jetson-orin-nano"), load_recipe("edgezsad-tinyvit5m-224"),
                            manifest, log=lambda line: None)
    assert record["status"] == "script-written" and record["engine"] is None
    assert not (jetson_bundle / "model.engine").exists() and not (jetson_bundle / "model.engine.json").exists()
    assert record["notes"] == [f"TensorRT engine not built here (it is built on the device: compute capability 8.7, "
                               f"TensorRT 10.3): copy {jetson_bundle} to the Jetson and run `bash build_engine.sh` "
                               "there, or `edgedeploy engine build jetson-orin-nano/`"]


@pytest.mark.parametrize("saved, warning", [
    (bytes(range(256)) * 4, "timing.cache is unreadable"),
    (b"other-gpu+timed", "timing.cache does not match this GPU or TensorRT"),
])
def test_a_bad_timing_cache_warns_and_the_build_succeeds(fake_trt, jetson_bundle, saved, warning):
    (jetson_bundle / "timing.cache").write_bytes(saved)
    result = _engine_build(jetson_bundle)
    assert result.exit_code == 0, result.output
    assert f"warning: {warning}" in result.output and "writing a fresh one" in result.output
    assert (jetson_bundle / "model.engine").is_file()
    assert (jetson_bundle / "timing.cache").read_bytes() == b"+timed"  # a fresh cache replaced it


def test_no_timing_cache_at_all_still_builds(fake_trt, jetson_bundle, monkeypatch):
    monkeypatch.setattr(fake_trt.IBuilderConfig, "refuse_creation", True)
    result = _engine_build(jetson_bundle)
    assert result.exit_code == 0, result.output
    assert "could not create a timing cache: building without one" in result.output
    assert (jetson_bundle / "model.engine").is_file() and not (jetson_bundle / "timing.cache").exists()
