"""``edgedeploy precision --precision w8a8|w8a16|int8``: the mixed-precision search for an integer build (issue 21).

The same search as the FP16 keep-list (:func:`edgedeploy.evaluation.precision.search.search`: candidate node groups
by op class and graph region, screened, greedy rounds, pruning and bisection), with another device and another way
to raise a group:

* the device is the build's calibrated QDQ graph (the *quantize* stage of ``edgedeploy build --precision P
  --calibration C``, :mod:`edgedeploy.targets.quantize`, reused from its stage cache) run under ONNX Runtime's CPU
  provider: the fast stand-in for the device (Qualcomm's HTP backend takes 15-25 s per image on this host; ONNX
  Runtime's CPU run of the QDQ graph is not the HTP's arithmetic at w8a8, docs/quantization.md measures how far);
* a group is *raised* by keeping it float in the quantiser (``nodes_to_exclude``), which is exactly what
  ``edgedeploy build --keep-float NODE`` does on top of the default exclusions (LayerNorm, Softmax, GELU, residual
  Adds). Per-node 16-bit activations exist in ONNX Runtime's QNN helper (``get_qnn_qdq_config(init_overrides=
  {tensor: [{"quant_type": QuantType.QUInt16}]}, add_qtype_converts=True)``, fixed up by
  ``execution_providers/qnn/mixed_precision_overrides_utils.MixedPrecisionTensorQuantOverridesFixer``), but the build
  takes no such override, so the search emits what the build takes;
* the verdict is ``edgedeploy fidelity``'s whole gate: the image gate (gate drift <= --max-drift, integer
  rounding never excused) and the pixel gate (pixel AUROC and AUPRO drop <= --max-pixel-drift), on the search
  images, against the float graph under ONNX Runtime FP32; plus, when given, --max-score-error.

Sensitivity: the first greedy round keeps each candidate group float in an otherwise quantised graph, alone, and
scores it on the screening images (all search images by default: the cost of a candidate is its quantisation, about
9 s on the small recipe, not its scoring); those figures, ranked, are the sensitivity ranking the run prints.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgedeploy import __version__
from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import json_safe, write_json_atomic
from edgedeploy.evaluation.benchrun import BenchTargetOptions, resolve_inputs
from edgedeploy.evaluation.precision.search import (DEFAULT_MAX_DRIFT, DEFAULT_MAX_EVALS, DEFAULT_TOP, GATES, Budget,
                                                    Candidate, Evaluation, SearchResult)
from edgedeploy.targets.quantize import DATA_MOVEMENT_OPS as DATA_MOVEMENT

Log = Callable[[str], None]
DEFAULT_LIMIT = 26  # as the FP16 search (run.DEFAULT_LIMIT): resolves --max-drift 0.2 on the 3-category demo
DEFAULT_MAX_PIXEL_DRIFT = 1.0  # = edgedeploy.evaluation.fidelity.report.DEFAULT_MAX_PIXEL_DRIFT
REFERENCE_LABEL = "host ONNX Runtime FP32 (the float graph the build quantises)"
OP_TYPE_CLASSES = ("Conv", "Gemm", "MatMul", "Add", "Mul")
MIB = 2 ** 20


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Int8Options(BenchTargetOptions):
    precision: str = "w8a8"
    calibration: str | None = None
    limit: int = DEFAULT_LIMIT
    max_drift: float = DEFAULT_MAX_DRIFT
    gate: str = "benchmark"
    max_pixel_drift: float = DEFAULT_MAX_PIXEL_DRIFT
    max_score_error: float | None = None  # None: not judged (the fidelity gate does not judge it either)
    max_evals: int = DEFAULT_MAX_EVALS
    screen_images: int = 0  # 0: screen on every search image
    top: int = DEFAULT_TOP
    force_search: bool = False
    cache: bool = True
    progress: bool = True
    allow_audit_errors: bool = False


@dataclass
class Int8Evaluation(Evaluation):
    """An :class:`Evaluation` with the pixel gate's figures and the QDQ graph it judged."""

    image_passed: bool | None = None
    pixel_passed: bool | None = None
    pixel: dict = field(default_factory=dict)  # metric -> {"host", "device", "drop"} (means over categories)
    graph_bytes: int | None = None
    graph_sha256: str | None = None
    quantize_s: float = 0.0


