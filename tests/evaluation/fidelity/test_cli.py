"""`edgedeploy fidelity` end to end on the small recipe: exit codes, report files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgedeploy.cli import main
from gate_helpers import GATE_SEEDS, fp16_noise, large_noise, real_reordering, scored
from edgedeploy.runtime.scorefile import read_scores, write_scores


SMALL = "edgezsad-tinyvit5m-224"
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
MPDD = SHARED_DATA / "mpdd_metal_plate"


def _invoke(*args):
    return CliRunner().invoke(main, ["fidelity", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from edgedeploy.evaluation.data.demo import DEMO_VERSION, ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo") / DEMO_VERSION)


@pytest.fixture(scope="module")
def demo_run(fidelity_out, demo_root, tmp_path_factory):
    """One default run (PyTorch host, FP16-emulated device) on the demo's brick category."""
    report = tmp_path_factory.mktemp("report")
    result = _invoke("--bench", "demo", "--data-root", demo_root, "--categories", "brick", "--target", "rb5-gen2",
                     "--recipe", SMALL, "--out", fidelity_out, "--report", report, "--max-drift", 100)
    return result, report


def _base(fidelity_out, demo_root, report):
    return ["--bench", "demo", "--data-root", demo_root, "--categories", "brick", "--target", "rb5-gen2", "--recipe",
            SMALL, "--out", fidelity_out, "--report", report]


def test_default_run_prints_table_and_writes_report(demo_run, small_recipe):
    from edgedeploy.host.checkpoints import default_checkpoint

    result, report = demo_run
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "host AUROC" in out and "device AUROC" in out and "brick" in out and "PASS" in out
    seeded = default_checkpoint(small_recipe) is None
    assert f"model: {SMALL}, " in result.output
    assert ("AUROCs mean nothing" in result.output) == seeded
    assert "same graph as the bundle in" in result.output
    for name in ("fidelity.json", "fidelity.md", "roc.png", "scatter.png", "difference.png",
                 "scores/host-torch.csv", "scores/device-fp16-emulation.csv", "scores/host-torch.maps.npz"):
        assert (report / name).is_file(), name
    notes = json.loads((report / "fidelity.json").read_text())["notes"]
    assert any("does not model FP16 accumulation" in note for note in notes)  # what the emulation misses, said
    data = json.loads((report / "fidelity.json").read_text())
    assert data["passed"] and data["seeded"] == seeded and data["categories"][0]["n"] == 48
    device = read_scores(report / "scores" / "device-fp16-emulation.csv")
    assert device.meta["runner"] == "fp16-emulation" and (device.meta["checkpoint_sha256"] == "seeded") == seeded
    assert device.meta["recipe"] == SMALL and device.meta["bench"] == "demo"


def test_rerun_comes_from_cache(demo_run, fidelity_out, demo_root, tmp_path):
    result = _invoke(*_base(fidelity_out, demo_root, tmp_path), "--max-drift", 100)
    assert result.exit_code == 0
    assert "48 images (48 from cache, 0 scored" in result.output
    assert result.output.count("from cache, 0 scored") == 2  # host and device


def test_drift_above_budget_exits_1(demo_run, fidelity_out, demo_root, tmp_path):
    _, report = demo_run
    table = read_scores(report / "scores" / "device-fp16-emulation.csv")
    rows = table.rows
    good = [i for i, r in enumerate(rows) if r.label == 0]
    bad = [i for i, r in enumerate(rows) if r.label == 1]
    top = max(r.score for r in rows)
    # a device that ranks two normal images above everything: AUROC falls by several points
    for i in good[:2]:
        rows[i] = rows[i].__class__(rows[i].path, rows[i].category, rows[i].label, top + 1.0)
    write_scores(tmp_path / "device.csv", table)
    result = _invoke(*_base(fidelity_out, demo_root, tmp_path / "r"), "--device-scores", tmp_path / "device.csv")
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "brick" in result.stdout
    assert bad  # both classes present


def test_device_score_file_is_compared(demo_run, fidelity_out, demo_root, tmp_path):
    _, report = demo_run
    result = _invoke(*_base(fidelity_out, demo_root, tmp_path), "--device-scores",
                     report / "scores" / "device-fp16-emulation.csv", "--max-drift", 100)
    assert result.exit_code == 0, result.output
    first = json.loads((report / "fidelity.json").read_text())["categories"][0]
    again = json.loads((tmp_path / "fidelity.json").read_text())["categories"][0]
    assert again["drift"] == first["drift"] and again["kendall"] == first["kendall"]


