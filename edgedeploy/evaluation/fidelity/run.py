"""One fidelity run: make the graph, score host and device, compare, write the report.

The device graph is the bundle's ``model.onnx`` as the pipeline's export and simplify stages make
it (``graph.py``; reused from ``OUT/.stages`` when nothing changed), so the FP16 emulation and a
device score file are checked against exactly the model that ships.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgedeploy.evaluation.benchrun import BenchTargetOptions, resolve_inputs
from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import write_json_atomic, write_text_atomic
from edgedeploy.runtime.scorefile import ScoreFileError, write_scores
from edgedeploy.evaluation.fidelity.bundle_graph import prepare_graph
from edgedeploy.host.intake import ImportedModel, describe
from edgedeploy.evaluation.fidelity.compare import PixelSpec, compare
from edgedeploy.evaluation.fidelity.report import DEFAULT_MAX_PIXEL_DRIFT, GATES, FidelityReport
from edgedeploy.runtime.base import Runner
from edgedeploy.runtime.batch import ScoredBenchmark, score_benchmark

HOST_RUNNERS = ("torch", "onnx")
HOST_DEVICES = ("auto", "cpu", "cuda")
DEVICE_RUNNERS = ("fp16-emulation", "onnx", "torch-fp16", "qnn-htp", "scores")
EMULATION_NOTE = ("the FP16 emulation rounds what an FP16 device stores, with FP32 arithmetic in between: it does not "
                  "model FP16 accumulation or a backend's own kernels. Measured against Qualcomm's QNN HTP FP16 on the "
                  "144 demo images (small recipe, docs/fidelity.md), the real error was 12x the emulation's on average "
                  "and one-sided; score on the device (--device-scores) or with --device qnn-htp for the real "
                  "arithmetic")
SEEDED_NOTE = ("seeded reference weights (no --checkpoint): the AUROCs mean nothing, only the drift "
               "between host and device does")

Log = Callable[[str], None]


@dataclass
class FidelityOptions(BenchTargetOptions):
    host: str | None = None  # None: torch for EdgeZSAD, onnx (the user's graph) for --onnx
    device: str = "fp16-emulation"
    device_scores: Path | None = None
    host_scores: Path | None = None  # with device_scores: two score files compared, no model, no images
    limit: int = 0  # at most this many images per category, half normal, half anomalous (0: all)
    allow_cpu_fallback: bool = False  # --device qnn-htp: let nodes the QNN EP refuses run on the CPU
    keep_fp32: tuple[str, ...] = ()
    max_drift: float = 0.2
    gate: str = "benchmark"
    host_device: str = "auto"
    top: int = 5
    batch_size: int = 4
    cache: bool = True
    progress: bool = True
    plots: bool = True
    allow_audit_errors: bool = False
    # the decision threshold written into the bundle (threshold.py): --write-threshold, and --max-fpr for its rule
    write_threshold: bool = False
    max_fpr: float | None = None
    # the pixel gate (report.py): pixel AUROC / AUPRO may drop by at most this many points; None: not judged
    max_pixel_drift: float | None = DEFAULT_MAX_PIXEL_DRIFT
    # a quantised device graph (quantized.py): the QDQ graph `edgedeploy build --precision ...` makes
    precision: str | None = None
    calibration: str | None = None
    calibration_method: str = "minmax"
    calibration_limit: int = 32
    keep_float: tuple[str, ...] = ()
    no_default_exclusions: bool = False
    allow_calibration_overlap: bool = False
    device_defaulted: bool = False  # --device not given: a QDQ graph then runs under ONNX Runtime CPU


@dataclass
class FidelityRun:
    report: FidelityReport
    report_dir: Path
    files: list[Path] = field(default_factory=list)
    scored: list[ScoredBenchmark] = field(default_factory=list)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_score_file_options(opts: FidelityOptions) -> None:
    """``--host-scores``: two files compared; every option that picks a model or a scorer contradicts it."""
    if opts.device_scores is None:
        raise EdgeDeployError("--host-scores needs --device-scores FILE: the two score files to compare")
    model_options = [name for name, value in (("--checkpoint", opts.checkpoint), ("--onnx", opts.onnx),
                                              ("--card", opts.card), ("--recipe", opts.recipe),
                                              ("--host", opts.host), ("--keep-fp32", opts.keep_fp32)) if value]
    if opts.device not in ("scores", "fp16-emulation"):
        model_options.append(f"--device {opts.device}")
    for flag, value in (("--precision", opts.precision), ("--calibration", opts.calibration),
                        ("--keep-float", opts.keep_float)):
        if value:
            model_options.append(flag)
    if opts.limit:
        model_options.append(f"--limit {opts.limit}")
    if model_options:
        raise EdgeDeployError(f"--host-scores compares two score files, with no model: {', '.join(model_options)} "
                              "contradicts it; drop it, or drop --host-scores to score a model")
    for option, path in (("--host-scores", opts.host_scores), ("--device-scores", opts.device_scores)):
        if not Path(path).is_file():
            raise ScoreFileError(f"score file {path} does not exist: check the {option} path")
    _check_gate_options(opts)


def _check_gate_options(opts: FidelityOptions) -> None:
    if opts.gate not in GATES:
        raise EdgeDeployError(f"--gate {opts.gate!r} is not one of {', '.join(GATES)}")
    if not math.isfinite(opts.max_drift) or opts.max_drift < 0:
        raise EdgeDeployError(f"--max-drift must be a non-negative number of AUROC points, got {opts.max_drift}")
    if opts.top < 0:
        raise EdgeDeployError("--top must be >= 0")
    if opts.max_pixel_drift is not None and (not math.isfinite(opts.max_pixel_drift) or opts.max_pixel_drift < 0):
        raise EdgeDeployError(f"--max-pixel-drift must be a non-negative number of points of pixel AUROC and AUPRO, "
                              f"got {opts.max_pixel_drift}")


def check_options(opts: FidelityOptions) -> None:
    if opts.host_scores is not None:
        check_score_file_options(opts)
        return
    if not opts.target:
        raise EdgeDeployError("--target is needed: the device profile whose bundle graph is checked "
                              "(see `edgedeploy targets`)")
    if not opts.bench:
        raise EdgeDeployError("--bench is needed: the benchmark to score (or --host-scores A.csv --device-scores "
                              "B.csv to compare two score files)")
    if opts.onnx is not None:
        if opts.host == "torch" or opts.device == "torch-fp16":
            raise EdgeDeployError(f"--{'host torch' if opts.host == 'torch' else 'device torch-fp16'} runs EdgeZSAD in "
                                  "PyTorch: with --onnx the host is ONNX Runtime FP32 on your graph; drop the option")
        opts.host = "onnx"
    opts.host = opts.host or "torch"
    if opts.host not in HOST_RUNNERS:
        raise EdgeDeployError(f"--host {opts.host!r} is not one of {', '.join(HOST_RUNNERS)}")
    if opts.device_scores is not None:
        if opts.device not in ("scores", "fp16-emulation"):
            raise EdgeDeployError(f"--device {opts.device} and --device-scores contradict each other: "
                                  "--device-scores replaces the device scorer; drop one of them")
        opts.device = "scores"
    if opts.device not in DEVICE_RUNNERS:
        raise EdgeDeployError(f"--device {opts.device!r} is not one of {', '.join(DEVICE_RUNNERS)}")
    if opts.device == "scores" and opts.device_scores is None:
        raise EdgeDeployError("--device scores needs --device-scores FILE (written on the device by `edgedeploy score`)")
    if opts.limit < 0 or opts.limit == 1:
        raise EdgeDeployError(f"--limit {opts.limit}: give 2 or more images per category (a normal and an anomalous "
                              "one at least), or 0 for all")
    if opts.limit and opts.device == "scores":
        raise EdgeDeployError("--limit picks the images to score, but --device-scores brings scores already made: score "
                              "the subset on the device instead, or drop --limit")
    if opts.device_scores is not None and not Path(opts.device_scores).is_file():
        raise ScoreFileError(f"device score file {opts.device_scores} does not exist: check the --device-scores path")
    if opts.allow_cpu_fallback and opts.device != "qnn-htp":
        raise EdgeDeployError("--allow-cpu-fallback applies to --device qnn-htp only")
    if opts.keep_fp32 and opts.device != "fp16-emulation":
        raise EdgeDeployError("--keep-fp32 applies to the FP16 emulation only (--device fp16-emulation)")
    _check_gate_options(opts)
    if opts.host_device not in HOST_DEVICES:
        raise EdgeDeployError(f"--host-device {opts.host_device!r} is not one of {', '.join(HOST_DEVICES)}")
    if opts.host_device == "cuda" and opts.host != "torch":
        raise EdgeDeployError("--host-device cuda applies to --host torch only (ONNX Runtime runs on the CPU here)")
    if opts.device == "qnn-htp":
        from edgedeploy.runtime.qnn import import_qnn

        import_qnn("--device qnn-htp")  # one line naming the extra (or the Python it needs), before any work
    if opts.host_device == "cuda" or opts.device == "torch-fp16":
        from edgedeploy.host.gpu import require_cuda

        require_cuda("--host-device cuda" if opts.host_device == "cuda" else "--device torch-fp16")
    if opts.batch_size < 1 or opts.top < 0:
        raise EdgeDeployError("--batch-size must be >= 1 and --top >= 0")
    opts.check_checkpoint()


def run_fidelity(opts: FidelityOptions, log: Log = _stderr) -> FidelityRun:
    """Everything ``edgedeploy fidelity`` does except printing the table and choosing the exit code."""
    check_options(opts)
    if opts.write_threshold or opts.max_fpr is not None:  # before any work (threshold.py)
        from edgedeploy.evaluation.fidelity.threshold import check_threshold_options

        check_threshold_options(opts)
    if opts.host_scores is not None:
        return _run_score_files(opts, log)
    inputs = resolve_inputs(opts, "fidelity")
    profile, recipe, bench, report_dir = inputs.profile, inputs.recipe, inputs.bench, inputs.report_dir
    from edgedeploy.evaluation.fidelity import quantized as qz

    qz.check_quantize_options(opts, profile)  # before any work: one line, exit 2
    bench_full = bench
    n_cat = len(bench.categories)
    log(f"benchmark {bench.name}: {len(bench)} test images in {n_cat} categor{'y' if n_cat == 1 else 'ies'} "
        f"at {bench.root}")
    subset_note = None
    if opts.limit:
        from edgedeploy.evaluation.data.subset import select

        full = len(bench)
        bench = select(bench, opts.limit)
        subset_note = (f"a subset: at most {opts.limit} images per category, half normal and half anomalous, evenly "
                       f"spaced (--limit {opts.limit}): {len(bench)} of {full} images")
        log(f"note: {subset_note}")

    if isinstance(recipe, ImportedModel):
        for line in describe(recipe):
            log(line)
    graph = prepare_graph(recipe, profile, Path(opts.out), opts.checkpoint, log)
    recipe = graph.model
    for line in graph.stage_lines:
        log(f"  {line}")
    for warning in graph.warnings:
        log(f"warning: {warning}")
    if not graph.audit.passed:
        message = (f"the audit found {len(graph.audit.errors)} errors for {profile.name}: the model cannot run there as "
                   f"exported (`edgedeploy audit` or `edgedeploy build --target {profile.name}` lists them)")
        if not opts.allow_audit_errors:
            raise EdgeDeployError(f"{message}; fix them, or pass --allow-audit-errors to check fidelity anyway")
        log(f"warning: {message}")
    model_path, model_sha, ckpt = graph.model_path, graph.model_sha256, graph.checkpoint
    float_path, float_sha = model_path, model_sha  # the host reference's graph (--host onnx) stays the float one
    qdq = qz.quantized_graph(opts, model_path, model_sha, profile, recipe, bench_full, log)
    if qdq is not None:
        qz.device_for(opts, qdq, profile, log)
        model_path, model_sha = qdq.path, qdq.sha256
    if opts.write_threshold:  # the bundle the threshold goes into holds this graph, or nothing is scored
        from edgedeploy.evaluation.fidelity.threshold import check_bundle

        check_bundle(Path(opts.out) / profile.name, model_sha)
    checkpoint_sha, seeded = ckpt.sha256, ckpt.seeded
    log(f"model: {recipe.name}, {ckpt.description}"
        f"{'' if seeded else ' (sha256 ' + checkpoint_sha[:16] + ')'}; graph {model_sha[:16]}, audit for "
        f"{profile.name} {'passed' if graph.audit.passed else 'FAILED'}")
    notes = [SEEDED_NOTE] if seeded else []
    if subset_note:
        notes.append(subset_note)
    if seeded:
        log(f"note: {SEEDED_NOTE}")
    shipped_keep = _compare_with_shipped_bundle(Path(opts.out) / profile.name, model_sha, log)
    if not opts.keep_fp32 and shipped_keep and opts.device == "fp16-emulation":
        opts.keep_fp32 = shipped_keep
        log(f"the FP16 emulation keeps in FP32 what {Path(opts.out) / profile.name}'s engine build keeps in FP32")

    if opts.keep_fp32:
        opts.keep_fp32 = _expand_keep(model_path, opts.keep_fp32)
        shown = ", ".join(opts.keep_fp32[:5]) + (f" and {len(opts.keep_fp32) - 5} more" if len(opts.keep_fp32) > 5 else "")
        count = f"{len(opts.keep_fp32)} node{'s' if len(opts.keep_fp32) != 1 else ''}"
        log(f"kept in FP32 in the emulation: {count} ({shown}; all listed in fidelity.json)")
    host_scorer = _host_scorer(opts, recipe, float_path, float_sha, checkpoint_sha, ckpt.path)
    common_meta = {"recipe_sha256": recipe.sha256, "data_root": str(bench.root)}
    host = _score(host_scorer, bench, opts, common_meta, log)
    if opts.device == "scores":
        from edgedeploy.evaluation.fidelity.device_scores import load_device_scores

        device, warnings = load_device_scores(opts.device_scores, bench, recipe, checkpoint_sha, model_sha,
                                              all_categories=opts.categories is None, target=profile.name)
        for warning in warnings:
            log(f"warning: {warning}")
        notes += warnings
        log(f"{device.label}: {len(device.table.rows)} images, checked against the benchmark and the checkpoint")
    else:
        if opts.device == "qnn-htp":
            notes.append(_qnn_note(profile, qdq.precision if qdq else None))
            log(f"note: {notes[-1]}")
        elif opts.device == "fp16-emulation":
            notes.append(EMULATION_NOTE)
        if qdq is not None:
            notes.append(_quantized_note(qdq, opts.device))
            log(f"note: {notes[-1]}")
        device_scorer = _device_scorer(opts, recipe, model_path, model_sha, checkpoint_sha, ckpt.path, profile,
                                       qdq.precision if qdq else None)
        device = _score(device_scorer, bench, opts, {**common_meta, "target": profile.name}, log)

    from edgedeploy.runtime.latency import from_header

    device_latency = from_header(device.table.meta) if opts.device == "scores" else None
    info = {"model": ckpt.description, "checkpoint_sha256": checkpoint_sha,
            "recipe": f"{recipe.name} ({recipe.sha256[:16]})", "model_sha256": model_sha, "graph": str(model_path),
            "data_root": str(bench.root), "keep_fp32": ", ".join(opts.keep_fp32) if opts.keep_fp32 else "",
            "seeded": seeded, "target_display_name": profile.display_name}
    if device_latency:
        info["device_latency"] = {**device_latency, "timed": device.table.meta.get("latency_timed", "")}
    if qdq is not None:
        info["quantization"] = qz.summary(qdq, device.label)
        info["float_model_sha256"] = float_sha
    report = compare(host, device, bench, opts.max_drift, opts.top, target=profile.name, info=info, notes=notes,
                     gate=opts.gate, pixel=PixelSpec(recipe.card.input_size, recipe.card.smooth_sigma),
                     max_pixel_drift=opts.max_pixel_drift, precision=qdq.precision if qdq else None)
    if opts.write_threshold:  # the decision record into the bundle (threshold.py)
        from edgedeploy.evaluation.fidelity.threshold import write_threshold

        write_threshold(opts, report, bench, host, device, Path(opts.out) / profile.name, model_sha, recipe.card, log)
    overlays = _mover_overlays(report_dir, report, bench, host, device, recipe.card.input_size,
                               recipe.card.smooth_sigma, opts, log)
    files = _write(report_dir, report, bench, host, device, opts) + overlays
    return FidelityRun(report, report_dir, files, [host, device])


def _header_precision(meta: dict) -> str | None:
    """The device graph's integer precision from a score file's header: ``# quantized:`` (the host's QDQ stand-ins),
    ``# precision:`` (TensorRT's int8), or a word of ``# runner:`` ("qnn-htp w8a8"). A quantised device's swaps are
    never excused, so its file must not be judged with FP16's near-ties."""
    from edgedeploy.evaluation.fidelity.drift import ACTIVATION_BITS

    words = [meta.get("quantized", ""), meta.get("precision", ""), *meta.get("runner", "").replace(",", " ").split()]
    return next((w for w in (w.strip().lower() for w in words) if w in ACTIVATION_BITS), None)


