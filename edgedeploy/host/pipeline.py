"""``edgedeploy build``: load → export → simplify → (gelu) → audit → bundle, recorded in ``manifest.json``.

The *gelu* stage runs only for a profile that takes ONNX Gelu but not Erf (rb5-gen2: QNN), on a graph with erf
GELU chains (``edgedeploy.host.gelu_rewrite``); every other target's graph is the simplified one.

Stages whose inputs did not change are reused from ``<out>/.stages`` (see ``stages.py``); the
bundle files in ``<out>/<target>/`` are written under temporary names and renamed when complete,
``manifest.json`` last, so a bundle with a manifest is a finished bundle.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Callable

from edgedeploy import __version__
from edgedeploy.host.audit import AuditReport, audit_onnx
from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import copy_atomic, ensure_writable_dir, write_json_atomic, write_text_atomic
from edgedeploy.core.hashing import sha256_file, sha256_json
from edgedeploy.core.profiles import DeviceProfile
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.core.modelcard import RANGES, card_from_dict
from edgedeploy.host.intake import INTAKE_VERSION, ImportedModel
from edgedeploy.host.stages import StageCache, StageRecord
from edgedeploy.targets import file_rows, next_steps, prepare_target
from edgedeploy.runtime.bundle import LAYOUT as BUNDLE_LAYOUT

TOOLS = ("torch", "timm", "onnx", "onnxsim", "onnxruntime", "polygraphy", "numpy")
SEEDED = "seeded"


def tool_versions(names: tuple[str, ...] = TOOLS) -> dict[str, str]:
    versions = {"python": platform.python_version(), "edgedeploy": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class BuildResult:
    bundle_dir: Path
    manifest: dict
    audit: AuditReport
    stages: list[StageRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: Recipe | ImportedModel | None = None  # what was built (an imported model with its completed card)


Log = Callable[[str], None]


def _export_stage(cache: StageCache, recipe: Recipe, checkpoint: Path | None, log: Log) -> tuple[StageRecord, dict]:
    """Export stage; the model is only built (seconds, and torch imported) when the cache misses."""
    versions = tool_versions()
    checkpoint_hash = sha256_file(checkpoint) if checkpoint else SEEDED
    inputs = {"recipe": recipe.sha256, "checkpoint": checkpoint_hash, "edgedeploy": __version__,
              "torch": versions["torch"], "timm": versions["timm"], "onnx": versions["onnx"]}
    checkpoint_info = {"source": str(checkpoint) if checkpoint else SEEDED, "sha256": None if not checkpoint else checkpoint_hash,
                       "metadata": {}}

    def run(folder: Path) -> tuple[dict, list[str]]:
        from edgedeploy.host.export import export_onnx
        from edgedeploy.host.hostmem import keep_freed_memory
        from edgedeploy.host.model import build_model

        keep_freed_memory()  # the reference and tracing forward passes, ~2x faster (same numbers: hostmem.py)
        loaded = build_model(recipe, checkpoint)
        checkpoint_info["metadata"] = _jsonable(loaded.metadata)
        details = export_onnx(loaded.model, recipe, folder / "model.onnx", folder / "reference.npz")
        details["checkpoint_metadata"] = checkpoint_info["metadata"]
        return details, list(loaded.notes)

    record = cache.run("export", inputs, ["model.onnx", "reference.npz"], run)
    checkpoint_info["metadata"] = record.details.get("checkpoint_metadata", {})
    return record, checkpoint_info


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _intake_stage(cache: StageCache, model: ImportedModel) -> tuple[StageRecord, dict]:
    """Intake stage (``edgedeploy.host.intake``): the user's ONNX made static, with the reference outputs."""
    from edgedeploy.host.intake import intake_onnx

    versions = tool_versions()
    inputs = {"onnx": model.file_sha256, "card": model.sha256, "edgedeploy": __version__, "intake": INTAKE_VERSION,
              "onnx_version": versions["onnx"], "onnxruntime": versions["onnxruntime"]}
    record = cache.run("intake", inputs, ["model.onnx", "reference.npz"], lambda folder: intake_onnx(model, folder))
    return record, {"source": str(model.path), "sha256": model.file_sha256, "kind": "onnx", "metadata": {}}


