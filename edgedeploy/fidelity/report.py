"""The drift report: host vs device, per category and on average.

Per category: image AUROC on host and device (points) and the drift between them (device - host,
points); Spearman and Kendall rank correlation of the image scores; max and mean absolute score
difference; the share of images whose decision flips at the host's F1-max threshold (anomalous
when score >= threshold, on both sides); the images whose rank moved most; and, when both sides
kept anomaly maps, the max absolute difference of the raw maps. The mean row averages AUROCs,
drifts and correlations over categories, and pools the score differences and flips over images.

The check passes when every category's |drift| <= ``max_drift`` points. A device score that is
NaN or inf (an FP16 overflow in the emulation) fails its category.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from ..data import Benchmark
from ..metrics import MetricInputError, f1_max, image_auroc, rank_correlations
from .scorers import ScoredBenchmark

_EPS = 1e-9  # drift is compared in points; float noise must not turn 0.2 into a failure


@dataclass
class Mover:
    path: str
    category: str
    label: int
    host_score: float
    device_score: float
    host_rank: float
    device_rank: float

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
    passed: bool = True

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
        return None if self.drift is None else abs(self.drift) / self.pair_points


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

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.categories)

    @property
    def failed(self) -> list[CategoryDrift]:
        return [c for c in self.categories if not c.passed]

    def verdict(self) -> str:
        if self.passed:
            worst = max((abs(c.drift) for c in self.categories if c.drift is not None), default=0.0)
            return (f"PASS: every category's |drift| <= {self.max_drift:g} points "
                    f"(worst {worst:.3f}) in {len(self.categories)} categor{'y' if len(self.categories) == 1 else 'ies'}")
        parts = []
        for c in self.failed:
            if c.nonfinite:
                parts.append(f"{c.category} ({len(c.nonfinite)} NaN/inf device scores)")
            elif c.drift is None:
                parts.append(f"{c.category} (device AUROC undefined)")
            else:
                pairs = c.pairs_moved
                parts.append(f"{c.category} ({c.drift:+.3f} = {pairs:.3g} of its {round(100 / c.pair_points)} "
                             "normal/anomalous pairs, a tie counting half)")
        noun = "category" if len(parts) == 1 else "categories"
        return f"FAIL: |drift| above {self.max_drift:g} points in {len(parts)} {noun}: {', '.join(parts)}"

    def to_json(self) -> dict:
        def category(c: CategoryDrift) -> dict:
            d = asdict(c)
            d["flip_share"] = c.flip_share
            d["pair_points"] = c.pair_points
            d["pairs_moved"] = c.pairs_moved
            d["movers"] = [{**asdict(m), "moved": m.moved} for m in c.movers]
            return _finite(d)

        return {"bench": self.bench, "target": self.target, "passed": self.passed, "verdict": self.verdict(),
                "max_drift_points": self.max_drift, "host": self.host, "device": self.device, **self.info,
                "notes": self.notes, "mean": _finite(self.mean), "categories": [category(c) for c in self.categories],
                "units": {"auroc": "points (x100)", "drift": "device - host, points",
                          "flip_share": "fraction of images whose decision at the host F1-max threshold differs"}}

    # ---------------------------------------------------------------------------- rendering

    def rows(self) -> list[list[str]]:
        out = []
        for c in self.categories:
            out.append([c.category, str(c.n), _f(c.host_auroc, 2), _f(c.device_auroc, 2), _f(c.drift, 3, sign=True),
                        _f(c.spearman, 4), _f(c.kendall, 4), _e(c.max_abs_diff), _e(c.mean_abs_diff),
                        f"{100 * c.flip_share:.1f}%", "ok" if c.passed else "FAIL"])
        m = self.mean
        out.append(["mean", str(m["n"]), _f(m["host_auroc"], 2), _f(m["device_auroc"], 2),
                    _f(m["drift"], 3, sign=True), _f(m["spearman"], 4), _f(m["kendall"], 4), _e(m["max_abs_diff"]),
                    _e(m["mean_abs_diff"]), f"{100 * m['flip_share']:.1f}%", "ok" if self.passed else "FAIL"])
        return out

    HEADER = ["category", "n", "host AUROC", "device AUROC", "drift", "spearman", "kendall", "max|Δs|", "mean|Δs|",
              "flips", ""]

    def table(self, top: int = 5) -> str:
        rows = [self.HEADER, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEADER))]
        lines = []
        for k, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, len(row))]
            if k == len(rows) - 1:
                lines.append("  ".join("-" * w for w in widths))
            lines.append("  ".join(cells).rstrip())
        lines.append("")
        lines.append(f"AUROC in points; drift = device - host; flips = decisions that differ at the host's F1-max "
                     f"threshold. host: {self.host}; device: {self.device}")
        movers = self.top_movers(top)
        if movers:
            lines.append("images whose rank moved most (rank 1 = most anomalous in its category):")
            for m in movers:
                lines.append(f"  {m.path}  rank {m.host_rank:g} -> {m.device_rank:g}  score {m.host_score:.5f} -> "
                             f"{m.device_score:.5f}")
        coarse = self._coarse_note()
        if coarse:
            lines.append(coarse)
        lines.append(self.verdict())
        return "\n".join(lines)

    def _coarse_note(self) -> str:
        """When the budget is finer than one pair, say so: one tie already fails such a category."""
        coarse = [c for c in self.categories if c.pair_points > self.max_drift + _EPS]
        if not coarse:
            return ""
        worst = max(coarse, key=lambda c: c.pair_points)
        return (f"note: one normal/anomalous pair tied or swapped moves AUROC by 100/(normal x anomalous) points, "
                f"e.g. {worst.pair_points:.3f} in {worst.category}: above the {self.max_drift:g}-point budget in "
                f"{len(coarse)} of {len(self.categories)} categories, where any reordering across the classes fails")

    def top_movers(self, top: int) -> list[Mover]:
        movers = [m for c in self.categories for m in c.movers]
        return sorted(movers, key=lambda m: (-abs(m.moved), m.path))[:top]

    def markdown(self, plots: dict[str, str] | None = None, top: int = 5) -> str:
        info = self.info
        lines = [f"# Fidelity: {self.bench} on {self.target}", "",
                 f"**{'PASS' if self.passed else 'FAIL'}** — {self.verdict().split(': ', 1)[1]}", "",
                 "| | |", "|---|---|",
                 f"| host (reference) | {self.host} |", f"| device | {self.device} |"]
        for key, label in (("model", "model"), ("recipe", "recipe"), ("model_sha256", "bundle model.onnx sha256"),
                           ("data_root", "benchmark root"), ("keep_fp32", "kept in FP32")):
            if info.get(key):
                lines.append(f"| {label} | `{info[key]}` |")
        lines.append(f"| drift budget | {self.max_drift:g} points of image AUROC per category |")
        lines.append("")
        for note in self.notes:
            lines.append(f"> {note}")
            lines.append("")
        lines += ["## Per category", "", "| " + " | ".join((h or "check").replace("|", "\\|") for h in self.HEADER) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(self.HEADER) - 1)) + "|"]
        for row in self.rows():
            if row[0] == "mean":
                row = [f"**{cell}**" if cell else cell for cell in row]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "AUROC in points (x100). drift = device AUROC - host AUROC. spearman / kendall: rank "
                  "correlation of the image scores. max|Δs| / mean|Δs|: absolute score difference. flips: share of "
                  "images whose decision (anomalous when score >= the host's F1-max threshold) differs. The mean row "
                  "averages AUROCs, drifts and correlations over categories and pools the rest over images.", ""]
        coarse = self._coarse_note()
        if coarse:
            lines += [coarse.replace("note: ", "Resolution: ", 1) + ".", ""]
        map_diffs = [c for c in self.categories if c.max_map_diff is not None]
        if map_diffs:
            lines.append("Max |Δ| of the raw anomaly maps: " + ", ".join(
                f"{c.category} {c.max_map_diff:.2e}" for c in map_diffs) + ".")
            lines.append("")
        lines += ["## Images whose rank moved most", "",
                  "| image | category | label | host rank | device rank | host score | device score |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for c in self.categories:
            for m in c.movers[:top]:
                lines.append(f"| `{m.path}` | {m.category} | {m.label} | {m.host_rank:g} | {m.device_rank:g} | "
                             f"{m.host_score:.6f} | {m.device_score:.6f} |")
        for c in self.categories:
            if c.nonfinite:
                lines += ["", f"NaN/inf device scores in {c.category}: " + ", ".join(f"`{p}`" for p in c.nonfinite[:20])]
        if plots:
            lines += ["", "## Plots", ""]
            for title, name in plots.items():
                lines += [f"### {title}", "", f"![{title}]({name})", ""]
        return "\n".join(lines).rstrip() + "\n"


def _f(value: float | None, digits: int, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a" if value is None else str(value)
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _e(value: float | None) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.1e}"


def _finite(obj):
    """JSON has no NaN/inf: write them as strings."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------- compare


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank 1 = highest score; ties share their average rank."""
    return stats.rankdata(-scores, method="average")


def compare_category(category: str, paths: list[str], labels: np.ndarray, host: np.ndarray, device: np.ndarray,
                     max_drift: float, top: int = 5, host_maps: list | None = None,
                     device_maps: list | None = None) -> CategoryDrift:
    """Host vs device on one category's images (host scores must be finite)."""
    notes: list[str] = []
    finite = np.isfinite(device)
    nonfinite = [p for p, ok in zip(paths, finite) if not ok]
    host_auroc = 100.0 * image_auroc(labels, host)
    f1, threshold = f1_max(labels, host)
    diff = np.abs(device - host)
    flips = int(np.count_nonzero((host >= threshold) != (device >= threshold)))
    device_auroc = drift = spearman = kendall = None
    if not nonfinite:
        device_auroc = 100.0 * image_auroc(labels, device)
        drift = device_auroc - host_auroc
        try:
            corr = rank_correlations(host, device)
            spearman, kendall = corr["spearman"], corr["kendall"]
        except MetricInputError as exc:
            notes.append(f"{category}: rank correlation undefined ({exc})")
    else:
        notes.append(f"{category}: {len(nonfinite)} device scores are NaN or inf (FP16 overflow?): "
                     + ", ".join(nonfinite[:5]))
    max_map = None
    if host_maps is not None and device_maps is not None and len(host_maps) == len(device_maps) == len(paths) \
            and all(h is not None and d is not None and np.shape(h) == np.shape(d) for h, d in zip(host_maps, device_maps)):
        with np.errstate(invalid="ignore"):
            max_map = float(max(np.max(np.abs(np.asarray(d, np.float64) - np.asarray(h, np.float64)))
                                for h, d in zip(host_maps, device_maps)))
    movers: list[Mover] = []
    if not nonfinite:
        hr, dr = _ranks(host), _ranks(device)
        order = sorted(range(len(paths)), key=lambda i: (-abs(dr[i] - hr[i]), paths[i]))
        movers = [Mover(paths[i], category, int(labels[i]), float(host[i]), float(device[i]), float(hr[i]), float(dr[i]))
                  for i in order[:top] if dr[i] != hr[i]]
    passed = drift is not None and abs(drift) <= max_drift + _EPS
    return CategoryDrift(category, len(paths), int(np.count_nonzero(labels)), host_auroc, device_auroc, drift,
                         spearman, kendall, float(np.max(diff)), float(np.mean(diff)), threshold, flips, nonfinite,
                         max_map, movers, notes, passed)


