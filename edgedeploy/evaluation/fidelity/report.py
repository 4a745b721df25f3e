"""The drift report: host vs device, per category and for the benchmark.

Per category, host and device side by side, each with its drift (device - host, points): image
AUROC, image AP and F1-max, and, where masks exist and both sides kept maps, pixel AUROC and AUPRO
(``edgedeploy.evaluation.metrics``, the maps post-processed by ``edgedeploy.core.postprocess`` as every path does).
For the image AUROC also: the resolution (points one normal/anomalous pair is worth), DeLong's 95%
interval of the drift, and the pairs whose order moved, split into near-ties (host gap within what
FP16 rounding can explain) and real reorderings (``drift.py``); Spearman and Kendall of the scores,
max and mean |score difference|, decision flips at the host's F1-max threshold and the images whose
rank moved most, those in real reorderings first.

The gate (written down in docs/fidelity.md and in every report, the rule in ``drift.py``): the *gate drift* — the
AUROC points carried by real reorderings (either direction), plus the net points of resolution ties (pairs the host
ordered that the device ties), plus the near-ties' signed sum where its 99% interval excludes 0 — must stay within
``max_drift``. With ``gate="benchmark"`` (the default, the paper's criterion) its mean over categories is checked (the
near-tie test on the mean); with ``gate="category"`` each category's. Near-ties (swaps FP16 rounding explains,
relative to the scores' own scale, after a resistant line per category) are excused only while they moved both
ways, so one pair 4e-4 apart cannot fail a small category, while a device that reorders pairs beyond FP16's reach,
shifts one class within the near-ties, or whose errors are large next to the host scores' robust spread, fails
however its AUROC happens to move. NaN/inf device scores (an FP16 overflow) always fail. The raw drift, the paper's
figure, and its interval are reported beside the verdict, with the rule that decided (``decided_by``). The
comparison that fills a report is ``compare.py``; its rendering ``render.py``.

A category without normal or without anomalous images has no AUROC: it is named, and left out of
the means and the gate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from edgedeploy.core.files import json_safe
from edgedeploy.evaluation.fidelity.drift import (ACTIVATION_BITS, FP16_RELATIVE_ERROR, FP16_UNIT_ROUNDOFF, MOVE_SHARE,
                                                  NEAR_TIE_SHIFT, NONFINITE, OUTLIER_LAMBDA, PROBABILISTIC_LAMBDA,
                                                  RESOLUTION, RESOLUTION_FIX, ROUNDING, ROUNDING_POINTS, SPREAD_SHARE,
                                                  GateDrift, integer_chain_bound, integer_half_step)

DRIFT_EPS = 1e-9  # drift is compared in points; float noise must not turn 0.2 into a failure
GATES = ("benchmark", "category")
METRICS = (("image_auroc", "AUROC"), ("image_ap", "AP"), ("f1_max", "F1-max"), ("pixel_auroc", "pixel AUROC"),
           ("aupro", "AUPRO"))
PIXEL_METRICS = (("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))  # judged by --max-pixel-drift
DEFAULT_MAX_PIXEL_DRIFT = 1.0  # points of pixel AUROC and of AUPRO (edgedeploy fidelity --max-pixel-drift)
CI_METHOD = "DeLong, DeLong & Clarke-Pearson (1988), paired AUROCs on the same images; mean: categories independent"


@dataclass
class Mover:
    path: str
    category: str
    label: int
    host_score: float
    device_score: float
    host_rank: float
    device_rank: float
    reorderings: int = 0  # real reorderings (beyond near-ties) this image takes part in

    @property
    def moved(self) -> float:
        return self.device_rank - self.host_rank


@dataclass
class CategoryDrift:
    category: str
    n: int
    n_anomalous: int
    host_auroc: float | None
    device_auroc: float | None
    drift: float | None
    spearman: float | None
    kendall: float | None
    max_abs_diff: float
    mean_abs_diff: float
    threshold: float | None
    flips: int
    nonfinite: list[str] = field(default_factory=list)
    max_map_diff: float | None = None
    movers: list[Mover] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    passed: bool = True                  # the category gate's verdict on this category
    defined: bool = True                 # both classes present: AUROC defined
    host_metrics: dict = field(default_factory=dict)
    device_metrics: dict = field(default_factory=dict)
    ci: tuple[float, float] | None = None
    var_diff: float | None = None        # DeLong variance of the drift, AUROC fraction squared
    near_ties: int = 0
    reorderings: int = 0
    near_tie_drift: float = 0.0
    reordering_drift: float = 0.0
    reordering_gross: float | None = None
    spread_ratio: float | None = None    # RMS device error / robust spread of the host scores (rule 3, drift.py)
    error_p99: float | None = None       # 99th percentile relative device error |r|, after the resistant line
    error_intercept: float | None = None  # a of the resistant line d ≈ a + b·h
    error_gain: float | None = None      # b of the resistant line
    host_spread: float | None = None     # σ, the host scores' robust spread (IQR / 1.349)
    beyond_fp16: int = 0                 # images whose error FP16 does not explain (|r| > epsilon)
    resolution_ties: int = 0             # pairs the host ordered and the device tied (FP16's loss of resolution)
    resolution_drift: float = 0.0        # signed, points
    resolution_gross: float = 0.0        # both directions, points
    near_tie_var: float | None = None    # variance of near_tie_drift, points²
    near_tie_ci: tuple[float, float] | None = None  # its 99% interval, points (None: a class of one image)
    near_tie_df: int = 0                 # degrees of freedom of its variance: min(normal, anomalous) - 1
    near_tie_charged: float = 0.0        # what the near-ties cost in the gate drift
    near_tie_one_sided: bool = False     # the interval excludes 0: a systematic shift hidden in near-ties
    gate_drift: float | None = None      # what the gate charges: reorderings + resolution ties + a one-sided near-tie sum
    decided_by: str = ""                 # the rule that decided this category's verdict (drift.py)

    @property
    def flip_share(self) -> float:
        return self.flips / self.n if self.n else 0.0

    @property
    def pair_points(self) -> float:
        """AUROC points one normal/anomalous pair is worth: the resolution of this category's drift."""
        pairs = self.n_anomalous * (self.n - self.n_anomalous)
        return 100.0 / pairs if pairs else math.inf

    @property
    def pairs_moved(self) -> float | None:
        """|drift| in pairs (a tie counts half, a swap one)."""
        return None if self.drift is None or not self.defined else abs(self.drift) / self.pair_points

    def metric_drift(self, key: str) -> float | None:
        if key in self.host_metrics and key in self.device_metrics:
            return self.device_metrics[key] - self.host_metrics[key]
        return None


