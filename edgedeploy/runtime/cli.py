"""``edgedeploy score``: score a benchmark with a deployed model, on (or for) the device. No PyTorch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgedeploy.remote.options import remote_from_context, remote_options


@click.command()
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="model.onnx (ONNX Runtime, or QNN with --runtime), model_ctx.onnx (QNN HTP, with --runtime qnn-htp), "
              "model.engine (TensorRT) or model.dlc (AI Hub) of a bundle, or the bundle folder (its model.engine where "
              "built on a TensorRT bundle, model_ctx.onnx with --runtime qnn-htp where compiled, else model.onnx).")
@click.option("--bench", default=None, help="Benchmark name (mvtec, visa, btad, mpdd, ksdd2, dtd-synthetic, real-iad, "
              "demo); or --images.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Benchmark root (default: $EDGEDEPLOY_DATA_<BENCH>).")
@click.option("--categories", multiple=True, help="Categories to score (comma-separated or repeated; default all).")
@click.option("--out", type=click.Path(path_type=Path), help="Score file (CSV) to write (needed with --bench; with "
              "--images, the images' scores and decisions, else printed).")
@click.option("--save-maps", is_flag=True, help="Also write the raw anomaly maps to <out stem>.maps.npz.")
@click.option("--card", type=click.Path(path_type=Path), help="Model card YAML for a model outside a bundle (a bundle's "
              "manifest.json carries its own): input size, range, normalisation, output names (docs/models.md).")
@click.option("--runtime", type=click.Choice(["qnn-htp", "qnn-gpu"]), default=None,
              help="Run a .onnx (model.onnx, or the AOT HTP context model_ctx.onnx) on ONNX Runtime's QNN execution "
              "provider (onnxruntime-qnn, the [qnn] extra; Python 3.11+): the RB5 Gen2's Hexagon HTP or Adreno GPU; on "
              "an x86_64 host the HTP backend runs emulated on the CPU. Default: by the model's suffix.")
@click.option("--allow-cpu-fallback", is_flag=True,
              help="QNN runtimes: run the nodes QNN does not take on ONNX Runtime's CPU (said aloud, recorded in the "
              "header) instead of refusing the graph.")
@click.option("--qnn-precision", type=click.Choice(["fp16", "fp32"]), default=None,
              help="QNN runtimes: the precision (default: the bundle's target precision, fp16 for rb5-gen2).")
# unlabeled images, OK/NG decisions and overlays: edgedeploy.runtime.images
@click.option("--images", type=click.Path(path_type=Path), help="A folder of images (PNG, JPEG, BMP, TIFF; recursively, "
              "any layout) or one image, unlabeled: scores, and a decision (NG when score >= threshold) where the "
              "bundle has a threshold (`fidelity --write-threshold`). An unreadable image is named and the run goes on "
              "(exit 1 at the end).")
@click.option("--category", default=None, help="--images: decide with this category's threshold (default: the overall "
              "one).")
@click.option("--maps", "maps_dir", type=click.Path(path_type=Path), help="--images: write a PNG per image, the anomaly "
              "map over the image at its size on a fixed colour scale, into this folder (its relative paths mirror "
              "the images').")
@click.option("--map-range", default=None, metavar="LO,HI", help="--maps: the colour scale's map values, coldest and "
              "hottest (default: the bundle's decision record's, else 0,1).")
@remote_options()  # --remote HOST: score on the board over SSH (edgedeploy.remote.score)
def score(model: Path, bench: str | None, data_root: Path | None, categories: tuple[str, ...], out: Path | None,
          save_maps: bool, card: Path | None, runtime: str | None, allow_cpu_fallback: bool, qnn_precision: str | None,
          images: Path | None, category: str | None, maps_dir: Path | None, map_range: str | None) -> None:
    """Score a benchmark with a deployed model and write the per-image score file fidelity reads; or score unlabeled
    images (--images) and decide each OK / NG with the bundle's threshold."""
    from edgedeploy.evaluation.data.benchmarks import parse_categories
    from edgedeploy.runtime.score import score_to_file

    if runtime is None and (allow_cpu_fallback or qnn_precision):
        raise click.UsageError(f"{'--allow-cpu-fallback' if allow_cpu_fallback else '--qnn-precision'} applies to "
                               "--runtime qnn-htp or qnn-gpu")
    from edgedeploy.runtime.images import bundle_model_file, check_score_options, images_command

    check_score_options(bench, images, out, category, maps_dir, map_range, data_root, categories, save_maps)
    if remote_from_context() is not None:  # --remote HOST: the bundle and tensors to the board, the scores back
        from edgedeploy.remote.score import score_remote_command

        sys.exit(score_remote_command(remote_from_context(), model, bench, out, data_root, categories, save_maps,
                                      runtime, allow_cpu_fallback, qnn_precision, images, card, click.echo))
    if images is not None:
        sys.exit(images_command(model, images, out, category, maps_dir, map_range, card=card, runtime=runtime,
                                allow_cpu_fallback=allow_cpu_fallback, qnn_precision=qnn_precision))
    model = bundle_model_file(model, runtime, lambda line: click.echo(line, err=True))
    cats = parse_categories(categories)
    table = score_to_file(model, bench, out, data_root=data_root, categories=cats, save_maps=save_maps,
                          log=lambda line: click.echo(line, err=True), card=card, runtime=runtime,
                          allow_cpu_fallback=allow_cpu_fallback, qnn_precision=qnn_precision)
    click.echo(f"scores: {out} ({len(table.rows)} images, runner {table.meta['runner']}, model {table.meta['model_sha256'][:12]})")
