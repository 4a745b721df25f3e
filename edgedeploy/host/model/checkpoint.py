"""Checkpoint loading: plain state dicts, or dicts holding ``state_dict`` or ``model``;
``.pt``/``.pth`` (loaded with ``weights_only=True``, never unpickling code) and ``.safetensors``.

With no checkpoint, :func:`build_model` uses the recipe's built-in default when one ships in
``edgedeploy/host/checkpoints/`` (see ``edgedeploy.host.checkpoints``); otherwise the reference architecture
gets seeded random weights: runnable and reproducible, but its scores mean nothing, and every
caller says so.

Heads-only checkpoints (written by ``edgedeploy train`` in heads mode over a seeded backbone) hold
only ``readout.*`` tensors and declare their backbone in the metadata, ``{"backbone_init": {"kind":
"seeded", "seed": 0, "sha256": ...}}``: the backbone is rebuilt from that seed exactly as the
seeded reference weights are, its fingerprint compared with the recorded one, and the readout is
loaded strictly. A recipe with pretrained backbone weights (its ``pretrained:`` section) rebuilds the
backbone from the installed package instead, ``{"kind": "package", "file_sha256": ..., "sha256": ...}``,
and refuses heads trained over another weights file.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgedeploy.core.errors import CheckpointError
from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.host.model.edgezsad import EdgeZSAD
from edgedeploy.host.model.seeded import seeded_init

READOUT_PREFIX = "readout."
SEEDED_WARNING = ("no checkpoint given: using the reference architecture with seeded random weights "
                  "(its scores mean nothing; pass --checkpoint for a trained model)")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
_WRAPPER_KEYS = ("state_dict", "model")
_SHOWN_KEYS = 5


@dataclass
class LoadedModel:
    model: EdgeZSAD
    source: str                      # checkpoint path, or "seeded" for the reference weights
    sha256: str | None               # checkpoint file hash (None when seeded)
    metadata: dict[str, Any] = field(default_factory=dict)
    default: bool = False            # the recipe's built-in default checkpoint (no --checkpoint given)
    notes: list[str] = field(default_factory=list)

    @property
    def seeded(self) -> bool:
        return self.sha256 is None


def load_checkpoint_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file into (state dict, metadata); metadata is whatever else the file carried."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the --checkpoint path")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"checkpoint {path} has suffix {path.suffix!r}; expected one of {', '.join(CHECKPOINT_SUFFIXES)}")
    if path.suffix == ".safetensors":
        from edgedeploy.host.checkpoints import read_safetensors_metadata

        return _read_safetensors(path), read_safetensors_metadata(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({reason[:160]}): "
                              "is it a complete PyTorch checkpoint? re-copy it or re-save it with torch.save") from None
    return _unwrap(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({exc}): re-copy or re-save it") from None


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict: "
                              "save model.state_dict() (or a dict with 'state_dict')")
    metadata: dict[str, Any] = {}
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            metadata = {k: v for k, v in obj.items() if k != key and not isinstance(v, torch.Tensor)}
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors: "
                              "save model.state_dict() (or a dict with 'state_dict' or 'model')")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, metadata


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """sha256 over the backbone's state dict (names, dtypes, shapes, bytes), in key order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(backbone.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _trained_for(metadata: dict[str, Any], recipe: Recipe) -> str:
    name = (metadata.get("model_recipe") or {}).get("name") if isinstance(metadata.get("model_recipe"), dict) else None
    if name and name != recipe.name:
        return f"it was trained for recipe {name}: pass --recipe {name}"
    return "pick the recipe it was trained with (--recipe)"


def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
                   ) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, "key (shape) vs (shape)" for shared keys whose shapes differ)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    return missing, unexpected, wrong


def _apply_state(model: EdgeZSAD, state: dict[str, torch.Tensor], path: Path, recipe: Recipe,
                 metadata: dict[str, Any] | None = None, prefix: str = "") -> None:
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    hint = _trained_for(metadata or {}, recipe)
    missing, unexpected, wrong = state_mismatch(expected, state)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit recipe {recipe.name} ({recipe.model.backbone}): "
            f"{len(missing)} missing keys (first: {', '.join(missing[:_SHOWN_KEYS]) or '-'}), "
            f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:_SHOWN_KEYS]) or '-'}); {hint}")
    if wrong:
        raise CheckpointError(f"checkpoint {path} does not fit recipe {recipe.name}: {len(wrong)} tensors have other shapes "
                              f"(first: {'; '.join(wrong[:3])}); {hint}")
    if prefix:
        current = model.state_dict()
        current.update(state)
        model.load_state_dict(current, strict=True)
    else:
        model.load_state_dict(state, strict=True)


