"""The gate for a quantised device (issue 21): the error model for a QDQ graph, and the pixel gate.

* Error model (drift.py): the integer rounding of a QDQ graph is never excused; the float parts' FP16 near-ties
  are. A device = host + FP16-level noise passes and a shuffled device fails, at several score scales; a device
  with a w8a8-sized error (a few percent per score, small next to the spread) fails, though the chain bound
  written from the bit width (12.5% at 8 bits) would have excused every one of its swaps.
* Pixel gate (--max-pixel-drift): a device whose maps are damaged but whose scores are intact fails (exit 1),
  an intact one passes; the budget and the scope follow the flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgedeploy.cli import main
from edgedeploy.evaluation.data.benchmarks import Benchmark, Sample
from edgedeploy.evaluation.fidelity.compare import compare, compare_category
from edgedeploy.evaluation.fidelity.drift import (FP16_RELATIVE_ERROR, device_epsilon, integer_chain_bound,
                                                  integer_half_step)

from gate_helpers import scored

SCALES = [1e-3, 1.0, 110.0, 1e4]
PRECISIONS = ["w8a8", "w8a16", "int8"]


def _bench(labels: np.ndarray) -> Benchmark:
    samples = tuple(Sample(Path(f"part/{i}.png"), f"part/{i}.png", "part", int(lab), "good" if lab == 0 else "bad",
                           None) for i, lab in enumerate(labels))
    return Benchmark("mine", Path("."), samples)


def _separated(seed: int, n: int = 30, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
    return labels, labels * shift + rng.normal(size=labels.size)


def test_the_error_model_for_integer_precisions():
    assert integer_half_step(8) == 2.0 ** -9 and integer_half_step(16) == 2.0 ** -17
    assert integer_chain_bound(8) == 2.0 ** -3 and integer_chain_bound(16) == 2.0 ** -11
    for precision in (None, "fp16"):
        assert device_epsilon(precision) == FP16_RELATIVE_ERROR
    for precision in PRECISIONS:
        assert device_epsilon(precision) == 0.0
    with pytest.raises(ValueError):
        device_epsilon("int4")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_order_keeping_device_passes_at_every_scale(precision, scale, seed):
    """An affine map of the host scores plus noise below a quarter of the closest normal/anomalous gap: no swap."""
    labels, z = _separated(seed)
    host = scale * (1.0 + 0.05 * z)
    gap = np.abs(host[labels == 0][:, None] - host[labels == 1][None, :]).min()
    noise = np.random.default_rng(100 + seed).uniform(-0.25 * gap, 0.25 * gap, host.size)
    device = 0.97 * host + 0.01 * scale + 0.97 * noise
    bench = _bench(labels)
    report = compare(scored(bench, host), scored(bench, device), bench, precision=precision)
    assert report.passed, (scale, report.verdict())
    assert report.quantized and report.precision == precision
    assert "integer rounding is never excused" in report.rule()
    model = report.to_json()["error_model"]
    assert model["integer_rounding_excused"] is False and model["activation_bits"] == (16 if precision == "w8a16" else 8)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shuffled_device_fails_at_every_scale(precision, scale, seed):
    labels, z = _separated(seed, shift=3.0)
    host = scale * (1.0 + 0.05 * z)
    device = np.random.default_rng(seed).permutation(host)
    bench = _bench(labels)
    report = compare(scored(bench, host), scored(bench, device), bench, precision=precision)
    assert report.categories[0].host_auroc > 90
    assert not report.passed and report.mean["near_ties"] == 0, (scale, report.verdict())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_w8a8_sized_error_counts_though_the_bit_width_bound_would_excuse_it(seed):
    """Scores in [1, 3], each moved by up to 5% (the order of w8a8's error on the small recipe): small next to the
    spread (rule 3 holds), beyond FP16's reach (rule 2 fails), within the 8-bit chain bound of 12.5%."""
    rng = np.random.default_rng(seed)
    labels, z = _separated(seed, shift=0.5)
    host = 1.0 + 2.0 * (z - z.min()) / (z.max() - z.min())
    device = host * (1.0 + rng.uniform(-0.05, 0.05, host.size))
    bench = _bench(labels)
    reference = None
    for k in (-8, 0, 8):
        f = 2.0 ** k
        report = compare(scored(bench, host * f), scored(bench, device * f), bench, precision="w8a8")
        c = report.categories[0]
        assert c.spread_ratio < 0.25 and c.reorderings > 0 and not report.passed, report.verdict()
        counts = (c.near_ties, c.reorderings)
        assert reference in (None, counts)
        reference = counts
    lenient = compare_category("part", [s.rel_path for s in bench.samples], labels, host, device, 0.2,
                               epsilon=integer_chain_bound(8))
    assert lenient.reorderings == 0 and lenient.passed  # what the adopted rule refuses to excuse


@pytest.mark.parametrize("precision", PRECISIONS)
def test_swaps_an_fp16_device_is_excused_count_for_a_quantised_one(precision):
    """Saturated scores (the confident heads of a trained model) rounded to a coarse grid: an FP16 device's
    near-ties, but for a quantised device every swap counts (a swap cannot be pinned on the float parts)."""
    rng = np.random.default_rng(4)
    # normal scores spread over the sigmoid, a few of them confident; defects packed just below 1 (as
    # EfficientNet-Lite0's heads score held-out gravel)
    normal = np.r_[rng.uniform(0.05, 0.9, 34), rng.uniform(0.9960, 0.9995, 6)]
    anomalous = 1.0 - rng.uniform(5e-4, 5e-3, 40)
    labels = np.r_[np.zeros(40), np.ones(40)].astype(int)
    host = np.r_[normal, anomalous]
    device = np.round(host * 2 ** 8) / 2 ** 8  # an 8-bit output grid over [0, 1]
    bench = _bench(labels)
    as_fp16 = compare(scored(bench, host), scored(bench, device), bench)
    as_quantized = compare(scored(bench, host), scored(bench, device), bench, precision=precision)
    # an FP16 device's reading: the grid's ties are resolution ties, within FP16's reach but never excused
    assert as_fp16.mean["resolution_ties"] > 0 and as_fp16.mean["reorderings"] < as_quantized.mean["reorderings"]
    assert as_quantized.mean["near_ties"] == 0 and as_quantized.mean["resolution_ties"] == 0
    assert not as_quantized.passed


# ------------------------------------------------------------------------------------------------ pixel gate


def _invoke(*args):
    return CliRunner().invoke(main, ["fidelity", *map(str, args)], catch_exceptions=False)


def _pixel_pair(tmp_path: Path, make_mvtec_tree, damage: str):
    """Host maps that find the masks; device scores equal to the host's, its maps intact, noisy or damaged."""
    from edgedeploy.evaluation.data import load_benchmark, load_mask
    from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable, write_scores

    root = make_mvtec_tree(tmp_path / "mvtec", categories=("bottle", "screw"), n_good=4, n_bad=4)
    bench = load_benchmark("mvtec", root)
    rng = np.random.default_rng(0)
    host_maps, device_maps = {}, {}
    for s in bench.samples:
        mask = load_mask(s.mask_path, 14).astype(np.float32) if s.mask_path else np.zeros((14, 14), np.float32)
        host_maps[s.rel_path] = mask + 0.05 * rng.random((14, 14)).astype(np.float32)
        if damage == "intact":
            device_maps[s.rel_path] = host_maps[s.rel_path] + 1e-4 * rng.random((14, 14)).astype(np.float32)
        else:  # the map's content moved away from the defect: a map collapse with the image score intact
            device_maps[s.rel_path] = np.roll(host_maps[s.rel_path], (7, 7), axis=(0, 1))
    rows = [ScoreRow(s.rel_path, s.category, s.label, 0.2 + 0.1 * s.label + 0.01 * i)
            for i, s in enumerate(bench.samples)]
    meta = {"bench": "mvtec", "recipe": "edgezsad-tinyvit5m-224", "checkpoint_sha256": "seeded"}
    write_scores(tmp_path / "host.csv", ScoreTable(meta, rows), host_maps)
    write_scores(tmp_path / "device.csv", ScoreTable({**meta, "runner": "qnn-htp"}, rows), device_maps)
    return root


@pytest.mark.parametrize("gate", ["benchmark", "category"])
def test_damaged_maps_with_intact_scores_fail_the_pixel_gate(tmp_path, make_mvtec_tree, gate):
    root = _pixel_pair(tmp_path, make_mvtec_tree, "damaged")
    result = _invoke("--host-scores", tmp_path / "host.csv", "--device-scores", tmp_path / "device.csv", "--bench",
                     "mvtec", "--data-root", root, "--report", tmp_path / "r", "--no-plots", "--gate", gate)
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "r" / "fidelity.json").read_text())
    assert report["image_passed"] and not report["passed"] and not report["pixel_gate"]["passed"]
    assert report["verdict"].startswith("FAIL: pixel metrics dropped") and "the image gate holds" in report["verdict"]
    assert report["mean"]["reordering_gross"] == 0
    checked = report["pixel_gate"]["checked"]
    assert {c["metric"] for c in checked} == {"pixel AUROC", "AUPRO"}
    assert {c["where"] for c in checked} == ({"mean"} if gate == "benchmark" else {"bottle", "screw"})
    assert "--max-pixel-drift" in report["rule"]
    md = (tmp_path / "r" / "fidelity.md").read_text()
    assert "**FAIL**" in md and "pixel gate:" in md and "`--max-pixel-drift`" in md
    # a budget above the collapse lets it through: the flag is the budget
    worst = max(c["host"] - c["device"] for c in checked)
    result = _invoke("--host-scores", tmp_path / "host.csv", "--device-scores", tmp_path / "device.csv", "--bench",
                     "mvtec", "--data-root", root, "--report", tmp_path / "r2", "--no-plots", "--gate", gate,
                     "--max-pixel-drift", worst + 1)
    assert result.exit_code == 0, result.output


