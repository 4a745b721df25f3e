"""The ``edgedeploy`` command line.

Heavy packages (torch, tensorrt, qai_hub) are imported inside the commands that use them, so
``edgedeploy --help`` is instant. User mistakes surface as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from edgedeploy import __version__
from edgedeploy.core.errors import INTERNAL_ERROR, EdgeDeployError
from edgedeploy.core.cli_options import onnx_model_options, quantize_options
from edgedeploy.core.extras import missing_extra_line, require_host

AUDIT_FAILED = 1
MISSING_EXTRA = 2


class EdgeDeployGroup(click.Group):
    """Every command's errors: one line and the documented exit code (``edgedeploy.core.errors``)."""

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug")) or os.environ.get("EDGEDEPLOY_DEBUG", "").strip() not in ("", "0")
        try:
            return super().invoke(ctx)
        except EdgeDeployError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except ModuleNotFoundError as exc:
            line = missing_extra_line(exc.name or "")
            if debug:
                raise
            if line is None:
                _internal_error(ctx, exc)
            click.echo(f"error: {line}", err=True)
            ctx.exit(MISSING_EXTRA)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was kept; run the command again to resume", err=True)
            ctx.exit(130)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:
            if debug:
                raise
            _internal_error(ctx, exc)


def _internal_error(ctx: click.Context, exc: BaseException) -> None:
    text = " ".join(str(exc).split())[:300]
    click.echo(f"internal error: {type(exc).__name__}{': ' + text if text else ''} (a bug in edgedeploy; rerun with "
               "`edgedeploy --debug ...` for the traceback and report it)", err=True)
    ctx.exit(INTERNAL_ERROR)