def _simplify_stage(cache: StageCache, recipe: Recipe | ImportedModel, export: StageRecord) -> StageRecord:
    from edgedeploy.host.simplify import simplify_onnx

    onnx_path = export.output_path(cache.root, "model.onnx")
    reference = export.output_path(cache.root, "reference.npz")
    inputs = {"model.onnx": export.outputs["model.onnx"]["sha256"], "reference.npz": export.outputs["reference.npz"]["sha256"],
              "recipe": recipe.sha256, "onnxsim": tool_versions()["onnxsim"], "onnxruntime": tool_versions()["onnxruntime"]}
    return cache.run("simplify", inputs, ["model.onnx"],
                     lambda folder: simplify_onnx(onnx_path, folder / "model.onnx", reference, recipe))


def audit_stage(cache: StageCache, model_path: Path, model_sha256: str, profile: DeviceProfile,
                runtime_check: bool = True) -> tuple[AuditReport, StageRecord]:
    """The audit of the graph for ``profile``, reused from the stage cache when graph, profile and edgedeploy
    are the same (a warm build skips loading the graph and its shape inference). For a QNN profile it also asks
    the QNN runtime which nodes it takes (``runtime_check``; edgedeploy.host.audit_runtime): the runtime's versions
    and settings, or its absence, join the key."""
    from edgedeploy.host import audit, audit_runtime

    inputs = {"model.onnx": model_sha256, "profile": profile.sha256, "edgedeploy": __version__,
              "rules": sha256_file(audit.__file__)}  # an edited rule set is a new audit
    if audit_runtime.applies_to(profile):
        inputs["runtime_check"] = (sha256_json({"code": sha256_file(audit_runtime.__file__),
                                                **audit_runtime.check_identity(profile)})
                                   if runtime_check else "skipped")

    def run(folder: Path) -> tuple[dict, list[str]]:
        report = audit_onnx(model_path, profile, runtime_check=runtime_check, model_sha256=model_sha256)
        report.model = "model.onnx"
        report.write(folder / "audit.json")
        return {"passed": report.passed}, []

    record = cache.run("audit", inputs, ["audit.json"], run)
    report = AuditReport.from_dict(json.loads(record.output_path(cache.root, "audit.json").read_text()))
    return report, record


@dataclass
class Checkpoint:
    """The weights a run uses, resolved once: ``--checkpoint``, else the recipe's built-in default, else seeded."""

    path: Path | None            # None: seeded reference weights
    sha256: str                  # file hash, or "seeded"
    description: str             # what a person reads: a path, the built-in default, or seeded weights
    builtin_default: bool = False

    @property
    def seeded(self) -> bool:
        return self.path is None


def resolve_checkpoint(recipe: Recipe | ImportedModel, checkpoint: Path | None, log: Log) -> Checkpoint:
    if isinstance(recipe, ImportedModel):  # the ONNX file is the whole model, weights included
        return Checkpoint(recipe.path, recipe.file_sha256, f"ONNX model {recipe.path}")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise EdgeDeployError(f"checkpoint {checkpoint} does not exist: check the --checkpoint path")
        return Checkpoint(Path(checkpoint), sha256_file(checkpoint), str(checkpoint))
    from edgedeploy.host.checkpoints import default_checkpoint, default_mismatch

    default = default_checkpoint(recipe)
    if default is not None:
        log(f"warning: no checkpoint given: using the {default.describe()}; pass --checkpoint for your own model")
        return Checkpoint(default.path, sha256_file(default.path), default.describe(), builtin_default=True)
    mismatch = default_mismatch(recipe)
    if mismatch:
        log(f"warning: {mismatch}")
    log("warning: no checkpoint given: using the reference architecture with seeded random weights "
        "(its scores mean nothing; pass --checkpoint for a trained model)")
    return Checkpoint(None, SEEDED, "seeded reference weights (no --checkpoint, no built-in default for this recipe)")


@dataclass
class GraphResult:
    """The exported and simplified graph, as the stage cache holds it (no bundle written)."""

    checkpoint: Checkpoint
    checkpoint_info: dict
    export: StageRecord
    simplified: StageRecord
    model_path: Path
    model: Recipe | ImportedModel  # for an imported model, its card completed by the intake stage
    gelu: StageRecord | None = None  # the target's GELU form (edgedeploy.host.gelu_rewrite), where it has one

    @property
    def model_sha256(self) -> str:
        return (self.gelu or self.simplified).outputs["model.onnx"]["sha256"]

    @property
    def stages(self) -> list[StageRecord]:
        return [self.export, self.simplified, *([self.gelu] if self.gelu else [])]


