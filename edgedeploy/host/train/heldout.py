"""The held-out evaluation after training: the trained model's image and pixel metrics per category."""

from __future__ import annotations

import numpy as np
import torch

from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.postprocess import postprocess_maps
from edgedeploy.evaluation.data import load_batch, load_mask
from edgedeploy.evaluation.metrics import evaluate_category
from edgedeploy.host.train.features import FeatureCache, extract, pooled_features, readout_logits


def _scores_and_maps(model, samples, mode: str, cache: FeatureCache, device, size: int, show_progress):
    """(image scores, anomaly-map logits) of every sample: heads mode reads the cached backbone features."""
    with torch.no_grad():
        if mode == "heads":
            digests = [sha256_file(s.path) for s in samples]
            g, loc, _ = extract(model, list(zip([s.path for s in samples], digests)), cache, device,
                                "evaluation features", show_progress)
            _, map_logit, score = readout_logits(model.readout, g.to(device), loc.to(device))
            return score, map_logit
        scores, maps = [], []
        for s in samples:
            x = torch.from_numpy(load_batch([s.path], size)).to(device)
            gg, ll = pooled_features(model, model.features(x))
            _, m, sc = readout_logits(model.readout, gg, ll)
            scores.append(sc)
            maps.append(m)
        return torch.cat(scores), torch.cat(maps)


def per_category_metrics(model, samples, mode: str, cache: FeatureCache, device, size: int, smooth_sigma: float,
                         show_progress) -> dict[str, dict]:
    """Image AUROC/AP/F1-max and pixel AUROC/AUPRO (points, 4 decimals) per category with both classes."""
    score, map_logit = _scores_and_maps(model, samples, mode, cache, device, size, show_progress)
    scores = score.double().cpu().numpy()
    amaps = torch.sigmoid(map_logit).float().cpu().numpy()
    per_category: dict[str, dict] = {}
    for cat in sorted({s.category for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.category == cat]
        labels = np.array([samples[i].label for i in idx])
        if labels.min() == labels.max():
            continue
        masks = np.stack([load_mask(samples[i].mask_path, size) if samples[i].mask_path
                          else np.zeros((size, size), bool) for i in idx])
        maps = postprocess_maps(amaps[idx], size, smooth_sigma)
        metrics = evaluate_category(labels, scores[idx], masks, maps)
        per_category[cat] = {k: round(float(v), 4) for k, v in metrics.items()}
    return per_category
