"""Host vs device, compared: per category (image and pixel metrics, DeLong interval, near-ties and real
reorderings, rank movers) and for the benchmark, into a :class:`~edgedeploy.evaluation.fidelity.report.FidelityReport`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.data import Benchmark
from edgedeploy.evaluation.fidelity.drift import (FP16_RELATIVE_ERROR, NONFINITE, SPREAD_SHARE, GateDrift,
                                                  PairMoves, delong_paired, device_epsilon, interval_points,
                                                  near_tie_interval, pair_moves, pooled_near_tie_z,
                                                  score_errors)
from edgedeploy.evaluation.fidelity.report import (DRIFT_EPS, GATES, METRICS, CategoryDrift, FidelityReport, Mover,
                                                   mover_order)
from edgedeploy.evaluation.metrics import MetricInputError, evaluate_category, f1_max, rank_correlations
from edgedeploy.runtime.batch import ScoredBenchmark


@dataclass(frozen=True)
class PixelSpec:
    """How raw anomaly maps become pixel maps for the pixel metrics: the recipe's input size and smoothing."""

    size: int
    sigma: float


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank 1 = highest score; ties share their average rank."""
    return stats.rankdata(-scores, method="average")


def _pixel_maps(raw: list | None, pixel: PixelSpec | None) -> np.ndarray | None:
    if pixel is None or raw is None or any(m is None for m in raw) or len({np.shape(m) for m in raw}) != 1:
        return None
    from edgedeploy.core.postprocess import postprocess_maps

    return postprocess_maps(np.stack([np.asarray(m, np.float32) for m in raw]), pixel.size, pixel.sigma)


def _metrics(labels, scores, masks, maps) -> dict:
    if masks is None or maps is None:
        return evaluate_category(labels, scores)
    return evaluate_category(labels, scores, masks, maps)


def _max_map_diff(host_maps, device_maps, n: int) -> float | None:
    if host_maps is None or device_maps is None or not (len(host_maps) == len(device_maps) == n):
        return None
    if not all(h is not None and d is not None and np.shape(h) == np.shape(d) for h, d in zip(host_maps, device_maps)):
        return None
    with np.errstate(invalid="ignore"):
        return float(max(np.max(np.abs(np.asarray(d, np.float64) - np.asarray(h, np.float64)))
                         for h, d in zip(host_maps, device_maps)))


def _undefined(category: str, paths: list[str], labels: np.ndarray, host: np.ndarray, device: np.ndarray
               ) -> CategoryDrift:
    n_bad = int(np.count_nonzero(labels))
    missing = "anomalous" if n_bad == 0 else "normal"
    note = (f"{category}: image AUROC undefined (no {missing} images among its {len(paths)}): left out of the means "
            "and the gate")
    diff = np.abs(device - host)
    return CategoryDrift(category, len(paths), n_bad, None, None, None, None, None,
                         float(np.nanmax(diff)) if diff.size else 0.0, float(np.nanmean(diff)) if diff.size else 0.0,
                         None, 0, notes=[note], passed=True, defined=False)


def compare_category(category: str, paths: list[str], labels: np.ndarray, host: np.ndarray, device: np.ndarray,
                     max_drift: float, top: int = 5, host_maps: list | None = None, device_maps: list | None = None,
                     masks: np.ndarray | None = None, pixel: PixelSpec | None = None,
                     epsilon: float = FP16_RELATIVE_ERROR) -> CategoryDrift:
    """Host vs device on one category's images (host scores must be finite)."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return _undefined(category, paths, labels, host, device)
    notes: list[str] = []
    finite = np.isfinite(device)
    nonfinite = [p for p, ok in zip(paths, finite) if not ok]
    host_pix = _pixel_maps(host_maps, pixel) if masks is not None else None
    host_metrics = _metrics(labels, host, masks, host_pix)
    _, threshold = f1_max(labels, host)
    diff = np.abs(device - host)[finite]
    flips = int(np.count_nonzero((host >= threshold) != (device >= threshold)))
    result = CategoryDrift(category, len(paths), int(np.count_nonzero(labels)), host_metrics["image_auroc"], None,
                           None, None, None, math.inf if nonfinite else float(np.max(diff, initial=0.0)),
                           float(np.mean(diff)) if diff.size else 0.0,
                           threshold, flips, nonfinite,
                           _max_map_diff(host_maps, device_maps, len(paths)), notes=notes, host_metrics=host_metrics)
    if nonfinite:
        notes.append(f"{category}: {len(nonfinite)} device scores are NaN or inf (FP16 overflow?): "
                     + ", ".join(nonfinite[:5]))
        result.passed = False
        result.decided_by = NONFINITE
        return result
    device_pix = _pixel_maps(device_maps, pixel) if host_pix is not None else None
    result.device_metrics = _metrics(labels, device, masks if device_pix is not None else None, device_pix)
    paired = delong_paired(labels, host, device)
    result.device_auroc = result.device_metrics["image_auroc"]
    result.drift = result.device_auroc - result.host_auroc
    result.var_diff = paired.var_diff
    result.ci = interval_points(result.drift, paired.var_diff)
    errors = score_errors(host, device, epsilon)
    result.spread_ratio, result.error_p99, result.beyond_fp16 = errors.spread_ratio, errors.p99, errors.beyond
    result.error_intercept, result.error_gain, result.host_spread = errors.intercept, errors.gain, errors.spread
    constant = [(side, scores[0]) for side, scores in (("host", host), ("device", device)) if np.all(scores == scores[0])]
    for side, value in constant:
        notes.append(f"{category}: every {side} score is {value:.6g}: an AUROC of 50 from ties alone, which means "
                     f"nothing; the {side} model or its score file is broken")
    if not errors.resolvable and not any(side == "host" for side, _ in constant):
        notes.append(_unresolvable_note(category, errors, epsilon))
    moves = pair_moves(labels, host, device, errors)
    _apply_moves(result, moves)
    try:
        corr = rank_correlations(host, device)
        result.spearman, result.kendall = corr["spearman"], corr["kendall"]
    except MetricInputError as exc:
        notes.append(f"{category}: rank correlation undefined ({exc})")
    result.movers = _movers(category, paths, labels, host, device, moves, top)
    charge = GateDrift(moves.reordering_gross, moves.resolution_drift, moves.near_tie_drift, moves.near_tie_var,
                       moves.near_tie_df)
    result.gate_drift, result.near_tie_one_sided = charge.total, charge.one_sided
    result.near_tie_charged = charge.near_tie_charged
    result.decided_by = charge.decided_by(max_drift, result.drift, DRIFT_EPS)
    result.passed = result.gate_drift <= max_drift + DRIFT_EPS
    return result