@dataclass
class Int8Run:
    report: dict
    report_dir: Path
    search: SearchResult
    files: list[Path] = field(default_factory=list)


def check_options(opts: Int8Options) -> None:
    for name, value in (("--max-drift", opts.max_drift), ("--max-pixel-drift", opts.max_pixel_drift),
                        ("--max-score-error", 0.0 if opts.max_score_error is None else opts.max_score_error)):
        if not math.isfinite(value) or value < 0:
            raise EdgeDeployError(f"{name} must be a non-negative number, got {value}")
    if opts.limit < 0 or opts.limit == 1:
        raise EdgeDeployError("--limit must be 0 (all) or >= 2: image AUROC needs a normal and an anomalous image "
                              "per category")
    if opts.max_evals < 0 or opts.screen_images < 0 or opts.top < 1:
        raise EdgeDeployError("--max-evals and --screen-images must be >= 0, --top >= 1")
    if opts.gate not in GATES:
        raise EdgeDeployError(f"--gate must be one of {', '.join(GATES)}, got {opts.gate!r}")
    if not opts.calibration:
        raise EdgeDeployError(f"--precision {opts.precision} needs --calibration BENCH_OR_FOLDER: the normal images the "
                              "QDQ graph is calibrated on, as `edgedeploy build` takes them (e.g. --calibration demo)")
    if opts.onnx is not None:
        raise EdgeDeployError("--precision with --onnx: the integer search needs the recipe's graph (--recipe, "
                              "--checkpoint); quantise an imported graph with `edgedeploy build --onnx ... --precision`")
    opts.check_checkpoint()


def quantisable(index, excluded: set[str]) -> set[str]:
    """Nodes a --keep-float can raise: named, computing (not data movement), not already float by default."""
    return {name for name in index.order
            if index.nodes[name].name == name and index.op(name) not in DATA_MOVEMENT and name not in excluded}


def int8_candidates(index, patterns, region_of, keepable: set[str]) -> list[Candidate]:
    """The FP16 search's groups (output head, op classes, attention core, regions) plus op types, keepable only."""
    from edgedeploy.evaluation.precision.search import candidates

    groups = candidates(index, patterns, region_of, None, keepable)
    seen = {g.nodes for g in groups}
    position = index.position
    for op in OP_TYPE_CLASSES:
        nodes = tuple(sorted((n for n in keepable if index.op(n) == op), key=position.__getitem__))
        if nodes and nodes not in seen:
            seen.add(nodes)
            groups.append(Candidate(f"op type: {op}", "op-type", nodes, f"every quantised {op} node ({len(nodes)})"))
    return groups