def _run_score_files(opts: FidelityOptions, log: Log) -> FidelityRun:
    """Two score files compared (``--host-scores``/``--device-scores``; ``opts`` checked by :func:`run_fidelity`):
    the gate and metrics from the files alone."""
    from edgedeploy.core.files import ensure_writable_dir
    from edgedeploy.evaluation.fidelity.score_files import load_score_pair

    pair = load_score_pair(opts.host_scores, opts.device_scores, opts.bench, opts.data_root, opts.categories)
    bench = pair.bench
    target = opts.target or pair.device.table.meta.get("target", "").strip()
    target = "" if target in ("none", "unknown") else target
    report_dir = ensure_writable_dir(opts.report_dir or Path(opts.out) / "fidelity" / f"{bench.name}-{target or 'files'}",
                                     "--report" if opts.report_dir else "--out")
    log(f"score files: {len(bench)} images in {len(bench.categories)} categor"
        f"{'y' if len(bench.categories) == 1 else 'ies'}; host {opts.host_scores}, device {opts.device_scores}")
    notes = list(pair.warnings)
    for note in notes:
        log(f"note: {note}")
    pixel = _pixel_from_files(pair, opts, log)
    info = {"host_scores": str(opts.host_scores), "device_scores": str(opts.device_scores),
            "recipe": pair.recipe_name or "", "model_sha256": pair.device.table.meta.get("model_sha256", ""),
            "checkpoint_sha256": pair.host.table.meta.get("checkpoint_sha256", ""),
            "data_root": str(bench.root) if opts.bench else "", "target_display_name": target}
    from edgedeploy.runtime.latency import from_header

    device_latency = from_header(pair.device.table.meta)
    if device_latency:
        info["device_latency"] = {**device_latency, "timed": pair.device.table.meta.get("latency_timed", "")}
    precision = _header_precision(pair.device.table.meta)
    if precision is not None:
        notes.append(f"the device score file's header says precision {precision}: judged as a quantised device "
                     "(no swap is excused as a near-tie)")
        log(f"note: {notes[-1]}")
    report = compare(pair.host, pair.device, bench, opts.max_drift, opts.top, target=target or "the device",
                     info=info, notes=notes, gate=opts.gate, pixel=pixel, max_pixel_drift=opts.max_pixel_drift,
                     precision=precision)
    overlays = _mover_overlays(report_dir, report, bench, pair.host, pair.device, pixel.size, pixel.sigma, opts,
                               log) if pixel is not None else []
    files = _write(report_dir, report, bench, pair.host, pair.device, opts) + overlays
    return FidelityRun(report, report_dir, files, [pair.host, pair.device])


