"""What a keep-list search evaluates on: the benchmark images it picks (spread over categories, then
interleaved for the quick screening), and :class:`BenchEvaluator`, which scores one keep set's FP16
emulation against the FP32 reference and measures its drift and score error."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.precision.search import Budget, Evaluation


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced through ``items`` (all of them when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(items):
        return list(items)
    if n == 1:
        return [items[len(items) // 2]]
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in dict.fromkeys(picks.tolist())]


def select(bench, per_category: int):
    """At most ``per_category`` images per category, half normal and half anomalous, evenly spaced."""
    from edgedeploy.evaluation.data import Benchmark

    if per_category <= 0:
        return bench
    samples = []
    for _, items in bench.by_category().items():
        good = [s for s in items if s.label == 0]
        bad = [s for s in items if s.label == 1]
        n_bad = min(len(bad), per_category // 2)
        n_good = min(len(good), per_category - n_bad)
        n_bad = min(len(bad), per_category - n_good)
        samples += spread(good, n_good) + spread(bad, n_bad)
    samples.sort(key=lambda s: (s.category, s.rel_path))
    return Benchmark(bench.name, bench.root, tuple(samples))


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

    def _error(self, scored, bench) -> tuple[float, int]:
        host_rows, rows = self.reference.table.by_path(), scored.table.by_path()
        host = np.array([host_rows[s.rel_path].score for s in bench.samples], dtype=np.float64)
        device = np.array([rows[s.rel_path].score for s in bench.samples], dtype=np.float64)
        nonfinite = int(np.count_nonzero(~np.isfinite(device)))
        error = float(np.max(np.abs(device - host))) if not nonfinite and len(host) else math.inf
        return error, nonfinite

    def __call__(self, keep: tuple[str, ...]) -> Evaluation:
        from edgedeploy.evaluation.fidelity.compare import compare

        start = time.perf_counter()
        scored = self._score(keep, self.bench)
        report = compare(self.reference, scored, self.bench, self.budget.max_drift, top=0)
        drift = {c.category: c.drift for c in report.categories}
        error, nonfinite = self._error(scored, self.bench)
        values = [abs(d) for d in drift.values() if d is not None]
        max_drift = None if nonfinite or len(values) < len(drift) else max(values, default=0.0)
        return Evaluation(tuple(keep), max_drift, error, nonfinite, drift, report.mean.get("drift"),
                          time.perf_counter() - start, scored.computed)

    def screen(self, keep: tuple[str, ...]) -> Evaluation:
        """Score error only, on the few screening images (no AUROC)."""
        start = time.perf_counter()
        scored = self._score(keep, self.screen_bench)
        error, nonfinite = self._error(scored, self.screen_bench)
        return Evaluation(tuple(keep), None, error, nonfinite, {}, None, time.perf_counter() - start, scored.computed)

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