def _gelu_stage(cache: StageCache, model: Recipe | ImportedModel, export: StageRecord, simplified: StageRecord,
                profile: DeviceProfile | None) -> StageRecord | None:
    """The graph with its erf GELUs as ONNX Gelu (opset 20), for a profile that takes Gelu but not Erf; None where
    the profile takes Erf or the graph has no erf GELU (the simplified graph is then the target's graph)."""
    from edgedeploy.host import fastgraph, gelu_rewrite
    from edgedeploy.core.onnxfile import load_onnx

    if profile is None or not gelu_rewrite.wants_gelu_op(profile):
        return None
    onnx_path = simplified.output_path(cache.root, "model.onnx")
    if sum(gelu_rewrite.erf_gelu_chains(load_onnx(onnx_path, load_weights=False))) == 0:
        return None
    reference = export.output_path(cache.root, "reference.npz")
    versions = tool_versions()
    inputs = {"model.onnx": simplified.outputs["model.onnx"]["sha256"],
              "reference.npz": export.outputs["reference.npz"]["sha256"], "recipe": model.sha256,
              "gelu": gelu_rewrite.GELU_VERSION, "opset": str(gelu_rewrite.GELU_OPSET),
              "code": sha256_json([sha256_file(gelu_rewrite.__file__), sha256_file(fastgraph.__file__)]),
              "onnx": versions["onnx"], "onnxruntime": versions["onnxruntime"]}
    return cache.run("gelu", inputs, ["model.onnx"],
                     lambda folder: gelu_rewrite.gelu_stage(onnx_path, folder / "model.onnx", reference, model))


def build_graph(recipe: Recipe | ImportedModel, out_dir: Path, checkpoint: Path | None = None, log: Log = print,
                profile: DeviceProfile | None = None) -> GraphResult:
    """Export and simplify under ``out_dir/.stages`` (reused when nothing changed); the graph every path shares.
    With ``profile``, the graph is that target's: for a profile that takes ONNX Gelu but not Erf, the *gelu* stage
    follows (edgedeploy.host.gelu_rewrite)."""
    resolved = resolve_checkpoint(recipe, checkpoint, log)
    cache = StageCache(ensure_writable_dir(out_dir) / ".stages")
    if isinstance(recipe, ImportedModel):
        export, checkpoint_info = _intake_stage(cache, recipe)
        recipe = replace(recipe, card=card_from_dict(export.details["card"], f"{export.name} stage record"))
    else:
        export, checkpoint_info = _export_stage(cache, recipe, resolved.path, log)
    checkpoint_info["builtin_default"] = resolved.builtin_default
    log(_stage_line(export))
    simplified = _simplify_stage(cache, recipe, export)
    log(_stage_line(simplified))
    gelu = _gelu_stage(cache, recipe, export, simplified, profile)
    if gelu is not None:
        log(_stage_line(gelu))
    for warning in [*export.warnings, *simplified.warnings, *(gelu.warnings if gelu else [])]:
        log(f"warning: {warning}")
    final = gelu or simplified
    return GraphResult(resolved, checkpoint_info, export, simplified, final.output_path(cache.root, "model.onnx"),
                       recipe, gelu)