def _unresolvable_note(category: str, errors, epsilon: float) -> str:
    packed = (" (the host scores are packed within FP16's own resolution: no FP16 device can hold this ranking)"
              if errors.p99 <= epsilon else "")
    if not errors.gain > 0:
        trend = "fall as the host's rise" if errors.gain < 0 else "do not rise with the host's (most of them tied)"
        return (f"{category}: the device's scores {trend} (resistant-line gain {errors.gain:.3g}): not an increasing "
                "map of the host scores, so none of its swaps is excused as a near-tie" + packed)
    return (f"{category}: the device's errors are {errors.spread_ratio:.2f} of the host scores' robust spread (RMS "
            f"error / (IQR/1.349); FP16 rounding stays below {SPREAD_SHARE:g}): the device is moving scores across "
            "the ranking, not rounding them, so none of its swaps is excused as a near-tie" + packed)


def _apply_moves(result: CategoryDrift, moves: PairMoves) -> None:
    result.near_ties, result.reorderings = moves.near_ties, moves.reorderings
    result.near_tie_drift, result.reordering_drift = moves.near_tie_drift, moves.reordering_drift
    result.reordering_gross = moves.reordering_gross
    result.resolution_ties, result.resolution_drift = moves.resolution_ties, moves.resolution_drift
    result.resolution_gross, result.near_tie_var = moves.resolution_gross, moves.near_tie_var
    result.near_tie_df = moves.near_tie_df
    result.near_tie_ci = moves.near_tie_ci