class QdqEvaluator:
    """Quantises the float graph with a keep-float set (the build's quantize stage) and judges the QDQ graph, under
    ONNX Runtime CPU, with ``edgedeploy fidelity``'s image and pixel gate against the float reference."""

    def __init__(self, quantise, recipe, checkpoint_sha: str, bench, screen_bench, reference, budget: Budget,
                 max_pixel_drift: float, precision: str, cache: bool = True, progress: bool = True):
        self.quantise, self.recipe, self.checkpoint_sha = quantise, recipe, checkpoint_sha
        self.bench, self.screen_bench, self.reference = bench, screen_bench, reference
        self.budget, self.max_pixel_drift, self.precision = budget, max_pixel_drift, precision
        self.cache, self.progress = cache, progress

    def label(self) -> str:
        return f"device stand-in: the {self.precision.upper()} QDQ graph under ONNX Runtime CPU"

    def _score(self, keep: tuple[str, ...], bench):
        from edgedeploy.host.runners import graph_runner
        from edgedeploy.runtime.batch import score_benchmark
        from edgedeploy.runtime.cache import NoCache, ScoreCache

        t0 = time.perf_counter()
        path, sha, record = self.quantise(keep)
        quantise_s = time.perf_counter() - t0
        # the very scorer (and score cache) `edgedeploy fidelity --precision P --device onnx` uses for this graph
        scorer = graph_runner(path, self.recipe, self.checkpoint_sha, model_sha256=sha, label=self.label(),
                              extra={"quantized": self.precision})
        cache = ScoreCache(scorer.identity()) if self.cache else NoCache(scorer.identity())
        return score_benchmark(scorer, bench, cache, progress=self.progress), sha, record, quantise_s

    def _judge(self, keep, bench) -> Int8Evaluation:
        start = time.perf_counter()
        scored, sha, record, quantise_s = self._score(keep, bench)
        evaluation = judge(self.reference, scored, bench, self.budget, self.max_pixel_drift, self.precision,
                           self.recipe, keep)
        evaluation.seconds, evaluation.scored = time.perf_counter() - start, scored.computed
        evaluation.graph_bytes, evaluation.graph_sha256 = record["graph"]["bytes"], sha
        evaluation.quantize_s = quantise_s
        return evaluation

    def __call__(self, keep: tuple[str, ...]) -> Int8Evaluation:
        return self._judge(keep, self.bench)

    def screen(self, keep: tuple[str, ...]) -> Int8Evaluation:
        """The gate's figures on the screening images, ranked by (gate fails, gate drift, pixel drop, score
        error); ``passed`` stays None (a screening is no verdict)."""
        evaluation = self._judge(keep, self.screen_bench)
        evaluation.rank = sensitivity_key(evaluation)
        evaluation.passed = None
        return evaluation


def sensitivity_key(e: Int8Evaluation) -> tuple:
    value = math.inf if e.nonfinite or e.gate_value is None else round(e.gate_value, 9)
    drop = max((m["drop"] for m in e.pixel.values() if m.get("drop") is not None), default=0.0)
    error = e.max_score_error if math.isfinite(e.max_score_error) else math.inf
    passed = bool(e.image_passed) and bool(e.pixel_passed)
    return (not passed, value, round(max(drop, 0.0), 9), error)


def judge(reference, scored, bench, budget: Budget, max_pixel_drift: float, precision: str, recipe,
          keep: tuple[str, ...] = ()) -> Int8Evaluation:
    """``edgedeploy fidelity``'s gate on these scores (image and pixel, the integer error model) and the score error."""
    from edgedeploy.evaluation.fidelity.compare import PixelSpec, compare
    from edgedeploy.evaluation.fidelity.report import PIXEL_METRICS
    from edgedeploy.evaluation.precision.evaluate import gate_value, score_error

    report = compare(reference, scored, bench, budget.max_drift, top=0, gate=budget.gate,
                     pixel=PixelSpec(recipe.card.input_size, recipe.card.smooth_sigma),
                     max_pixel_drift=max_pixel_drift, precision=precision)
    error, nonfinite = score_error(reference, scored, bench)
    defined = [c for c in report.categories if c.defined]
    value = gate_value(report, budget.gate)
    mean = report.mean
    host_m, device_m = mean.get("host_metrics") or {}, mean.get("device_metrics") or {}
    pixel = {}
    for key, _ in PIXEL_METRICS:
        if key in host_m and key in device_m:
            pixel[key] = {"host": host_m[key], "device": device_m[key], "drop": host_m[key] - device_m[key]}
    image = {k: {"host": host_m[k], "device": device_m[k]} for k in ("image_auroc",)  # points, as compare() gives them
             if k in host_m and k in device_m}
    return Int8Evaluation(tuple(keep), value, error, bool(report.passed), nonfinite,
                          drift={c.category: c.drift for c in defined}, mean_drift=mean.get("drift"),
                          reordering={c.category: c.reordering_gross for c in defined},
                          near_ties=int(mean.get("near_ties") or 0), reorderings=int(mean.get("reorderings") or 0),
                          verdict=report.verdict(), image_passed=bool(report.image_passed),
                          pixel_passed=bool(report.pixel_passed), pixel={**image, **pixel})


