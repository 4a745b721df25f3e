"""One ``edgedeploy precision`` run: build, range analysis, keep-list search, emit, ``precision.json``.

The graph analysed is the target's ``model.onnx`` as ``edgedeploy build`` makes it, built into
``OUT/precision/.build/`` (stages cached; the user's ``OUT/<target>/`` bundle is never rewritten).
The reference is that graph under ONNX Runtime FP32 (cheaper than PyTorch and, for FP16 effects,
the same thing: the export is verified against PyTorch); the device is its FP16 emulation
(:mod:`edgedeploy.host.fp16`). Both are scored with the fidelity scorers and their caches, so
a re-run, or a later ``edgedeploy fidelity --host onnx``, reuses every score.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgedeploy import __version__
from edgedeploy.evaluation.benchrun import BenchTargetOptions, resolve_inputs
from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import json_safe, write_json_atomic
from edgedeploy.core.hashing import sha256_file
from edgedeploy.evaluation.data.subset import select
from edgedeploy.evaluation.precision.evaluate import (BenchEvaluator, calibration_images, category_counts, interleave,
                                                      resolution, resolution_warning)
from edgedeploy.evaluation.precision.ranges import DEFAULT_FLUSH_SHARE, DEFAULT_MARGIN, DEFAULT_MEMORY_MIB, RangeReport
from edgedeploy.evaluation.precision.segments import current_rss_mib, peak_rss_mib
from edgedeploy.evaluation.precision.search import (DEFAULT_MAX_DRIFT, DEFAULT_MAX_EVALS, DEFAULT_MAX_SCORE_ERROR,
                                                    DEFAULT_TOP, GATES, Budget, Evaluation, SearchResult, describe_drift)

SEEDED = "seeded"
# Images per category the search scores. The smallest that resolves the default budget on the built-in demo
# (3 categories of 24 normal + 24 anomalous test images) under the default gate: 13 x 13 per category, so one
# swapped pair moves a category's AUROC by 100/169 = 0.592 points and the benchmark gate's mean over the three
# by 0.197 <= 0.2 (--limit 24, 12 x 12, would make it 0.231). tests/evaluation/precision checks the arithmetic.
DEFAULT_LIMIT = 26
DEFAULT_GATE = "benchmark"
DEFAULT_CALIB_IMAGES = 6
DEFAULT_SCREEN_IMAGES = 3
BOUNDARIES = ("strict", "lenient")
REFERENCE_LABEL = "host ONNX Runtime FP32 (the bundle's model.onnx)"
DEVICE_LABEL = "device FP16 emulation (ONNX Runtime CPU; FP16 weights and activations, FP32 math inside ops)"
BOUNDARY_NOTE = {"strict": "a non-kept node reading a kept node's output reads it rounded to FP16 (as an FP16 "
                           "TensorRT layer does after its reformat)",
                 "lenient": "a non-kept node reading a kept node's output reads it in FP32 (as "
                            "`edgedeploy fidelity --keep-fp32` emulates it)"}

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class PrecisionOptions(BenchTargetOptions):
    limit: int = DEFAULT_LIMIT  # images per category for the search (0: all)
    calib_images: int = DEFAULT_CALIB_IMAGES  # images for the range analysis (0: all of the search's)
    calib_dir: Path | None = None
    max_drift: float = DEFAULT_MAX_DRIFT  # the fidelity gate's budget: gate drift, points
    gate: str = DEFAULT_GATE  # "benchmark": its mean over categories; "category": each category's
    max_score_error: float = DEFAULT_MAX_SCORE_ERROR
    margin: float = DEFAULT_MARGIN
    flush_share: float = DEFAULT_FLUSH_SHARE
    max_evals: int = DEFAULT_MAX_EVALS
    screen_images: int = DEFAULT_SCREEN_IMAGES  # images a candidate is screened on before a full evaluation (0: none)
    top: int = DEFAULT_TOP  # screened candidates per round evaluated in full
    force_search: bool = False
    boundary: str = "strict"  # "strict": FP16 readers of kept outputs read FP16; "lenient": as `edgedeploy fidelity`
    memory_mib: float = DEFAULT_MEMORY_MIB
    cache: bool = True
    progress: bool = True
    allow_audit_errors: bool = False


@dataclass
class PrecisionRun:
    report: dict
    report_dir: Path
    ranges: RangeReport
    search: SearchResult
    files: list[Path] = field(default_factory=list)


def check_options(opts: PrecisionOptions) -> None:
    for name, value in (("--max-drift", opts.max_drift), ("--max-score-error", opts.max_score_error)):
        if not math.isfinite(value) or value < 0:
            raise EdgeDeployError(f"{name} must be a non-negative number, got {value}")
    if opts.limit < 0 or opts.calib_images < 0:
        raise EdgeDeployError("--limit and --calib-images must be >= 0 (0 = all)")
    if opts.limit == 1:
        raise EdgeDeployError("--limit 1 leaves one image per category: image AUROC needs a normal and an anomalous "
                              "image; use --limit 2 or more (0 = all)")
    if opts.max_evals < 0 or opts.screen_images < 0 or opts.top < 1:
        raise EdgeDeployError("--max-evals and --screen-images must be >= 0, --top >= 1")
    if not math.isfinite(opts.margin) or opts.margin < 1:
        raise EdgeDeployError(f"--margin must be a factor >= 1 below FP16's max, got {opts.margin}")
    if not 0 < opts.flush_share <= 1:
        raise EdgeDeployError(f"--flush-share must be in (0, 1], got {opts.flush_share}")
    if opts.gate not in GATES:
        raise EdgeDeployError(f"--gate must be one of {', '.join(GATES)}, got {opts.gate!r}")
    if opts.boundary not in BOUNDARIES:
        raise EdgeDeployError(f"--boundary must be one of {', '.join(BOUNDARIES)}, got {opts.boundary!r}")
    if opts.memory_mib <= 0:
        raise EdgeDeployError(f"--memory-mib must be > 0, got {opts.memory_mib}")
    opts.check_checkpoint()
    if opts.calib_dir is not None and not Path(opts.calib_dir).is_dir():
        raise EdgeDeployError(f"--calib-dir {opts.calib_dir} is not a folder of images")


def precision_build_dir(out: Path) -> Path:
    return Path(out) / "precision" / ".build"


@dataclass
class FloatBundle:
    """The target's float graph as ``edgedeploy build`` makes it (in OUT/precision/.build/) and the checkpoint's
    identity: what both searches (FP16 keep-list, integer keep-float) start from."""

    built: object
    recipe: object
    model_path: Path
    model_sha: str
    checkpoint_sha: str
    source: str
    seeded: bool
    model_line: str
    build_seconds: float


def search_images(opts, bench, log: Log):
    """The search's images (``--limit`` per category, half normal, half anomalous), logged, with the budget's
    resolution on them and its warning (logged before any build: a budget this sample cannot resolve is the user's
    to fix)."""
    subset = select(bench, opts.limit)
    log(f"benchmark {bench.name}: {len(subset)} of {len(bench)} test images "
        f"({'all' if opts.limit <= 0 else f'at most {opts.limit} per category'}) in {len(bench.categories)} "
        f"categor{'y' if len(bench.categories) == 1 else 'ies'}")
    warning = resolution_warning(bench, opts.limit, opts.max_drift, opts.gate)
    if warning:
        log(warning)
    return subset, resolution(category_counts(bench, opts.limit), opts.max_drift, opts.gate), warning


def build_float_bundle(opts, recipe, profile, log: Log, what: str) -> FloatBundle:
    """Build (or reuse) the float bundle in OUT/precision/.build/, refusing an audit with errors unless
    --allow-audit-errors; ``what`` qualifies the bundle in the log line."""
    from edgedeploy.host.pipeline import build

    build_dir = precision_build_dir(opts.out)
    log(f"bundle: {recipe.name} for {profile.display_name}{what}, built in {build_dir / profile.name}")
    t0 = time.perf_counter()
    built = build(recipe, profile, build_dir, checkpoint=opts.checkpoint, allow_audit_errors=opts.allow_audit_errors,
                  log=lambda line: log(f"  {line}"))
    if not built.audit.passed and not opts.allow_audit_errors:
        raise EdgeDeployError(f"the audit found {len(built.audit.errors)} errors for {profile.name} (see "
                              f"{built.bundle_dir / 'audit.json'}); fix them, or pass --allow-audit-errors")
    build_seconds = time.perf_counter() - t0
    recipe = built.model or recipe
    model_path = built.bundle_dir / "model.onnx"
    model_sha = built.manifest.get("model", {}).get("sha256") or sha256_file(model_path)
    ckpt = built.manifest.get("checkpoint", {}) or {}
    if opts.checkpoint is not None:
        checkpoint_sha, source = sha256_file(opts.checkpoint), str(opts.checkpoint)
    else:
        checkpoint_sha, source = ckpt.get("sha256") or SEEDED, ckpt.get("source") or SEEDED
    seeded = checkpoint_sha == SEEDED
    model_line = ("seeded reference weights (no checkpoint: AUROCs mean nothing, the drift does)" if seeded
                  else f"{source} (sha256 {checkpoint_sha[:16]})")
    if opts.checkpoint is None and not seeded:
        default = _default_checkpoint(recipe)
        if default is not None and str(default.path) == source:
            model_line = f"{default.describe()} (sha256 {checkpoint_sha[:16]})"
            source = default.describe()
    return FloatBundle(built, recipe, model_path, model_sha, checkpoint_sha, source, seeded, model_line, build_seconds)


def reference_scores(bundle: FloatBundle, subset, label: str, opts, log: Log):
    """The reference: the float graph under ONNX Runtime FP32, scored through the fidelity scorer and its cache.
    Returns (scores, seconds)."""
    from edgedeploy.host.runners import graph_runner
    from edgedeploy.runtime.batch import score_benchmark
    from edgedeploy.runtime.cache import NoCache, ScoreCache

    t0 = time.perf_counter()
    scorer = graph_runner(bundle.model_path, bundle.recipe, bundle.checkpoint_sha, model_sha256=bundle.model_sha,
                          label=label)
    cache = ScoreCache(scorer.identity()) if opts.cache else NoCache(scorer.identity())
    reference = score_benchmark(scorer, subset, cache, progress=opts.progress)
    log(reference.summary())
    return reference, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------- run


def run_precision(opts: PrecisionOptions, log: Log = _stderr) -> PrecisionRun:
    """Everything ``edgedeploy precision`` does except printing the summary and choosing the exit code."""
    from edgedeploy.evaluation.data import load_image
    from edgedeploy.evaluation.precision import emit
    from edgedeploy.evaluation.precision.graph_index import load_index
    from edgedeploy.evaluation.precision.patterns import classify, regions
    from edgedeploy.evaluation.precision.ranges import analyse
    from edgedeploy.evaluation.precision.search import candidates, closure, search

    t_start = time.perf_counter()
    check_options(opts)
    inputs = resolve_inputs(opts, "precision")
    profile, recipe, bench, report_dir = inputs.profile, inputs.recipe, inputs.bench, inputs.report_dir
    subset, res, warning = search_images(opts, bench, log)
    float_bundle = build_float_bundle(opts, recipe, profile, log, "")
    built, recipe, build_seconds = float_bundle.built, float_bundle.recipe, float_bundle.build_seconds
    model_path, model_sha = float_bundle.model_path, float_bundle.model_sha
    checkpoint_sha, source, seeded = float_bundle.checkpoint_sha, float_bundle.source, float_bundle.seeded
    log(f"model: {float_bundle.model_line}; graph {model_sha[:16]}")

    # 1. range analysis
    index = load_index(model_path)
    patterns, region_of = classify(index), regions(index)
    calib = calibration_images(subset, opts.calib_dir, opts.calib_images)
    log(f"range analysis: {len(calib)} calibration image(s) through the FP32 graph, every intermediate tensor "
        f"(segments of <= {opts.memory_mib:g} MiB)")
    size = recipe.card.input_size
    rss_before = current_rss_mib()
    images = ((label, recipe.card.prepare(load_image(path, size)[None])[0]) for label, path in calib)
    ranges = analyse(index, str(model_path), recipe.card.input_name, images, opts.margin, opts.flush_share, opts.memory_mib,
                     log=log if opts.progress else None)
    log(f"range analysis: {len(ranges.tensors)} tensors, {len(ranges.errors)} errors, {len(ranges.warnings)} warnings "
        f"({ranges.seconds:.1f}s, {ranges.segments} segments, resident memory {rss_before:.0f} MiB before, "
        f"at most {ranges.peak_rss_mib:.0f} MiB during)")

    # 2. reference and search
    budget = Budget(opts.max_drift, opts.max_score_error, opts.gate)
    reference, reference_seconds = reference_scores(float_bundle, subset, REFERENCE_LABEL, opts, log)
    keepable = emit.keepable_nodes(index, model_path)
    groups = candidates(index, patterns, region_of, ranges, keepable)
    from edgedeploy.evaluation.data import Benchmark

    screen_samples = sorted(interleave(subset, opts.screen_images), key=lambda s: (s.category, s.rel_path))
    screen_bench = Benchmark(subset.name, subset.root, tuple(screen_samples))
    float_tensors = {t for t, kind in index.types.items() if kind == 1}  # TensorProto.FLOAT
    evaluator = BenchEvaluator(model_path, model_sha, recipe, checkpoint_sha, subset, reference, budget,
                               cache=opts.cache, progress=opts.progress, screen_bench=screen_bench,
                               strict=opts.boundary == "strict", float_tensors=float_tensors)
    log(f"keep-list search: {len(groups)} candidate groups, budget: {gate_words(opts.gate, opts.max_drift)} "
        f"(one pair = {res.gate_pair:.3f} points of it) and max |score diff| <= {opts.max_score_error:g}, at most "
        f"{opts.max_evals} evaluations"
        + (f" (candidates screened on {len(screen_samples)} images, the best {opts.top} per round evaluated)"
           if 0 < opts.screen_images < len(subset) else ""))
    t0 = time.perf_counter()
    screen = evaluator.screen if 0 < opts.screen_images < len(subset) else None
    result = search(evaluator, groups, lambda nodes: closure(nodes, index, ranges.bounds, keepable), budget,
                    opts.max_evals, opts.force_search, log=log, screen=screen, top=opts.top)
    search_seconds = time.perf_counter() - t0
    evaluator.cleanup({(), result.keep})

    # 3. emit
    args = emit.verified_arguments(result.keep, index, keepable, model_path)
    trt = emit.tensorrt_flags(profile, result.keep, model_path)
    output_regions = {region_of[index.producer[o]] for o in index.graph_outputs if o in index.producer}
    qnn = emit.qnn_advice(result, ranges, region_of,
                          profile.build.get("qnn_options") if profile.runtime == "qnn" else None, output_regions)
    recommendation = {
        "keep_fp32": list(result.keep),
        "fp32_nodes": len(result.keep),
        "keep_fp32_args": args,
        "within_budget": result.within_budget,
        "build_command": emit.build_command(profile.name, args, opts.model_words())
        if profile.runtime == "tensorrt" else None,
        "fidelity_command": emit.fidelity_command(bench.name, profile.name, args, opts.model_words(),
                                                  opts.data_root, opts.categories, opts.max_drift, opts.gate),
        "tensorrt": trt,
        "qnn": qnn,
        "patterns": _count([patterns[n] for n in result.keep]),
        "regions": _count([region_of[n] for n in result.keep]),
    }
    report = {
        "edgedeploy": __version__,
        "command": " ".join(["edgedeploy", *sys.argv[1:]]) if sys.argv and "edgedeploy" in Path(sys.argv[0]).name
        else "edgedeploy precision",
        "bench": bench.name, "target": profile.name, "target_display_name": profile.display_name,
        "runtime": profile.runtime,
        "model": {"source": "seeded reference weights" if seeded else source, "checkpoint_sha256": checkpoint_sha,
                  "seeded": seeded, "recipe": recipe.name, "recipe_sha256": recipe.sha256, "model_sha256": model_sha,
                  "bundle": str(built.bundle_dir)},
        "images": {"search": len(subset), "of": len(bench), "per_category": opts.limit or None,
                   "resolution": {"pair_points": res.pairs, "gate_pair_points": res.gate_pair,
                                  "resolves_max_drift": res.resolves, "warning": warning},
                   "categories": bench.categories, "calibration": [label for label, _ in calib],
                   "screening": [smp.rel_path for smp in screen_samples],
                   "calibration_source": str(opts.calib_dir) if opts.calib_dir else "the search images"},
        "reference": REFERENCE_LABEL,
        "device": DEVICE_LABEL,
        "boundary": {"mode": opts.boundary, "meaning": BOUNDARY_NOTE[opts.boundary]},
        "budget": {"max_drift_points": opts.max_drift, "gate": opts.gate, "max_score_error": opts.max_score_error,
                   "rule": GATE_RULE},
        "analysis": ranges.to_dict(timing=False),
        "before": _evaluation_dict(result.baseline),
        "after": _evaluation_dict(result.best),
        "search": result.to_dict(),
        "recommendation": recommendation,
        "timing": {"build_s": round(build_seconds, 2), "analysis_s": round(ranges.seconds, 2),
                   "analysis_rss_before_mib": round(rss_before, 1),
                   "analysis_peak_rss_mib": round(ranges.peak_rss_mib, 1),
                   "reference_s": round(reference_seconds, 2), "search_s": round(search_seconds, 2),
                   "evaluations": sum(1 for t in result.trials if t.step != "baseline" and not t.screen),
                   "screenings": sum(1 for t in result.trials if t.screen),
                   "total_s": round(time.perf_counter() - t_start, 2), "peak_rss_mib": round(peak_rss_mib(), 1)},
        "units": {"gate_value": "gate drift the gate checks, points: AUROC points carried by pairs reordered "
                                "beyond FP16 near-ties, both directions (benchmark: mean over categories; category: the "
                                "worst category's)",
                  "drift": "raw drift, device - host image AUROC, points (x100), per category; mean_drift: their mean",
                  "score_error": "max |device - host| image score over the search images"},
    }
    path = report_dir / "precision.json"
    write_json_atomic(path, json_safe(report))
    return PrecisionRun(report, report_dir, ranges, result, [path])


def _default_checkpoint(recipe):
    try:
        from edgedeploy.host.checkpoints import default_checkpoint
    except ImportError:
        return None
    return default_checkpoint(recipe)


def _count(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


GATE_RULE = ("the keep set is within budget when `edgedeploy fidelity`'s gate passes on the search images with the "
             "same --max-drift and --gate (the gate drift, AUROC points carried by normal/anomalous pairs "
             "reordered beyond FP16 near-ties, <= --max-drift: the mean over categories, or each category's; near-ties "
             "never fail; NaN/inf scores always fail) and max |score diff| <= --max-score-error")


def gate_words(gate: str, max_drift: float) -> str:
    scope = "mean over categories" if gate == "benchmark" else "each category's"
    return f"gate drift ({scope}) <= {max_drift:g} points (the fidelity gate, --gate {gate})"


def _evaluation_dict(e: Evaluation) -> dict:
    return {"fp32_nodes": len(e.keep), "gate_passed": e.passed, "gate_value": e.gate_value,
            "mean_drift": e.mean_drift, "near_ties": e.near_ties, "reorderings": e.reorderings,
            "max_score_error": e.max_score_error, "nonfinite": e.nonfinite, "drift": e.drift,
            "reordering_drift": e.reordering, "verdict": e.verdict, "summary": describe_drift(e)}
