"""What a keep-list search evaluates on: the benchmark images it picks (spread over categories, then
interleaved for the quick screening), whether that sample can resolve the drift budget at all
(:func:`resolution`), and :class:`BenchEvaluator`, which scores one keep set's FP16 emulation against
the FP32 reference and judges it with ``edgedeploy fidelity``'s gate (plus the score error)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.data.subset import split_counts, spread
from edgedeploy.evaluation.precision.search import Budget, Evaluation

_EPS = 1e-9  # as the fidelity gate's DRIFT_EPS: 0.2 must not read as over 0.2


# ---------------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolution:
    """How finely a sample measures the fidelity gate: one normal/anomalous pair swapped in category ``c`` moves its
    AUROC by ``100 / (normal x anomalous)`` points (``pairs[c]``), and the benchmark gate's mean over the C
    categories with an AUROC by that / C (``gate_pair``: the largest such step; the category gate: the largest
    ``pairs[c]`` itself). When ``gate_pair`` exceeds the budget, one swapped pair fails it: the sample cannot tell a
    budget-sized drift from a single reordering."""

    counts: dict[str, tuple[int, int]]  # category -> (normal, anomalous) images in the sample
    pairs: dict[str, float]  # category -> points one pair is worth (categories with an AUROC)
    gate_pair: float  # points one pair is worth in the quantity the gate checks (inf: no category has an AUROC)
    max_drift: float
    gate: str

    @property
    def resolves(self) -> bool:
        return self.gate_pair <= self.max_drift + _EPS

    def describe(self) -> str:
        if not self.pairs:
            return "no category has both normal and anomalous images"
        per = ", ".join(f"{c} ({g} x {b}) {self.pairs[c]:.3f}"
                        for c, (g, b) in self.counts.items() if c in self.pairs)
        n = len(self.pairs)
        where = (f"{self.gate_pair:.3f} of the benchmark gate's mean over {n} categor{'y' if n == 1 else 'ies'}"
                 if self.gate == "benchmark" else f"{self.gate_pair:.3f} in the coarsest category, which the "
                 "category gate checks on its own")
        return f"one normal/anomalous pair is worth, in points, {per} per category; {where}"


def resolution(counts: dict[str, tuple[int, int]], max_drift: float, gate: str = "benchmark") -> Resolution:
    """The :class:`Resolution` of a sample with ``counts`` (category -> (normal, anomalous))."""
    pairs = {c: 100.0 / (g * b) for c, (g, b) in counts.items() if g and b}
    if not pairs:
        step = math.inf
    elif gate == "category":
        step = max(pairs.values())
    else:
        step = max(pairs.values()) / len(pairs)
    return Resolution(dict(counts), pairs, step, max_drift, gate)


def category_counts(bench, per_category: int = 0) -> dict[str, tuple[int, int]]:
    """category -> (normal, anomalous) images of ``select(bench, per_category)``, without building it."""
    out = {}
    for category, items in bench.by_category().items():
        n_bad = sum(1 for s in items if s.label == 1)
        out[category] = split_counts(len(items) - n_bad, n_bad, per_category)
    return out


def resolving_limit(bench, max_drift: float, gate: str = "benchmark") -> int | None:
    """The smallest ``--limit`` whose sample of ``bench`` resolves ``max_drift`` under ``gate``; 0 when only all the
    images do; None when not even all of them do."""
    largest = max((len(items) for items in bench.by_category().values()), default=0)
    for limit in range(2, largest):
        if resolution(category_counts(bench, limit), max_drift, gate).resolves:
            return limit
    return 0 if resolution(category_counts(bench, 0), max_drift, gate).resolves else None


def resolution_warning(bench, limit: int, max_drift: float, gate: str = "benchmark") -> str | None:
    """One line when the search sample (``--limit`` of ``bench``) cannot resolve ``max_drift``; None when it can."""
    res = resolution(category_counts(bench, limit), max_drift, gate)
    if res.resolves:
        return None
    fix = resolving_limit(bench, max_drift, gate)
    if fix is None:
        advice = (f"not even all {len(bench)} images resolve it: pass a larger --max-drift, more categories"
                  + (" or --gate benchmark" if gate == "category" else ""))
    elif fix == 0:
        advice = "use --limit 0 (all images) to resolve it"
    else:
        advice = f"use --limit {fix} or more to resolve it (0 = all images)"
    sample = f"--limit {limit}" if limit > 0 else "all images, --limit 0"
    return (f"warning: the search sample ({sample}) cannot resolve --max-drift {max_drift:g} "
            f"(gate {gate}): {res.describe()}, so one swapped pair fails the budget; {advice}")


def interleave(subset, n: int) -> list:
    """``n`` samples of ``subset`` spread over its categories: per category normal and anomalous images
    alternating (evenly spaced within each), categories interleaved."""
    want = n if n > 0 else len(subset)
    categories = subset.by_category()
    k = math.ceil(want / max(len(categories), 1))
    picks = []
    for items in categories.values():
        good = [s for s in items if s.label == 0]
        bad = [s for s in items if s.label == 1]
        n_good = min(len(good), math.ceil(k / 2))
        n_bad = min(len(bad), k - n_good)
        n_good = min(len(good), k - n_bad)
        g, b = spread(good, n_good), spread(bad, n_bad)
        alternating = [x for pair in zip(g, b) for x in pair] + g[len(b):] + b[len(g):]
        picks.append(alternating)
    chosen = []
    for i in range(max((len(p) for p in picks), default=0)):
        chosen += [p[i] for p in picks if i < len(p)]
    return chosen[:want]


def calibration_images(subset, calib_dir: Path | None, n: int) -> list[tuple[str, Path]]:
    """(label, path) of the range analysis' images: from ``calib_dir``, or spread over the subset's categories."""
    from edgedeploy.evaluation.data import IMAGE_EXTENSIONS

    if calib_dir is not None:
        root = Path(calib_dir)
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise EdgeDeployError(f"--calib-dir {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return [(p.relative_to(root).as_posix(), p) for p in spread(paths, n)]
    return [(s.rel_path, s.path) for s in interleave(subset, n)]


class BenchEvaluator:
    """Scores a keep set's FP16 emulation on the benchmark subset against the FP32 reference."""

    def __init__(self, model_path: Path, model_sha: str, recipe, checkpoint_sha: str, bench, reference,
                 budget: Budget, cache: bool = True, progress: bool = True, cache_dir: Path | None = None,
                 screen_bench=None, strict: bool = True, float_tensors: set[str] | None = None):
        self.model_path, self.model_sha = Path(model_path), model_sha
        self.recipe, self.checkpoint_sha = recipe, checkpoint_sha
        self.bench, self.reference, self.budget = bench, reference, budget
        self.screen_bench = screen_bench if screen_bench is not None else bench
        self.cache, self.progress, self.cache_dir = cache, progress, cache_dir
        self.strict = strict
        self.float_tensors = float_tensors if float_tensors is not None else _float_tensors(self.model_path)
        self.created: dict[tuple[str, ...], list[Path]] = {}

    def _scorer(self, keep: tuple[str, ...]):
        from edgedeploy.core.resources import cache_root
        from edgedeploy.host.fp16 import EMULATION_VERSION, emulation_key
        from edgedeploy.host.runners import fp16_emulation_runner, graph_runner
        from edgedeploy.evaluation.precision.boundary import BOUNDARY_VERSION, strict_cache_dir, strict_emulated_model, strict_key

        made = []
        if not keep or not self.strict:  # pure FP16: the very scorer (and score cache) `edgedeploy fidelity` uses
            base = (Path(self.cache_dir) if self.cache_dir is not None else cache_root() / "fp16") / \
                f"{emulation_key(self.model_sha, keep)}.onnx"
            made += [] if base.is_file() else [base]
            scorer = fp16_emulation_runner(self.model_path, self.recipe, self.checkpoint_sha, keep,
                                           model_sha256=self.model_sha, cache_dir=self.cache_dir)
        else:
            strict = strict_cache_dir() / f"{strict_key(self.model_sha, keep)}.onnx"
            made += [] if strict.is_file() else [strict]
            path = strict_emulated_model(self.model_path, keep, self.model_sha, self.float_tensors)
            scorer = graph_runner(path, self.recipe, self.checkpoint_sha, runner="fp16-emulation",
                                label="device FP16 emulation, FP16 inputs at FP32 boundaries",
                                model_sha256=self.model_sha,
                                extra={"emulation": EMULATION_VERSION, "keep_fp32": ",".join(keep),
                                                "boundary": BOUNDARY_VERSION},
                                disabled_optimizers=("CastChainElimination",))
        if made:
            self.created.setdefault(tuple(keep), []).extend(made)
        return scorer

    def _score(self, keep: tuple[str, ...], bench):
        from edgedeploy.runtime.cache import NoCache, ScoreCache
        from edgedeploy.runtime.batch import score_benchmark

        scorer = self._scorer(keep)
        cache = ScoreCache(scorer.identity()) if self.cache else NoCache(scorer.identity())
        return score_benchmark(scorer, bench, cache, progress=self.progress)

    def __call__(self, keep: tuple[str, ...]) -> Evaluation:
        """Score ``keep`` on the search images and judge it with ``edgedeploy fidelity``'s gate, unchanged."""
        start = time.perf_counter()
        scored = self._score(keep, self.bench)
        evaluation = judge(self.reference, scored, self.bench, self.budget, keep)
        evaluation.seconds, evaluation.scored = time.perf_counter() - start, scored.computed
        return evaluation

    def screen(self, keep: tuple[str, ...]) -> Evaluation:
        """Score error only, on the few screening images (no AUROC)."""
        start = time.perf_counter()
        scored = self._score(keep, self.screen_bench)
        error, nonfinite = score_error(self.reference, scored, self.screen_bench)
        return Evaluation(tuple(keep), None, error, None, nonfinite, seconds=time.perf_counter() - start,
                          scored=scored.computed)

    def cleanup(self, keep_sets: set[tuple[str, ...]]) -> int:
        """Remove the emulated graphs this run wrote, except ``keep_sets``' (their scores stay cached)."""
        removed = 0
        for keep, paths in self.created.items():
            if keep in keep_sets:
                continue
            for file in [f for p in paths for f in (p, p.with_suffix(".json"))]:
                try:
                    file.unlink()
                    removed += 1
                except OSError:
                    pass
        return removed


