"""Frozen-backbone features, computed once per image and cached on disk.

What the EdgeGLR readout reads from the backbone, reduced to what it needs:

* ``global``: the deepest stage averaged over space, ``(C_global,)`` — the global branch pools it
  first thing;
* ``local``: each mid-level stage average-pooled to the anomaly-map grid (stride ``S/16``) and
  concatenated over channels, ``(sum C_local, g, g)``. The local branch applies a 1x1 convolution
  and then that same pooling; both are linear, so pooling first gives the same cells (up to float
  rounding) with 4x less to store for the 1/8 stage.

:func:`readout_logits` runs the readout on these tensors and returns the logits the losses need
(the graph applies a sigmoid to them) and the fused score the graph outputs; a test checks it
against ``EdgeZSAD.forward``.

Cache: one safetensors file per image, ``<root>/<feature key>/<image sha256>.safetensors``. The
feature key hashes the backbone weights' fingerprint, the model configuration, the thread count,
the device and the torch/timm versions, so a cached file is reused only where recomputing it
would give the same numbers. Files are written atomically; extraction interrupted half-way keeps
the images already done. Images go through the backbone one at a time, so a feature does not
depend on which other images shared its batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from edgedeploy.evaluation.data.preprocess import load_image
from edgedeploy.core.extras import package_version
from edgedeploy.core.files import atomic_path
from edgedeploy.core.hashing import sha256_json
from edgedeploy.host.model.edgezsad import EdgeGLR, EdgeZSAD, _unit

FEATURE_FORMAT = 1


def pooled_features(model: EdgeZSAD, feats: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone stage outputs -> (global (N, Cg), local cells (N, sum Cl, g, g))."""
    config = model.config
    global_vec = feats[config.global_stage].mean(dim=(2, 3))
    cells = []
    for stage, factor in zip(config.local_stages, model.readout.pool_factors):
        x = feats[stage]
        cells.append(F.avg_pool2d(x, kernel_size=factor, stride=factor) if factor > 1 else x)
    return global_vec, torch.cat(cells, dim=1)


def readout_logits(readout: EdgeGLR, global_vec: torch.Tensor, local_cells: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(global logit (N,), anomaly-map logits (N, g, g), fused score (N,)) — the graph's ``score``
    is the fused score and its ``anomaly_map`` the sigmoid of the map logits."""
    direction = readout._anomaly_direction()
    global_logit = _unit(readout.global_proj(global_vec), dim=1) @ direction
    sizes = [proj.in_channels for proj in readout.local_proj]
    cells = 0
    for part, proj in zip(torch.split(local_cells, sizes, dim=1), readout.local_proj):
        cells = cells + proj(part)
    cells = _unit(cells, dim=1)
    map_logit = (cells * direction.reshape(1, -1, 1, 1)).sum(dim=1)
    amap = torch.sigmoid(map_logit).flatten(1)
    k = min(readout.top_k, amap.shape[1])
    local = amap.topk(k, dim=1).values.mean(dim=1)
    score = readout.fusion_alpha * torch.sigmoid(global_logit) + (1.0 - readout.fusion_alpha) * local
    return global_logit, map_logit, score


def feature_key(model: EdgeZSAD, backbone_sha256: str, threads: int, device: str) -> str:
    return sha256_json({"format": FEATURE_FORMAT, "backbone": backbone_sha256, "model": asdict(model.config),
                        "threads": threads, "device": device, "torch": package_version("torch"), "timm": package_version("timm")})


class FeatureCache:
    """Per-image feature files under ``root/<key>``; ``root`` None keeps nothing on disk."""

    def __init__(self, root: Path | None, key: str):
        self.folder = None if root is None else Path(root) / key[:24]

    def _path(self, image_sha256: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{image_sha256[:40]}.safetensors"

    def get(self, image_sha256: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self._path(image_sha256)
        if path is None or not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
            return data["global"], data["local"]
        except (SafetensorError, OSError, KeyError, ValueError):
            path.unlink(missing_ok=True)
            return None

    def put(self, image_sha256: str, global_vec: torch.Tensor, local_cells: torch.Tensor) -> None:
        path = self._path(image_sha256)
        if path is None:
            return
        from safetensors.torch import save

        data = save({"global": global_vec.contiguous(), "local": local_cells.contiguous()})
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def extract(model: EdgeZSAD, images: Sequence[tuple[Path, str]], cache: FeatureCache, device: torch.device,
            progress_desc: str = "features", show_progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Features of ``images`` ((path, sha256) pairs) -> (global (N, Cg), local (N, C, g, g), computed count)."""
    from tqdm import tqdm

    size = model.config.input_size
    globals_, locals_ = [None] * len(images), [None] * len(images)
    todo = []
    for i, (_, digest) in enumerate(images):
        hit = cache.get(digest)
        if hit is None:
            todo.append(i)
        else:
            globals_[i], locals_[i] = hit
    if todo:
        model.eval()
        bar = tqdm(total=len(todo), desc=progress_desc, unit="img", disable=_disabled(show_progress), leave=False)
        start = time.perf_counter()
        with torch.no_grad():
            for n, i in enumerate(todo, 1):
                path, digest = images[i]
                x = torch.from_numpy(load_image(path, size)[None]).to(device)
                g, loc = pooled_features(model, model.features(x))
                globals_[i], locals_[i] = g[0].cpu(), loc[0].cpu()
                cache.put(digest, globals_[i], locals_[i])
                bar.update(1)
                bar.set_postfix_str(f"{n / (time.perf_counter() - start):.2f} img/s")
        bar.close()
    return torch.stack(globals_), torch.stack(locals_), len(todo)


def _disabled(show: bool | None) -> bool:
    import sys

    return (not sys.stderr.isatty()) if show is None else not show