# ----------------------------------------------------------------------------------------------------------- run


def run_int8(opts: Int8Options, log: Log = _stderr) -> Int8Run:
    """Everything ``edgedeploy precision --precision w8a8|w8a16|int8`` does except printing and the exit code."""
    import onnx

    from edgedeploy.evaluation.data import Benchmark
    from edgedeploy.evaluation.data.benchmarks import normalise_name
    from edgedeploy.evaluation.fidelity.quantized import evaluated_overlap
    from edgedeploy.evaluation.precision import emit
    from edgedeploy.evaluation.precision.evaluate import interleave
    from edgedeploy.evaluation.precision.graph_index import load_index
    from edgedeploy.evaluation.precision.patterns import classify, regions
    from edgedeploy.evaluation.precision.run import (_count, build_float_bundle, gate_words, precision_build_dir,
                                                     reference_scores, search_images)
    from edgedeploy.evaluation.precision.search import search
    from edgedeploy.host.pipeline import _quantize_stage
    from edgedeploy.host.stages import StageCache
    from edgedeploy.targets import quantize as q

    t_start = time.perf_counter()
    check_options(opts)
    inputs = resolve_inputs(opts, "precision")
    profile, recipe, bench, report_dir = inputs.profile, inputs.recipe, inputs.bench, inputs.report_dir
    q.check_precision(profile, opts.precision)
    same_bench = normalise_name(opts.calibration) == normalise_name(opts.bench)
    request = q.QuantizeRequest(precision=opts.precision, calibration=opts.calibration,
                                data_root=opts.data_root if same_bench else None,
                                eval_bench=opts.bench if same_bench else None)
    q.check_request(request)
    calibration = q.resolve_calibration(request)  # refuses calibration images that are test images of the bench
    overlap = evaluated_overlap(set(calibration.sha256), bench)
    if overlap:
        raise EdgeDeployError(f"{len(overlap)} calibration image(s) are also evaluated images (e.g. {overlap[0]}): "
                              "calibrate on normal images apart from the evaluation set")
    subset, res, warning = search_images(opts, bench, log)
    float_bundle = build_float_bundle(opts, recipe, profile, log, " (float graph)")
    built, recipe, build_seconds = float_bundle.built, float_bundle.recipe, float_bundle.build_seconds
    float_path, float_sha = float_bundle.model_path, float_bundle.model_sha
    checkpoint_sha, seeded = float_bundle.checkpoint_sha, float_bundle.seeded
    float_bytes = float_path.stat().st_size
    log(f"model: {float_bundle.model_line}; graph {float_sha[:16]}")
    build_dir = precision_build_dir(opts.out)

    stages = StageCache(build_dir / ".stages")
    records: dict[tuple[str, ...], dict] = {}

    def quantise(keep: tuple[str, ...]):
        record, stage = _quantize_stage(stages, float_path, float_sha, profile, recipe,
                                        replace(request, keep_float=tuple(keep)), calibration,
                                        lambda line: log(f"  {line}"))
        records[tuple(keep)] = record
        return stage.output_path(build_dir / ".stages", "model.onnx"), stage.outputs["model.onnx"]["sha256"], record

    # the reference: the float graph under ONNX Runtime FP32
    reference, reference_seconds = reference_scores(float_bundle, subset, REFERENCE_LABEL, opts, log)

    model = onnx.load(str(float_path), load_external_data=False)
    defaults = q.default_exclusions(model)
    index = load_index(float_path)
    patterns, region_of = classify(index), regions(index)
    keepable = quantisable(index, set(defaults))
    groups = int8_candidates(index, patterns, region_of, keepable)
    screen_samples = (sorted(interleave(subset, opts.screen_images), key=lambda s: (s.category, s.rel_path))
                      if 0 < opts.screen_images < len(subset) else list(subset.samples))
    screen_bench = Benchmark(subset.name, subset.root, tuple(screen_samples))
    max_score_error = math.inf if opts.max_score_error is None else opts.max_score_error
    budget = Budget(opts.max_drift, max_score_error, opts.gate)
    evaluator = QdqEvaluator(quantise, recipe, checkpoint_sha, subset, screen_bench, reference, budget,
                             opts.max_pixel_drift, opts.precision, cache=opts.cache, progress=opts.progress)
    log(f"device stand-in: the {opts.precision.upper()} QDQ graph under ONNX Runtime CPU (fast; not the HTP's own "
        "arithmetic, see docs/quantization.md; `edgedeploy fidelity --device qnn-htp` checks the result on it)")
    log(f"{opts.precision} search: {len(groups)} candidate groups of {len(keepable)} quantised computing nodes "
        f"({len(defaults)} float by default); budget: {gate_words(opts.gate, opts.max_drift)} (one pair = "
        f"{res.gate_pair:.3f} points of it), pixel AUROC and AUPRO drop <= {opts.max_pixel_drift:g} points"
        + (f", max |score diff| <= {opts.max_score_error:g}" if opts.max_score_error is not None else "")
        + f"; at most {opts.max_evals} evaluations after plain {opts.precision} (each round's candidates are quantised "
        f"and screened on {len(screen_samples)} images first, the best {opts.top} judged)")
    plain = f"plain {opts.precision}"

    def search_log(line: str) -> None:  # the search's trial lines speak FP16; here a raised node is kept float
        log(line.replace("pure FP16", plain).replace("FP32 nodes", "nodes kept float"))

    t0 = time.perf_counter()
    result = search(evaluator, groups, lambda nodes: tuple(sorted(set(nodes) & keepable,
                                                                  key=index.position.__getitem__)),
                    budget, opts.max_evals, opts.force_search, log=search_log, screen=evaluator.screen, top=opts.top)
    search_seconds = time.perf_counter() - t0

    # emit
    args = keep_float_arguments(result.keep, index, keepable, model, set(defaults))
    base_words = ["--precision", opts.precision, "--calibration", opts.calibration]
    if opts.data_root is not None and same_bench:
        base_words += ["--data-root", str(opts.data_root)]
    keep_words = [w for a in args for w in ("--keep-float", a)]
    build_cmd = emit.command_line(["edgedeploy", "build", "--target", profile.name, *opts.model_words(), *base_words,
                                   *keep_words])
    fid = ["edgedeploy", "fidelity", "--bench", bench.name, "--target", profile.name, *opts.model_words(),
           *base_words, "--device", "onnx", "--host", "onnx"]
    if opts.data_root is not None and not same_bench:
        fid += ["--data-root", str(opts.data_root)]
    if opts.categories:
        fid += ["--categories", ",".join(opts.categories)]
    if opts.max_drift != DEFAULT_MAX_DRIFT:
        fid += ["--max-drift", f"{opts.max_drift:g}"]
    if opts.gate != "benchmark":
        fid += ["--gate", opts.gate]
    if opts.max_pixel_drift != DEFAULT_MAX_PIXEL_DRIFT:
        fid += ["--max-pixel-drift", f"{opts.max_pixel_drift:g}"]
    fidelity_cmd = emit.command_line(fid + keep_words)
    plain_bytes = result.baseline.graph_bytes
    found_bytes = result.best.graph_bytes
    cost = {"nodes_raised": len(result.keep), "how": "kept float (quantiser nodes_to_exclude, build --keep-float)",
            "graph_mib": _mib(found_bytes), "plain_graph_mib": _mib(plain_bytes), "float_graph_mib": _mib(float_bytes),
            "vs_plain_mib": None if found_bytes is None or plain_bytes is None else _mib(found_bytes - plain_bytes),
            "vs_float_share": None if found_bytes is None else round(found_bytes / float_bytes, 4),
            "patterns": _count([patterns[n] for n in result.keep]),
            "op_types": _count([index.op(n) for n in result.keep])}
    ranking = sensitivity_ranking(result)
    report = {
        "edgedeploy": __version__, "mode": "integer",
        "command": " ".join(["edgedeploy", *sys.argv[1:]]) if sys.argv and "edgedeploy" in Path(sys.argv[0]).name
        else "edgedeploy precision",
        "bench": bench.name, "target": profile.name, "target_display_name": profile.display_name,
        "runtime": profile.runtime, "precision": opts.precision,
        "model": {"source": "seeded reference weights" if seeded else float_bundle.source,
                  "checkpoint_sha256": checkpoint_sha, "seeded": seeded, "recipe": recipe.name,
                  "recipe_sha256": recipe.sha256, "float_model_sha256": float_sha, "bundle": str(built.bundle_dir)},
        "calibration": {**calibration.source, "images": len(calibration.images), "found": calibration.found,
                        "method": q.METHODS[request.method], "overlap_with_evaluated": len(overlap)},
        "images": {"search": len(subset), "of": len(bench), "per_category": opts.limit or None,
                   "categories": bench.categories, "screening": [s.rel_path for s in screen_samples],
                   "resolution": {"pair_points": res.pairs, "gate_pair_points": res.gate_pair,
                                  "resolves_max_drift": res.resolves, "warning": warning}},
        "reference": REFERENCE_LABEL,
        "device": evaluator.label(),
        "device_note": ("the fast stand-in for the search (the QNN HTP backend is ~15-25 s per image on this host); "
                        "at w8a8 ONNX Runtime's CPU run is not the HTP's arithmetic (docs/quantization.md): check the "
                        "result with `edgedeploy fidelity --device qnn-htp`"),
        "raise": {"how": "keep float (ONNX Runtime quantiser nodes_to_exclude = `edgedeploy build --keep-float`)",
                  "default_float": len(defaults), "candidates_nodes": len(keepable),
                  "a16_overrides": ("not used: ONNX Runtime's QNN helper supports per-tensor 16-bit activations "
                                    "(get_qnn_qdq_config init_overrides quant_type QUInt16 with add_qtype_converts, "
                                    "MixedPrecisionTensorQuantOverridesFixer), but `edgedeploy build` takes no such "
                                    "override")},
        "budget": {"max_drift_points": opts.max_drift, "gate": opts.gate, "max_pixel_drift_points": opts.max_pixel_drift,
                   "max_score_error": opts.max_score_error,
                   "rule": ("an override set is within budget when `edgedeploy fidelity`'s gate passes on the search "
                            "images: gate drift <= --max-drift (integer rounding never excused) and pixel AUROC "
                            "and AUPRO drop <= --max-pixel-drift; and max |score diff| <= --max-score-error if given")},
        "before": evaluation_dict(result.baseline),
        "after": evaluation_dict(result.best),
        "sensitivity": ranking,
        "search": result.to_dict(),
        "trial_pixel": [{"keep": list(t.evaluation.keep), "screen": t.screen,
                         "pixel_drop": {k: v["drop"] for k, v in t.evaluation.pixel.items() if "drop" in v}}
                        for t in result.trials if not t.screen],
        "recommendation": {"keep_float": list(result.keep), "keep_float_args": args,
                           "within_budget": result.within_budget, "build_command": build_cmd,
                           "fidelity_command": fidelity_cmd, "cost": cost,
                           "why_not": None if result.within_budget else why_not(result, opts)},
        "timing": {"build_s": round(build_seconds, 2), "reference_s": round(reference_seconds, 2),
                   "search_s": round(search_seconds, 2),
                   "evaluations": sum(1 for t in result.trials if t.step != "baseline" and not t.screen),
                   "screenings": sum(1 for t in result.trials if t.screen),
                   "quantisations": len(records), "total_s": round(time.perf_counter() - t_start, 2)},
    }
    path = report_dir / "precision.json"
    write_json_atomic(path, json_safe(report))
    return Int8Run(report, report_dir, result, [path])


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / MIB, 2)


