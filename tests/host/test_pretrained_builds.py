"""Both pretrained recipes build for the Jetson and the RB5 Gen2 with the audit passing, and EfficientNet-Lite0 for
the RB5 Gen2's NPU profile too (full size, so slow: ~6 min on 2 cores, most of it LiteMedSAM's HTP context for
rb5-gen2; its rb5-gen2-npu FP16 build is the same graph and context, so it is not repeated here)."""

from __future__ import annotations

import json

import pytest

RECIPES = ("edgezsad-efficientnet-lite0-512", "edgezsad-litemedsam-tinyvit5m-256")
TARGETS = ("jetson-orin-nano", "rb5-gen2")
BUILDS = [(name, target) for name in RECIPES for target in TARGETS] + [("edgezsad-efficientnet-lite0-512", "rb5-gen2-npu")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.host.pipeline import build

    out = {}
    folders = {}
    for name, target in BUILDS:
        recipe = load_recipe(name)
        pytest.importorskip(recipe.pretrained.module)
        folder = folders.setdefault(name, tmp_path_factory.mktemp(name))
        out[name, target] = build(recipe, load_profile(target), folder, log=lambda line: None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("name", "target"), BUILDS)
def test_pretrained_recipe_builds_with_a_passing_audit(built, name, target):
    import onnx

    result = built[name, target]
    assert result.audit.passed, result.audit.table()
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    from edgedeploy.core.model_recipes import load_recipe

    assert manifest["recipe"]["pretrained"]["sha256"] == load_recipe(name).pretrained.sha256
    assert manifest["checkpoint"]["builtin_default"]  # the shipped heads, not seeded ones
    graph = onnx.load(str(result.bundle_dir / "model.onnx"), load_external_data=False)
    ops = {node.op_type for node in graph.graph.node}
    if name.startswith("edgezsad-efficientnet"):
        # TF "same" padding as constants (the simplifier folds each Pad into its Conv: asymmetric pads, the odd
        # pixel after), ReLU6 as Clip; no shape arithmetic left from run-time padding
        from onnx import helper

        pads = [helper.get_attribute_value(a) for n in graph.graph.node if n.op_type == "Conv"
                for a in n.attribute if a.name == "pads"]
        assert any(p[:2] != p[2:] for p in pads)
        assert "Clip" in ops and not ops & {"Shape", "Ceil", "Gather"}, ops
    if target.startswith("rb5-gen2"):
        check = manifest["audit"]["runtime_check"]
        assert check["asked"] and check["refused"] == 0 and check["taken"] > 0  # the QNN HTP took the whole graph
        assert (result.bundle_dir / "model_ctx.onnx").is_file()
