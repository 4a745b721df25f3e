"""``edgedeploy score``: score a benchmark with a deployed model, on (or for) the device. No PyTorch."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="model.onnx (ONNX Runtime, or QNN with --runtime), model_ctx.onnx (QNN HTP, with --runtime qnn-htp), "
              "model.engine (TensorRT) or model.dlc (AI Hub) of a bundle.")
@click.option("--bench", required=True, help="Benchmark name (mvtec, visa, btad, mpdd, ksdd2, dtd-synthetic, real-iad, demo).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Benchmark root (default: $EDGEDEPLOY_DATA_<BENCH>).")
@click.option("--categories", multiple=True, help="Categories to score (comma-separated or repeated; default all).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Score file (CSV) to write.")
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
def score(model: Path, bench: str, data_root: Path | None, categories: tuple[str, ...], out: Path, save_maps: bool,
          card: Path | None, runtime: str | None, allow_cpu_fallback: bool, qnn_precision: str | None) -> None:
    """Score a benchmark with a deployed model and write the per-image score file fidelity reads."""
    from edgedeploy.evaluation.data.benchmarks import parse_categories
    from edgedeploy.runtime.score import score_to_file

    if runtime is None and (allow_cpu_fallback or qnn_precision):
        raise click.UsageError(f"{'--allow-cpu-fallback' if allow_cpu_fallback else '--qnn-precision'} applies to "
                               "--runtime qnn-htp or qnn-gpu")
    cats = parse_categories(categories)
    table = score_to_file(model, bench, out, data_root=data_root, categories=cats, save_maps=save_maps,
                          log=lambda line: click.echo(line, err=True), card=card, runtime=runtime,
                          allow_cpu_fallback=allow_cpu_fallback, qnn_precision=qnn_precision)
    click.echo(f"scores: {out} ({len(table.rows)} images, runner {table.meta['runner']}, model {table.meta['model_sha256'][:12]})")