def keep_float_arguments(keep: tuple[str, ...], index, keepable: set[str], model, defaults: set[str]) -> list[str]:
    """``keep`` as --keep-float arguments: globs where they resolve (with the build's resolver, beside the default
    exclusions) to exactly ``keep``, else node names."""
    from edgedeploy.evaluation.precision.emit import compact_patterns
    from edgedeploy.targets.quantize import expand_keep_float

    if not keep:
        return []
    args = compact_patterns(keep, index, keepable)
    try:
        if set(expand_keep_float(model, tuple(args))) - defaults == set(keep):
            return args
    except EdgeDeployError:
        pass
    return list(keep)


def evaluation_dict(e: Int8Evaluation) -> dict:
    return {"nodes_raised": len(e.keep), "gate_passed": e.passed, "image_passed": e.image_passed,
            "pixel_passed": e.pixel_passed, "gate_value": e.gate_value, "mean_drift": e.mean_drift,
            "reorderings": e.reorderings, "near_ties": e.near_ties,
            "max_score_error": e.max_score_error if math.isfinite(e.max_score_error) else str(e.max_score_error),
            "nonfinite": e.nonfinite, "metrics": e.pixel, "drift": e.drift, "verdict": e.verdict,
            "graph_bytes": e.graph_bytes, "graph_sha256": e.graph_sha256}


