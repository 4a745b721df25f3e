"""Byte-stable checkpoint files.

``.safetensors`` (the default): tensors plus the metadata as ONE JSON string (sorted keys) under
``__metadata__["edgedeploy"]``. One key, because the safetensors writer keeps header metadata in
a hash map whose order changes between processes when there are several keys; with one key and
the writer's fixed tensor order (by dtype, then name) the same tensors give the same bytes.

``.pt`` / ``.pth``: ``torch.save({"state_dict": ..., **metadata})`` serialised into memory and then
written, so the zip's internal folder is always ``archive/`` (``torch.save`` to a path names it
after the file, and files are written under temporary names here).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from edgedeploy.host.checkpoints import CHECKPOINT_FORMAT, METADATA_KEY, read_safetensors_metadata
from edgedeploy.core.files import atomic_path
from edgedeploy.core.errors import TrainError

SUFFIXES = (".safetensors", ".pt", ".pth")


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, allow_nan=False))


def checkpoint_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, Any], suffix: str) -> bytes:
    tensors = {k: tensors[k].detach().to("cpu").contiguous().clone() for k in sorted(tensors)}
    meta = _plain({"format": CHECKPOINT_FORMAT, **metadata})
    if suffix == ".safetensors":
        from safetensors.torch import save

        return save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))})
    if suffix in (".pt", ".pth"):
        buf = io.BytesIO()
        torch.save({"state_dict": tensors, **meta}, buf)
        return buf.getvalue()
    raise TrainError(f"checkpoint suffix {suffix!r} is not supported; use one of {', '.join(SUFFIXES)}")


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> int:
    """Write atomically; returns the size in bytes."""
    path = Path(path)
    data = checkpoint_bytes(tensors, metadata, path.suffix)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a file written by :func:`save_checkpoint` (or any checkpoint the model loads)."""
    from edgedeploy.host.model.checkpoint import load_checkpoint_state

    return load_checkpoint_state(path)


def read_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors_metadata(path)
    return read_checkpoint(path)[1]
