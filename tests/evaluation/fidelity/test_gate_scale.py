"""The near-tie rule follows the scores' scale (issue: a drift gate that cannot be fooled).

Each case runs at several scales: scores multiplied by 2^k give the same counts and verdict; a device
that only rounds the host's output to FP16 passes at 1e-3, 1, 110 and 1e4; a device that shuffles
tightly packed scores fails however tightly they are packed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgedeploy.evaluation.data.benchmarks import Benchmark, Sample
from edgedeploy.evaluation.fidelity.compare import compare

from gate_helpers import GATE_SEEDS, fp16_noise, large_noise, real_reordering, scored


def _bench(labels: np.ndarray, categories: np.ndarray | None = None) -> Benchmark:
    categories = np.full(labels.size, "part") if categories is None else categories
    samples = tuple(Sample(Path(f"{c}/{i}.png"), f"{c}/{i}.png", str(c), int(lab), "good" if lab == 0 else "bad", None)
                    for i, (c, lab) in enumerate(zip(categories, labels)))
    return Benchmark("mine", Path("."), samples)


def _counts(report):
    return (report.passed, report.mean["near_ties"], report.mean["reorderings"],
            [(c.near_ties, c.reorderings) for c in report.categories])


def _separated(rng, n_normal=30, n_anomalous=30, shift=1.0):
    labels = np.r_[np.zeros(n_normal), np.ones(n_anomalous)].astype(int)
    return labels, labels * shift + rng.normal(size=labels.size)


@pytest.fixture(scope="module")
def demo_like():
    """A benchmark shaped like the built-in demo (3 categories of 24 + 24) with scores of its range."""
    rng = np.random.default_rng(7)
    labels = np.tile(np.r_[np.zeros(24), np.ones(24)].astype(int), 3)
    categories = np.repeat(np.array(["brick", "grass", "gravel"]), 48)
    host = 0.2 + 0.08 * rng.normal(size=labels.size) + 0.06 * labels
    return _bench(labels, categories), np.abs(host)


@pytest.mark.parametrize("case", ["fp16", "reordering", "large", "shuffle"])
def test_scaling_every_score_by_a_power_of_two_changes_nothing(demo_like, case):
    bench, host = demo_like
    rng = np.random.default_rng(3)
    device = {"fp16": lambda: fp16_noise(host, 0), "reordering": lambda: real_reordering(bench, host, 0),
              "large": lambda: large_noise(host, 0), "shuffle": lambda: rng.permutation(host)}[case]()
    reference = _counts(compare(scored(bench, host), scored(bench, device), bench))
    for k in range(-8, 9):
        f = 2.0 ** k
        report = compare(scored(bench, host * f), scored(bench, device * f), bench)
        assert _counts(report) == reference, (k, report.verdict())
    assert reference[0] == (case == "fp16")


@pytest.mark.parametrize("scale", [1e-3, 1.0, 110.0, 1e4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_host_output_rounded_to_fp16_passes_at_every_scale(scale, seed):
    rng = np.random.default_rng(seed)
    labels, z = _separated(rng)
    host = scale * (1.0 + 0.05 * z)
    device = host.astype(np.float16).astype(np.float64)
    bench = _bench(labels)
    report = compare(scored(bench, host), scored(bench, device), bench)
    assert report.passed, (scale, report.verdict())
    assert report.mean["reorderings"] == 0


@pytest.mark.parametrize("width", [0.014, 1e-3, 1e-4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shuffled_device_fails_however_tightly_the_scores_are_packed(width, seed):
    """Host scores packed into [0.5 - w/2, 0.5 + w/2] with a high AUROC; device = a random permutation."""
    rng = np.random.default_rng(seed)
    labels, z = _separated(rng, shift=3.0)
    host = 0.5 + width * (z - z.min()) / (z.max() - z.min()) - width / 2
    device = rng.permutation(host)
    bench = _bench(labels)
    report = compare(scored(bench, host), scored(bench, device), bench)
    assert report.categories[0].host_auroc > 90
    assert not report.passed, (width, report.verdict())
    assert report.mean["near_ties"] == 0 and report.categories[0].spread_ratio > 1
    assert any("none of its swaps is excused as a near-tie" in note for note in report.notes)


@pytest.mark.parametrize("scale", [1e-3, 110.0, 1e4])
@pytest.mark.parametrize("seed", GATE_SEEDS[:3])
def test_the_perturbation_cases_keep_their_verdicts_at_other_scales(demo_like, scale, seed):
    """The demo-scale cases (FP16-level noise passes; a fifth of the anomalous scores lowered fails; large noise
    fails), their absolute sizes scaled with the scores."""
    bench, host = demo_like
    f = scale / np.median(host)
    h = host * f
    cases = {"fp16": fp16_noise(host, seed) * f, "reordering": real_reordering(bench, host, seed) * f,
             "large": large_noise(host, seed) * f}
    verdicts = {name: compare(scored(bench, h), scored(bench, d), bench).passed for name, d in cases.items()}
    assert verdicts == {"fp16": True, "reordering": False, "large": False}


def test_an_honest_device_offset_from_the_host_passes():
    """A common relative offset (every score 1% high, as the QNN HTP's one-sided error) reorders nothing."""
    rng = np.random.default_rng(5)
    labels, z = _separated(rng)
    host = 110 * (1 + 0.05 * z)
    device = (host * 1.01).astype(np.float16).astype(np.float64)
    bench = _bench(labels)
    report = compare(scored(bench, host), scored(bench, device), bench)
    assert report.passed and report.categories[0].error_gain == pytest.approx(1.01, abs=1e-3)