def test_bad_device_score_file_exits_2_naming_rows(demo_run, fidelity_out, demo_root, tmp_path):
    _, report = demo_run
    table = read_scores(report / "scores" / "device-fp16-emulation.csv")
    dropped = table.rows.pop(3)
    write_scores(tmp_path / "device.csv", table)
    result = _invoke(*_base(fidelity_out, demo_root, tmp_path / "r"), "--device-scores", tmp_path / "device.csv")
    assert result.exit_code == 2
    assert dropped.path in result.output and "without a row" in result.output
    table.meta["checkpoint_sha256"] = "0" * 64
    table.rows.insert(3, dropped)
    write_scores(tmp_path / "other.csv", table)
    result = _invoke(*_base(fidelity_out, demo_root, tmp_path / "r"), "--device-scores", tmp_path / "other.csv")
    assert result.exit_code == 2 and "checkpoint 0000000000000000" in result.output


def test_limit_scores_a_stated_subset(fidelity_out, demo_root, tmp_path):
    result = _invoke(*_base(fidelity_out, demo_root, tmp_path), "--host", "onnx", "--device", "onnx", "--limit", "6",
                     "--no-plots")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "fidelity.json").read_text())
    assert [c["n"] for c in data["categories"]] == [6] and data["categories"][0]["n_anomalous"] == 3
    assert any("--limit 6): 6 of 48 images" in note for note in data["notes"])
    assert "--limit 6" in (tmp_path / "fidelity.md").read_text()


def test_qnn_htp_device_on_a_subset_says_it_is_qualcomms_arithmetic(fidelity_out, demo_root, tmp_path):
    """The acceptance command of the QNN issue, on 2 images: the real HTP backend, the whole graph, no fallback."""
    pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn (the [qnn] extra) is not installed")
    result = _invoke(*_base(fidelity_out, demo_root, tmp_path), "--host", "onnx", "--device", "qnn-htp", "--limit", "2",
                     "--no-plots", "--max-drift", 100)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "fidelity.json").read_text())
    assert "QNN HTP FP16" in data["device"] and data["categories"][0]["n"] == 2
    assert any("Qualcomm's arithmetic, not the device's speed" in note for note in data["notes"])
    header = read_scores(tmp_path / "scores" / "device-qnn-htp.csv").meta
    assert header["backend"] == "htp" and header["cpu_fallback"].startswith("off") and header["qnn_sdk"]
    refused = _invoke(*_base(fidelity_out, demo_root, tmp_path / "j"), "--device", "qnn-htp", "--target",
                      "jetson-orin-nano")
    assert refused.exit_code == 2 and "has no qnn: block" in refused.output


def test_corrupt_image_exits_2_naming_it(fidelity_out, tmp_path, make_mvtec_tree):
    root = make_mvtec_tree(tmp_path / "mvtec", categories=("bottle",), n_good=3, n_bad=3)
    corrupt = root / "bottle" / "test" / "crack" / "001.png"
    corrupt.write_bytes(b"not a png at all")
    result = _invoke("--bench", "mvtec", "--data-root", root, "--target", "rb5-gen2", "--recipe", SMALL, "--out",
                     fidelity_out, "--report", tmp_path / "r", "--host", "onnx", "--device", "onnx")
    assert result.exit_code == 2
    assert str(corrupt) in result.output and "could not be read" in result.output


