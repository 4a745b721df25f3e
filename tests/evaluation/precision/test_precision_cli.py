"""`edgedeploy precision` end to end on the small recipe (its bundle reused from the shared test build)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgedeploy.cli import main


@pytest.fixture
def reuse_small_build(small_build, monkeypatch):
    """Build into the shared small build's folder, so export and simplify come from its stage cache."""
    import edgedeploy.evaluation.precision.run as run_module

    monkeypatch.setattr(run_module, "precision_build_dir", lambda out: small_build.bundle_dir.parent)
    return small_build


@pytest.mark.parametrize("target", ["jetson-orin-nano", "rb5-gen2"])
def test_precision_command(reuse_small_build, tmp_path, target):
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(main, [
        "precision", "--bench", "demo", "--categories", "brick", "--target", target,
        "--recipe", "edgezsad-tinyvit5m-224", "--limit", "4", "--calib-images", "2", "--max-evals", "2",
        "--out", str(tmp_path / "out"), "--report", str(report_dir)])
    report = json.loads((report_dir / "precision.json").read_text())
    rec = report["recommendation"]
    assert result.exit_code == (0 if rec["within_budget"] else 1), result.output
    out = result.output
    assert "FP16 range analysis: " in out and "drift before (pure FP16)" in out and "drift after" in out
    assert "QNN GPU:" in out and "precision.json" in out
    # 2 x 2 brick images: one pair is 25 points, far over the 0.2-point budget, and the run says so in one line
    warning = [line for line in out.splitlines() if line.startswith("warning: ") and "cannot resolve" in line]
    assert len(warning) == 1 and "brick (2 x 2) 25.000" in warning[0] and "--limit 45 or more" in warning[0]
    assert report["images"]["resolution"]["warning"] == warning[0]
    assert report["images"]["resolution"]["gate_pair_points"] == 25.0
    assert out.index(warning[0]) < out.index("FP16 range analysis: ")  # said before the long work
    assert "the sample CANNOT resolve the budget" in out  # and recalled in the summary
    # the fidelity gate judged every full evaluation
    assert report["budget"]["gate"] == "benchmark" and "gate drift" in report["budget"]["rule"]
    assert "gate drift" in out and "max |drift|" not in out
    for trial in report["search"]["trials"]:
        if not trial["screen"]:
            assert isinstance(trial["gate_passed"], bool) and "near_ties" in trial and "reorderings" in trial
    assert report["before"]["verdict"].startswith(("PASS", "FAIL"))
    assert report["images"] == {**report["images"], "search": 4, "of": 48, "categories": ["brick"]}
    assert len(report["images"]["calibration"]) == 2
    assert report["analysis"]["summary"]["tensors_measured"] > 100
    assert report["before"]["fp32_nodes"] == 0 and report["search"]["trials"][0]["step"] == "baseline"
    assert report["timing"]["analysis_peak_rss_mib"] > 0
    assert report["reference"].startswith("host ONNX Runtime FP32")
    if target == "jetson-orin-nano":
        assert rec["build_command"].startswith("edgedeploy build --target jetson-orin-nano")
        assert bool(rec["tensorrt"]["flags"]) == bool(rec["keep_fp32"])
    else:
        assert rec["build_command"] is None and rec["qnn"]["current_qnn_options"]
    assert rec["qnn"]["qnn_options"].startswith("default_graph_gpu_precision=")


@pytest.mark.parametrize("args, message", [
    (["--limit", "1"], "--limit 1"),
    (["--max-drift", "-1"], "--max-drift"),
    (["--gate", "median"], "--gate"),
    (["--margin", "0.5"], "--margin"),
    (["--calib-dir", "/nonexistent/calib"], "--calib-dir"),
])
def test_bad_options_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(main, ["precision", "--bench", "demo", "--target", "jetson-orin-nano",
                                       "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow
def test_full_size_demo_acceptance(tmp_path):
    """`edgedeploy precision --bench demo --target jetson-orin-nano` at full size (TinyViT-21M-512): minutes on a
    2-core CPU. Either pure FP16 is within budget (reported with numbers) or the keep-list
    lowers the emulated drift."""
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(main, ["precision", "--bench", "demo", "--target", "jetson-orin-nano",
                                       "--out", str(tmp_path / "out"), "--report", str(report_dir)])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((report_dir / "precision.json").read_text())
    before, after, rec = report["before"], report["after"], report["recommendation"]
    assert report["images"]["resolution"]["resolves_max_drift"]  # the default --limit resolves the default budget

    def objective(e):
        return (not e["gate_passed"], float("inf") if e["gate_value"] is None else e["gate_value"],
                e["max_score_error"])

    if rec["keep_fp32"]:
        assert objective(after) < objective(before)
    else:
        assert rec["within_budget"] and before["gate_passed"] and before["gate_value"] <= 0.2
    assert report["analysis"]["summary"]["tensors_measured"] > 200
    assert report["timing"]["analysis_peak_rss_mib"] < 4096
