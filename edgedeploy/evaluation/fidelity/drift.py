"""The statistics behind the drift gate (numpy + scipy only).

* :func:`delong_paired` — DeLong, DeLong & Clarke-Pearson (1988): the variance of the difference
  of two correlated AUROCs measured on the same images, from the structural components
  (computed with midranks as in Sun & Xu, 2014). It gives each category's 95% interval of the
  drift; categories are independent samples, so the mean's variance is the sum of theirs over C².
* :func:`score_errors` — each device score's error in the terms of the FP16 error model below.
* :func:`pair_moves` — every normal/anomalous pair whose order differs between host and device
  (a tie on one side and an order on the other counts half), split into near-ties (a swap FP16
  rounding explains) and real reorderings; their AUROC contributions add up exactly to the drift.

The FP16 error model (written down in docs/fidelity.md and in every report). FP16 keeps 11
significant bits: one rounding has a relative error of at most u = 2⁻¹¹. A score is the end of a
chain of n rounding points (every activation the device stores in FP16). Under the probabilistic
model of rounding errors (Higham & Mary, SIAM J. Sci. Comput. 2019), the relative error of such a
chain stays below λ·√n·u with probability at least 1 − 2·exp(−λ²/2). With λ = 4 (0.9993) and
n = 256 (the order of the shipped recipes' score paths: TinyViT-5M-224 and TinyViT-21M-512 both
have 266 rounding points from the input to the score) that is ε = 4·16·u = 2⁻⁵ ≈ 3.1%. Errors are relative to the magnitudes a score is
computed from, so each score's scale is s = max(|host score|, median |host score| of its
category): a score near zero is computed from quantities of the category's usual size. All of it
is relative, so multiplying every score by 2^k changes no count and no verdict.

A swapped normal/anomalous pair is a **near-tie**, excused by the gate, only when all three hold:

1. its host gap is within FP16's reach: |h_i − h_j| <= ε·(s_i + s_j);
2. the two scores together moved no more than FP16 explains: |r_i|·s_i + |r_j|·s_j <= ε·(s_i + s_j),
   where r = (d − h)/s − b is a score's relative error after the category's common relative offset
   b (the median of (d − h)/s; a shift every score shares reorders nothing) is removed;
3. the category's device errors are small next to the spread of its host scores: the RMS of the
   residuals (d − h − b·s) is at most :data:`SPREAD_SHARE` (a quarter) of the standard deviation of
   the host scores. A device that moves scores by a quarter of their spread is shuffling the
   ranking, not rounding it: a random permutation has a ratio of √2 at any scale, FP16 rounding
   (1 u) stays below it until the scores are packed within about one FP16 ulp, where no FP16
   device can hold the ranking, and the gate says so.

Every other swap is a real reordering and counts against the budget.

The quantised device (a QDQ graph: ``w8a16``, ``w8a8`` on the QNN HTP, ``int8`` for TensorRT; docs/fidelity.md,
docs/quantization.md). A b-bit activation is stored as one of 2^b levels over the tensor's calibrated range: one
rounding errs by at most half a step, 2^-(b+1) of that *range* (2^-9 for 8 bits, 2^-17 for 16), not of the value.
How large that is next to a score depends on how the calibrated ranges on its path compare with the values they
hold: a value 1/256 of its range carries a 100% error at 8 bits. Calibration, clipping and outliers decide that,
not the bit width, so no error bound follows from the bits alone; the chain bound written as for FP16,
λ·√n·2^-(b+1) with the score's scale standing for the ranges, is 2^-3 (12.5%) at 8 bits: the size of the whole
error INT8 causes on the small recipe, so excusing it would excuse the reorderings the gate is there to find. The
rule for a quantised device is therefore: **no swap is excused**: ε = 0, so no pair is a near-tie and every
swap counts against the budget. Excusing the graph's float parts (run in FP16) with FP16's ε = 2⁻⁵ was tried and
dropped: measured on EfficientNet-Lite0 at w8a8 (docs/quantization.md), the 8-bit output grid collapsed the
confident scores near 1 into ties that ε = 2⁻⁵ (3% of a score) excused as 47 near-ties, so a w8a8 graph that lost
4.3 AUROC points on one category passed while its w8a16 graph, with 9 swaps beyond ε, failed. A swap cannot be
attributed to the float or the integer parts from the scores, so none is excused. :func:`integer_chain_bound`
is the bound that was not adopted, reported beside the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

FP16_UNIT_ROUNDOFF = 2.0 ** -11
ROUNDING_POINTS = 256            # n: rounding points on a score's path
PROBABILISTIC_LAMBDA = 4.0       # λ: the bound holds with probability >= 1 - 2 exp(-λ²/2)
FP16_RELATIVE_ERROR = PROBABILISTIC_LAMBDA * math.sqrt(ROUNDING_POINTS) * FP16_UNIT_ROUNDOFF  # ε = 2⁻⁵
ACTIVATION_BITS = {"w8a16": 16, "w8a8": 8, "int8": 8}  # the integer precisions' activation bit widths
SPREAD_SHARE = 0.25              # largest RMS device error, as a share of the host scores' standard deviation
ERROR_QUANTILE = 99.0
Z95 = float(stats.norm.ppf(0.975))
_CHUNK = 1 << 22  # pair-matrix elements per block


def integer_half_step(bits: int) -> float:
    """One rounding to a b-bit grid: at most half a step, 2^-(b+1) of the tensor's calibrated range."""
    return 2.0 ** -(bits + 1)


