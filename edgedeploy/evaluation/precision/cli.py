"""``edgedeploy precision``: find FP16 risks before the device does, and the fewest FP32 nodes that fix them.

Exit 0 when pure FP16 or the recommended keep-list is within budget, 1 when no keep-list found
within the evaluation budget is, 2 on bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgedeploy.core.cli_options import onnx_model_options

from edgedeploy.evaluation.data.benchmarks import parse_categories

OVER_BUDGET = 1
DEFAULT_LIMIT = 26  # = edgedeploy.evaluation.precision.run.DEFAULT_LIMIT (not imported here: run.py pulls in onnx)


@click.command()
@click.option("--bench", required=True, help="Benchmark scored for the drift: mvtec, visa, btad, mpdd, ksdd2, "
              "dtd-synthetic, real-iad, or demo (built in, nothing to download).")
@click.option("--data-root", type=click.Path(path_type=Path),
              help="Benchmark folder (default: $EDGEDEPLOY_DATA_<BENCH>; demo: the cache).")
@click.option("--categories", multiple=True, help="Categories, comma-separated or repeated (default: all).")
@click.option("--target", required=True,
              help="Device profile name (see `edgedeploy targets`) or path to a profile YAML.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Trained checkpoint. Without it: the default model.")
@click.option("--recipe", default=None, help="Recipe name or path (default edgezsad-tinyvit21m-512).")
@click.option("--limit", type=int, default=DEFAULT_LIMIT, show_default=True,
              help="Images per category the search scores (half normal, half anomalous, evenly spaced); 0 = all. "
              "The default resolves --max-drift 0.2 on the 3-category demo (13 x 13 per category: one swapped pair "
              "is 0.59 points of a category, 0.197 of the mean over 3); fewer images, or fewer categories, and one "
              "pair outweighs the budget, which the run says in one line before the long work, with the --limit that "
              "would resolve it. Cost: the reference and each full evaluation score these images once (default model "
              "on a busy 2-core CPU: 1.7 s per image FP32, 2.1 s FP16-emulated, so 2-3 min per pass over the demo's "
              "78; the default command took 6 min with pure FP16 within budget), at most 1 + --max-evals FP16 "
              "passes; scores are cached.")
@click.option("--calib-images", type=int, default=6, show_default=True,
              help="Images the range analysis runs (spread over the categories of the search images); 0 = all of them.")
@click.option("--calib-dir", type=click.Path(path_type=Path),
              help="Folder of calibration images for the range analysis instead (searched recursively).")
@click.option("--max-drift", type=float, default=0.2, show_default=True,
              help="Budget in image-AUROC points for the gate drift (the points carried by pairs reordered "
              "beyond FP16 near-ties, by FP16 ties, and by near-ties that moved one way), checked per --gate: the "
              "very gate of `edgedeploy fidelity`, on the search "
              "images.")
@click.option("--gate", type=click.Choice(["benchmark", "category"]), default="benchmark", show_default=True,
              help="Check the budget against the mean over categories (the paper's criterion) or each category, "
              "as `edgedeploy fidelity --gate`.")
@click.option("--max-score-error", type=float, default=None,
              help="Budget: largest |device - host| image score (FP16: default 0.01; integer precisions: not judged "
              "unless given).")
@click.option("--precision", "precision_name", default=None, help="fp16 (default: the FP16 keep-FP32 search), or an integer precision "
              "the target's profile lists (w8a16 / w8a8 for rb5-gen2-npu, int8 for jetson-orin-nano): the "
              "mixed-precision search for the build's QDQ graph, which emits --keep-float overrides "
              "(docs/precision.md, \"INT8: the mixed-precision search\").")
@click.option("--calibration", default=None, metavar="BENCH_OR_FOLDER",
              help="Integer precisions: the normal images the QDQ graph is calibrated on, as `edgedeploy build` "
              "takes them (e.g. demo: its train split).")
@click.option("--max-pixel-drift", type=float, default=1.0, show_default=True,
              help="Integer precisions: the pixel gate of `edgedeploy fidelity`: pixel AUROC and AUPRO may drop by at "
              "most this many points.")
@click.option("--margin", type=float, default=4.0, show_default=True,
              help="Flag tensors whose max |x| is within this factor of FP16's max (65504 / margin).")
@click.option("--flush-share", type=float, default=0.5, show_default=True,
              help="Flag tensors when at least this share of their nonzero values flush to zero in FP16.")
@click.option("--max-evals", type=int, default=12, show_default=True,
              help="Most keep sets the search scores after pure FP16 (each is one pass over the search images).")
@click.option("--screen-images", type=int, default=None,
              help="Screen each round's candidates on this many images (score error only) and evaluate only the "
              "best --top in full; 0 = evaluate every candidate in full. Default 3 (FP16); integer precisions: 0 = "
              "screen on every search image with the gate's figures (a candidate's cost is its quantisation).")
@click.option("--top", type=int, default=3, show_default=True, help="Screened candidates per round evaluated in full.")
@click.option("--force-search", is_flag=True, help="Score the candidates even when pure FP16 is within budget "
              "(for information; the keep-list stays empty).")
@click.option("--boundary", type=click.Choice(["strict", "lenient"]), default="strict", show_default=True,
              help="How a kept node's FP32 output reaches a node that is not kept: strict = rounded to FP16 first "
              "(as an FP16 TensorRT layer reads it), lenient = in FP32 (as `edgedeploy fidelity --keep-fp32`).")
@click.option("--memory-mib", type=float, default=512, show_default=True,
              help="Range analysis: most MiB of activations held at once (the graph is run in segments).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Build folder: the bundle is built in OUT/precision/.build/<target>/ (your OUT/<target>/ is "
              "untouched).")
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Report folder (default OUT/precision/<bench>-<target>/).")
@click.option("--no-cache", is_flag=True,
              help="Score every image again (default: reuse cached reference/emulated scores).")
@click.option("--allow-audit-errors", is_flag=True, help="Analyse even when the audit finds errors for the target.")
@onnx_model_options
def precision(bench: str, data_root: Path | None, categories: tuple[str, ...], target: str, checkpoint: Path | None,
              recipe: str | None, limit: int, calib_images: int, calib_dir: Path | None, max_drift: float, gate: str,
              max_score_error: float | None, precision_name: str | None, calibration: str | None,
              max_pixel_drift: float, margin: float, flush_share: float, max_evals: int, screen_images: int | None,
              top: int, force_search: bool, boundary: str,
              memory_mib: float, out: Path, report_dir: Path | None, no_cache: bool, allow_audit_errors: bool,
              onnx_model: Path | None, card: Path | None) -> None:
    """Find FP16 range risks in the target's graph and the smallest keep-FP32 set that fixes the drift.

    Runs calibration images through the FP32 graph with every intermediate tensor exposed and reports
    tensors that overflow FP16, come near its range, or flush to zero; then searches op classes, graph
    regions and flagged nodes for a small set of nodes to keep in FP32 so that the FP16 emulation passes
    `edgedeploy fidelity`'s drift gate (same --max-drift, same --gate) and its score error is under
    budget. Prints the analysis, every keep set tried, the drift before and after, and the keep-list as
    --keep-fp32 arguments, trtexec flags and QNN advice; writes precision.json.
    """
    from edgedeploy.core.extras import require_host
    from edgedeploy.evaluation.benchrun import refuse_unwritable

    require_host("edgedeploy precision")
    refuse_unwritable(report_dir, out)  # before the imports below (onnx, scipy: a second)
    if precision_name is not None or calibration is not None:
        from edgedeploy.core.errors import EdgeDeployError
        from edgedeploy.core.profiles import load_profile
        from edgedeploy.targets.quantize import check_precision, is_quantized

        if precision_name is not None:
            check_precision(load_profile(target), precision_name)  # one the profile lists, or one line, exit 2
        if is_quantized(precision_name):
            _integer(bench, data_root, categories, target, checkpoint, recipe, limit, max_drift, gate,
                     max_score_error, precision_name, calibration, max_pixel_drift, max_evals, screen_images, top,
                     force_search, out, report_dir, no_cache, allow_audit_errors, onnx_model, card)
            return
        if calibration is not None:
            raise EdgeDeployError("--calibration applies to an integer --precision (w8a16, w8a8, int8): the FP16 "
                                  "search needs no calibration set; drop --calibration")
    from edgedeploy.evaluation.precision.run import PrecisionOptions, run_precision
    from edgedeploy.evaluation.precision.render import render

    opts = PrecisionOptions(bench=bench, target=target, data_root=data_root, categories=parse_categories(categories),
                            checkpoint=checkpoint, recipe=recipe, onnx=onnx_model, card=card, out=out, report_dir=report_dir, limit=limit,
                            calib_images=calib_images, calib_dir=calib_dir, max_drift=max_drift, gate=gate,
                            max_score_error=0.01 if max_score_error is None else max_score_error, margin=margin, flush_share=flush_share,
                            max_evals=max_evals, screen_images=3 if screen_images is None else screen_images, top=top,
                            force_search=force_search, boundary=boundary, memory_mib=memory_mib,
                            cache=not no_cache, allow_audit_errors=allow_audit_errors)
    run = run_precision(opts)
    click.echo(render(run.report))
    click.echo(f"report: {run.report_dir / 'precision.json'}")
    sys.exit(0 if run.search.within_budget else OVER_BUDGET)


def _integer(bench, data_root, categories, target, checkpoint, recipe, limit, max_drift, gate, max_score_error,
             precision, calibration, max_pixel_drift, max_evals, screen_images, top, force_search, out, report_dir,
             no_cache, allow_audit_errors, onnx_model, card) -> None:
    """The mixed-precision search of an integer build (int8.py); exit 0 plain or with overrides within budget, 1
    when no override set within --max-evals passes (one line says why), 2 bad input."""
    from edgedeploy.evaluation.precision.int8 import Int8Options, render, run_int8

    opts = Int8Options(bench=bench, target=target, data_root=data_root, categories=parse_categories(categories),
                       checkpoint=checkpoint, recipe=recipe, onnx=onnx_model, card=card, out=out,
                       report_dir=report_dir, precision=precision, calibration=calibration, limit=limit,
                       max_drift=max_drift, gate=gate, max_pixel_drift=max_pixel_drift,
                       max_score_error=max_score_error, max_evals=max_evals,
                       screen_images=0 if screen_images is None else screen_images, top=top,
                       force_search=force_search, cache=not no_cache, allow_audit_errors=allow_audit_errors)
    run = run_int8(opts)
    click.echo(render(run.report))
    click.echo(f"report: {run.report_dir / 'precision.json'}")
    rec = run.report["recommendation"]
    if not rec["within_budget"]:
        click.echo(f"error: {rec['why_not']}", err=True)
        sys.exit(OVER_BUDGET)
    sys.exit(0)