@pytest.mark.parametrize("args, message", [
    (["--device", "onnx", "--device-scores", "x.csv"], "contradict"),
    (["--max-drift", "-1"], "--max-drift must be"),
    (["--limit", "1"], "give 2 or more images per category"),
    (["--limit", "4", "--device-scores", "x.csv"], "--limit picks the images to score"),
    (["--device-scores", "/nonexistent/scores.csv"], "does not exist"),
    (["--keep-fp32", "/no/such/node"], "no/such/node"),
    (["--checkpoint", "/nonexistent.pt"], "does not exist"),
    (["--gate", "pairs"], "Invalid value for '--gate'"),
    (["--host-device", "cuda"], "needs a CUDA GPU"),
    (["--device", "torch-fp16"], "needs a CUDA GPU"),
    (["--host", "onnx", "--host-device", "cuda"], "applies to --host torch only"),
])
def test_bad_options_exit_2(fidelity_out, demo_root, tmp_path, args, message):
    if "cuda" in " ".join(args + [message]).lower():
        from edgedeploy.host.gpu import cuda_available

        if cuda_available():
            pytest.skip("a CUDA GPU is visible: the no-GPU refusal cannot be shown here")
    result = _invoke(*_base(fidelity_out, demo_root, tmp_path), *args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_unknown_bench_and_category_exit_2(tmp_path, make_mvtec_tree):
    result = _invoke("--bench", "nope", "--target", "rb5-gen2", "--recipe", SMALL, "--out", tmp_path)
    assert result.exit_code == 2 and "unknown benchmark" in result.output
    root = make_mvtec_tree(tmp_path / "mvtec", categories=("bottle",))
    result = _invoke("--bench", "mvtec", "--data-root", root, "--categories", "cable", "--target", "rb5-gen2",
                     "--recipe", SMALL, "--out", tmp_path)
    assert result.exit_code == 2 and "cable" in result.output


def test_emulation_keeps_what_the_engine_build_keeps(demo_run, fidelity_out, demo_root, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(fidelity_out, out)
    manifest_path = out / "rb5-gen2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["compile"] = {"keep_fp32": ["/readout/Add_4"]}
    manifest_path.write_text(json.dumps(manifest))
    result = _invoke("--bench", "demo", "--data-root", demo_root, "--categories", "brick", "--target", "rb5-gen2",
                     "--recipe", SMALL, "--out", out, "--host", "onnx", "--max-drift", 100)
    assert result.exit_code == 0, result.output
    assert "keeps in FP32 what" in result.output and "kept in FP32 in the emulation: 1 node (/readout/Add_4;" in result.output
    device = read_scores(out / "fidelity" / "demo-rb5-gen2" / "scores" / "device-fp16-emulation.csv")
    assert device.meta["keep_fp32"] == "/readout/Add_4"
    assert json.loads(manifest_path.read_text())["compile"] == {"keep_fp32": ["/readout/Add_4"]}  # only read


@pytest.mark.skipif(not MPDD.is_dir(), reason=f"shared MPDD photographs not present at {MPDD} (fresh clone)")
def test_mpdd_real_photographs(fidelity_out, tmp_path):
    result = _invoke("--bench", "mpdd", "--data-root", MPDD, "--target", "rb5-gen2", "--recipe", SMALL, "--out",
                     fidelity_out, "--report", tmp_path, "--host", "onnx", "--max-drift", 100)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "fidelity.json").read_text())
    (cat,) = data["categories"]
    assert cat["category"] == "metal_plate" and cat["n"] == 47 and cat["n_anomalous"] == 21
    assert cat["spearman"] > 0.99
    for side in ("host_metrics", "device_metrics"):  # from the real masks
        assert {"pixel_auroc", "aupro"} <= set(cat[side]) and 0 < cat[side]["aupro"] <= 100
    assert "pixel AUROC" in result.stdout and "AUPRO" in result.stdout


@pytest.mark.slow
def test_full_size_demo_acceptance(tmp_path):
    """The acceptance command at full size (TinyViT-21M-512) with the built-in default: the benchmark gate
    passes, the report carries the full metric set, and on its real host scores the three perturbations give
    their verdicts (about three minutes on a 2-core CPU)."""
    result = _invoke("--bench", "demo", "--target", "jetson-orin-nano", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "backbone rebuilt here differs" not in result.output
    report = tmp_path / "out" / "fidelity" / "demo-jetson-orin-nano"
    data = json.loads((report / "fidelity.json").read_text())
    assert data["passed"] and data["gate"] == "benchmark" and [c["n"] for c in data["categories"]] == [48, 48, 48]
    assert abs(data["mean"]["drift"]) <= 0.2 and data["mean"]["reordering_gross"] <= 0.2
    for c in data["categories"]:
        assert c["spearman"] > 0.99 and c["ci"] and c["pair_points"] == pytest.approx(100 / 576)
        assert set(c["host_metrics"]) == set(c["device_metrics"]) == {"image_auroc", "image_ap", "f1_max",
                                                                      "pixel_auroc", "aupro"}
    assert "PASS" in result.stdout and "FP16 error model" in result.stdout and "AUPRO" in result.stdout
    assert all((report / f).is_file() for f in ("fidelity.md", "roc.png", "scatter.png"))
    again = _invoke("--bench", "demo", "--target", "jetson-orin-nano", "--out", tmp_path / "out", "--gate", "category",
                    "--report", tmp_path / "by-category")
    assert again.exit_code == 0 and "gate category" in again.stdout
    _perturbations_on_real_host_scores(report / "scores" / "host-torch.csv")


def _perturbations_on_real_host_scores(host_file: Path) -> None:
    from edgedeploy.evaluation.data import load_benchmark
    from edgedeploy.evaluation.fidelity.compare import compare


    bench = load_benchmark("demo")
    rows = read_scores(host_file).by_path()
    host = np.array([rows[s.rel_path].score for s in bench.samples])
    for seed in GATE_SEEDS:
        ok = compare(scored(bench, host), scored(bench, fp16_noise(host, seed)), bench)
        assert ok.passed, (seed, ok.verdict())
        moved = compare(scored(bench, host), scored(bench, real_reordering(bench, host, seed)), bench)
        assert not moved.passed and moved.mean["ci"][1] < 0, (seed, moved.verdict())
        noisy = compare(scored(bench, host), scored(bench, large_noise(host, seed)), bench)
        assert not noisy.passed, (seed, noisy.verdict())