def compare(host: ScoredBenchmark, device: ScoredBenchmark, bench: Benchmark, max_drift: float = 0.2, top: int = 5,
            target: str = "", info: dict | None = None, notes: list[str] | None = None) -> FidelityReport:
    """Compare two score tables of ``bench`` (both in benchmark order) category by category."""
    host_rows, device_rows = host.table.by_path(), device.table.by_path()
    categories = []
    for category, samples in bench.by_category().items():
        paths = [s.rel_path for s in samples]
        labels = np.array([s.label for s in samples])
        h = np.array([host_rows[p].score for p in paths], dtype=np.float64)
        d = np.array([device_rows[p].score for p in paths], dtype=np.float64)
        if not np.isfinite(h).all():
            bad = [p for p, v in zip(paths, h) if not math.isfinite(v)]
            raise MetricInputError(f"host scores are NaN or inf for {', '.join(bad[:5])}: the reference model "
                                   "itself is broken on these images")
        hm = [host.maps.get(p) for p in paths] if host.maps else None
        dm = [device.maps.get(p) for p in paths] if device.maps else None
        categories.append(compare_category(category, paths, labels, h, d, max_drift, top, hm, dm))
    n = sum(c.n for c in categories)
    all_h = np.array([host_rows[s.rel_path].score for s in bench.samples])
    all_d = np.array([device_rows[s.rel_path].score for s in bench.samples])
    diff = np.abs(all_d - all_h)

    def mean_of(name: str) -> float | None:
        values = [getattr(c, name) for c in categories]
        return None if any(v is None for v in values) else float(np.mean(values))

    mean = {"n": n, "host_auroc": float(np.mean([c.host_auroc for c in categories])),
            "device_auroc": mean_of("device_auroc"), "drift": mean_of("drift"), "spearman": mean_of("spearman"),
            "kendall": mean_of("kendall"), "max_abs_diff": float(np.max(diff)), "mean_abs_diff": float(np.mean(diff)),
            "flips": sum(c.flips for c in categories), "flip_share": sum(c.flips for c in categories) / n}
    all_notes = list(notes or []) + [note for c in categories for note in c.notes]
    return FidelityReport(bench.name, target, max_drift, host.label, device.label, categories, mean,
                          dict(info or {}), all_notes)
