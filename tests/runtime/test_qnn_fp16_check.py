"""benchmarks/qnn_fp16_check.py, run for real on a few demo images: host FP32, the FP16 emulation and Qualcomm's
QNN HTP FP16 side by side (the emulation-vs-HTP table in docs/fidelity.md comes from this script)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "qnn_fp16_check.py"


@pytest.mark.slow
def test_qnn_fp16_check_prints_both_comparisons(tmp_path, capsys):
    pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn (the [qnn] extra) is not installed")
    spec = importlib.util.spec_from_file_location("qnn_fp16_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--recipe", "edgezsad-tinyvit5m-224", "--categories", "brick", "--limit", "2",
                        "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("FP16 emulation ", "QNN HTP FP16 "))]
    assert len(lines) == 2, out
    for line in lines:
        assert "spearman" in line and "max|Δmap|" in line and "p99 rel. error" in line
    assert "QNN HTP error / emulation error" in out and "time QNN HTP FP16: " in out


def test_qnn_fp16_check_refuses_without_the_runtime(monkeypatch, capsys):
    import edgedeploy.runtime.qnn as qnn

    def missing(what="the QNN runtime"):
        raise qnn.QnnUnavailableError(f"{what} needs onnxruntime-qnn: pip install 'edgedeploy[qnn]'")

    monkeypatch.setattr(qnn, "import_qnn", missing)
    spec = importlib.util.spec_from_file_location("qnn_fp16_check_missing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 2
    assert "onnxruntime-qnn" in capsys.readouterr().err