def sensitivity_ranking(result: SearchResult) -> list[dict]:
    """Each candidate group kept float alone in an otherwise quantised graph (the first round), most helpful first."""
    first = [t for t in result.trials if t.step in ("screen 1", "greedy 1", "information")]
    seen, rows = set(), []
    for t in sorted(first, key=lambda t: (sensitivity_key(t.evaluation), t.n_fp32)):
        if t.candidate in seen:
            continue
        seen.add(t.candidate)
        e = t.evaluation
        rows.append({"candidate": t.candidate, "kind": t.kind, "nodes": t.n_fp32, "gate_value": e.gate_value,
                     "reorderings": e.reorderings, "mean_drift": e.mean_drift,
                     "pixel_drop": {k: round(v["drop"], 3) for k, v in e.pixel.items() if "drop" in v},
                     "image_passed": e.image_passed, "pixel_passed": e.pixel_passed,
                     "max_score_error": e.max_score_error, "screen": t.screen})
    return rows


def why_not(result: SearchResult, opts: Int8Options) -> str:
    b = result.best
    parts = []
    if not b.image_passed:
        parts.append(f"gate drift {_num(b.gate_value)} > {opts.max_drift:g} points")
    if not b.pixel_passed:
        drops = ", ".join(f"{k} -{v['drop']:.2f}" for k, v in b.pixel.items()
                          if v.get("drop") is not None and v["drop"] > opts.max_pixel_drift)
        parts.append(f"pixel drop {drops} > {opts.max_pixel_drift:g} points")
    if opts.max_score_error is not None and b.max_score_error > opts.max_score_error:
        parts.append(f"max |score diff| {b.max_score_error:.3g} > {opts.max_score_error:g}")
    return (f"no --keep-float set within --max-evals {opts.max_evals} passed the gate ({result.stopped}); the best, "
            f"{len(b.keep)} nodes raised, still fails: " + "; ".join(parts or ["gate failed"]))