@dataclass
class FidelityReport:
    bench: str
    target: str
    max_drift: float
    host: str
    device: str
    categories: list[CategoryDrift]
    mean: dict
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    gate: str = "benchmark"
    epsilon: float = FP16_RELATIVE_ERROR  # the FP16 error model's relative error per score
    precision: str | None = None          # the device graph's integer precision (w8a16, w8a8, int8), None: float
    max_pixel_drift: float | None = None  # the pixel gate's budget (points of pixel AUROC and AUPRO); None: off

    @property
    def quantized(self) -> bool:
        return self.precision in ACTIVATION_BITS

    def pixel_checks(self) -> list[tuple[str, str, float, float]]:
        """(where, metric label, host, device) for every pixel metric the pixel gate judges: the means over
        categories (gate benchmark) or each category (gate category), where both sides have it."""
        scopes = ([("mean", self.mean.get("host_metrics") or {}, self.mean.get("device_metrics") or {})]
                  if self.gate == "benchmark" else
                  [(c.category, c.host_metrics, c.device_metrics) for c in self.defined])
        return [(where, label, host[key], device[key]) for where, host, device in scopes
                for key, label in PIXEL_METRICS if key in host and key in device]

    def pixel_failures(self) -> list[tuple[str, str, float, float]]:
        """The pixel checks whose device value is more than ``max_pixel_drift`` points below the host's."""
        if self.max_pixel_drift is None:
            return []
        return [c for c in self.pixel_checks() if c[2] - c[3] > self.max_pixel_drift + DRIFT_EPS]

    @property
    def pixel_passed(self) -> bool:
        return not self.pixel_failures()

    def pixel_rule(self) -> str:
        """The pixel gate's rule ('' when it is off)."""
        if self.max_pixel_drift is None:
            return ""
        scope = "the means over categories" if self.gate == "benchmark" else "each category's"
        return (f"pixel gate: pixel AUROC and AUPRO ({scope}) must not drop by more than {self.max_pixel_drift:g} "
                f"points (device - host >= -{self.max_pixel_drift:g}, --max-pixel-drift), whatever the image gate says")

    def pixel_line(self) -> str:
        """The pixel gate's rule and outcome, one line ('' when it is off)."""
        if self.max_pixel_drift is None:
            return ""
        checks = self.pixel_checks()
        rule = self.pixel_rule()
        if not checks:
            return f"{rule}; not checked: no pixel metrics on both sides (masks, and maps from host and device)"
        failed = self.pixel_failures()
        shown = ", ".join(f"{label}{'' if where == 'mean' else ' in ' + where} {h:.2f} -> {d:.2f} ({d - h:+.2f})"
                          for where, label, h, d in (failed or checks))
        return f"{rule}; {'FAIL: ' if failed else 'holds: '}{shown}"

    def error_model(self) -> dict:
        """The error model behind the near-tie rule, for fidelity.json."""
        model = {"epsilon": self.epsilon, "unit_roundoff": FP16_UNIT_ROUNDOFF, "rounding_points": ROUNDING_POINTS,
                 "lambda": PROBABILISTIC_LAMBDA, "spread_share": SPREAD_SHARE, "move_share": MOVE_SHARE,
                 "outlier_lambda": OUTLIER_LAMBDA, "near_tie_level": 0.99,
                 "spread": "IQR / 1.349 of the host scores (MAD, then mean absolute deviation where it is 0)",
                 "offset": "resistant line d = a + b*h per category (Tukey), errors measured after it",
                 "near_tie_test": "95% interval of the near-ties' signed drift (DeLong structural components) must "
                                  "include 0, else its size is charged",
                 "resolution_ties": "pairs the host ordered and the device ties: never excused",
                 "measured_relative_error_p99": self.error_p99}
        if self.quantized:
            bits = ACTIVATION_BITS[self.precision]
            model.update(precision=self.precision, activation_bits=bits, integer_rounding_excused=False,
                         integer_half_step_of_range=integer_half_step(bits),
                         integer_chain_bound_not_adopted=integer_chain_bound(bits),
                         why=("a b-bit activation errs by up to 2^-(b+1) of its calibrated range, not of its value: "
                              "no bound on a score's error follows from the bits alone, so integer rounding is never "
                              "excused, and a swap cannot be told apart from the float parts' FP16 rounding: eps = 0, no near-ties"))
        return model

    @property
    def error_p99(self) -> float | None:
        """The largest category's 99th-percentile relative device error."""
        values = [c.error_p99 for c in self.defined if c.error_p99 is not None]
        return max(values) if values else None

    @property
    def defined(self) -> list[CategoryDrift]:
        return [c for c in self.categories if c.defined]

    @property
    def nonfinite(self) -> list[CategoryDrift]:
        return [c for c in self.defined if c.nonfinite]

    @property
    def gate_value(self) -> float | None:
        """The benchmark's gate drift: the mean over categories of the points real reorderings and resolution ties
        carry, plus the mean near-tie drift where it is one-sided (drift.py)."""
        return self.mean.get("gate_drift")

    def _charge(self) -> GateDrift | None:
        m = self.mean
        if m.get("gate_drift") is None:
            return None
        z = m.get("near_tie_z")
        return GateDrift(m.get("reordering_gross") or 0.0, m.get("resolution_drift") or 0.0,
                         m.get("near_tie_drift") or 0.0, m.get("near_tie_var"), m.get("near_tie_df") or 0,
                         m.get("near_tie_category_charge") or 0.0, 0.0 if z is None else float(z))

    @property
    def decided_by(self) -> str:
        """The rule that decided the image verdict (drift.py's names)."""
        if self.nonfinite:
            return NONFINITE
        if self.gate == "category":
            failed = self.failed
            if failed:
                return max(failed, key=lambda c: c.gate_drift or 0.0).decided_by
            return ROUNDING if any(c.decided_by == ROUNDING for c in self.defined) else "within budget"
        charge = self._charge()
        return "undefined" if charge is None else charge.decided_by(self.max_drift, self.mean.get("drift"), DRIFT_EPS)

    @property
    def image_passed(self) -> bool:
        if self.gate == "category":
            return all(c.passed for c in self.defined)
        value = self.gate_value
        return not self.nonfinite and value is not None and value <= self.max_drift + DRIFT_EPS

    @property
    def passed(self) -> bool:
        return self.image_passed and self.pixel_passed

    @property
    def failed(self) -> list[CategoryDrift]:
        return [c for c in self.defined if not c.passed]

    def rule(self) -> str:
        scope = "its mean over categories" if self.gate == "benchmark" else "each category's"
        if self.quantized:
            bits = ACTIVATION_BITS[self.precision]
            quantized = (f". The device graph is {self.precision.upper()} (QDQ, {bits}-bit activations): each {bits}-bit "
                         f"rounding errs by up to 2^-{bits + 1} of the tensor's calibrated range, not of its value, so "
                         "no bound on a score's error follows from the bit width and the integer rounding is never "
                         "excused: eps = 0, no swap is a near-tie and every swap counts")
        else:
            quantized = ""
        pixel = self.pixel_rule()
        return (f"gate {self.gate}: the gate drift must stay <= {self.max_drift:g} points, {scope}. Gate drift = the "
                "points carried by real reorderings (either direction) + the net points of resolution ties (pairs "
                "the host ordered that the device ties: FP16's loss of resolution, never excused) + the near-ties' signed "
                "drift where its 99% interval excludes 0 (Student's t; FP16 rounding moves near-ties either way, a "
                "one-sided excess is a systematic shift; for the benchmark at least the mean of the categories' own). A swapped pair is a near-tie only when its host gap is "
                "<= eps*(s_i + s_j), the two scores' errors add up to <= eps*(s_i + s_j), neither score moved by "
                f"more than {MOVE_SHARE:g} robust standard deviation of its category's host scores nor by more than "
                f"{OUTLIER_LAMBDA:g} robust standard deviations of the category's own errors, and the category "
                f"is resolvable: the device follows the host through an increasing resistant line d = a + b*h "
                f"(b > 0; errors are measured after it, so a constant bias or gain is a shift every score shares) "
                f"with an RMS error <= {SPREAD_SHARE:g} of the host scores' robust spread (IQR/1.349). "
                f"eps = {self.epsilon:.4g} = {PROBABILISTIC_LAMBDA:g}*sqrt({ROUNDING_POINTS})*u, u = 2^-11 (FP16), "
                "s = max(|host score|, the category's median |host score|). The raw drift (the paper's criterion) "
                "is reported beside; it passes over budget only through near-ties consistent with rounding. "
                "NaN/inf device scores always fail"
                + quantized + (f". {pixel[0].upper()}{pixel[1:]}" if pixel else ""))

    def verdict(self) -> str:
        image = self._image_verdict()
        if self.max_pixel_drift is None or not self.pixel_checks():
            return image
        failed = self.pixel_failures()
        if not failed:
            return f"{image}; pixel AUROC and AUPRO within {self.max_pixel_drift:g} points"
        drops = ", ".join(f"{label}{'' if where == 'mean' else ' in ' + where} {h:.2f} -> {d:.2f} ({d - h:+.2f})"
                          for where, label, h, d in failed)
        if self.image_passed:
            return (f"FAIL: pixel metrics dropped by more than {self.max_pixel_drift:g} points: {drops} "
                    f"(the image gate holds: {image.split(': ', 1)[1]})")
        return f"{image}; pixel metrics dropped by more than {self.max_pixel_drift:g} points too: {drops}"

    def _image_verdict(self) -> str:
        m = self.mean
        if self.nonfinite:
            names = ", ".join(f"{c.category} ({len(c.nonfinite)} NaN/inf device scores)" for c in self.nonfinite)
            return f"FAIL: the device produced NaN/inf scores in {names}"
        raw = f"raw drift {fmt_number(m.get('drift'), 3, sign=True)}, 95% CI {fmt_interval(m.get('ci'))}" + \
            (" excludes 0" if _excludes_zero(m.get("ci")) else "")
        if self.gate == "category":
            worst = max(self.defined, key=lambda c: c.gate_drift or 0.0)
            if self.passed:
                return (f"PASS: every category's gate drift <= {self.max_drift:g} points (worst "
                        f"{fmt_number(worst.gate_drift, 3)} in {worst.category}); {_parts_text(worst)}; mean {raw}; "
                        f"decided by: {self.decided_by}")
            parts = [f"{c.category} ({fmt_number(c.gate_drift, 3)}, {c.decided_by}: {_parts_text(c)}; raw drift "
                     f"{fmt_number(c.drift, 3, sign=True)}, 95% CI {fmt_interval(c.ci)})" for c in self.failed]
            noun = "category" if len(parts) == 1 else "categories"
            return (f"FAIL: gate drift above {self.max_drift:g} points in {len(parts)} {noun}: {', '.join(parts)}"
                    + _fix(self.decided_by))
        value = self.gate_value or 0.0
        n_cat = len(self.defined)
        where = f"over {n_cat} categor{'y' if n_cat == 1 else 'ies'}"
        parts = _parts_text(m)
        if self.passed:
            return (f"PASS: gate drift {value:.3f} <= {self.max_drift:g} points {where}; {raw}; {parts}; "
                    f"decided by: {self.decided_by}")
        over = sorted((c for c in self.defined if (c.gate_drift or 0.0) > self.max_drift + DRIFT_EPS),
                      key=lambda c: -(c.gate_drift or 0.0))
        named = "; over budget on their own: " + ", ".join(f"{c.category} ({c.gate_drift:.3f}, {c.decided_by})"
                                                           for c in over) if over else ""
        return (f"FAIL: {self.decided_by}: gate drift {value:.3f} > {self.max_drift:g} points {where}; {raw}; "
                f"{parts}{named}" + _fix(self.decided_by))

    def small_categories(self) -> list[CategoryDrift]:
        """Categories where one pair is worth more than the budget: their own drift cannot tell a budget-sized
        regression from a single near-tie."""
        return [c for c in self.defined if c.pair_points > self.max_drift + DRIFT_EPS]

    def small_note(self) -> str:
        small = self.small_categories()
        if not small:
            return ""
        names = ", ".join(f"{c.category} ({c.n - c.n_anomalous} x {c.n_anomalous}: {c.pair_points:.3f})" for c in small)
        return (f"too small to tell a {self.max_drift:g}-point drift from noise on its own: one normal/anomalous pair "
                f"is worth more than the budget in {names}; the benchmark-level gate pools them with the rest")

    def to_json(self) -> dict:
        def category(c: CategoryDrift) -> dict:
            d = asdict(c)
            d["flip_share"] = c.flip_share
            d["pair_points"] = None if not c.defined else c.pair_points
            d["pairs_moved"] = c.pairs_moved
            d["ci"] = list(c.ci) if c.ci else None
            d["metric_drift"] = {k: c.metric_drift(k) for k, _ in METRICS if c.metric_drift(k) is not None}
            d["movers"] = [{**asdict(m), "moved": m.moved} for m in c.movers]
            return json_safe(d)

        mean = dict(self.mean)
        mean["ci"] = list(mean["ci"]) if mean.get("ci") else None
        return {"bench": self.bench, "target": self.target, "passed": self.passed, "verdict": self.verdict(),
                "gate": self.gate, "decided_by": self.decided_by, "gate_drift": self.gate_value, "rule": self.rule(), "max_drift_points": self.max_drift,
                "error_model": self.error_model(), "image_passed": self.image_passed,
                "pixel_gate": {"max_pixel_drift_points": self.max_pixel_drift, "passed": self.pixel_passed,
                               "checked": [{"where": w, "metric": m, "host": h, "device": d, "drift": d - h}
                                           for w, m, h, d in self.pixel_checks()] if self.max_pixel_drift is not None
                               else [], "line": self.pixel_line()},
                "ci_method": CI_METHOD, "host": self.host, "device": self.device, **self.info,
                "notes": self.notes, "small_categories": [c.category for c in self.small_categories()],
                "mean": json_safe(mean), "categories": [category(c) for c in self.categories],
                "units": {"auroc": "points (x100)", "drift": "device - host, points",
                          "ci": "95% interval of the drift, points",
                          "reordering_gross": "points carried by real reorderings, both directions",
                          "gate_drift": "points the gate charges: reorderings + resolution ties + one-sided near-ties",
                          "near_tie_var": "variance of the near-ties' signed drift, points squared",
                          "flip_share": "fraction of images whose decision at the host F1-max threshold differs"}}

    def table(self, top: int = 5) -> str:
        from edgedeploy.evaluation.fidelity.render import terminal_table

        return terminal_table(self, top)

    def markdown(self, plots: dict[str, str] | None = None, top: int = 5) -> str:
        from edgedeploy.evaluation.fidelity.render import markdown_report

        return markdown_report(self, plots, top)

    def top_movers(self, top: int) -> list[Mover]:
        movers = [m for c in self.categories for m in c.movers]
        return sorted(movers, key=mover_order)[:top]