def _float_tensors(model_path: Path) -> set[str]:
    from edgedeploy.evaluation.precision.graph_index import load_index

    index = load_index(model_path)
    return {t for t, kind in index.types.items() if kind == 1}  # TensorProto.FLOAT


def score_error(reference, scored, bench) -> tuple[float, int]:
    """Max |device - host| score over ``bench`` (inf when a device score is NaN/inf) and the NaN/inf count."""
    host_rows, rows = reference.table.by_path(), scored.table.by_path()
    host = np.array([host_rows[s.rel_path].score for s in bench.samples], dtype=np.float64)
    device = np.array([rows[s.rel_path].score for s in bench.samples], dtype=np.float64)
    nonfinite = int(np.count_nonzero(~np.isfinite(device)))
    error = float(np.max(np.abs(device - host))) if not nonfinite and len(host) else math.inf
    return error, nonfinite


def gate_value(report, gate: str) -> float | None:
    """The number the gate checks: the worst category's gate drift (``--gate category``), else the report's own
    gate value (the benchmark's gate drift: reorderings, resolution ties and one-sided near-ties; fidelity/drift.py)."""
    if gate == "category":
        values = [c.gate_drift for c in report.categories if c.defined]
        return None if not values or any(v is None for v in values) else max(values)
    return report.gate_value


def judge(reference, scored, bench, budget: Budget, keep: tuple[str, ...] = ()) -> Evaluation:
    """A keep set's :class:`Evaluation`: ``edgedeploy fidelity``'s gate on the same scores (``compare(...)``
    with ``budget.max_drift`` and ``budget.gate``; its ``passed`` is the drift verdict) and the score error."""
    from edgedeploy.evaluation.fidelity.compare import compare

    report = compare(reference, scored, bench, budget.max_drift, top=0, gate=budget.gate)
    error, nonfinite = score_error(reference, scored, bench)
    defined = [c for c in report.categories if c.defined]
    value = gate_value(report, budget.gate)
    mean = report.mean
    return Evaluation(tuple(keep), value, error, bool(report.passed), nonfinite,
                      drift={c.category: c.drift for c in defined}, mean_drift=mean.get("drift"),
                      reordering={c.category: c.reordering_gross for c in defined},
                      near_ties=int(mean.get("near_ties") or 0), reorderings=int(mean.get("reorderings") or 0),
                      verdict=report.verdict())
