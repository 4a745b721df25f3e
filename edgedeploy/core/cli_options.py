"""Command-line options more than one command takes, declared once."""

from __future__ import annotations

from pathlib import Path

import click


def onnx_model_options(command):
    """``--onnx`` and ``--card``: any anomaly model as ONNX instead of an EdgeZSAD checkpoint (docs/models.md)."""
    command = click.option("--card", type=click.Path(path_type=Path),
                           help="Model card YAML for --onnx: input size, value range, normalisation, output names, "
                           "map polarity (default: read from the graph; anomalib exports are recognised).")(command)
    return click.option("--onnx", "onnx_model", type=click.Path(path_type=Path),
                        help="Any anomaly model as ONNX (anomalib, your own) instead of an EdgeZSAD checkpoint: "
                        "one 1x3xHxW image input, an image-score output and an anomaly-map output.")(command)


def quantize_options(command):
    """The integer-precision flags `build` and `fidelity` share (docs/quantization.md); each command declares its own
    ``--precision`` and ``--calibration``, whose meaning differs between them."""
    options = [
        click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
                     show_default=True, help="ONNX Runtime's calibration method."),
        click.option("--calibration-limit", type=int, default=32, show_default=True,
                     help="Use at most this many calibration images (evenly spread over the sorted set)."),
        click.option("--allow-calibration-overlap", is_flag=True,
                     help="Go on even when calibration images are also evaluation (test split) images; the manifest "
                     "and the report say so."),
        click.option("--no-default-exclusions", "--quantize-all", "no_default_exclusions", is_flag=True,
                     help="Integer precisions: quantise the ViT-sensitive ops too (LayerNorm, Softmax, GELU, residual "
                     "Add), which stay float by default."),
        click.option("--keep-float", "keep_float", multiple=True, metavar="NODE_OR_GLOB",
                     help="Integer precisions: also keep this ONNX node (name or glob) float; repeatable."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
