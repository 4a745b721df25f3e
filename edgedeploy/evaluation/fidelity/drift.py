"""The statistics behind the drift gate (numpy + scipy only).

* :func:`delong_paired` — DeLong, DeLong & Clarke-Pearson (1988): the variance of the difference
  of two correlated AUROCs measured on the same images, from the structural components
  (computed with midranks as in Sun & Xu, 2014). It gives each category's 95% interval of the
  drift; categories are independent samples, so the mean's variance is the sum of theirs over C².
* :func:`near_tie_bound` — the host-score gap within which FP16 rounding can explain a swapped
  pair. Error model: each device score carries an error of at most ``e``, so a normal/anomalous
  pair can only swap when its host gap is below ``2e``. ``e`` is the device's measured score
  error (the 99th percentile of |device - host| over the benchmark), capped at
  :data:`FP16_SCORE_ERROR_CAP` = 2⁻⁷ ≈ 7.8e-3, i.e. 16 units of FP16 roundoff (u = 2⁻¹¹) at a
  score of 1 — about the FP16 emulation's own 99th percentile on the demo with the built-in
  default (8.2e-3; max 9.1e-3), far below what a broken kernel produces. The cap keeps a merely
  noisy device from widening its own tolerance.
* :func:`pair_moves` — every normal/anomalous pair whose order differs between host and device
  (a tie on one side and an order on the other counts half), split into near-ties (host gap
  <= bound) and real reorderings; their AUROC contributions add up exactly to the drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import stats

FP16_UNIT_ROUNDOFF = 2.0 ** -11
FP16_SCORE_ERROR_CAP = 16 * FP16_UNIT_ROUNDOFF
ERROR_QUANTILE = 99.0
Z95 = float(stats.norm.ppf(0.975))
_CHUNK = 1 << 22  # pair-matrix elements per block


@dataclass
class PairedAuroc:
    auroc_a: float
    auroc_b: float
    var_diff: float | None  # variance of (b - a), as a fraction squared; None when undefined

    @property
    def diff(self) -> float:
        return self.auroc_b - self.auroc_a


def _midranks(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average")


def delong_paired(labels, scores_a, scores_b) -> PairedAuroc:
    """AUROCs of ``a`` and ``b`` on the same images and DeLong's variance of ``b - a``.

    Needs at least one image of each class; the variance needs two of each (else None).
    """
    lab = np.asarray(labels).astype(bool)
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    m, n = int(lab.sum()), int((~lab).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong needs normal and anomalous images")
    v10, v01, aucs = [], [], []
    for s in (a, b):
        pos, neg = s[lab], s[~lab]
        tz = _midranks(np.concatenate([pos, neg]))
        tx, ty = _midranks(pos), _midranks(neg)
        aucs.append(float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)))
        v10.append((tz[:m] - tx) / n)          # per anomalous image: share of normals it outranks
        v01.append(1.0 - (tz[m:] - ty) / m)    # per normal image: share of anomalies that outrank it
    if m < 2 or n < 2:
        return PairedAuroc(aucs[0], aucs[1], None)
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return PairedAuroc(aucs[0], aucs[1], max(float(var), 0.0))


def delong_z_p(paired: PairedAuroc) -> tuple[float, float] | None:
    """DeLong's z statistic of ``b - a`` and its two-sided p value (None when undefined or zero variance)."""
    if paired.var_diff is None or paired.var_diff <= 0:
        return None
    z = paired.diff / math.sqrt(paired.var_diff)
    return z, float(2 * stats.norm.sf(abs(z)))


def interval_points(diff_points: float, var_fraction: float | None) -> tuple[float, float] | None:
    """95% normal interval of a drift in points, from a variance in AUROC fractions squared."""
    if var_fraction is None:
        return None
    half = Z95 * 100.0 * math.sqrt(var_fraction)
    return diff_points - half, diff_points + half


class NearTieBound(NamedTuple):
    bound: float      # the largest host gap FP16 can reverse: 2 * error
    error: float      # e, the per-score error: the measured one, capped
    measured: float   # the device's 99th percentile |device - host| over the finite scores


def near_tie_bound(host: np.ndarray, device: np.ndarray) -> NearTieBound:
    """The near-tie bound of a device's scores against the host's (see the module's error model)."""
    diff = np.abs(np.asarray(device, np.float64) - np.asarray(host, np.float64))
    diff = diff[np.isfinite(diff)]
    measured = float(np.percentile(diff, ERROR_QUANTILE)) if diff.size else 0.0
    error = min(measured, FP16_SCORE_ERROR_CAP)
    return NearTieBound(2.0 * error, error, measured)


@dataclass
class PairMoves:
    """Pairs whose order differs between host and device, in counts and in AUROC points."""

    pairs: int
    near_ties: int = 0
    reorderings: int = 0
    near_tie_drift: float = 0.0      # signed, points
    reordering_drift: float = 0.0    # signed, points
    reordering_gross: float = 0.0    # both directions, points: the gate's quantity
    image_reorderings: dict[int, int] = field(default_factory=dict)  # image index -> real reorderings

    @property
    def point(self) -> float:
        return 100.0 / self.pairs if self.pairs else math.inf


def _order(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """1 where the anomalous score is above the normal one, 0.5 where tied, 0 below."""
    return (hi > lo).astype(np.float32) + 0.5 * (hi == lo).astype(np.float32)


def pair_moves(labels, host, device, bound: float) -> PairMoves:
    """Every normal/anomalous pair whose order moved, split at the host gap ``bound``."""
    lab = np.asarray(labels).astype(bool)
    h = np.asarray(host, np.float64)
    d = np.asarray(device, np.float64)
    pos_idx, neg_idx = np.flatnonzero(lab), np.flatnonzero(~lab)
    moves = PairMoves(pairs=len(pos_idx) * len(neg_idx))
    if not moves.pairs:
        return moves
    hp, dp = h[pos_idx], d[pos_idx]
    per_image = np.zeros(len(h), dtype=np.int64)
    step = max(1, _CHUNK // len(pos_idx))
    sums = np.zeros(5)
    for begin in range(0, len(neg_idx), step):
        rows = neg_idx[begin:begin + step]
        hn, dn = h[rows][:, None], d[rows][:, None]
        change = _order(dp[None, :], dn) - _order(hp[None, :], hn)
        moved = change != 0
        near = np.abs(hp[None, :] - hn) <= bound
        real = moved & ~near
        sums += [np.count_nonzero(moved & near), np.count_nonzero(real), change[moved & near].sum(),
                 change[real].sum(), np.abs(change[real]).sum()]
        per_image[rows] += real.sum(axis=1)
        per_image[pos_idx] += real.sum(axis=0)
    moves.near_ties, moves.reorderings = int(sums[0]), int(sums[1])
    moves.near_tie_drift = float(sums[2]) * moves.point
    moves.reordering_drift = float(sums[3]) * moves.point
    moves.reordering_gross = float(sums[4]) * moves.point
    moves.image_reorderings = {int(i): int(c) for i, c in enumerate(per_image) if c}
    return moves
