"""``edgedeploy score``: run a benchmark through a deployed model and write the per-image score file.

One runner for every artifact a bundle holds, chosen by the model file's suffix:

* ``model.onnx``   ONNX Runtime on the CPU (runner ``onnxruntime-cpu``), anywhere;
* ``model.engine`` TensorRT on the Jetson (runner ``tensorrt``), refused on another GPU/TensorRT;
* ``model.dlc``    Qualcomm AI Hub inference jobs on the bundle's hub device (runner ``qai-hub``).

``runtime="qnn-htp"`` / ``"qnn-gpu"`` instead runs a ``.onnx`` (``model.onnx``, or the AOT-compiled HTP context
``model_ctx.onnx``) through ONNX Runtime's QNN execution provider (``edgedeploy.runtime.qnn``, onnxruntime-qnn): on the
RB5 Gen2 the board's HTP or Adreno GPU, on an x86_64 host the HTP backend emulated on the CPU.

Images go through the shared pre-processing and the one batch loop (``edgedeploy.runtime.batch``);
scores go to ``edgedeploy.runtime.scorefile.write_scores``, which ``edgedeploy fidelity --device-scores``
reads. This module and what it imports need numpy, Pillow, onnxruntime (for ONNX) or tensorrt (for
engines), never PyTorch: a Jetson runs it without torch installed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from edgedeploy.runtime.base import ModelFileError, Runner
from edgedeploy.runtime.bundle import bundle_of
from edgedeploy.runtime.scorefile import ScoreTable, write_scores

Log = Callable[[str], None]
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def open_runner(model: str | Path, log: Log = print, card: str | Path | None = None, runtime: str | None = None,
                allow_cpu_fallback: bool = False, qnn_precision: str | None = None) -> Runner:
    """The runner for ``model`` (by suffix, or ``runtime`` ``qnn-htp``/``qnn-gpu`` for a .onnx), the bundle's manifest
    attached as ``manifest`` (None when loose); ``card``: a card file for a loose model (a bundle carries its own);
    ``allow_cpu_fallback``/``qnn_precision``: the QNN runtimes' (default: refuse a split graph; the bundle's precision)."""
    path = Path(model)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist: pass a bundle's model.onnx, model.engine or model.dlc")
    from edgedeploy.core.modelcard import load_card

    card_fields = load_card(card) if card is not None else None
    bundle_dir, manifest = bundle_of(path)
    suffix = path.suffix.lower()
    runner: Runner
    if runtime is not None:
        runner = _qnn_runner(path, runtime, manifest, card_fields, allow_cpu_fallback, qnn_precision, log)
        if manifest is None:  # a loose graph: say what its card was taken to be
            log(f"card ({'--card and ' if card else ''}the graph's names, no bundle manifest): {runner.card.describe()}")
            for assumption in runner.card.assumptions:
                log(f"note: card assumes {assumption}")
    elif suffix == ".onnx":
        from edgedeploy.runtime.onnxruntime import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(path, manifest=manifest, card_fields=card_fields)
        try:
            runner.activate()  # a broken or foreign file is refused before any image is read
        except ModelFileError:
            _refuse_context_model(path)
            raise
        if manifest is None:  # a loose graph: say what its card was taken to be
            log(f"card ({'--card and ' if card else ''}the graph's names, no bundle manifest): {runner.card.describe()}")
            for assumption in runner.card.assumptions:
                log(f"note: card assumes {assumption}")
    elif suffix in ENGINE_SUFFIXES:
        from edgedeploy.runtime.tensorrt import TensorRTRunner

        runner = TensorRTRunner(path, card_fields)
        runner.activate()  # a foreign or stale engine is refused before any image is read
    elif suffix == ".dlc":
        from edgedeploy.runtime.aihub import HubRunner
        from edgedeploy.runtime.bundle import BundleError, require_runtime

        if card is not None:
            raise BundleError(f"{path} scores through its bundle's manifest.json, which holds its card: drop --card")
        if manifest is None:
            raise BundleError(f"{path} is not inside a bundle with a manifest.json: AI Hub scoring needs the bundle's "
                              "compile job record; pass out/rb5-gen2/model.dlc")
        require_runtime(bundle_dir, manifest, "qnn", "AI Hub scoring")
        runner = HubRunner(path, manifest, bundle_dir, log)
    else:
        raise ModelFileError(f"cannot score {path}: expected a .onnx (ONNX Runtime), .engine (TensorRT) or .dlc "
                             "(AI Hub) file")
    runner.manifest = manifest
    runner.path = path
    return runner


def _qnn_runner(path: Path, runtime: str, manifest: dict | None, card_fields: dict | None, allow_cpu_fallback: bool,
                precision: str | None, log: Log) -> Runner:
    """ONNX Runtime's QNN EP (onnxruntime-qnn) on a .onnx: model.onnx compiled at session start, or model_ctx.onnx."""
    from edgedeploy.runtime.qnn import CONTEXT_NAME, RUNTIMES, QnnRunner, import_qnn

    if runtime not in RUNTIMES:
        raise ModelFileError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if path.suffix.lower() != ".onnx":
        raise ModelFileError(f"--runtime {runtime} runs an ONNX graph (a bundle's model.onnx or {CONTEXT_NAME}), not "
                             f"{path.name}")
    import_qnn(f"--runtime {runtime}")  # before anything else: the one line saying what to install
    runner = QnnRunner(path, RUNTIMES[runtime], precision, allow_cpu_fallback, manifest=manifest,
                       card_fields=card_fields, log=log)
    context = path.parent / CONTEXT_NAME
    if runtime == "qnn-htp" and runner.context is None and context.is_file():
        log(f"note: {context} is this bundle's HTP context compiled ahead of time; pass --model {context} to load it "
            "without compiling the graph here")
    runner.activate()  # a split graph, a foreign context or a backend that does not start is refused here
    log(f"{runner.label}: {runner.where}; QNN SDK {runner.meta()['qnn_sdk']}, session start {runner.session_seconds:.1f}s"
        f"{' (AOT context ' + path.name + ')' if runner.context is not None else ''}")
    return runner


