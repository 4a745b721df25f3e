"""`edgedeploy fidelity` on a quantised bundle (issue 21): the QDQ graph is the device graph, under ONNX Runtime CPU
(--device onnx, its default) or Qualcomm's QNN HTP (--device qnn-htp); the report says which ran it and what the
graph is (precision, calibration record, overlap with the evaluated images). Small recipe, seeded weights, a few
demo images."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edgedeploy.cli import main

SMALL = "edgezsad-tinyvit5m-224"


def _invoke(*args):
    return CliRunner().invoke(main, ["fidelity", "--bench", "demo", "--recipe", SMALL, *map(str, args)],
                              catch_exceptions=False)


def _one_line_exit_2(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0], result.output


@pytest.fixture(scope="module")
def w8a8_out(tmp_path_factory, small_recipe):
    """OUT after `edgedeploy build --target rb5-gen2-npu --precision w8a8 --calibration demo` (about 35 s)."""
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.host.pipeline import build
    from edgedeploy.targets import quantize as q

    out = tmp_path_factory.mktemp("w8a8-out")
    request = q.QuantizeRequest(precision="w8a8", calibration="demo")
    result = build(small_recipe, load_profile("rb5-gen2-npu"), out, log=lambda line: None, quantize=request,
                   calibration=q.resolve_calibration(request))
    assert result.manifest["quantization"]["precision"] == "w8a8"
    return out


@pytest.mark.parametrize("args, words", [
    (("--precision", "int4"), ("--precision int4", "fp16, w8a16, w8a8")),
    (("--precision", "w8a8"), ("needs --calibration",)),
    (("--calibration", "demo"), ("--calibration needs --precision",)),
    (("--precision", "fp16", "--keep-float", "x"), ("--keep-float applies to an integer --precision",)),
])
def test_bad_quantisation_flags_are_one_line_exit_2(tmp_path, args, words):
    result = _invoke("--target", "rb5-gen2-npu", "--out", tmp_path, *args)
    _one_line_exit_2(result, *words)


def test_the_bundle_qdq_graph_is_the_device_graph_and_the_report_says_so(w8a8_out, tmp_path):
    manifest = json.loads((w8a8_out / "rb5-gen2-npu" / "manifest.json").read_text())
    result = _invoke("--target", "rb5-gen2-npu", "--out", w8a8_out, "--limit", 2, "--categories", "brick,grass",
                     "--no-plots", "--report", tmp_path / "r")
    assert result.exit_code in (0, 1), result.output
    report = json.loads((tmp_path / "r" / "fidelity.json").read_text())
    q = report["quantization"]
    assert q["precision"] == "w8a8" and q["sha256"] == manifest["model"]["sha256"] == report["model_sha256"]
    assert q["images"] == manifest["quantization"]["calibration"]["images"] and q["method"] == "MinMax"
    assert q["overlap_with_evaluated"] == 0 and len(q["files"]) == q["images"]
    assert q["source_sha256"] == report["float_model_sha256"] != report["model_sha256"]
    assert "ONNX Runtime CPU" in report["device"] and q["verdict_by"] == report["device"]
    assert report["error_model"]["precision"] == "w8a8" and report["error_model"]["integer_rounding_excused"] is False
    assert "pixel_gate" in report and "pixel_auroc" in report["mean"]["device_metrics"]
    md = (tmp_path / "r" / "fidelity.md").read_text()
    assert "| device graph | W8A8 QDQ graph" in md and "| calibration | 24 normal images (demo train split)" in md
    assert "| verdict produced by | device stand-in: the W8A8 QDQ graph under ONNX Runtime CPU |" in md
    assert "integer rounding is never excused" in md and "ONNX Runtime on the CPU ran it" in md
    # the float graph on request
    result = _invoke("--target", "rb5-gen2-npu", "--out", w8a8_out, "--limit", 2, "--categories", "brick",
                     "--no-plots", "--report", tmp_path / "f", "--precision", "fp16", "--device", "onnx")
    assert result.exit_code in (0, 1), result.output
    report = json.loads((tmp_path / "f" / "fidelity.json").read_text())
    assert "quantization" not in report and report["model_sha256"] == q["source_sha256"]


def test_the_fp16_emulation_or_torch_fp16_of_a_qdq_graph_is_refused(w8a8_out, tmp_path):
    for device in ("fp16-emulation", "torch-fp16"):
        result = _invoke("--target", "rb5-gen2-npu", "--out", w8a8_out, "--limit", 2, "--device", device,
                         "--report", tmp_path / device)
        if device == "torch-fp16" and "CUDA" in result.output:
            continue  # no GPU here: refused before the graph is looked at
        _one_line_exit_2(result, f"--device {device}", "QDQ")


def test_precision_and_calibration_make_the_same_graph_as_build(w8a8_out, tmp_path):
    """--precision w8a8 --calibration demo reuses the build's quantize stage: the same graph as the bundle."""
    manifest = json.loads((w8a8_out / "rb5-gen2-npu" / "manifest.json").read_text())
    shutil.rmtree(w8a8_out / "rb5-gen2-npu")  # only the stage cache is left: fidelity makes the graph itself
    try:
        result = _invoke("--target", "rb5-gen2-npu", "--out", w8a8_out, "--limit", 2, "--categories", "brick",
                         "--no-plots", "--report", tmp_path / "r", "--precision", "w8a8", "--calibration", "demo")
        assert result.exit_code in (0, 1), result.output
        assert "QDQ graph reused from the stage cache" in result.output
        report = json.loads((tmp_path / "r" / "fidelity.json").read_text())
        assert report["model_sha256"] == manifest["model"]["sha256"]
        assert report["quantization"]["origin"].startswith("made by the build's quantize stage")
    finally:  # the bundle back for the other tests of the module
        from edgedeploy.core.profiles import load_profile
        from edgedeploy.core.model_recipes import load_recipe
        from edgedeploy.host.pipeline import build
        from edgedeploy.targets import quantize as q

        request = q.QuantizeRequest(precision="w8a8", calibration="demo")
        build(load_recipe(SMALL), load_profile("rb5-gen2-npu"), w8a8_out, log=lambda line: None, quantize=request,
              calibration=q.resolve_calibration(request))


