"""``edgedeploy fidelity``: does the device rank images like the host? Exit 0 pass, 1 failed gate, 2 bad input,
3 a tool failed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgedeploy.core.cli_options import onnx_model_options, quantize_options
from edgedeploy.evaluation.data.benchmarks import parse_categories
from edgedeploy.remote.options import remote_from_context, remote_options

DRIFT_FAILED = 1


@click.command()
@click.option("--bench", default=None, help="Benchmark: mvtec, visa, btad, mpdd, ksdd2, dtd-synthetic, real-iad, "
              "or demo (built in, nothing to download). Needed unless --host-scores; with it, optional: the files are "
              "checked against the benchmark and its masks give pixel metrics.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Benchmark folder (default: $EDGEDEPLOY_DATA_<BENCH>; "
              "demo: the cache).")
@click.option("--categories", multiple=True, help="Categories to check, comma-separated or repeated (default: all).")
@click.option("--target", default=None, help="Device profile name (see `edgedeploy targets`) or path to a profile "
              "YAML. Needed unless --host-scores.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Trained checkpoint. Without it: the recipe's "
              "built-in default, or seeded reference weights (whose scores mean nothing) where it has none.")
@click.option("--recipe", default=None, help="Recipe name or path (default edgezsad-tinyvit21m-512).")
@click.option("--host", type=click.Choice(["torch", "onnx"]), default=None,
              help="The reference: PyTorch FP32 eager (default for EdgeZSAD), or the exported graph under ONNX Runtime "
              "FP32 (with --onnx: the user's graph, the only choice).")
@click.option("--host-device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where --host torch runs: auto = CUDA when a GPU is visible (FP32, no TF32), else the CPU.")
@click.option("--device", "device", type=click.Choice(["fp16-emulation", "onnx", "torch-fp16", "qnn-htp", "scores"]),
              default="fp16-emulation", show_default=True, help="What stands for the device: the bundle's graph with "
              "FP16 rounding on the host, the bundle's graph in FP32 (ONNX Runtime), the model in real FP16 "
              "arithmetic on a CUDA GPU, the bundle's graph on Qualcomm's QNN HTP backend in FP16 (onnxruntime-qnn; "
              "on an x86 host its arithmetic, not its speed: about 20 s per small-recipe image, see --limit), or a "
              "score file (--device-scores). A QDQ graph (--precision int8/w8a16/w8a8, or the bundle's) runs under "
              "onnx (the default for it) or qnn-htp (Qualcomm's integer arithmetic).")
@click.option("--allow-cpu-fallback", is_flag=True, help="--device qnn-htp: let nodes the QNN EP refuses run on the "
              "CPU (default: refuse such a graph, naming the nodes).")
@click.option("--device-scores", type=click.Path(path_type=Path),
              help="Score file written on the device by `edgedeploy score` (TensorRT engine, AI Hub job); replaces "
              "the device scorer.")
@click.option("--host-scores", type=click.Path(path_type=Path),
              help="A host score file (`edgedeploy score`, or by hand): with --device-scores, compare the two files, "
              "with no model and no images (a GPU workstation against a Jetson).")
@click.option("--keep-fp32", multiple=True, metavar="NODE", help="ONNX node (or glob) to leave in FP32 in the FP16 "
              "emulation, repeatable, as in the TensorRT engine build (default: what OUT/<target>/'s engine keeps).")
@click.option("--max-drift", type=float, default=0.2, show_default=True,
              help="Budget in image-AUROC points for the gate drift (the points carried by pairs reordered "
              "beyond FP16 near-ties, by FP16 ties, and by near-ties that moved one way), checked per --gate.")
@click.option("--max-pixel-drift", type=float, default=1.0, show_default=True, metavar="POINTS",
              help="Fail (exit 1) where pixel AUROC or AUPRO drops by more than this many points (means over "
              "categories, or each category with --gate category), even when the image gate holds.")
# a quantised device graph (edgedeploy.evaluation.fidelity.quantized): the flags `edgedeploy build` takes
@click.option("--precision", default=None, help="The device graph's precision, one the target's profile lists: fp16 "
              "(the float graph), or int8 / w8a16 / w8a8 (the calibrated QDQ graph `edgedeploy build --precision` "
              "makes, reused from OUT/.stages; needs --calibration). Default: the QDQ graph of OUT/<target>/ when its "
              "manifest records one of this float graph, else the float graph.")
@click.option("--calibration", default=None, metavar="BENCH_OR_FOLDER", help="--precision int8/w8a16/w8a8: the normal "
              "images to calibrate on, as `edgedeploy build` takes them (must not be evaluated images).")
@quantize_options
@click.option("--gate", type=click.Choice(["benchmark", "category"]), default="benchmark", show_default=True,
              help="Check the budget against the mean over categories (the paper's criterion) or each category.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Report folder (default OUT/fidelity/<bench>-<target>/).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="The `edgedeploy build` folder: its stage cache OUT/.stages makes the graph (reused when built "
              "already); OUT/<target>/ is only read; the report goes to OUT/fidelity/<bench>-<target>/.")
@click.option("--limit", type=int, default=0, show_default=True, help="Score at most N images per category, half "
              "normal and half anomalous, evenly spaced (0: all), for a slow device stand-in; the report says so.")
@click.option("--top", type=int, default=5, show_default=True, help="Rank movers listed per category.")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Images per PyTorch batch (ONNX Runtime "
              "runs the static batch-1 graph image by image).")
@click.option("--no-cache", is_flag=True, help="Score every image again (default: reuse cached host/emulated scores).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--allow-audit-errors", is_flag=True, help="Check fidelity even when the audit finds errors for the target.")
# the decision threshold, written into the bundle: edgedeploy.evaluation.fidelity.threshold
@click.option("--write-threshold", is_flag=True, help="Choose the decision threshold (NG when score >= it) on this run "
              "and, when the gate passes, write it into OUT/<target>/manifest.json (decision: overall and per category, "
              "the host's and the device's recalibrated one, the flips at each, the images it was calibrated on), "
              "for `edgedeploy score --images` on the device.")
@click.option("--max-fpr", type=float, default=None, metavar="R", help="--write-threshold: the lowest threshold that "
              "calls at most this share of the normal images NG (0.01 = 1%), instead of F1-max.")
@remote_options(fleet=True)  # --remote HOST[,HOST...]: the board over SSH is the device (edgedeploy/remote)
@onnx_model_options
def fidelity(bench: str | None, data_root: Path | None, categories: tuple[str, ...], target: str | None,
             checkpoint: Path | None, recipe: str | None, host: str | None, host_device: str, device: str,
             device_scores: Path | None, allow_cpu_fallback: bool, host_scores: Path | None, keep_fp32: tuple[str, ...], max_drift: float, gate: str, report_dir: Path | None, out: Path, limit: int, top: int, batch_size: int, no_cache: bool,
             no_plots: bool, allow_audit_errors: bool, onnx_model: Path | None, card: Path | None,
             write_threshold: bool = False, max_fpr: float | None = None, max_pixel_drift: float = 1.0,
             precision: str | None = None, calibration: str | None = None, calibration_method: str = "minmax",
             calibration_limit: int = 32, keep_float: tuple[str, ...] = (), no_default_exclusions: bool = False,
             allow_calibration_overlap: bool = False) -> None:
    """Score a benchmark on host and device (or its FP16 emulation) and compare them per category.

    Prints the drift and metric tables (image AUROC, AP, F1-max, pixel AUROC, AUPRO; DeLong 95% intervals,
    near-ties and real reorderings) and writes fidelity.json, fidelity.md, roc.png, scatter.png, difference.png
    and both score files to the report folder. Exit code 0 when the gate passes, 1 when not (image gate drift over
    --max-drift, or pixel AUROC / AUPRO down by more than --max-pixel-drift), 2 on bad input, 3 when a tool failed.
    """
    from edgedeploy.core.extras import require_host
    from edgedeploy.evaluation.benchrun import refuse_unwritable

    require_host("edgedeploy fidelity")
    refuse_unwritable(report_dir, out)  # before the imports below (onnx, scipy: a second)
    from edgedeploy.evaluation.fidelity.run import FidelityOptions, run_fidelity

    opts = FidelityOptions(bench=bench, target=target, data_root=data_root, categories=parse_categories(categories),
                           checkpoint=checkpoint, recipe=recipe, onnx=onnx_model, card=card, out=out,
                           report_dir=report_dir, host=host,
                           host_device=host_device, device=device, device_scores=device_scores, host_scores=host_scores, allow_cpu_fallback=allow_cpu_fallback,
                           keep_fp32=tuple(keep_fp32), max_drift=max_drift, gate=gate, limit=limit, top=top, batch_size=batch_size, cache=not no_cache,
                           plots=not no_plots, allow_audit_errors=allow_audit_errors)
    opts.write_threshold, opts.max_fpr = write_threshold, max_fpr  # edgedeploy.evaluation.fidelity.threshold
    opts.max_pixel_drift = max_pixel_drift
    opts.precision, opts.calibration, opts.calibration_method = precision, calibration, calibration_method
    opts.calibration_limit, opts.keep_float = calibration_limit, tuple(keep_float)
    opts.no_default_exclusions, opts.allow_calibration_overlap = no_default_exclusions, allow_calibration_overlap
    opts.device_defaulted = click.get_current_context().get_parameter_source("device") is \
        click.core.ParameterSource.DEFAULT
    remote = remote_from_context()
    if remote is not None:  # --remote: score on the board(s), gate here (edgedeploy.remote.fidelity, docs/remote.md)
        from edgedeploy.remote.fidelity import fidelity_remote

        sys.exit(fidelity_remote(opts, remote, click.echo))
    run = run_fidelity(opts)
    click.echo(run.report.table(top=top))
    click.echo(f"report: {run.report_dir} (fidelity.md, fidelity.json{', roc.png, scatter.png, difference.png' if not no_plots else ''}, scores/)")
    sys.exit(0 if run.report.passed else DRIFT_FAILED)
