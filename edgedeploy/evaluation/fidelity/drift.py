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

Each category's device scores are first mapped back onto the host's by a resistant line d ≈ a + b·h (Tukey's
three-group line, polished to convergence: a constant bias and a constant gain are shifts every score shares and
reorder nothing). In host units a score's error is e = (d − a)/b − h, and r = e/s is its relative error. The
category's *robust spread* σ is the host scores' interquartile range / 1.349 (the normal-equivalent standard
deviation; the MAD, then the mean absolute deviation where the IQR is 0): one outlier cannot inflate it.

A swapped normal/anomalous pair is a **near-tie**, a swap FP16 rounding could make, only when all four hold:

1. its host gap is within FP16's reach: |h_i − h_j| <= ε·(s_i + s_j);
2. the two scores together moved no more than FP16 explains: |r_i|·s_i + |r_j|·s_j <= ε·(s_i + s_j);
3. the category is *resolvable*: the fitted gain b is positive (a decreasing map is not rounding) and the RMS of
   the errors e is at most :data:`SPREAD_SHARE` (a quarter) of σ. A device that moves scores by a quarter of
   their spread is shuffling the ranking, not rounding it. With a robust σ, one host outlier cannot make a
   shuffle look small (with the standard deviation it did: one score at 0 among scores in 0.96-1);
4. neither score moved by more than :data:`MOVE_SHARE` σ (one robust standard deviation): a score that crosses a
   whole standard deviation of its category's ranking is not rounded, whatever the average error (the top
   anomalies of a category pushed below every normal move by more than the normals' range); and neither moved by
   more than :data:`OUTLIER_LAMBDA` (2λ = 8) robust standard deviations of the category's own errors (1.4826·MAD
   of e; at least one FP16 rounding of the score, u·s): one graph's scores share its rounding points, so under
   the model their errors share one distribution, and a score 8 of its robust sds out (below 1e-15 for the
   model's Gaussian errors, 3e-4 even for Laplace tails) was not rounded. This is what catches a few images
   moved far while the rest stay: a population test over k images cannot reject (its z is about √k).

Every other swap is a **real reordering** and counts against the budget in either direction.

Near-ties are excused **only as a population**: under the model FP16 moves a near-tied pair either way, so their
signed AUROC contributions are centred on zero. Their signed drift N has a DeLong-type variance (the structural
components of the near-tie kernel, per anomalous and per normal image: images, not pairs, are the independent
units); where its 99% interval excludes 0 (a one-sided excess at the 1% level; Student's t with min(normal,
anomalous) − 1 degrees of freedom, the variance being estimated from that few independent components) the
near-ties are one-sided, a *systematic shift hidden in near-ties*, and |N| is charged to the budget. The level: on the demo's real host scores,
honest noise (±6e-3 uniform, 1% relative, 8 FP16 roundings) over 300 seeds each gave |z| > 2.576 in none of 900
runs (the structural-component variance is conservative there: sd of z 0.6-0.7), while the review's hidden
shifts give z of −3.4 to −12 per category and −8.6 to −12 pooled. Only the near-ties' own sum is charged, so a
significant but small excess costs no more than its size. A class of one image leaves no interval: such a
category's near-ties are not tested (rule 4 still judges each move). For the benchmark the categories' sums are
pooled with inverse-variance weights (:func:`pooled_near_tie_z`; degrees of freedom summed): a small category with
an enormous variance cannot drown the others' shifts, as it could in the plain mean's variance Σv_c/C². Where the
pooled test rejects, the mean N is charged, and the charge is at least the mean of the categories' own charges.
What no rule here can see: a loss concentrated on k ≤ 3 images per category, each moved within the device's own
error tails (evidence from k images is at most about 2^-k); the raw drift beside the verdict shows it.

A swap to an exact device tie (the host ordered the pair, the device gives both scores the same value), whatever the
host gap, is a loss of resolution: FP16 keeps no bits to order scores closer than one ulp at their magnitude, and
such a tie always
costs half a pair against the host's order, one-sided by nature. These *resolution ties* are never excused: the
size of their net drift is charged in full (their gross is reported: near a decision boundary a tie of a pair the
host ordered wrongly gains what one it ordered rightly loses, and a device is not charged twice for one pair's
worth of resolution).

