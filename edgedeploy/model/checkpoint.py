"""Checkpoint loading: plain state dicts, or dicts holding ``state_dict`` or ``model``;
``.pt``/``.pth`` (loaded with ``weights_only=True``, never unpickling code) and ``.safetensors``.

With no checkpoint the reference architecture gets seeded random weights: runnable and
reproducible, but its scores mean nothing, and every caller says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..hashing import sha256_file
from ..recipes import Recipe
from .edgezsad import EdgeZSAD

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
        return _read_safetensors(path), {}
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


def _apply_state(model: EdgeZSAD, state: dict[str, torch.Tensor], path: Path, recipe: Recipe) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit recipe {recipe.name} ({recipe.model.backbone}): "
            f"{len(missing)} missing keys (first: {', '.join(missing[:_SHOWN_KEYS]) or '-'}), "
            f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:_SHOWN_KEYS]) or '-'}); "
            "pick the recipe it was trained with (--recipe)")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"checkpoint {path} does not fit recipe {recipe.name}: {len(wrong)} tensors have other shapes "
                              f"(first: {'; '.join(wrong[:3])}); pick the recipe it was trained with (--recipe)")
    model.load_state_dict(state, strict=True)


def build_model(recipe: Recipe, checkpoint: str | Path | None = None) -> LoadedModel:
    """The recipe's EdgeZSAD in eval mode, with the checkpoint's weights or seeded reference weights."""
    torch.manual_seed(recipe.model.seed)
    model = EdgeZSAD(recipe.model)
    if checkpoint is None:
        return LoadedModel(model.eval(), "seeded", None)
    path = Path(checkpoint)
    state, metadata = load_checkpoint_state(path)
    _apply_state(model, state, path, recipe)
    return LoadedModel(model.eval(), str(path), sha256_file(path), metadata)