def integer_chain_bound(bits: int) -> float:
    """λ·√n·2^-(b+1): the FP16 chain bound with the integer half step, relative to the ranges (not adopted:
    module docstring)."""
    return PROBABILISTIC_LAMBDA * math.sqrt(ROUNDING_POINTS) * integer_half_step(bits)


def device_epsilon(precision: str | None = None) -> float:
    """The ε the near-tie rule uses for a device at ``precision``: FP16's for a float device; 0 for a quantised one
    (no swap is excused: module docstring)."""
    if precision is not None and precision not in ACTIVATION_BITS and precision not in ("fp16", "fp32"):
        raise ValueError(f"unknown device precision {precision!r}")
    return 0.0 if precision in ACTIVATION_BITS else FP16_RELATIVE_ERROR


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


@dataclass
class ScoreErrors:
    """One category's device errors in the terms of the FP16 error model (module docstring)."""

    scale: np.ndarray          # s_i = max(|h_i|, median |h|)
    relative: np.ndarray       # r_i = (d_i - h_i)/s_i - b; NaN where the device score is not finite
    offset: float              # b, the common relative offset removed
    spread_ratio: float        # RMS(d - h - b s) / std(h); inf when the host scores are all equal and d moved
    epsilon: float = FP16_RELATIVE_ERROR

    @property
    def within(self) -> np.ndarray:
        """Per image: the score moved no more than FP16 explains (rule 2)."""
        with np.errstate(invalid="ignore"):
            return np.abs(self.relative) <= self.epsilon

    @property
    def absolute(self) -> np.ndarray:
        """Per image: |r| s, the error left after the common offset, in score units (inf where not finite)."""
        out = np.abs(self.relative) * self.scale
        out[~np.isfinite(self.relative)] = np.inf
        return out

    @property
    def resolvable(self) -> bool:
        """Rule 3: the device's errors are small next to the host scores' spread."""
        return self.spread_ratio <= SPREAD_SHARE

    @property
    def beyond(self) -> int:
        """Images whose error is beyond what FP16 explains (non-finite ones included)."""
        return int(np.count_nonzero(~self.within))

    @property
    def p99(self) -> float:
        """The 99th percentile of |r| over the finite scores, in relative terms."""
        r = np.abs(self.relative[np.isfinite(self.relative)])
        return float(np.percentile(r, ERROR_QUANTILE)) if r.size else 0.0


def score_errors(host, device, epsilon: float = FP16_RELATIVE_ERROR) -> ScoreErrors:
    """The device's errors on one category, relative to each score's scale, with the common offset removed."""
    h = np.asarray(host, np.float64)
    d = np.asarray(device, np.float64)
    finite = np.isfinite(d)
    magnitude = np.abs(h)
    floor = float(np.median(magnitude)) if magnitude.size else 0.0
    if floor == 0.0:  # more than half the scores are exactly zero: their largest magnitude is the scale
        floor = float(magnitude.max()) if magnitude.size else 0.0
    scale = np.maximum(magnitude, floor)
    relative = np.full(h.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = finite & (scale > 0)
        relative[ok] = (d[ok] - h[ok]) / scale[ok]
        relative[finite & (scale == 0)] = np.where(d[finite & (scale == 0)] == 0, 0.0, np.inf)
    usable = np.isfinite(relative)
    offset = float(np.median(relative[usable])) if usable.any() else 0.0
    relative = relative - offset
    spread = float(np.std(h)) if h.size else 0.0
    residual = (d - h - offset * scale)[usable]
    rms = float(np.sqrt(np.mean(residual ** 2))) if residual.size else 0.0
    if spread > 0:
        ratio = rms / spread
    else:
        ratio = 0.0 if rms == 0 else math.inf
    return ScoreErrors(scale, relative, offset, ratio, epsilon)


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


def pair_moves(labels, host, device, errors: ScoreErrors | None = None) -> PairMoves:
    """Every normal/anomalous pair whose order moved, split into near-ties and real reorderings (module docstring).

    ``errors`` None: every moved pair is a real reordering.
    """
    lab = np.asarray(labels).astype(bool)
    h = np.asarray(host, np.float64)
    d = np.asarray(device, np.float64)
    pos_idx, neg_idx = np.flatnonzero(lab), np.flatnonzero(~lab)
    moves = PairMoves(pairs=len(pos_idx) * len(neg_idx))
    if not moves.pairs:
        return moves
    hp, dp = h[pos_idx], d[pos_idx]
    excusable = errors is not None and errors.resolvable
    if excusable:
        s_all, e_all = errors.scale, errors.absolute
        sp, ep = s_all[pos_idx], e_all[pos_idx]
    per_image = np.zeros(len(h), dtype=np.int64)
    step = max(1, _CHUNK // len(pos_idx))
    sums = np.zeros(5)
    for begin in range(0, len(neg_idx), step):
        rows = neg_idx[begin:begin + step]
        hn, dn = h[rows][:, None], d[rows][:, None]
        change = _order(dp[None, :], dn) - _order(hp[None, :], hn)
        moved = change != 0
        if excusable:
            sn, en = s_all[rows][:, None], e_all[rows][:, None]
            reach = errors.epsilon * (sp[None, :] + sn)
            near = (np.abs(hp[None, :] - hn) <= reach) & (ep[None, :] + en <= reach)
        else:
            near = np.zeros_like(moved)
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
