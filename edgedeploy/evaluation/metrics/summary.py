"""Per-category evaluation in points, means over categories, host-vs-device rank agreement."""

from __future__ import annotations

import math
from collections.abc import Mapping

from scipy import stats

from edgedeploy.evaluation.metrics._checks import MetricInputError, as_scores, masks_and_maps
from edgedeploy.evaluation.metrics.image import f1_max, image_ap, image_auroc
from edgedeploy.evaluation.metrics.pixel import aupro, pixel_auroc


def rank_correlations(a, b) -> dict[str, float]:
    """Spearman rho and Kendall tau-b between two score vectors (e.g. host vs device scores).

    A rank correlation is the fidelity measure that matters for anomaly scores: thresholds and
    AUROC depend only on the ordering, not on small absolute drifts.
    """
    what = "rank correlation"
    x = as_scores(a, what, "first scores")
    y = as_scores(b, what, "second scores")
    if x.size != y.size:
        raise MetricInputError(
            f"{what}: the two score vectors differ in length ({x.size} vs {y.size})"
        )
    if x.size < 2:
        raise MetricInputError(f"{what} needs at least 2 scores per side, got {x.size}")
    for name, v in (("first", x), ("second", y)):
        if v.min() == v.max():
            raise MetricInputError(
                f"{what}: the {name} score vector is constant, so ranks are undefined"
            )
    return {
        "spearman": float(stats.spearmanr(x, y).statistic),
        "kendall": float(stats.kendalltau(x, y).statistic),
    }


def evaluate_category(labels, scores, masks=None, maps=None) -> dict[str, float]:
    """Image metrics, plus pixel metrics when masks and maps are given, all in points (x100).

    Keys: ``image_auroc``, ``image_ap``, ``f1_max``, and ``pixel_auroc``, ``aupro`` (FPR
    limit 0.3) when masks/maps are given and at least one mask pixel is anomalous; without
    anomalous pixels the pixel metrics are undefined and left out rather than failing the
    category.
    """
    result = {
        "image_auroc": 100.0 * image_auroc(labels, scores),
        "image_ap": 100.0 * image_ap(labels, scores),
        "f1_max": 100.0 * f1_max(labels, scores)[0],
    }
    if (masks is None) != (maps is None):
        given = "masks" if maps is None else "maps"
        raise MetricInputError(f"pixel metrics need both masks and maps; only {given} given")
    if masks is not None:
        mk, mp = masks_and_maps(masks, maps, "pixel metrics")
        if mk.any():
            result["pixel_auroc"] = 100.0 * pixel_auroc(mk, mp)
            result["aupro"] = 100.0 * aupro(mk, mp)
    return result


def mean_over_categories(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over the categories that report it (keys in first-seen order)."""
    if not per_category:
        raise MetricInputError("mean over categories: got no categories")
    collected: dict[str, list[float]] = {}
    for metrics in per_category.values():
        for key, value in metrics.items():
            collected.setdefault(key, []).append(float(value))
    return {key: math.fsum(values) / len(values) for key, values in collected.items()}
