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
