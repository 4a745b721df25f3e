"""Pixel-level metrics over a stack of anomaly maps: pixel AUROC and AUPRO.

Both are exact over all distinct thresholds (no binning). They sort the normal pixels once,
in the maps' own dtype, and work per distinct anomalous-pixel value, which is a far smaller
set, so a full MVTec test split (~113M pixels) needs one float32 copy of the normal pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from edgedeploy.evaluation.metrics._checks import MetricInputError, masks_and_maps
from edgedeploy.evaluation.metrics._ranking import distinct_runs, mann_whitney_auroc

# MVTec AD reference convention: regions are 8-connected within an image, never across images.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


def _class_counts(mk: np.ndarray, what: str) -> tuple[int, int]:
    n_pos = int(np.count_nonzero(mk))
    n_neg = mk.size - n_pos
    if n_pos == 0:
        raise MetricInputError(f"{what} needs anomalous pixels; all {mk.shape[0]} masks are empty")
    if n_neg == 0:
        raise MetricInputError(
            f"{what} needs normal pixels; every pixel of every mask is anomalous"
        )
    return n_pos, n_neg


def _sorted_normal_pixels(mk: np.ndarray, mp: np.ndarray) -> np.ndarray:
    neg = mp[~mk]
    neg.sort()
    return neg


def pixel_auroc(masks, maps) -> float:
    """AUROC over all pixels of all images; masks bool (N, H, W), maps real (N, H, W).

    Equal to ``roc_auc_score(masks.ravel(), maps.ravel())``, ties included.
    """
    mk, mp = masks_and_maps(masks, maps, "pixel AUROC")
    _class_counts(mk, "pixel AUROC")
    return mann_whitney_auroc(_sorted_normal_pixels(mk, mp), mp[mk])


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under a polyline with non-decreasing ``x`` (x[0] <= x_max), from x[0]
    to ``x_max``; the curve is interpolated linearly at ``x_max`` when no point lies there."""
    end = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:end], y[:end]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]))) / 2.0
    if end < x.size and xs[-1] < x_max:
        x0, y0, x1, y1 = xs[-1], ys[-1], x[end], y[end]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_at) / 2.0
    return area


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``, in 0..1.

    Regions are the 8-connected components of each mask (MVTec AD convention). At threshold t
    (anomalous when score >= t) PRO is the mean over all regions of the fraction of the
    region's pixels flagged, and FPR is the fraction of normal pixels (mask 0, in any image)
    flagged. PRO is integrated over FPR from 0 to ``fpr_limit`` with the trapezoid rule over
    all distinct thresholds, interpolating at ``fpr_limit``, and divided by ``fpr_limit``.

    PRO only changes at thresholds taken by anomalous pixels, so the curve is built from two
    points per distinct anomalous value v: (#normal > v, PRO just above v) and
    (#normal >= v, PRO at v). Normal-only thresholds between two such values lie on the flat
    segment joining them, so leaving them out changes neither the area nor the interpolation.
    """
    try:
        limit = float(fpr_limit)
    except (TypeError, ValueError):
        limit = math.nan
    if not 0 < limit <= 1:
        raise MetricInputError(f"AUPRO: fpr_limit must be in (0, 1], got {fpr_limit!r}")
    mk, mp = masks_and_maps(masks, maps, "AUPRO")
    _, n_neg = _class_counts(mk, "AUPRO")

    anomalous_images = mk[mk.any(axis=(1, 2))]
    regions, n_regions = ndimage.label(anomalous_images, structure=_REGION_STRUCTURE)
    region_of_pixel = regions[anomalous_images]
    del regions, anomalous_images
    # Each pixel carries 1/|region|, so the flagged weight of a region is its overlap fraction.
    weight = 1.0 / np.bincount(region_of_pixel)[region_of_pixel]

    pos = mp[mk]
    order = np.argsort(pos)
    pos = pos[order]
    weight = weight[order]
    starts, _ = distinct_runs(pos)
    values = pos[starts]
    weight_at = np.add.reduceat(weight, starts)
    overlap_ge = np.cumsum(weight_at[::-1])[::-1]
    overlap_gt = np.append(overlap_ge[1:], 0.0)

    neg = _sorted_normal_pixels(mk, mp)
    neg_ge = n_neg - np.searchsorted(neg, values, side="left")
    neg_gt = n_neg - np.searchsorted(neg, values, side="right")
    del neg

    k = values.size
    fp = np.empty(2 * k + 2)
    overlap = np.empty(2 * k + 2)
    fp[0], overlap[0] = 0.0, 0.0
    fp[1:-1:2], overlap[1:-1:2] = neg_gt[::-1], overlap_gt[::-1]
    fp[2:-1:2], overlap[2:-1:2] = neg_ge[::-1], overlap_ge[::-1]
    fp[-1], overlap[-1] = n_neg, overlap_ge[0]

    area = _trapezoid_to(fp, overlap, limit * n_neg)
    return area / (limit * n_neg * n_regions)