def _refuse_context_model(path: Path) -> None:
    """A QNN EP context model (model_ctx.onnx) under the default runtime: say which runtime loads it."""
    from edgedeploy.runtime.qnn import context_info

    try:
        info = context_info(path)
    except Exception:
        return
    if info is not None:
        raise ModelFileError(f"{path.name} is a QNN HTP context model (AOT-compiled, QNN SDK {info.get('qnn_sdk') or '?'}):"
                             " plain ONNX Runtime cannot run it; score it with --runtime qnn-htp, or score model.onnx")


def provenance(runner: Runner, bench: str) -> dict[str, str]:
    """The score file's header: what produced these scores, so fidelity can tell comparable files apart."""
    manifest = getattr(runner, "manifest", None) or {}
    checkpoint = manifest.get("checkpoint") or {}
    if checkpoint.get("sha256"):
        checkpoint_sha = checkpoint["sha256"]
    else:
        checkpoint_sha = "seeded" if checkpoint.get("source") == "seeded" else "unknown"
    meta = {"model_sha256": "unknown", **runner.meta(), "checkpoint_sha256": checkpoint_sha,
            "recipe": (manifest.get("recipe") or {}).get("name", "unknown"), "runner": runner.runner, "bench": bench,
            "model": Path(getattr(runner, "path", "")).name,
            "target": (manifest.get("target") or {}).get("name", "none"), "image_size": str(runner.input_size)}
    return {k: str(v) for k, v in meta.items()}


def score_to_file(model: str | Path, bench: str, out: str | Path, data_root: str | Path | None = None,
                  categories: Sequence[str] | None = None, save_maps: bool = False, log: Log = print,
                  progress: bool = True, card: str | Path | None = None, runtime: str | None = None,
                  allow_cpu_fallback: bool = False, qnn_precision: str | None = None) -> ScoreTable:
    """Score every test image of ``bench`` with ``model`` and write ``out`` (and ``<out>.maps.npz``); ``runtime``
    ``qnn-htp``/``qnn-gpu`` runs a .onnx on ONNX Runtime's QNN EP instead of the runtime its suffix picks."""
    from edgedeploy.evaluation.data import load_benchmark
    from edgedeploy.runtime.batch import score_benchmark

    from edgedeploy.core.files import ensure_writable_file

    ensure_writable_file(out, "--out")
    runner = open_runner(model, log, card, runtime=runtime, allow_cpu_fallback=allow_cpu_fallback,
                         qnn_precision=qnn_precision)
    try:
        benchmark = load_benchmark(bench, data_root, list(categories) if categories else None)
        scored = score_benchmark(runner, benchmark, progress=progress)
        meta = provenance(runner, benchmark.name)
    finally:
        runner.deactivate()
    meta.update(latency_meta(runner, log))
    bad = [r.path for r in scored.table.rows if not math.isfinite(r.score)]
    if bad:
        from edgedeploy.runtime.scorefile import first_items

        log(f"warning: {len(bad)} score{'s are' if len(bad) > 1 else ' is'} NaN or infinite ({first_items(bad)}): "
            "written as they are; the precision overflowed, and `edgedeploy fidelity` fails the gate on them")
    table = ScoreTable(meta, scored.table.rows)
    if save_maps:
        table.meta["maps"] = "raw anomaly_map output at model resolution (upsample with edgedeploy.core.postprocess)"
    write_scores(out, table, scored.maps if save_maps else None)
    return table


def latency_meta(runner: Runner, log: Log) -> dict[str, str]:
    """The runner's measured latency, printed in one line, and its score-header fields (with the paper's figure
    where it belongs to this model)."""
    from edgedeploy.runtime.latency import latency_line, latency_summary

    latency = latency_summary(runner.inference_times)
    log(latency_line(latency, runner.timed))
    meta = {k: str(v) for k, v in (latency or {}).items()}
    if latency:
        meta["latency_timed"] = runner.timed
    meta.update(_paper_reference(runner, log))
    return meta


def _paper_reference(runner: Runner, log: Log) -> dict[str, str]:
    """Print the paper's latency for the bundle's device beside a latency measured on that device, when the model is
    the paper's (recipe edgezsad-tinyvit21m-512 fed 512x512 images); its header fields."""
    from edgedeploy.runtime.latency import header_reference, is_paper_model, reference_line

    manifest = getattr(runner, "manifest", None) or {}
    target = manifest.get("target") or {}
    paper = runner.on_target and is_paper_model((manifest.get("recipe") or {}).get("name"), runner.input_size)
    reference = target.get("reference_latency") if paper else None
    line = reference_line(reference, target.get("display_name", target.get("name", "the target")))
    if line:
        log(line)
    return header_reference(reference) if line else {}
