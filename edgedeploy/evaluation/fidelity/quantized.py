"""The quantised device graph fidelity checks: the bundle's calibrated QDQ ``model.onnx`` (issue 21).

Two ways to name it, as ``edgedeploy build`` does:

* ``--precision w8a16|w8a8|int8 --calibration BENCH_OR_FOLDER`` (and the build's other quantisation flags): the
  *quantize* stage of the build pipeline (``edgedeploy.targets.quantize``) makes the QDQ graph of the audited float
  graph, reused from ``OUT/.stages`` when ``build`` made it already with the same images and settings. Its
  calibration set must not overlap the evaluated benchmark's test images unless ``--allow-calibration-overlap``.
* no ``--precision``: when ``OUT/<target>/manifest.json`` records a ``quantization`` of the float graph checked here,
  the bundle's own ``model.onnx`` (its sha256 checked against the manifest) is the device graph, with the manifest's
  calibration record; its calibration images are compared (by sha256) with the evaluated images.

The host reference stays the float model (PyTorch FP32, or the float graph under ONNX Runtime FP32).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgedeploy.core.errors import EdgeDeployError

Log = Callable[[str], None]
FLOAT_PRECISIONS = ("fp16", "fp32")
QUANTIZE_FLAGS = (("--calibration", "calibration"), ("--keep-float", "keep_float"),
                  ("--no-default-exclusions", "no_default_exclusions"),
                  ("--allow-calibration-overlap", "allow_calibration_overlap"))


@dataclass
class QuantizedGraph:
    path: Path
    sha256: str
    record: dict            # the manifest's ``quantization`` record
    origin: str             # where the graph came from, for the report
    overlap: list[str] | None = None  # evaluated images (benchmark paths) that are also calibration images

    @property
    def precision(self) -> str:
        return self.record["precision"]


def check_quantize_options(opts, profile) -> None:
    """``--precision`` must be one the profile lists; the calibration flags need an integer one (one line, exit 2)."""
    from edgedeploy.targets.quantize import check_precision, is_quantized

    if opts.precision is not None:
        check_precision(profile, opts.precision)
    if not is_quantized(opts.precision):
        given = [flag for flag, attr in QUANTIZE_FLAGS if getattr(opts, attr)]
        if opts.precision is not None and given:
            raise EdgeDeployError(f"{given[0]} applies to an integer --precision (int8, w8a16, w8a8); "
                                  f"--precision {opts.precision} checks the float graph: drop {given[0]}")
        if opts.precision is None and opts.calibration:
            raise EdgeDeployError("--calibration needs --precision (w8a16, w8a8 or int8): the QDQ graph to make; or drop "
                                  "--calibration to check the bundle's own graph")
        return
    if not opts.calibration:
        raise EdgeDeployError(f"--precision {opts.precision} needs --calibration BENCH_OR_FOLDER: the normal images "
                              "the QDQ graph is calibrated on, as `edgedeploy build` took them (e.g. --calibration demo)")
    if opts.device == "scores":
        return
    if opts.onnx is not None:
        raise EdgeDeployError("--precision with --onnx: quantise your graph with `edgedeploy build --onnx ... "
                              "--precision ...` and check it with --device-scores, or drop --precision")


def quantized_graph(opts, float_path: Path, float_sha: str, profile, recipe, bench_full, log: Log
                    ) -> QuantizedGraph | None:
    """The QDQ graph to check, or None where the float graph is the device graph."""
    from edgedeploy.targets.quantize import is_quantized

    if is_quantized(opts.precision):
        graph = _built(opts, float_path, float_sha, profile, recipe, bench_full, log)
    elif opts.precision is not None:  # fp16 asked for: the float graph, whatever the bundle holds
        return None
    else:
        graph = _from_bundle(Path(opts.out) / profile.name, float_sha, profile, log)
        if graph is None:
            return None
        hashes = [f.get("sha256") for f in (graph.record.get("calibration") or {}).get("files", []) if isinstance(f, dict)]
        graph.overlap = _check_overlap(hashes, bench_full, opts, graph.precision, log)
    return graph


def _check_overlap(hashes, bench_full, opts, precision: str, log: Log) -> list[str]:
    """Calibration images that are evaluated images: refused unless --allow-calibration-overlap."""
    same = evaluated_overlap(set(hashes), bench_full)
    if same and not opts.allow_calibration_overlap:
        raise EdgeDeployError(f"{len(same)} calibration image(s) of the {precision} graph are also "
                              f"{bench_full.name} test images (e.g. {same[0]}): the evaluation would not be "
                              "independent of the calibration; calibrate on other normal images, or pass "
                              "--allow-calibration-overlap (the report says so)")
    if same:
        log(f"warning: {len(same)} calibration image(s) are also evaluated images (--allow-calibration-overlap): "
            "the report says so")
    return same


def _built(opts, float_path: Path, float_sha: str, profile, recipe, bench_full, log: Log) -> QuantizedGraph:
    from edgedeploy.host.pipeline import _quantize_stage
    from edgedeploy.host.stages import StageCache
    from edgedeploy.evaluation.data.benchmarks import normalise_name
    from edgedeploy.targets import quantize as q

    same_bench = normalise_name(opts.calibration) == normalise_name(opts.bench or "")
    request = q.QuantizeRequest(precision=opts.precision, calibration=opts.calibration, method=opts.calibration_method,
                                data_root=opts.data_root if same_bench else None,
                                eval_bench=opts.bench if same_bench else None,  # else: checked by quantized_graph
                                allow_overlap=opts.allow_calibration_overlap,
                                default_exclusions=not opts.no_default_exclusions, keep_float=tuple(opts.keep_float),
                                limit=opts.calibration_limit)
    q.check_request(request)
    calibration = q.resolve_calibration(request)  # refuses an overlap with opts.bench's test split unless allowed
    overlap = _check_overlap(calibration.sha256, bench_full, opts, opts.precision, log)  # a folder, or another root
    record, stage = _quantize_stage(StageCache(Path(opts.out) / ".stages"), float_path, float_sha, profile, recipe,
                                    request, calibration, log)
    state = "reused from the stage cache" if stage.cached else f"made in {stage.seconds:.1f}s"
    log(f"quantize: {opts.precision} QDQ graph {state} ({record['settings']['method']}, "
        f"{record['calibration']['images']} calibration images, {len(record['kept_float']['nodes'])} nodes kept float)")
    path = stage.output_path(Path(opts.out) / ".stages", "model.onnx")
    return QuantizedGraph(path, stage.outputs["model.onnx"]["sha256"], record,
                          f"made by the build's quantize stage (--precision {opts.precision} --calibration "
                          f"{opts.calibration})", overlap)


def _from_bundle(bundle: Path, float_sha: str, profile, log: Log) -> QuantizedGraph | None:
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    record = manifest.get("quantization") if isinstance(manifest, dict) else None
    if not isinstance(record, dict) or not record.get("precision"):
        return None
    precision = record["precision"]
    if record.get("source_sha256") != float_sha:
        raise EdgeDeployError(f"{bundle}/model.onnx is a {precision} QDQ graph of another float graph "
                              f"({str(record.get('source_sha256'))[:16]}, not {float_sha[:16]}: another checkpoint, "
                              f"recipe or tool versions): rebuild the bundle, pass --precision {precision} --calibration "
                              "BENCH_OR_FOLDER to make the QDQ graph here, or --precision fp16 for the float graph")
    from edgedeploy.core.hashing import sha256_file

    path = bundle / "model.onnx"
    shipped = (manifest.get("model") or {}).get("sha256")
    if not path.is_file() or sha256_file(path) != shipped:
        raise EdgeDeployError(f"{path} is not the graph its manifest records (sha256 {str(shipped)[:16]}): rebuild the "
                              f"bundle with `edgedeploy build --target {profile.name} --precision {precision} ...`")
    log(f"the bundle in {bundle} holds a {precision.upper()} QDQ graph of this float graph: checking it "
        "(--precision fp16 checks the float graph instead)")
    return QuantizedGraph(path, shipped, record, f"the bundle's model.onnx ({bundle})")


def evaluated_overlap(calibration_sha256: set, bench) -> list[str]:
    """The evaluated images (by content) that are also calibration images."""
    from edgedeploy.core.hashing import sha256_file

    if not calibration_sha256:
        return []
    return sorted(s.rel_path for s in bench.samples if sha256_file(s.path) in calibration_sha256)


def device_for(opts, graph: QuantizedGraph, profile, log: Log) -> None:
    """The device stand-ins a QDQ graph can have: ONNX Runtime CPU or the QNN HTP (or a device score file)."""
    if opts.device == "fp16-emulation":
        if not getattr(opts, "device_defaulted", False):
            raise EdgeDeployError(f"--device fp16-emulation rounds a float graph to FP16, but the device graph is the "
                                  f"{graph.precision} QDQ graph (integer arithmetic): use --device onnx (ONNX Runtime "
                                  "CPU) or --device qnn-htp (Qualcomm's HTP arithmetic)")
        opts.device = "onnx"
        log(f"note: the device graph is the {graph.precision} QDQ graph: it runs under ONNX Runtime on the CPU "
            "(--device onnx; --device qnn-htp for Qualcomm's integer arithmetic)")
    if opts.device == "torch-fp16":
        raise EdgeDeployError(f"--device torch-fp16 runs the float model in PyTorch FP16, not the {graph.precision} QDQ "
                              "graph: use --device onnx or --device qnn-htp")
    if opts.device == "qnn-htp" and profile.runtime != "qnn":
        raise EdgeDeployError(f"--device qnn-htp runs QNN's HTP backend, but {profile.name}'s {graph.precision} graph "
                              f"is for {profile.runtime}: use --device onnx (or --target rb5-gen2-npu)")


def summary(graph: QuantizedGraph, verdict_by: str) -> dict:
    """fidelity.json's ``quantization``: what the device graph is, its calibration record, who ran it."""
    from edgedeploy.evaluation.fidelity.drift import ACTIVATION_BITS

    r = graph.record
    cal = r.get("calibration") or {}
    settings = r.get("settings") or {}
    source = (f"{cal.get('name')} {cal.get('split', 'train')} split" if cal.get("kind") == "benchmark"
              else f"folder {cal.get('path')}")
    return {"precision": graph.precision, "sha256": graph.sha256, "origin": graph.origin,
            "activation_bits": ACTIVATION_BITS.get(graph.precision),
            "activation_type": settings.get("activation_type"), "weight_type": settings.get("weight_type"),
            "method": settings.get("method"), "settings": settings, "images": cal.get("images"),
            "found": cal.get("found"), "source": source, "files": cal.get("files", []),
            "overlap_at_build": cal.get("overlap"),
            "overlap_with_evaluated": None if graph.overlap is None else len(graph.overlap),
            "overlap_images": (graph.overlap or [])[:20],
            "kept_float": len((r.get("kept_float") or {}).get("nodes", [])),
            "source_sha256": r.get("source_sha256"), "verdict_by": verdict_by}