def _movers(category: str, paths: list[str], labels: np.ndarray, host: np.ndarray, device: np.ndarray,
            moves: PairMoves, top: int) -> list[Mover]:
    hr, dr = _ranks(host), _ranks(device)
    movers = [Mover(paths[i], category, int(labels[i]), float(host[i]), float(device[i]), float(hr[i]), float(dr[i]),
                    moves.image_reorderings.get(i, 0))
              for i in range(len(paths)) if dr[i] != hr[i] or moves.image_reorderings.get(i)]
    return sorted(movers, key=mover_order)[:top]


def _category_masks(samples, pixel: PixelSpec | None) -> np.ndarray | None:
    """The category's masks at the model's input size (all-normal images get an empty one); None without masks."""
    if pixel is None or not any(s.mask_path for s in samples):
        return None
    from edgedeploy.evaluation.data import load_mask

    empty = np.zeros((pixel.size, pixel.size), dtype=bool)
    return np.stack([load_mask(s.mask_path, pixel.size) if s.mask_path else empty for s in samples])


def _mean(categories: list[CategoryDrift], all_h: np.ndarray, all_d: np.ndarray) -> dict:
    defined = [c for c in categories if c.defined]
    diff = np.abs(all_d - all_h)
    n = sum(c.n for c in categories)
    flips = sum(c.flips for c in categories)

    def mean_of(name: str) -> float | None:
        values = [getattr(c, name) for c in defined]
        return None if not values or any(v is None for v in values) else float(np.mean(values))

    def metric_means(side: str) -> dict:
        out = {}
        for key, _ in METRICS:
            values = [getattr(c, side)[key] for c in defined if key in c.host_metrics and key in c.device_metrics]
            if values:
                out[key] = float(np.mean(values))
        return out

    variances = [c.var_diff for c in defined]
    drift = mean_of("drift")
    var = None if drift is None or any(v is None for v in variances) else float(sum(variances)) / len(defined) ** 2
    near_tie_drift = mean_of("near_tie_drift")
    # the pooled near-tie test: the categories whose near-tie variance is defined (both classes of 2+ images)
    testable = [c for c in defined if c.near_tie_var is not None and c.near_tie_df >= 1]
    pooled_var = float(sum(c.near_tie_var for c in testable)) / len(defined) ** 2 if testable else None
    pooled_df = sum(c.near_tie_df for c in testable)
    pooled_z = pooled_near_tie_z([c.near_tie_drift for c in testable], [c.near_tie_var for c in testable])
    category_charge = float(np.mean([c.near_tie_charged for c in defined])) if defined else 0.0
    charge = GateDrift(mean_of("reordering_gross") or 0.0, mean_of("resolution_drift") or 0.0, near_tie_drift or 0.0,
                       pooled_var, pooled_df, category_charge, 0.0 if pooled_z is None else pooled_z) \
        if defined and not any(c.nonfinite for c in defined) else None
    return {"n": n, "categories": len(defined), "host_auroc": mean_of("host_auroc"),
            "device_auroc": mean_of("device_auroc"), "drift": drift, "var_diff": var,
            "ci": interval_points(drift, var) if drift is not None else None,
            "near_ties": sum(c.near_ties for c in defined), "reorderings": sum(c.reorderings for c in defined),
            "near_tie_drift": near_tie_drift, "near_tie_var": pooled_var, "near_tie_z": pooled_z,
            "near_tie_df": pooled_df, "near_tie_category_charge": category_charge,
            "near_tie_ci": near_tie_interval(near_tie_drift, pooled_var, pooled_df) if near_tie_drift is not None
            else None,
            "near_tie_one_sided": (charge.one_sided or category_charge > 0) if charge else None,
            "resolution_ties": sum(c.resolution_ties for c in defined), "resolution_drift": mean_of("resolution_drift"),
            "resolution_gross": mean_of("resolution_gross"), "gate_drift": charge.total if charge else None,
            "gate_parts": {"reordering": charge.reordering, "resolution_ties": abs(charge.resolution),
                           "near_tie_shift": charge.near_tie_charged} if charge else None,
            "reordering_drift": mean_of("reordering_drift"),
            "reordering_gross": mean_of("reordering_gross"), "spearman": mean_of("spearman"),
            "kendall": mean_of("kendall"), "max_abs_diff": float(np.nanmax(diff)) if diff.size else 0.0,
            "mean_abs_diff": float(np.nanmean(diff)) if diff.size else 0.0, "flips": flips,
            "flip_share": flips / n if n else 0.0, "host_metrics": metric_means("host_metrics"),
            "device_metrics": metric_means("device_metrics")}