def mover_order(m: Mover) -> tuple:
    """Images in real reorderings first (most first), then by how far their rank moved."""
    return (-m.reorderings, -abs(m.moved), m.path)


def fmt_number(value: float | None, digits: int, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a" if value is None else str(value)
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def fmt_interval(ci) -> str:
    return "n/a" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _parts_text(c) -> str:
    """Reorderings, resolution ties and near-ties of a category (a CategoryDrift) or the mean (the report's dict)."""
    get = (lambda k: c.get(k)) if isinstance(c, dict) else (lambda k: getattr(c, k))
    one_sided = get("near_tie_one_sided")
    if isinstance(c, dict):  # the benchmark: the categories' sums pooled with inverse-variance weights
        test = f"pooled z {fmt_number(get('near_tie_z'), 2, sign=True)} (99%, t with {get('near_tie_df') or 0} df)"
        outcome = "one-sided, charged" if one_sided else "consistent with rounding"
    else:
        test = f"99% CI {fmt_interval(get('near_tie_ci'))}"
        outcome = "excludes 0: one-sided, charged" if one_sided else "consistent with rounding"
    near = (f"{get('near_ties') or 0} near-ties with signed sum {fmt_number(get('near_tie_drift'), 3, sign=True)}, "
            f"{test} {outcome}")
    return (f"{get('reorderings') or 0} real reorderings ({fmt_number(get('reordering_gross'), 3)}), "
            f"{get('resolution_ties') or 0} resolution ties (net {fmt_number(get('resolution_drift'), 3, sign=True)}), {near}")


def _fix(decided_by: str) -> str:
    if decided_by == RESOLUTION:
        return f". Fix: {RESOLUTION_FIX}"
    if decided_by == NEAR_TIE_SHIFT:
        return (". FP16 rounding moves near-tied pairs both ways; these moved one way: check the pre- and "
                "post-processing of both sides and what changed in the graph")
    return ""


def _excludes_zero(ci) -> bool:
    return bool(ci) and (ci[0] > 0 or ci[1] < 0)
