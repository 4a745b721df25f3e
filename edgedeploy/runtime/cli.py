"""``edgedeploy score``: score a benchmark with a deployed model, on (or for) the device. No PyTorch."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="model.onnx (ONNX Runtime), model.engine (TensorRT) or model.dlc (AI Hub) of a bundle.")
@click.option("--bench", required=True, help="Benchmark name (mvtec, visa, btad, mpdd, ksdd2, dtd-synthetic, real-iad, demo).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Benchmark root (default: $EDGEDEPLOY_DATA_<BENCH>).")
@click.option("--categories", multiple=True, help="Categories to score (comma-separated or repeated; default all).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Score file (CSV) to write.")
@click.option("--save-maps", is_flag=True, help="Also write the raw anomaly maps to <out stem>.maps.npz.")
@click.option("--card", type=click.Path(path_type=Path), help="Model card YAML for a model outside a bundle (a bundle's "
              "manifest.json carries its own): input size, range, normalisation, output names (docs/models.md).")
def score(model: Path, bench: str, data_root: Path | None, categories: tuple[str, ...], out: Path, save_maps: bool,
          card: Path | None) -> None:
    """Score a benchmark with a deployed model and write the per-image score file fidelity reads."""
    from edgedeploy.evaluation.data.benchmarks import parse_categories
    from edgedeploy.runtime.score import score_to_file

    cats = parse_categories(categories)
    table = score_to_file(model, bench, out, data_root=data_root, categories=cats, save_maps=save_maps,
                          log=lambda line: click.echo(line, err=True), card=card)
    click.echo(f"scores: {out} ({len(table.rows)} images, runner {table.meta['runner']}, model {table.meta['model_sha256'][:12]})")