The gate's drift for a category is therefore: the reordering drift (gross) + |the resolution ties' net drift|
+ |N| where the near-ties are one-sided. The raw signed drift (the paper's criterion) is always reported beside
it; it can exceed the budget and pass only through near-ties that pass the population test.

Scores are divided by a power of two per category before anything is squared (exact, no overflow at any finite
scale), so multiplying every score by 2^k changes no count and no verdict.

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
SPREAD_SHARE = 0.25              # largest RMS device error, as a share of the host scores' robust spread σ
MOVE_SHARE = PROBABILISTIC_LAMBDA * SPREAD_SHARE  # largest single move of a near-tied score, in σ (λ/4 = 1)
OUTLIER_LAMBDA = 2 * PROBABILISTIC_LAMBDA  # largest move of a near-tied score, in robust sds of its category's errors
IQR_PER_SIGMA = 2.0 * float(stats.norm.ppf(0.75))  # 1.349: a normal distribution's IQR in standard deviations
MAD_PER_SIGMA = 1.0 / float(stats.norm.ppf(0.75))   # 1.4826
ERROR_QUANTILE = 99.0
Z95 = float(stats.norm.ppf(0.975))
NEAR_TIE_LEVEL = 0.99            # the near-tie population test: two-sided, a one-sided excess at the 1% level
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
    relative: np.ndarray       # r_i = e_i / s_i, e = (d - a)/b - h; NaN where the device score is not finite
    intercept: float           # a of the resistant line d ≈ a + b·h (device units)
    gain: float                # b (NaN where it cannot be fitted)
    spread: float              # σ, the host scores' robust spread (IQR / 1.349; MAD or mean absolute deviation)
    spread_ratio: float        # RMS(e) / σ; inf when the gain is not positive, or σ = 0 and the device moved
    epsilon: float = FP16_RELATIVE_ERROR
    error_sigma: float = 0.0   # σ_e, the robust spread of the errors e (1.4826·MAD), host units

    @property
    def within(self) -> np.ndarray:
        """Per image: the score moved no more than FP16 explains (rule 2, one score at a time)."""
        with np.errstate(invalid="ignore"):
            return np.abs(self.relative) <= self.epsilon

    @property
    def absolute(self) -> np.ndarray:
        """Per image: |r| s, the error after the resistant line, in host score units (inf where not finite)."""
        out = np.abs(self.relative) * self.scale
        out[~np.isfinite(self.relative)] = np.inf
        return out

    @property
    def resolvable(self) -> bool:
        """Rule 3: an increasing map, and the device's errors small next to the host scores' robust spread."""
        return bool(self.gain > 0) and self.spread_ratio <= SPREAD_SHARE

    @property
    def steady(self) -> np.ndarray:
        """Rule 4, per image: the score moved by at most MOVE_SHARE robust standard deviations of the host scores, and
        by at most OUTLIER_LAMBDA robust standard deviations of the category's own errors (or one FP16 rounding of
        the score, where the errors are smaller than that)."""
        own = np.maximum(OUTLIER_LAMBDA * self.error_sigma, FP16_UNIT_ROUNDOFF * self.scale)
        with np.errstate(invalid="ignore"):
            return (self.absolute <= MOVE_SHARE * self.spread) & (self.absolute <= own)

    @property
    def beyond(self) -> int:
        """Images whose error is beyond what FP16 explains (non-finite ones included)."""
        return int(np.count_nonzero(~self.within))

    @property
    def p99(self) -> float:
        """The 99th percentile of |r| over the finite scores, in relative terms."""
        r = np.abs(self.relative[np.isfinite(self.relative)])
        return float(np.percentile(r, ERROR_QUANTILE)) if r.size else 0.0


def power_of_two_scale(*arrays: np.ndarray) -> float:
    """A power of two within a factor 2 of the largest finite |value| (at most it): dividing by it is exact and keeps
    every value below 2, so squares and differences stay finite at any finite scale (2^1023 included)."""
    largest = max((float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in arrays), default=0.0)
    if largest == 0.0:
        return 1.0
    _, exponent = math.frexp(largest)  # largest = mantissa * 2^exponent, mantissa in [0.5, 1)
    return math.ldexp(1.0, exponent - 1)


def robust_spread(host: np.ndarray) -> float:
    """σ: the interquartile range / 1.349 (a normal's standard deviation); where half the scores tie, 1.4826·MAD;
    where more do, the mean absolute deviation from the median (0 only when every score is equal)."""
    if host.size == 0:
        return 0.0
    q1, median, q3 = np.percentile(host, [25, 50, 75])
    for value in (float(q3 - q1) / IQR_PER_SIGMA, MAD_PER_SIGMA * float(np.median(np.abs(host - median)))):
        if value > 0:
            return value
    return float(np.mean(np.abs(host - median)))


def resistant_line(host: np.ndarray, device: np.ndarray, iterations: int = 10) -> tuple[float, float]:
    """(a, b) of d ≈ a + b·h by Tukey's resistant line: the slope through the medians of the lowest and highest
    thirds of the host scores, polished on the residuals, a the median of d − b·h. Robust to a sixth of the
    images; O(n log n). b = 1 where the thirds' host medians coincide (the host is mostly one tied value)."""
    n = host.size
    third = n // 3
    b = 1.0
    if third >= 1:
        order = np.argsort(host, kind="stable")
        low, high = order[:third], order[n - third:]
        span = float(np.median(host[high]) - np.median(host[low]))
        if span > 0:
            b = 0.0
            for _ in range(iterations):
                residual = device - b * host
                step = float(np.median(residual[high]) - np.median(residual[low])) / span
                b += step
                if abs(step) <= 1e-12 * max(abs(b), 1e-300):
                    break
    a = float(np.median(device - b * host)) if n else 0.0
    return a, b


def score_errors(host, device, epsilon: float = FP16_RELATIVE_ERROR) -> ScoreErrors:
    """The device's errors on one category after the resistant line, relative to each score's scale."""
    h0 = np.asarray(host, np.float64)
    d0 = np.asarray(device, np.float64)
    finite = np.isfinite(d0)
    k = power_of_two_scale(h0, d0)
    h, d = h0 / k, np.where(finite, d0 / k, np.nan)
    magnitude = np.abs(h)
    floor = float(np.median(magnitude)) if magnitude.size else 0.0
    if floor == 0.0:  # more than half the scores are exactly zero: their largest magnitude is the scale
        floor = float(magnitude.max()) if magnitude.size else 0.0
    scale = np.maximum(magnitude, floor)
    a, b = resistant_line(h[finite], d[finite]) if finite.any() else (0.0, math.nan)
    error = np.full(h.shape, np.nan)
    if b > 0:
        error[finite] = (d[finite] - a) / b - h[finite]
    relative = np.full(h.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ok = np.isfinite(error) & (scale > 0)
        relative[ok] = error[ok] / scale[ok]
        zero = np.isfinite(error) & (scale == 0)
        relative[zero] = np.where(error[zero] == 0, 0.0, np.inf)
    spread = robust_spread(h)
    usable = np.isfinite(error)
    rms = float(np.sqrt(np.mean(error[usable] ** 2))) if usable.any() else 0.0
    sigma = MAD_PER_SIGMA * float(np.median(np.abs(error[usable] - np.median(error[usable])))) if usable.any() else 0.0
    if not b > 0:
        ratio = math.inf
    elif spread > 0:
        ratio = rms / spread
    else:
        ratio = 0.0 if rms == 0 else math.inf
    return ScoreErrors(scale * k, relative, a * k, b, spread * k, ratio, epsilon, sigma * k)


@dataclass
class PairMoves:
    """Pairs whose order differs between host and device, in counts and in AUROC points."""

    pairs: int
    near_ties: int = 0
    reorderings: int = 0
    near_tie_drift: float = 0.0      # signed, points
    reordering_drift: float = 0.0    # signed, points
    reordering_gross: float = 0.0    # both directions, points
    resolution_ties: int = 0         # pairs the host ordered and the device tied (any host gap)
    resolution_drift: float = 0.0    # signed, points
    resolution_gross: float = 0.0    # both directions, points
    near_tie_var: float | None = 0.0  # variance of near_tie_drift, points²; None when undefined (a class of 1)
    near_tie_df: int = 0             # its degrees of freedom: min(normal, anomalous images) - 1
    image_reorderings: dict[int, int] = field(default_factory=dict)  # image index -> real reorderings

    @property
    def point(self) -> float:
        return 100.0 / self.pairs if self.pairs else math.inf

    @property
    def near_tie_ci(self) -> tuple[float, float] | None:
        return near_tie_interval(self.near_tie_drift, self.near_tie_var, self.near_tie_df)


def near_tie_quantile(df: int) -> float:
    """The two-sided NEAR_TIE_LEVEL quantile: Student's t with ``df`` degrees of freedom (the variance is estimated
    from min(normal, anomalous) - 1 independent components at best), the normal's where df is large."""
    return float(stats.t.ppf(0.5 + NEAR_TIE_LEVEL / 2, df)) if df < 1000 else float(stats.norm.ppf(0.5 + NEAR_TIE_LEVEL / 2))


def pooled_near_tie_z(drifts: list[float], variances: list[float | None]) -> float | None:
    """The categories' near-tie sums combined with inverse-variance weights, z = Σ(N_c/v_c) / √Σ(1/v_c): the most
    powerful combination of independent estimates, and one a small category with an enormous variance cannot
    drown (in the plain mean's variance, Σ v_c / C², it can). inf where a category moved one way with variance 0;
    None where no category can be tested."""
    usable = [(n, v) for n, v in zip(drifts, variances) if v is not None]
    if not usable:
        return None
    if any(v <= 0 and n != 0 for n, v in usable):
        return math.inf
    weighted = [(n, v) for n, v in usable if v > 0]
    if not weighted:
        return 0.0
    return sum(n / v for n, v in weighted) / math.sqrt(sum(1.0 / v for _, v in weighted))


def near_tie_interval(drift: float, var: float | None, df: int) -> tuple[float, float] | None:
    """The 99% interval (NEAR_TIE_LEVEL) of a near-tie drift in points, from its variance in points²."""
    if var is None or df < 1:
        return None
    half = near_tie_quantile(df) * math.sqrt(var)
    return drift - half, drift + half


def near_ties_one_sided(drift: float, var: float | None, df: int) -> bool:
    """True where the near-ties' signed drift is not centred on zero: its 99% interval excludes 0 (or its variance
    is 0 and it is not). False where no interval exists (a class of one image: untestable, the magnitude rules
    alone judge its swaps)."""
    if drift == 0.0 or var is None or df < 1:
        return False
    if var <= 0.0:
        return True
    return abs(drift) > near_tie_quantile(df) * math.sqrt(var)


def _order(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """1 where the anomalous score is above the normal one, 0.5 where tied, 0 below."""
    return (hi > lo).astype(np.float32) + 0.5 * (hi == lo).astype(np.float32)


def _structural_var(per_anomalous: np.ndarray, per_normal: np.ndarray) -> float | None:
    """DeLong's variance of a two-sample U-statistic from its structural components (fractions²)."""
    m, n = per_anomalous.size, per_normal.size
    if m < 2 or n < 2:
        return None
    return float(np.var(per_anomalous, ddof=1) / m + np.var(per_normal, ddof=1) / n)


def pair_moves(labels, host, device, errors: ScoreErrors | None = None) -> PairMoves:
    """Every normal/anomalous pair whose order moved, split into near-ties, resolution ties and real reorderings
    (module docstring). ``errors`` None: every moved pair is a real reordering."""
    lab = np.asarray(labels).astype(bool)
    k = power_of_two_scale(np.asarray(host, np.float64), np.asarray(device, np.float64))
    h = np.asarray(host, np.float64) / k  # exact: orders, ties and every comparison below are unchanged
    d = np.asarray(device, np.float64) / k
    pos_idx, neg_idx = np.flatnonzero(lab), np.flatnonzero(~lab)
    moves = PairMoves(pairs=len(pos_idx) * len(neg_idx))
    if not moves.pairs:
        return moves
    hp, dp = h[pos_idx], d[pos_idx]
    floating = errors is not None and errors.epsilon > 0  # a quantised device (eps = 0): every swap is real
    excusable = floating and errors.resolvable
    if floating:
        s_all, e_all = errors.scale / k, errors.absolute / k
        ok_all = errors.steady
        sp, ep, okp = s_all[pos_idx], e_all[pos_idx], ok_all[pos_idx]
    per_image = np.zeros(len(h), dtype=np.int64)
    near_sum = np.zeros(len(h))  # per image: the signed near-tie changes it takes part in
    step = max(1, _CHUNK // len(pos_idx))
    sums = np.zeros(8)
    for begin in range(0, len(neg_idx), step):
        rows = neg_idx[begin:begin + step]
        hn, dn = h[rows][:, None], d[rows][:, None]
        change = _order(dp[None, :], dn) - _order(hp[None, :], hn)
        moved = change != 0
        if floating:
            sn, en = s_all[rows][:, None], e_all[rows][:, None]
            reach = errors.epsilon * (sp[None, :] + sn)
            tie = moved & (dp[None, :] == dn)  # a device tie: one-sided by nature, charged at its net, never excused
            near = moved & ~tie & (np.abs(hp[None, :] - hn) <= reach) & (ep[None, :] + en <= reach) \
                & okp[None, :] & ok_all[rows][:, None] if excusable else np.zeros_like(moved)
        else:
            tie = near = np.zeros_like(moved)
        real = moved & ~near & ~tie
        near_change = np.where(near, change, 0.0)
        sums += [np.count_nonzero(near), np.count_nonzero(real), near_change.sum(), change[real].sum(),
                 np.abs(change[real]).sum(), np.count_nonzero(tie), change[tie].sum(), np.abs(change[tie]).sum()]
        per_image[rows] += real.sum(axis=1)
        per_image[pos_idx] += real.sum(axis=0)
        near_sum[rows] += near_change.sum(axis=1)
        near_sum[pos_idx] += near_change.sum(axis=0)
    point = moves.point
    moves.near_ties, moves.reorderings = int(sums[0]), int(sums[1])
    moves.near_tie_drift = float(sums[2]) * point
    moves.reordering_drift = float(sums[3]) * point
    moves.reordering_gross = float(sums[4]) * point
    moves.resolution_ties = int(sums[5])
    moves.resolution_drift = float(sums[6]) * point
    moves.resolution_gross = float(sums[7]) * point
    m, n = len(pos_idx), len(neg_idx)
    var = _structural_var(near_sum[pos_idx] / n, near_sum[neg_idx] / m)
    moves.near_tie_var = None if var is None else (var * 100.0 ** 2 if moves.near_ties else 0.0)
    moves.near_tie_df = min(m, n) - 1
    moves.image_reorderings = {int(i): int(c) for i, c in enumerate(per_image) if c}
    return moves


# the rule that decided a verdict (CategoryDrift.decided_by, FidelityReport.decided_by)
WITHIN_BUDGET = "within budget"
ROUNDING = "raw drift over budget only through near-ties consistent with rounding"
REORDERINGS = "real reorderings"
RESOLUTION = "FP16 resolution ties"
NEAR_TIE_SHIFT = "a systematic shift hidden in near-ties"
NONFINITE = "NaN/inf device scores"
RESOLUTION_FIX = ("keep the score output in FP32 (--keep-fp32 on the nodes after the last weighted layer), or remove "
                  "the offset inside the graph so the scores use FP16's bits")


@dataclass(frozen=True)
class GateDrift:
    """What the gate charges against the budget, in points (module docstring): real reorderings (gross), the
    resolution ties' net drift, and the near-ties' signed drift where they are one-sided."""

    reordering: float            # gross
    resolution: float            # signed: each resolution tie moves its pair half-way to a tie, never back
    near_tie: float              # signed
    near_tie_var: float | None
    near_tie_df: int = 0
    category_near_tie_charge: float = 0.0  # the benchmark: the mean over categories of their own near-tie charges
    pooled_z: float | None = None  # the benchmark: the inverse-variance pooled z of the categories' near-tie sums

    @property
    def one_sided(self) -> bool:
        if self.pooled_z is not None:
            return self.near_tie_df >= 1 and abs(self.pooled_z) > near_tie_quantile(self.near_tie_df)
        return near_ties_one_sided(self.near_tie, self.near_tie_var, self.near_tie_df)

    @property
    def near_tie_charged(self) -> float:
        """|N| where one-sided; for the benchmark at least the mean of the categories' own charges, so a small
        category with a wide interval cannot hide the others' shifts in the pooled test."""
        return max(abs(self.near_tie) if self.one_sided else 0.0, self.category_near_tie_charge)

    @property
    def total(self) -> float:
        return self.reordering + abs(self.resolution) + self.near_tie_charged

    def decided_by(self, budget: float, raw: float | None, slack: float) -> str:
        """The rule that decided: the first part that alone takes the charge over the budget, in the order
        reorderings, resolution ties, near-tie shift; for a pass, whether the raw drift was over budget."""
        if self.total <= budget + slack:
            return ROUNDING if raw is not None and abs(raw) > budget + slack else WITHIN_BUDGET
        if self.reordering > budget + slack:
            return REORDERINGS
        if self.reordering + abs(self.resolution) > budget + slack:
            return RESOLUTION
        return NEAR_TIE_SHIFT
