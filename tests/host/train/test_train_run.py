"""Tiny training runs on the small model: determinism (bytes), resume, checkpoints the model loads, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from train_helpers import write_tiny_recipe

from edgedeploy.cli import main
from edgedeploy.evaluation.data import load_batch, load_benchmark
from edgedeploy.core.errors import CheckpointError
from edgedeploy.host.model import build_model
from edgedeploy.core.model_recipes import load_recipe
from edgedeploy.host.train import TrainError
from edgedeploy.host.train.ckptio import read_metadata, save_checkpoint
from edgedeploy.host.train.features import pooled_features, readout_logits
from edgedeploy.host.train.loop import TrainOptions, run_training
from edgedeploy.host.train.objective import lr_factor
from edgedeploy.host.train.recipe import load_train_recipe

SMALL = "edgezsad-tinyvit5m-224"


def _run(recipe_path: Path, tmp: Path, tag: str, cache: Path | None = None, **kw):
    recipe = load_train_recipe(str(recipe_path))
    opts = TrainOptions(out=tmp / f"{tag}.safetensors", work_dir=tmp / f"work-{tag}",
                        feature_cache=cache or tmp / f"features-{tag}", show_progress=False, **kw)
    return run_training(recipe, load_recipe(recipe.model_recipe), opts, log=lambda line: None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny-run")
    path = write_tiny_recipe(tmp / "recipes")
    return path, tmp, _run(path, tmp, "a")


def test_readout_logits_match_the_graph(small_recipe):
    model = build_model(small_recipe, use_default=False).model
    bench = load_benchmark("demo", None, ["gravel"])
    x = torch.from_numpy(load_batch([s.path for s in bench.samples[-3:]], 224))
    with torch.no_grad():
        score, amap = model(x)
        _, map_logit, fused = readout_logits(model.readout, *pooled_features(model, model.features(x)))
    assert torch.allclose(score, fused, atol=1e-5) and torch.allclose(amap[:, 0], torch.sigmoid(map_logit), atol=1e-5)


def test_lr_schedule():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1) and lr_factor(9, 100, 10, 0.0) == 1.0
    assert lr_factor(10, 100, 10, 0.0) == 1.0 and lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)


def test_checkpoint_records_recipe_sampling_metrics(tiny_run):
    _, _, result = tiny_run
    meta = read_metadata(result.out)
    assert meta == result.metadata | {"format": "edgedeploy-checkpoint/1"}
    assert meta["kind"] == "heads" and meta["backbone_init"]["kind"] == "seeded" and meta["backbone_init"]["seed"] == 0
    assert meta["train_recipe"]["name"] == "tiny" and meta["model_recipe"]["name"] == SMALL
    assert meta["sampling"]["per_category"]["brick"]["normal"] == 4 and len(meta["sampling"]["sha256"]) == 64
    assert meta["training"]["steps"] == 4 and [h["epoch"] for h in meta["training"]["history"]] == [1, 2]
    ev = meta["evaluation"]
    assert ev["unseen"] and ev["categories"] == ["gravel"] and 0 <= ev["mean"]["image_auroc"] <= 100
    assert meta["summary"] == "EdgeGLR heads trained on demo:brick over a seeded (untrained) TinyViT backbone"
    # heads only: small, and nothing time- or path-dependent inside
    from safetensors.torch import load_file

    assert all(k.startswith("readout.") for k in load_file(str(result.out)))
    assert str(result.out.parent) not in json.dumps(meta)


def test_rerun_from_scratch_is_byte_identical(tiny_run, tmp_path):
    path, _, first = tiny_run
    second = _run(path, tmp_path, "b")  # fresh work dir and fresh feature cache
    assert second.out.read_bytes() == first.out.read_bytes()


def test_interrupted_run_resumes_to_the_same_bytes(tiny_run, tmp_path):
    path, _, first = tiny_run
    partial = _run(path, tmp_path, "c", max_epochs=1)
    assert not partial.finished and not (tmp_path / "c.safetensors").exists()
    assert (tmp_path / "work-c" / "state-e0001.safetensors").is_file()
    resumed = _run(path, tmp_path, "c")
    assert resumed.resumed_from_epoch == 1 and resumed.out.read_bytes() == first.out.read_bytes()


def test_heads_checkpoint_loads_over_the_seeded_backbone(tiny_run, small_recipe):
    _, _, result = tiny_run
    loaded = build_model(small_recipe, result.out)
    seeded = build_model(small_recipe, use_default=False)
    assert loaded.sha256 and not loaded.default and not loaded.notes
    trained, reference = loaded.model.state_dict(), seeded.model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in trained.items() if k.startswith("backbone."))
    assert not torch.equal(trained["readout.prototypes"], reference["readout.prototypes"])


def test_heads_checkpoint_backbone_fingerprint_mismatch_is_said(tiny_run, small_recipe, tmp_path):
    _, _, result = tiny_run
    from safetensors.torch import load_file

    meta = read_metadata(result.out)
    meta["backbone_init"]["sha256"] = "0" * 64
    other = tmp_path / "tampered.safetensors"
    save_checkpoint(other, load_file(str(result.out)), meta)
    with pytest.warns(RuntimeWarning, match="seeded backbone rebuilt here differs"):
        loaded = build_model(small_recipe, other)
    assert loaded.notes


def test_heads_only_checkpoint_must_declare_its_backbone(tiny_run, small_recipe, tmp_path):
    _, _, result = tiny_run
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(result.out)), str(bare))
    with pytest.raises(CheckpointError, match="only the EdgeGLR heads"):
        build_model(small_recipe, bare)


def test_heads_checkpoint_for_another_recipe_names_it(tiny_run):
    _, _, result = tiny_run
    with pytest.raises(CheckpointError, match=f"trained for recipe {SMALL}: pass --recipe {SMALL}"):
        build_model(load_recipe("edgezsad-tinyvit21m-512"), result.out)


def test_resume_from_another_recipe(tiny_run, tmp_path):
    path, tmp, _ = tiny_run
    state = tmp / "work-a" / "state-e0002.safetensors"
    other = write_tiny_recipe(tmp_path / "recipes", name="other")
    with pytest.raises(TrainError, match="comes from a run of training recipe 'tiny'.*not 'other'"):
        _run(other, tmp_path, "o", resume=state, cache=tmp / "features-a")
    with pytest.raises(TrainError, match="is a finished checkpoint, not a training state"):
        _run(path, tmp_path, "p", resume=tmp / "a.safetensors", cache=tmp / "features-a")
    longer = write_tiny_recipe(tmp_path / "longer", epochs=3)
    with pytest.raises(TrainError, match="other settings \\(schedule\\)"):
        _run(longer, tmp_path, "q", resume=state, cache=tmp / "features-a")


def test_full_mode_and_backbone_file(tmp_path, small_recipe):
    import timm

    weights = tmp_path / "tinyvit5m.pth"
    torch.manual_seed(123)
    torch.save(timm.create_model("tiny_vit_5m_224", pretrained=False).state_dict(), weights)
    path = write_tiny_recipe(tmp_path / "recipes", mode="full", epochs=1, evaluate="null")
    result = _run(path, tmp_path, "full", backbone_weights=str(weights))
    meta = result.metadata
    assert meta["kind"] == "full" and meta["backbone_init"]["kind"] == "file"
    assert meta["backbone_init"]["source"] == "tinyvit5m.pth" and meta["evaluation"] is None
    loaded = build_model(small_recipe, result.out)
    reference = timm.create_model("tiny_vit_5m_224", pretrained=False)
    reference.load_state_dict(torch.load(weights))
    key = "patch_embed.conv1.conv.weight"
    assert not torch.equal(loaded.model.backbone.state_dict()[key], reference.state_dict()[key])  # fine-tuned
    assert torch.allclose(loaded.model.backbone.state_dict()[key], reference.state_dict()[key], atol=1e-3)


def test_backbone_file_of_another_model(tmp_path):
    import timm

    weights = tmp_path / "tinyvit11m.pth"
    torch.save(timm.create_model("tiny_vit_11m_224", pretrained=False).state_dict(), weights)
    with pytest.raises(TrainError, match="does not fit tiny_vit_5m_224: .* other shapes"):
        _run(write_tiny_recipe(tmp_path / "recipes", evaluate="null"), tmp_path, "x", backbone_weights=str(weights))


def test_hub_unreachable_is_one_clear_line(tmp_path, monkeypatch):
    import edgedeploy.host.train.backbone as backbone

    monkeypatch.setattr(backbone, "hub_reachable", lambda *a, **k: "Name or service not known")
    with pytest.raises(TrainError, match="huggingface.co is not reachable .* --backbone-weights FILE"):
        _run(write_tiny_recipe(tmp_path / "recipes", evaluate="null"), tmp_path, "h", backbone_weights="hub")


# ------------------------------------------------------------------------------------------ CLI


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_train_then_build(tmp_path):
    out = tmp_path / "brick.safetensors"
    res = _cli("train", "--source", "demo:brick", "--epochs", "1", "--model-recipe", SMALL, "--out", out,
               "--work-dir", tmp_path / "work", "--feature-cache", tmp_path / "features", "--eval", "none")
    assert res.exit_code == 0, res.output
    assert "EdgeGLR heads trained on demo:brick over a seeded (untrained) TinyViT backbone" in res.output
    assert "seeded random TinyViT weights" in res.output
    meta = read_metadata(out)
    assert meta["command"] == (f"edgedeploy train --recipe demo-default --source demo:brick --epochs 1 --eval none "
                               f"--model-recipe {SMALL}")
    res = _cli("build", "--target", "rb5-gen2", "--checkpoint", out, "--recipe", SMALL, "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "b" / "rb5-gen2" / "manifest.json").read_text())
    ckpt = manifest["checkpoint"]
    assert ckpt["builtin_default"] is False and ckpt["metadata"]["sampling"]["sha256"] == meta["sampling"]["sha256"]
    assert ckpt["metadata"]["train_recipe"]["name"] == "demo-default" and ckpt["metadata"]["training"]["steps"] > 0


@pytest.mark.parametrize("args, message", [
    (["--source", "demo:brick", "--recipe", "{splits}"], "category 'brick' has no anomalous images"),
    (["--source", "demo:marble"], "unknown demo category 'marble'"),
    (["--source", "nope:x"], "unknown benchmark 'nope'"),
    (["--out", "x.onnx"], "must end in .safetensors, .pt, .pth"),
    (["--backbone-weights", "/no/such/file.pth"], "does not exist"),
    (["--resume", "{state}", "--restart"], "contradict"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    recipe = write_tiny_recipe(tmp_path / "r", splits="[train]")
    args = [a.replace("{splits}", str(recipe)).replace("{state}", str(tmp_path / "s.safetensors")) for a in args]
    res = _cli("train", "--model-recipe", SMALL, "--work-dir", tmp_path / "w", "--feature-cache", tmp_path / "f", *args)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.output


def test_pt_output_is_byte_stable_and_loads(tiny_run, small_recipe, tmp_path):
    from safetensors.torch import load_file

    from edgedeploy.host.train.ckptio import checkpoint_bytes

    _, _, result = tiny_run
    tensors, meta = load_file(str(result.out)), read_metadata(result.out)
    assert checkpoint_bytes(tensors, meta, ".pt") == checkpoint_bytes(dict(reversed(tensors.items())), meta, ".pt")
    for name in ("one.pt", "two.pt"):
        save_checkpoint(tmp_path / name, tensors, meta)
    assert (tmp_path / "one.pt").read_bytes() == (tmp_path / "two.pt").read_bytes()
    loaded = build_model(small_recipe, tmp_path / "one.pt")
    assert loaded.metadata["backbone_init"] == meta["backbone_init"]
    assert torch.equal(loaded.model.state_dict()["readout.prototypes"], tensors["readout.prototypes"])