def build(recipe: Recipe | ImportedModel, profile: DeviceProfile, out_dir: Path, checkpoint: Path | None = None,
          allow_audit_errors: bool = False, log: Log = print, keep_fp32: tuple[str, ...] = (),
          runtime_check: bool = True, quantize=None, calibration=None) -> BuildResult:
    """``quantize`` (edgedeploy.targets.quantize.QuantizeRequest) with its resolved ``calibration``: after the audit of
    the float graph, the *quantize* stage writes the calibrated QDQ graph, which becomes the bundle's model.onnx."""
    out_dir = ensure_writable_dir(out_dir)
    bundle_dir = ensure_writable_dir(out_dir / profile.name)
    graph = build_graph(recipe, out_dir, checkpoint, log, profile=profile)
    recipe = graph.model
    checkpoint_info, model_src, model_sha256 = graph.checkpoint_info, graph.model_path, graph.model_sha256

    report, audited = audit_stage(StageCache(out_dir / ".stages"), model_src, model_sha256, profile, runtime_check)
    details = {"passed": report.passed, "errors": len(report.errors), "warnings": len(report.warnings)}
    if report.runtime_check is not None:
        details["runtime_check"] = _runtime_summary(report.runtime_check)
    audit_record = StageRecord(name="audit", key=profile.sha256[:16], cached=audited.cached, seconds=audited.seconds,
                               inputs={"model.onnx": model_sha256, "profile": profile.sha256},
                               outputs={"audit.json": {"path": "audit.json"}}, details=details)

    quantization = None
    if quantize is not None and (report.passed or allow_audit_errors):
        quantization, quantized = _quantize_stage(StageCache(out_dir / ".stages"), model_src, model_sha256, profile,
                                                  recipe, quantize, calibration, log)
        log(f"quantize: {'reused' if quantized.cached else f'{quantized.seconds:.1f}s'}, {quantize.precision} "
            f"({quantization['settings']['method']}, {quantization['calibration']['images']} calibration images, "
            f"{len(quantization['kept_float']['nodes'])} nodes kept float), max |score diff from the float graph| "
            f"{quantization['cpu_check']['max_abs_score_diff']:.2e} on ONNX Runtime CPU")
        for warning in quantized.warnings:
            log(f"warning: {warning}")
        model_src, model_sha256 = quantized.output_path(out_dir / ".stages", "model.onnx"), quantized.outputs["model.onnx"]["sha256"]
        stages_extra = [quantized]
    else:
        stages_extra = []
    model_dst = bundle_dir / "model.onnx"
    if not model_dst.is_file() or sha256_file(model_dst) != model_sha256:
        copy_atomic(model_src, model_dst)
    report.write(bundle_dir / "audit.json")
    audit_record.outputs["audit.json"]["sha256"] = sha256_file(bundle_dir / "audit.json")
    stages = [*graph.stages, audit_record, *stages_extra]

    if not report.passed and not allow_audit_errors:
        (bundle_dir / "manifest.json").unlink(missing_ok=True)
        return BuildResult(bundle_dir, {}, report, stages, model=recipe)

    card = recipe.card
    manifest = {
        "edgedeploy": __version__,
        "layout": BUNDLE_LAYOUT,
        "command": " ".join(["edgedeploy", *sys.argv[1:]]) if sys.argv and "edgedeploy" in Path(sys.argv[0]).name else "edgedeploy build",
        "target": profile.summary(),
        "recipe": recipe.summary(),
        "checkpoint": checkpoint_info,
        "model": {
            "path": "model.onnx",
            "sha256": model_sha256,
            "bytes": model_dst.stat().st_size,
            "input": {"name": card.input_name, "shape": list(card.input_shape()), "dtype": "float32",
                      "range": list(RANGES[card.value_range]), "normalisation": card.normalisation},
            "outputs": list(card.output_names),
            "postprocess": {"upsample": "bilinear to input size", "smooth_sigma": card.smooth_sigma},
            "card": card.to_dict(),
        },
        "audit": {"passed": report.passed, "errors": len(report.errors), "warnings": len(report.warnings),
                  "allowed_errors": bool(report.errors and allow_audit_errors),
                  **({"runtime_check": _runtime_summary(report.runtime_check)} if report.runtime_check else {})},
        **({"quantization": quantization} if quantization else {}),
        "tools": tool_versions(),
        "stages": [s.to_dict() for s in stages],
        "warnings": [w for s in stages for w in s.warnings],
    }
    from edgedeploy.runtime.decision import kept_decision  # `fidelity --write-threshold`'s record, for the same graph

    kept = kept_decision(bundle_dir, model_sha256)  # read before prepare_target removes the old manifest
    manifest["compile"] = prepare_target(bundle_dir, profile, recipe, manifest, keep_fp32=keep_fp32, log=log)
    manifest.update(kept)
    readout = _bundle_readme(profile, recipe, manifest)
    write_text_atomic(bundle_dir / "README.md", readout)
    write_json_atomic(bundle_dir / "manifest.json", manifest)
    return BuildResult(bundle_dir, manifest, report, stages, notes=list(manifest["compile"].get("notes", [])),
                       model=recipe)