def _num(v) -> str:
    return "undefined" if v is None else f"{v:.3f}"


# -------------------------------------------------------------------------------------------------------- render


def render(report: dict) -> str:
    from edgedeploy.evaluation.precision.render import _table

    p = report["precision"]
    lines = [f"model: {report['model']['source']} | recipe {report['model']['recipe']} | target {report['target']} "
             f"| {p}",
             f"reference: {report['reference']}",
             f"device:    {report['device']} -- {report['device_note']}",
             f"raise:     {report['raise']['how']}; {report['raise']['default_float']} nodes float by default",
             ""]
    rows = [("sensitivity: group kept float alone", "nodes", "reord. drift", "reord.", "pixel AUROC drop",
             "AUPRO drop", "max |score diff|", "gate")]
    for r in report["sensitivity"]:
        gate = "pass" if r["image_passed"] and r["pixel_passed"] else (
            "image fails" if not r["image_passed"] else "pixel fails")
        rows.append((r["candidate"], r["nodes"], _num(r["gate_value"]), r["reorderings"],
                     _num(r["pixel_drop"].get("pixel_auroc")), _num(r["pixel_drop"].get("aupro")),
                     f"{r['max_score_error']:.3g}", gate))
    if len(rows) > 1:
        lines += _table(rows, (60, 6, 12, 6, 16, 10, 16, 12))
    else:
        lines.append(f"sensitivity: not measured (plain {p} is within budget; --force-search measures it)")
    evaluations = {tuple(r["keep"]): r["pixel_drop"] for r in report.get("trial_pixel", [])}
    lines += ["", f"search ({report['images']['search']} of {report['images']['of']} images): "
                  f"{report['search']['stopped']}"]
    rows = [("step", "candidate", "nodes raised", "reord. drift", "pixel AUROC drop", "AUPRO drop", "budget")]
    for t in report["search"]["trials"]:
        if t.get("screen"):
            continue
        what = f"plain {p}" if t["step"] == "baseline" else t["candidate"]
        e = evaluations.get(tuple(t["keep"]), {})
        rows.append((t["step"], ("* " if t["accepted"] else "") + str(what), t["fp32_nodes"], _num(t["gate_value"]),
                     _num(e.get("pixel_auroc")), _num(e.get("aupro")), "within" if t["within_budget"] else "over"))
    lines += _table(rows, (12, 60, 12, 12, 16, 10, 8))
    before, after = report["before"], report["after"]
    lines += ["", f"plain {p}:{' ' * 9}{_figures(before)}",
              f"{p} + overrides ({after['nodes_raised']} raised): {_figures(after)}"]
    rec = report["recommendation"]
    cost = rec["cost"]
    size = (f"QDQ graph {cost['graph_mib']} MiB vs plain {p} {cost['plain_graph_mib']} MiB "
            f"({cost['vs_plain_mib']:+.2f}) vs float graph {cost['float_graph_mib']} MiB")
    if not rec["keep_float"]:
        lines.append(f"recommendation: plain {p} is within budget: raise nothing ({size})" if rec["within_budget"]
                     else f"recommendation: none ({size})")
    else:
        state = "passes the gate" if rec["within_budget"] else "best found, still FAILS the gate"
        lines.append(f"override set ({cost['nodes_raised']} nodes raised, {state}): "
                     + ", ".join(f"{k} x{v}" for k, v in cost["op_types"].items()))
        lines.append(f"  cost: {cost['nodes_raised']} nodes kept float; {size}")
        lines.append("  " + " ".join(f"--keep-float {a}" for a in rec["keep_float_args"]))
        lines.append(f"  build:    {rec['build_command']}")
    lines.append(f"  check on all images: {rec['fidelity_command']}")
    t = report["timing"]
    lines.append(f"time {t['total_s']:.0f}s (build {t['build_s']:.0f}s, reference {t['reference_s']:.0f}s, search "
                 f"{t['search_s']:.0f}s: {t['quantisations']} quantisations, {t['evaluations']} evaluations, "
                 f"{t['screenings']} screenings)")
    return "\n".join(lines)


def _figures(e: dict) -> str:
    m = e.get("metrics") or {}

    def pair(key):
        v = m.get(key)
        return "n/a" if not v else f"{v['host']:.2f} -> {v['device']:.2f}"
    gate = "PASS" if e["gate_passed"] else "FAIL"
    return (f"{gate}: gate drift {_num(e['gate_value'])} ({e['reorderings']} reorderings), raw drift "
            f"{'n/a' if e['mean_drift'] is None else format(e['mean_drift'], '+.3f')}; image AUROC "
            f"{pair('image_auroc')}, pixel AUROC {pair('pixel_auroc')}, AUPRO {pair('aupro')}; max |score diff| "
            f"{e['max_score_error'] if isinstance(e['max_score_error'], str) else format(e['max_score_error'], '.3g')}")