def _pixel_from_files(pair, opts: FidelityOptions, log: Log) -> PixelSpec | None:
    """Pixel metrics need masks (a --bench), maps on both sides, and the recipe's map post-processing."""
    if not opts.bench or not pair.host.maps or not pair.device.maps:
        if opts.bench and any(s.mask_path for s in pair.bench.samples):
            log("note: no pixel metrics: both score files need their maps side files (`edgedeploy score --save-maps`)")
        return None
    from edgedeploy.core.model_recipes import load_recipe

    try:
        recipe = load_recipe(pair.recipe_name) if pair.recipe_name else None
    except EdgeDeployError:
        recipe = None
    if recipe is None:
        log(f"note: no pixel metrics: the files' recipe ({pair.recipe_name or 'none named'}) is not one this install "
            "knows, so the maps' post-processing is unknown")
        return None
    return PixelSpec(recipe.card.input_size, recipe.card.smooth_sigma)


def _mover_overlays(folder: Path, report: FidelityReport, bench, host: ScoredBenchmark, device: ScoredBenchmark,
                    size: int, sigma: float, opts: FidelityOptions, log: Log) -> list[Path]:
    """Host and device overlays of the top movers, for fidelity.md (overlays.py); not with --no-plots."""
    if not opts.plots:
        return []
    from edgedeploy.evaluation.fidelity.overlays import add_mover_overlays

    return add_mover_overlays(folder, report, bench, host, device, size, sigma, opts.top, log)