def _quantize_stage(cache: StageCache, model_src: Path, model_sha256: str, profile: DeviceProfile,
                    recipe: Recipe | ImportedModel, request, calibration, log: Log) -> tuple[dict, StageRecord]:
    """The calibrated QDQ graph (edgedeploy.targets.quantize), reused when graph, images and settings are the same."""
    from edgedeploy.core.modelcard import card_digest
    from edgedeploy.targets import quantize as q

    inputs = q.stage_inputs(model_sha256, profile, request, calibration, card_digest(recipe.card))
    record = cache.run("quantize", inputs, ["model.onnx"],
                       lambda folder: q.quantize_onnx(model_src, folder / "model.onnx", profile, request, calibration,
                                                      recipe.card, log))
    return {**record.details, "source_sha256": model_sha256, "source": "the audited float graph"}, record


def _runtime_summary(check: dict) -> dict:
    """What the manifest records of the audit's runtime check (audit.json holds every refused node)."""
    keys = ("asked", "reason", "runtime", "onnxruntime", "backend", "where", "note", "taken", "failed")
    return {**{k: check.get(k) for k in keys if check.get(k) not in (None, "")},
            "refused": len(check.get("refused", []))}


def _stage_line(record: StageRecord) -> str:
    state = "reused" if record.cached else f"{record.seconds:.1f}s"
    diffs = record.details.get("max_abs_diff")
    extra = ""
    if diffs:
        extra = (f", max |diff from {record.details.get('against', 'PyTorch')}| "
                 + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return f"{record.name}: {state}{extra}"


def _model_what(manifest: dict) -> str:
    q = manifest.get("quantization")
    if not q:
        return "the audited graph"
    kept = len(q["kept_float"]["nodes"])
    return (f"the {q['precision'].upper()} QDQ graph of the audited float graph (ONNX Runtime's quantiser, "
            f"{q['settings']['method']} calibration on {q['calibration']['images']} normal images, {kept} nodes kept "
            "float; `manifest.json` `quantization` has the image hashes)")


def _bundle_readme(profile: DeviceProfile, recipe: Recipe | ImportedModel, manifest: dict) -> str:
    model, card = manifest["model"], recipe.card
    origin = (f"the ONNX model `{manifest['checkpoint']['source']}`" if isinstance(recipe, ImportedModel) else
              f"recipe `{recipe.name}` and checkpoint\n`{manifest['checkpoint']['source']}`")
    low, high = RANGES[card.value_range]
    side = "x".join(map(str, card.map_size)) if card.map_size else "its own"
    smoothing = f"smooth it (sigma {card.smooth_sigma:g})" if card.smooth_sigma > 0 else "leave it unsmoothed (the card's smooth_sigma is 0)"
    return f"""# {profile.display_name} bundle

Built by edgedeploy {manifest['edgedeploy']} from {origin}.

| file | what it is |
|---|---|
| `model.onnx` | {_model_what(manifest)}: input `{model['input']['name']}` float32 {model['input']['shape']} in [{low:g}, {high:g}], normalisation {card.normalisation}; outputs {', '.join(f'`{o}`' for o in model['outputs'])} |
| `audit.json` | the audit against the `{profile.name}` device profile (`device_profiles/{profile.name}.yaml`, sha256 recorded in manifest.json): {manifest['audit']['errors']} errors, {manifest['audit']['warnings']} warnings |
| `manifest.json` | every stage with its inputs and outputs (sha256), tool versions, timings and warnings; `model.card` is the model card every runner feeds and reads the graph by |
{file_rows(manifest)}
## What runs next
{next_steps(profile, manifest)}
Images are fed as `edgedeploy score` feeds them: RGB, resized bilinearly to {card.input_size}x{card.input_size},
scaled to [{low:g}, {high:g}]{", then normalised with the card's mean/std" if card.mean is not None else ""}. The anomaly
map (`{card.map_output}`) leaves the graph at {side}: upsample it to the input size and {smoothing} with
`edgedeploy.core.postprocess`, the one implementation both host and device paths use.
"""
