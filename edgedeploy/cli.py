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
from edgedeploy.core.cli_options import onnx_model_options
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
@onnx_model_options
def build(target: str, checkpoint: Path | None, recipe: str | None, out: Path, allow_audit_errors: bool,
          keep_fp32: tuple[str, ...], no_runtime_check: bool, onnx_model: Path | None, card: Path | None) -> None:
    """Checkpoint (or --onnx model) -> ONNX -> simplified -> audited -> device bundle."""
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
    click.echo(f"building {recipe_obj.name} for {profile.display_name} -> {out / profile.name}")
    result = run_build(recipe_obj, profile, out, checkpoint=checkpoint, allow_audit_errors=allow_audit_errors,
                       log=lambda line: click.echo(line, err=line.startswith("warning")), keep_fp32=keep_fp32,
                       runtime_check=not no_runtime_check)
    click.echo(result.audit.table())
    if not result.audit.passed and not allow_audit_errors:
        click.echo(f"error: the audit found {len(result.audit.errors)} errors for {profile.name} (see "
                   f"{result.bundle_dir / 'audit.json'}); fix them or pass --allow-audit-errors", err=True)
        sys.exit(AUDIT_FAILED)
    for note in result.notes:
        click.echo(note)
    extra = ", model_ctx.onnx" if (result.bundle_dir / "model_ctx.onnx").is_file() else ""
    click.echo(f"bundle: {result.bundle_dir} (model.onnx{extra}, manifest.json, audit.json, README.md)")


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
