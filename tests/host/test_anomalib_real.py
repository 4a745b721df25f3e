"""A real anomalib model end to end: PaDiM trained and exported by anomalib itself, then build, audit, fidelity.

``anomalib_padim.py`` trains PaDiM (random resnet18, no downloads) on a small synthetic MVTec-layout set
and exports it with ``Engine.export(export_type=ONNX)``; its graph keeps anomalib's dynamic dims, its
pre-processor (Resize, ImageNet normalisation) and its post-processor inside. anomalib is in ``[dev]``;
without it this test is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgedeploy.cli import main

pytest.importorskip("anomalib")
pytest.importorskip("onnxscript")

SIZE = 64
SCRIPT = Path(__file__).with_name("anomalib_padim.py")


@pytest.fixture(scope="module")
def padim(tmp_path_factory) -> tuple[Path, Path, Path]:
    out = tmp_path_factory.mktemp("padim")
    result = subprocess.run([sys.executable, str(SCRIPT), str(out), "--size", str(SIZE)], capture_output=True,
                            text=True, cwd=out, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    onnx_path = Path(result.stdout.strip().splitlines()[-1].removeprefix("onnx: "))
    card = out / "card.yaml"
    card.write_text(f"input: {{size: {SIZE}}}\n")  # anomalib's export leaves the size dynamic
    return onnx_path, card, out / "data"


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.slow
def test_anomalib_padim_build_audit_fidelity(padim, tmp_path):
    onnx_path, card, data = padim
    out = tmp_path / "out"
    built = _run("build", "--onnx", str(onnx_path), "--card", str(card), "--target", "jetson-orin-nano",
                 "--out", str(out))
    assert built.exit_code == 0, built.output
    assert "+ anomalib export" in built.output and "stored as INT32" in built.output
    manifest = json.loads((out / "jetson-orin-nano" / "manifest.json").read_text())
    assert manifest["model"]["card"]["outputs"]["map_size"] == [SIZE, SIZE]
    assert manifest["model"]["outputs"] == ["pred_score", "anomaly_map"]
    audited = _run("audit", str(out / "jetson-orin-nano" / "model.onnx"), "--target", "jetson-orin-nano")
    assert audited.exit_code == 0, audited.output

    # PaDiM upsamples its feature maps and its anomaly map inside the graph: the RB5 profile refuses Resize,
    # and the build says so before any hardware is involved
    rb5 = _run("build", "--onnx", str(onnx_path), "--card", str(card), "--target", "rb5-gen2", "--out", str(out))
    assert rb5.exit_code == 1 and "Resize is refused for rb5-gen2" in rb5.output

    checked = _run("fidelity", "--onnx", str(onnx_path), "--card", str(card), "--bench", "mvtec", "--data-root",
                   str(data), "--target", "jetson-orin-nano", "--out", str(out), "--no-plots")
    assert checked.exit_code == 0, checked.output
    report = json.loads((out / "fidelity" / "mvtec-jetson-orin-nano" / "fidelity.json").read_text())
    assert report["passed"] and len(report["categories"]) == 1
    category = report["categories"][0]
    assert category["host_auroc"] > 90  # the trained PaDiM separates the blobs; the report is about a real model