def compare(host: ScoredBenchmark, device: ScoredBenchmark, bench: Benchmark, max_drift: float = 0.2, top: int = 5,
            target: str = "", info: dict | None = None, notes: list[str] | None = None, gate: str = "benchmark",
            pixel: PixelSpec | None = None, max_pixel_drift: float | None = None,
            precision: str | None = None) -> FidelityReport:
    """Compare two score tables of ``bench`` (both in benchmark order) category by category.

    ``pixel`` turns on pixel AUROC and AUPRO where the benchmark has masks and both sides kept maps;
    ``max_pixel_drift`` (points) fails the report where either drops by more than that (None: not judged).
    ``precision``: the device graph's integer precision (w8a16, w8a8, int8) for the error model (drift.py), or None.
    """
    epsilon = device_epsilon(precision)
    if gate not in GATES:
        raise EdgeDeployError(f"--gate {gate!r} is not one of {', '.join(GATES)}")
    host_rows, device_rows = host.table.by_path(), device.table.by_path()
    all_h = np.array([host_rows[s.rel_path].score for s in bench.samples], dtype=np.float64)
    all_d = np.array([device_rows[s.rel_path].score for s in bench.samples], dtype=np.float64)
    if not np.isfinite(all_h).all():
        bad = [s.rel_path for s, v in zip(bench.samples, all_h) if not math.isfinite(v)]
        raise MetricInputError(f"host scores are NaN or inf for {', '.join(bad[:5])}: the reference model "
                               "itself is broken on these images")
    categories = []
    for category, samples in bench.by_category().items():
        paths = [s.rel_path for s in samples]
        labels = np.array([s.label for s in samples])
        h = np.array([host_rows[p].score for p in paths], dtype=np.float64)
        d = np.array([device_rows[p].score for p in paths], dtype=np.float64)
        hm = [host.maps.get(p) for p in paths] if host.maps else None
        dm = [device.maps.get(p) for p in paths] if device.maps else None
        masks = _category_masks(samples, pixel) if hm is not None and labels.min() != labels.max() else None
        categories.append(compare_category(category, paths, labels, h, d, max_drift, top, hm, dm, masks, pixel,
                                           epsilon))
    if not any(c.defined for c in categories):
        raise EdgeDeployError(f"no category of {bench.name} has both normal and anomalous images: image AUROC is "
                              "undefined everywhere; check --categories and the benchmark folder")
    all_notes = list(notes or []) + [note for c in categories for note in c.notes]
    return FidelityReport(bench.name, target, max_drift, host.label, device.label, categories,
                          _mean(categories, all_h, all_d), dict(info or {}), all_notes, gate, epsilon,
                          precision if precision not in (None, "fp16", "fp32") else None, max_pixel_drift)
