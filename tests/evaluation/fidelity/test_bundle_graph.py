"""The graph fidelity checks: made by the pipeline's stages, checkpoint resolved as `build` resolves it."""

from __future__ import annotations

import json

import pytest

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.fidelity.bundle_graph import prepare_graph, resolve_checkpoint
from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.profiles import load_profile
from edgedeploy.core.model_recipes import load_recipe


def test_graph_is_the_bundles_model_and_the_bundle_is_untouched(fidelity_out, small_recipe):
    bundle = fidelity_out / "rb5-gen2"
    before = {p.name: p.stat().st_mtime_ns for p in bundle.iterdir()}
    lines = []
    graph = prepare_graph(small_recipe, load_profile("rb5-gen2"), fidelity_out, None, lines.append)
    assert graph.model_sha256 == sha256_file(bundle / "model.onnx") == sha256_file(graph.model_path)
    assert json.loads((bundle / "manifest.json").read_text())["model"]["sha256"] == graph.model_sha256
    assert graph.checkpoint.seeded and graph.checkpoint.sha256 == "seeded" and graph.audit.passed
    assert all("reused" in line for line in graph.stage_lines)
    assert {p.name: p.stat().st_mtime_ns for p in bundle.iterdir()} == before


def test_checkpoint_resolution(tmp_path, small_recipe):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not read here")
    given = resolve_checkpoint(small_recipe, ckpt, print)
    assert given.path == ckpt and given.sha256 == sha256_file(ckpt) and not given.builtin_default
    with pytest.raises(EdgeDeployError, match="does not exist"):
        resolve_checkpoint(small_recipe, tmp_path / "missing.pt", print)
    full = load_recipe()
    from edgedeploy.host.checkpoints import default_checkpoint

    default = default_checkpoint(full)
    resolved = resolve_checkpoint(full, None, print)
    if default is None:
        assert resolved.seeded
    else:
        assert resolved.builtin_default and resolved.path == default.path and "built-in default" in resolved.description