def test_calibration_images_that_are_evaluated_images_are_refused(w8a8_out, tmp_path):
    from edgedeploy.evaluation.data.benchmarks import load_benchmark

    test = load_benchmark("demo", None, split="test")
    folder = tmp_path / "calib"
    folder.mkdir()
    for s in [s for s in test.samples if s.label == 0][:4]:
        shutil.copy(s.path, folder / f"{s.category}-{s.path.name}")
    result = _invoke("--target", "rb5-gen2-npu", "--out", w8a8_out, "--limit", 2, "--precision", "w8a8",
                     "--calibration", folder, "--report", tmp_path / "r")
    _one_line_exit_2(result, "4 calibration image(s)", "--allow-calibration-overlap")


@pytest.mark.slow
def test_the_qdq_graph_on_the_qnn_htp_backend(w8a8_out, tmp_path):
    """--device qnn-htp runs the W8A8 QDQ graph on Qualcomm's HTP backend (about 25 s per image here)."""
    pytest.importorskip("onnxruntime_qnn")
    result = _invoke("--target", "rb5-gen2-npu", "--out", w8a8_out, "--limit", 2, "--categories", "brick",
                     "--no-plots", "--report", tmp_path / "r", "--device", "qnn-htp")
    assert result.exit_code in (0, 1), result.output
    report = json.loads((tmp_path / "r" / "fidelity.json").read_text())
    assert "QNN HTP, the W8A8 QDQ graph" in report["device"] and report["quantization"]["verdict_by"] == report["device"]
    assert any("Qualcomm's QNN HTP backend ran it" in note for note in report["notes"])