def seeded_model(recipe: Recipe, seed: int | None = None) -> EdgeZSAD:
    """The recipe's architecture with seeded weights that are the same bits on every CPU (``seeded.py``);
    a recipe with pretrained weights gets its backbone from the installed package (seeded heads)."""
    if recipe.pretrained is None:
        model = EdgeZSAD(recipe.model)
    else:
        model = EdgeZSAD(recipe.model, recipe.pretrained.pixel_mean, recipe.pretrained.pixel_std)
    seeded_init(model, recipe.model.seed if seed is None else seed)
    if recipe.pretrained is not None:
        from edgedeploy.host.model.pretrained import load_pretrained_backbone

        load_pretrained_backbone(recipe, model.backbone)
    return model


def _heads_backbone(recipe: Recipe, init: Any, path: Path) -> EdgeZSAD:
    """The backbone a heads-only checkpoint declares, rebuilt (seeded, or the recipe's pretrained package)."""
    kind = init.get("kind") if isinstance(init, dict) else None
    if recipe.pretrained is not None:
        if kind != "package":
            raise CheckpointError(f"checkpoint {path} holds EdgeGLR heads trained over a {kind or 'undeclared'} backbone, "
                                  f"but recipe {recipe.name} uses the pretrained weights of {recipe.pretrained.package}: "
                                  "pass the recipe the heads were trained with (--recipe)")
        if init.get("file_sha256") != recipe.pretrained.sha256:
            raise CheckpointError(f"checkpoint {path} holds heads trained over the weights file {init.get('file_sha256')}, "
                                  f"but recipe {recipe.name} pins {recipe.pretrained.sha256}: retrain the heads "
                                  "with `edgedeploy train` over the pinned weights")
        return seeded_model(recipe)
    if kind != "seeded":
        raise CheckpointError(f"checkpoint {path} holds only the EdgeGLR heads (readout.*) and does not declare a "
                              "seeded backbone (metadata backbone_init); save the whole model (backbone.* and readout.*)")
    return seeded_model(recipe, int(init.get("seed", recipe.model.seed)))


def build_model(recipe: Recipe, checkpoint: str | Path | None = None, use_default: bool = True) -> LoadedModel:
    """The recipe's EdgeZSAD in eval mode, with the checkpoint's weights; with none, the recipe's
    built-in default checkpoint when one ships (``use_default``), else seeded reference weights."""
    default = None
    if checkpoint is None and use_default:
        from edgedeploy.host.checkpoints import default_checkpoint

        default = default_checkpoint(recipe)
        if default is not None:
            checkpoint = default.path
    if checkpoint is None:
        return LoadedModel(seeded_model(recipe).eval(), "seeded", None)
    path = Path(checkpoint)
    state, metadata = load_checkpoint_state(path)
    notes: list[str] = []
    if all(k.startswith(READOUT_PREFIX) for k in state):
        init = metadata.get("backbone_init")
        model = _heads_backbone(recipe, init, path)
        _apply_state(model, state, path, recipe, metadata, prefix=READOUT_PREFIX)
        expected = init.get("sha256")
        if expected and backbone_fingerprint(model.backbone) != expected:
            note = (f"the {init.get('kind')} backbone rebuilt here differs from the one the heads in {path.name} were trained on "
                    f"(made by another seeded-init version, or another timm version builds other tensors); its scores are not the trained model's: "
                    "retrain the heads with `edgedeploy train` here")
            notes.append(note)
            warnings.warn(note, RuntimeWarning, stacklevel=2)
    else:
        model = seeded_model(recipe)
        _apply_state(model, state, path, recipe, metadata)
    return LoadedModel(model.eval(), str(path), sha256_file(path), metadata, default=default is not None, notes=notes)