def _compare_with_shipped_bundle(bundle_dir: Path, model_sha: str, log: Log) -> tuple[str, ...]:
    """Say whether the user's bundle holds the graph checked here; return its engine's keep-FP32 nodes if so."""
    import json

    try:
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        shipped = manifest["model"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return ()
    if shipped != model_sha:
        log(f"note: {bundle_dir}/model.onnx ({str(shipped)[:16]}) is not the graph checked here ({model_sha[:16]}): "
            "it was built from another checkpoint, recipe or tool versions")
        return ()
    log(f"same graph as the bundle in {bundle_dir}")
    keep = (manifest.get("compile") or {}).get("keep_fp32") if isinstance(manifest.get("compile"), dict) else None
    if isinstance(keep, list) and keep and all(isinstance(k, str) for k in keep):
        return tuple(keep)
    return ()


def _expand_keep(model_path: Path, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """Names and globs resolved exactly as the TensorRT engine build resolves --keep-fp32."""
    try:
        from edgedeploy.targets.keepfp32 import expand_keep_fp32
    except ImportError:  # the compilers' module is not installed: exact names only (checked by emulate_fp16)
        return tuple(dict.fromkeys(patterns))
    return expand_keep_fp32(model_path, patterns)


def _host_scorer(opts: FidelityOptions, recipe, model_path: Path, model_sha: str, checkpoint_sha: str,
                 checkpoint_path: Path | None) -> Runner:
    from edgedeploy.host.runners import TorchRunner, graph_runner

    if isinstance(recipe, ImportedModel):  # the reference is the user's own file, before intake and onnxsim
        return graph_runner(recipe.path, recipe, checkpoint_sha, model_sha256=recipe.file_sha256,
                            label="host ONNX Runtime FP32 (your graph)")
    if opts.host == "torch":
        from edgedeploy.host.gpu import resolve_torch_device

        return TorchRunner(recipe, checkpoint_path, checkpoint_sha, model_sha, batch_size=opts.batch_size,
                           device=resolve_torch_device(opts.host_device))
    return graph_runner(model_path, recipe, checkpoint_sha, model_sha256=model_sha, optimised=True)


def _quantized_note(qdq, device: str) -> str:
    """Which runtime ran the QDQ graph, said in every report of a quantised device graph."""
    r = qdq.record
    cal = r.get("calibration") or {}
    what = (f"the device graph is the {qdq.precision.upper()} QDQ graph ({qdq.sha256[:16]}), calibrated on "
            f"{cal.get('images')} normal images ({(r.get('settings') or {}).get('method')})")
    by = {"onnx": "ONNX Runtime on the CPU ran it (--device onnx: ONNX Runtime's own handling of the Q/DQ nodes, "
                  "not Qualcomm's or TensorRT's kernels); --device qnn-htp runs Qualcomm's integer arithmetic",
          "qnn-htp": "Qualcomm's QNN HTP backend ran it (--device qnn-htp: the HTP's integer arithmetic, float parts "
                     "in FP16)",
          "scores": "a device score file produced the scores (--device-scores)"}.get(device, device)
    return f"{what}; {by}; the verdict is that runtime's"


def _qnn_note(profile, precision: str | None = None) -> str:
    """What --device qnn-htp measures, said in every report."""
    from edgedeploy.runtime.qnn import machine

    if not getattr(profile, "qnn", None):
        raise EdgeDeployError(f"--device qnn-htp runs Qualcomm's QNN HTP backend, but the {profile.name} profile has no "
                              "qnn: block (soc_model, htp_arch): use --target rb5-gen2")
    arith = "in FP16" if precision is None else f"on the {precision.upper()} QDQ graph (integer, float parts FP16)"
    if machine() == "aarch64":
        return f"device: the QNN HTP backend (Hexagon v{profile.qnn['htp_arch']}) on this board, {arith}"
    return (f"device: Qualcomm's QNN HTP backend {arith} (onnxruntime-qnn) emulated on this {machine()} host's CPU, "
            f"for soc_model {profile.qnn['soc_model']}, Hexagon v{profile.qnn['htp_arch']}: Qualcomm's arithmetic, "
            "not the device's speed")


def _device_scorer(opts: FidelityOptions, recipe, model_path: Path, model_sha: str, checkpoint_sha: str,
                   checkpoint_path: Path | None, profile=None, precision: str | None = None) -> Runner:
    from edgedeploy.host.runners import TorchRunner, fp16_emulation_runner, graph_runner, qnn_htp_runner

    if opts.device == "torch-fp16":
        return TorchRunner(recipe, checkpoint_path, checkpoint_sha, model_sha, batch_size=opts.batch_size,
                           device="cuda", half=True)
    if opts.device == "qnn-htp":
        return qnn_htp_runner(model_path, recipe, checkpoint_sha, profile, model_sha256=model_sha,
                              allow_cpu_fallback=opts.allow_cpu_fallback, quantized=precision)
    if opts.device == "onnx" and precision is not None:
        return graph_runner(model_path, recipe, checkpoint_sha, model_sha256=model_sha,
                            label=f"device stand-in: the {precision.upper()} QDQ graph under ONNX Runtime CPU",
                            extra={"quantized": precision})
    if opts.device == "onnx":
        return graph_runner(model_path, recipe, checkpoint_sha, model_sha256=model_sha,
                          label="device stand-in: ONNX Runtime FP32 (no FP16)")
    return fp16_emulation_runner(model_path, recipe, checkpoint_sha, opts.keep_fp32, model_sha256=model_sha)


def _score(scorer: Runner, bench, opts: FidelityOptions, meta: dict, log: Log) -> ScoredBenchmark:
    from edgedeploy.runtime.cache import NoCache, ScoreCache

    cache = ScoreCache(scorer.identity()) if opts.cache else NoCache(scorer.identity())
    scored = score_benchmark(scorer, bench, cache, progress=opts.progress, meta=meta)
    log(scored.summary())
    return scored


def _write(folder: Path, report: FidelityReport, bench, host: ScoredBenchmark, device: ScoredBenchmark,
           opts: FidelityOptions) -> list[Path]:
    files = []
    host_file = folder / "scores" / f"host-{host.table.meta.get('runner', 'host')}.csv"
    device_file = folder / "scores" / f"device-{device.table.meta.get('runner', 'device')}.csv"
    for path, scored in ((host_file, host), (device_file, device)):
        write_scores(path, scored.table, scored.maps or None)
        files.append(path)
    plots: dict[str, str] = {}
    if opts.plots:
        from edgedeploy.evaluation.fidelity.plots import write_plots

        aurocs = {c.category: (c.host_auroc, c.device_auroc) for c in report.categories}
        plots = write_plots(folder, bench, host, device, aurocs, f"{report.bench} on {report.target}")
        files += [folder / name for name in plots.values()]
    report.info["score_files"] = {"host": str(host_file.relative_to(folder)), "device": str(device_file.relative_to(folder))}
    write_json_atomic(folder / "fidelity.json", report.to_json())
    write_text_atomic(folder / "fidelity.md", report.markdown(plots, top=opts.top))
    files += [folder / "fidelity.json", folder / "fidelity.md"]
    return files
