"""Built-in default checkpoints, one per model recipe, shipped as package data (torch-free module).

``<recipe name>.safetensors`` here is the default for that recipe: ``build`` and ``fidelity`` use it
when no ``--checkpoint`` is given. Each is the output of ``edgedeploy train`` (see
docs/training.md for the command that recreates it byte for byte). A default is used only when
the model configuration recorded in its metadata equals the recipe's, so editing a recipe's
architecture falls back to seeded weights (with a warning) instead of loading heads that do not fit.

Checkpoints written by ``edgedeploy train`` carry their metadata as one JSON string under the key
``edgedeploy`` of the safetensors header's ``__metadata__``; :func:`read_safetensors_metadata`
reads it without torch.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHECKPOINTS_DIR = Path(__file__).resolve().parent
METADATA_KEY = "edgedeploy"
CHECKPOINT_FORMAT = "edgedeploy-checkpoint/1"
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class DefaultCheckpoint:
    path: Path
    summary: str        # e.g. "EdgeGLR heads trained on demo:brick,grass over a seeded (untrained) TinyViT backbone"
    metadata: dict

    def describe(self) -> str:
        return f"built-in default: {self.summary} ({self.path.name})"


def read_safetensors_metadata(path: str | Path) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file, the ``edgedeploy`` JSON entry decoded; {} if unreadable."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > _MAX_HEADER:
                return {}
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error):
        return {}
    raw = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(raw, dict):
        return {}
    if METADATA_KEY in raw and len(raw) == 1:
        try:
            decoded = json.loads(raw[METADATA_KEY])
        except ValueError:
            return dict(raw)
        return decoded if isinstance(decoded, dict) else dict(raw)
    return dict(raw)


def _normalised(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def default_checkpoint(recipe) -> DefaultCheckpoint | None:
    """The shipped default for ``recipe`` (a :class:`~edgedeploy.core.model_recipes.Recipe`), or None."""
    path = CHECKPOINTS_DIR / f"{recipe.name}.safetensors"
    if not path.is_file():
        return None
    meta = read_safetensors_metadata(path)
    trained_for = (meta.get("model_recipe") or {}).get("config")
    if trained_for is None or _normalised(trained_for) != _normalised(asdict(recipe.model)):
        return None
    return DefaultCheckpoint(path, str(meta.get("summary") or "trained EdgeGLR heads"), meta)


def default_mismatch(recipe) -> str | None:
    """Why a shipped file for ``recipe`` is not used (its architecture differs), or None."""
    path = CHECKPOINTS_DIR / f"{recipe.name}.safetensors"
    if path.is_file() and default_checkpoint(recipe) is None:
        return (f"the built-in default {path.name} was trained for another configuration of {recipe.name} "
                "(the recipe's model section changed); not using it")
    return None