@click.group(cls=EdgeDeployGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgedeploy")
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of the one-line message.")
def main(debug: bool) -> None:
    """Take an anomaly-detection model (an EdgeZSAD checkpoint, or any ONNX) to edge devices, and prove the device
    agrees with the host."""


@main.command()
def targets() -> None:
    """List the device profiles and their key facts."""
    from edgedeploy.core.profiles import list_profiles, load_profile

    for name in list_profiles():
        p = load_profile(name)
        click.echo(f"{p.name:18s} {p.display_name}")
        click.echo(f"{'':18s} runtime {p.runtime} {p.runtime_version} {p.precision.upper()} -> {p.artifact}; "
                   f"opset {p.opset_min}-{p.opset_max}; max rank {p.max_rank}; "
                   f"{'static shapes' if p.static_shapes_required else 'dynamic shapes allowed'}; "
                   f"{len(p.supported_ops)} ONNX ops; {p.memory_gb:g} GB memory")
        if p.denied_ops:
            click.echo(f"{'':18s} refused ops: {', '.join(sorted(p.denied_ops))}")
        click.echo(f"{'':18s} profile {p.path}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", required=True, help="Device profile name (see `edgedeploy targets`) or path to a profile YAML.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the findings to this JSON file.")
@click.option("--no-runtime-check", is_flag=True, help="QNN targets: check the profile's op list only, without asking "
              "the QNN runtime (onnxruntime-qnn) which nodes it takes.")
def audit(model: Path, target: str, json_out: Path | None, no_runtime_check: bool) -> None:
    """Check an ONNX MODEL against a device profile (and, for a QNN target where onnxruntime-qnn is installed, against
    the QNN runtime itself); exit 1 when it has errors."""
    from edgedeploy.core.files import ensure_writable_file
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.host.audit import audit_onnx

    if json_out:
        ensure_writable_file(json_out, "--json")
    profile = load_profile(target)
    report = audit_onnx(model, profile, runtime_check=not no_runtime_check)
    click.echo(report.table())
    if json_out:
        report.write(json_out)
    sys.exit(0 if report.passed else AUDIT_FAILED)


@main.command()
@click.option("--target", required=True, help="Device profile name (see `edgedeploy targets`) or path to a profile YAML.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Trained checkpoint (.pt, .pth, .safetensors). "
              "Without it: the recipe's built-in default when one ships (edgezsad-tinyvit21m-512: EdgeGLR heads "
              "trained on demo:brick,grass over a seeded TinyViT backbone), else seeded reference weights, whose "
              "scores mean nothing.")
@click.option("--recipe", default=None, help="Recipe name or path (default edgezsad-tinyvit21m-512).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Output folder; the bundle goes to OUT/<target>/.")
@click.option("--allow-audit-errors", is_flag=True, help="Write the bundle even when the audit finds errors.")
@click.option("--keep-fp32", "keep_fp32", multiple=True, metavar="NODE_OR_GLOB",
              help="TensorRT targets: ONNX node name (as the audit prints it) or glob to keep in FP32; repeatable.")
@click.option("--no-runtime-check", is_flag=True, help="QNN targets: audit against the profile's op list only, without "
              "asking the QNN runtime (onnxruntime-qnn) which nodes it takes.")
@click.option("--precision", default=None, help="A precision the target's profile lists (runtime.precisions; "
              "default its runtime.precision): fp16, or int8 (jetson-orin-nano), w8a16 / w8a8 (rb5-gen2-npu), which "
              "quantise the graph (docs/quantization.md).")
@click.option("--calibration", default=None, metavar="BENCH_OR_FOLDER", help="Integer precisions: normal images to "
              "calibrate on: a benchmark's train split (e.g. demo) or a folder of images.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Root of the --calibration benchmark (default: its EDGEDEPLOY_DATA_<NAME>; demo: the cache).")
@click.option("--eval-bench", default=None, help="Benchmark whose test split the calibration images must not "
              "overlap (default: the --calibration benchmark; a folder is checked only against this one).")
@quantize_options
@onnx_model_options
def build(target: str, checkpoint: Path | None, recipe: str | None, out: Path, allow_audit_errors: bool,
          keep_fp32: tuple[str, ...], no_runtime_check: bool, precision: str | None, calibration: str | None,
          calibration_method: str, calibration_limit: int, data_root: Path | None, eval_bench: str | None,
          allow_calibration_overlap: bool, no_default_exclusions: bool, keep_float: tuple[str, ...],
          onnx_model: Path | None, card: Path | None) -> None:
    """Checkpoint (or --onnx model) -> ONNX -> simplified -> audited -> (quantised) -> device bundle."""
    require_host("edgedeploy build")
    from edgedeploy.core.files import ensure_writable_dir
    from edgedeploy.host.intake import require_onnx_only

    require_onnx_only(onnx_model, checkpoint, recipe, card)
    ensure_writable_dir(out, "--out")  # before the "building ..." line: a bad --out is the only output
    from edgedeploy.host.pipeline import build as run_build
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.core.model_recipes import DEFAULT_RECIPE, load_recipe

    profile = load_profile(target)
    if onnx_model is not None:
        from edgedeploy.host.intake import describe, load_imported

        recipe_obj = load_imported(onnx_model, card)
        for line in describe(recipe_obj):
            click.echo(line)
    else:
        recipe_obj = load_recipe(recipe or DEFAULT_RECIPE)
    if checkpoint is not None and not checkpoint.is_file():
        raise EdgeDeployError(f"checkpoint {checkpoint} does not exist: check the --checkpoint path")
    if keep_fp32 and profile.runtime != "tensorrt":
        raise EdgeDeployError(f"--keep-fp32 applies to TensorRT targets: {profile.name} ({profile.runtime}) runs the "
                              "whole graph at one precision; drop --keep-fp32")
    request, calibration_set = _quantize_request(profile, precision, calibration, calibration_method,
                                                 calibration_limit, data_root, eval_bench, allow_calibration_overlap,
                                                 no_default_exclusions, keep_float, keep_fp32, onnx_model)
    click.echo(f"building {recipe_obj.name} for {profile.display_name} -> {out / profile.name}"
               + (f" ({request.precision.upper()})" if request else ""))
    if calibration_set is not None:
        overlap = calibration_set.overlap
        click.echo(f"calibration: {len(calibration_set.images)} of {calibration_set.found} normal images from "
                   f"{calibration_set.source.get('name') or calibration_set.source.get('path')}; overlap with the "
                   + (f"{overlap['eval_bench']} test split: {overlap['images']} image(s)" if overlap.get("checked")
                      else f"evaluation images not checked ({overlap.get('reason')})"),
                   err=bool(overlap.get("images")))
    result = run_build(recipe_obj, profile, out, checkpoint=checkpoint, allow_audit_errors=allow_audit_errors,
                       log=lambda line: click.echo(line, err=line.startswith("warning")), keep_fp32=keep_fp32,
                       runtime_check=not no_runtime_check, quantize=request, calibration=calibration_set)
    click.echo(result.audit.table())
    if not result.audit.passed and not allow_audit_errors:
        click.echo(f"error: the audit found {len(result.audit.errors)} errors for {profile.name} (see "
                   f"{result.bundle_dir / 'audit.json'}); fix them or pass --allow-audit-errors", err=True)
        sys.exit(AUDIT_FAILED)
    for note in result.notes:
        click.echo(note)
    extra = ", model_ctx.onnx" if (result.bundle_dir / "model_ctx.onnx").is_file() else ""
    click.echo(f"bundle: {result.bundle_dir} (model.onnx{extra}, manifest.json, audit.json, README.md)")


def _quantize_request(profile, precision, calibration, method, limit, data_root, eval_bench, allow_overlap,
                      no_default_exclusions, keep_float, keep_fp32, onnx_model):
    """(QuantizeRequest, resolved calibration set) for an integer --precision, else (None, None); every misuse is one
    line and exit 2, before anything is built."""
    from edgedeploy.targets import quantize as q

    if onnx_model is not None:
        q.refuse_qdq_for(profile, onnx_model)
    if precision is not None:
        q.check_precision(profile, precision)
    if not q.is_quantized(precision):
        given = [flag for flag, value in (("--calibration", calibration), ("--keep-float", keep_float),
                                          ("--eval-bench", eval_bench), ("--data-root", data_root),
                                          ("--allow-calibration-overlap", allow_overlap),
                                          ("--no-default-exclusions", no_default_exclusions)) if value]
        if given:
            raise EdgeDeployError(f"{given[0]} applies to an integer --precision (int8, w8a16, w8a8); "
                                  f"{profile.name} builds {precision or profile.precision} here: drop {given[0]}")
        return None, None
    if not calibration:
        raise EdgeDeployError(f"--precision {precision} needs --calibration BENCH_OR_FOLDER: normal images to calibrate "
                              "on (e.g. --calibration demo)")
    if keep_fp32:
        raise EdgeDeployError(f"--keep-fp32 is for FP16 engines; with --precision {precision} use --keep-float NODE")
    if onnx_model is not None and q.graph_is_qdq(onnx_model):
        raise EdgeDeployError(f"{onnx_model} is already quantised (QDQ): build it without --precision")
    request = q.QuantizeRequest(precision=precision, calibration=calibration, method=method, data_root=data_root,
                                eval_bench=eval_bench, allow_overlap=allow_overlap,
                                default_exclusions=not no_default_exclusions, keep_float=tuple(keep_float), limit=limit)
    q.check_request(request)
    return request, q.resolve_calibration(request)


def _register_commands() -> None:
    """Commands that live with their stage; each module imports its heavy packages lazily."""
    from edgedeploy.runtime.cli import score
    from edgedeploy.targets.cli import engine

    main.add_command(engine)
    main.add_command(score)
    from edgedeploy.evaluation.fidelity.cli import fidelity

    main.add_command(fidelity)
    from edgedeploy.evaluation.precision.cli import precision

    main.add_command(precision)
    from edgedeploy.host.train.cli import train

    main.add_command(train)
    from edgedeploy.remote.agent import remote_agent  # the board side of --remote (hidden)

    main.add_command(remote_agent)


_register_commands()

if __name__ == "__main__":
    main()