def test_intact_maps_pass_the_pixel_gate(tmp_path, make_mvtec_tree):
    root = _pixel_pair(tmp_path, make_mvtec_tree, "intact")
    result = _invoke("--host-scores", tmp_path / "host.csv", "--device-scores", tmp_path / "device.csv", "--bench",
                     "mvtec", "--data-root", root, "--report", tmp_path / "r", "--no-plots")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "fidelity.json").read_text())
    assert report["passed"] and report["pixel_gate"]["passed"] and report["pixel_gate"]["checked"]
    assert "pixel AUROC and AUPRO within 1 points" in report["verdict"]


def test_without_maps_the_pixel_gate_says_it_did_not_check(tmp_path):
    labels, z = _separated(0)
    host = 1.0 + 0.05 * z
    bench = _bench(labels)
    report = compare(scored(bench, host), scored(bench, host), bench, max_pixel_drift=1.0)
    assert report.passed and "not checked" in report.pixel_line()


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_pixel_budget_is_one_line_exit_2(tmp_path, value):
    labels, z = _separated(0)
    for name in ("h", "d"):
        lines = ["# edgedeploy-scores: 1", "# bench: mine", "path,category,label,score"]
        lines += [f"part/{i}.png,part,{lab},{1 + 0.05 * v!r}" for i, (lab, v) in enumerate(zip(labels, z))]
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
    result = _invoke("--host-scores", tmp_path / "h.csv", "--device-scores", tmp_path / "d.csv", "--report",
                     tmp_path / "r", "--max-pixel-drift", value)
    assert result.exit_code == 2 and "--max-pixel-drift" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
