"""The training objective: the learning-rate schedule and the losses.

Losses (weights from the recipe; ``y`` the image label, ``g`` the global logit, ``s`` the fused
score the graph outputs, ``m`` the anomaly-map logits on the ``S/16`` grid):

* global: ``BCEWithLogits(g, y)``;
* fused:  ``BCE(clamp(s, 1e-6, 1 - 1e-6), y)``;
* pixel:  balanced ``BCEWithLogits(m, t)`` with cell targets from the source masks: a cell is
  anomalous when at least ``positive_fraction`` of its pixels are in the mask, normal when none
  is, ignored in between; the mean over anomalous cells and the mean over normal cells are
  averaged (normal images contribute normal cells only).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgedeploy.evaluation.data import load_mask
from edgedeploy.host.train.recipe import TrainRecipe

_EPS = 1e-6


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def cell_targets(masks: list[Path | None], size: int, grid: int, positive_fraction: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive cells, normal cells) as bool (N, g, g) from mask files (None: a normal image)."""
    pos = torch.zeros(len(masks), grid, grid, dtype=torch.bool)
    neg = torch.ones(len(masks), grid, grid, dtype=torch.bool)
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        m = torch.from_numpy(load_mask(mask, size).astype(np.float32))[None, None]
        frac = F.adaptive_avg_pool2d(m, grid)[0, 0]
        pos[i] = frac >= positive_fraction
        neg[i] = frac == 0
    return pos, neg


def losses(recipe: TrainRecipe, global_logit, map_logit, score, y, pos, neg) -> dict[str, torch.Tensor]:
    lg = F.binary_cross_entropy_with_logits(global_logit, y)
    lf = F.binary_cross_entropy(score.clamp(_EPS, 1.0 - _EPS), y)
    bce = F.binary_cross_entropy_with_logits(map_logit, pos.to(map_logit.dtype), reduction="none")
    parts = [bce[neg].mean()] if bool(neg.any()) else []
    if bool(pos.any()):
        parts.append(bce[pos].mean())
    lp = torch.stack(parts).mean() if parts else map_logit.sum() * 0.0
    w = recipe.loss
    total = w.global_weight * lg + w.fused_weight * lf + w.pixel_weight * lp
    return {"loss": total, "global": lg, "fused": lf, "pixel": lp}
