"""The drift gate's must-pass and must-fail cases at scales 1e-3, 1, 1e3 and offsets 0, 2, 1000 (issue: "the drift
gate, sound at last"), and the review's cases that passed a broken device or failed an honest one.

Host scores are ``scale * (offset + x)``: x has a unit spread (two classes of normal scores one standard deviation
apart), so the offset is in units of the spread and offset 1000 packs the scores within 0.1% of their magnitude,
as a sigmoid near 1 or a distance with an offset does. ``EDGEDEPLOY_GATE_SEEDS`` runs other seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgedeploy.evaluation.data.benchmarks import Benchmark, Sample
from edgedeploy.evaluation.fidelity.compare import compare
from edgedeploy.evaluation.fidelity.drift import NEAR_TIE_SHIFT, NONFINITE, REORDERINGS, RESOLUTION, RESOLUTION_FIX

from gate_helpers import GATE_SEEDS, scored

SCALES = (1e-3, 1.0, 1e3)
OFFSETS = (0.0, 2.0, 1000.0)
SEEDS = GATE_SEEDS[:3]
CATEGORIES = ("c0", "c1", "c2")


def _bench(labels: np.ndarray, categories: np.ndarray) -> Benchmark:
    samples = tuple(Sample(Path(f"{c}/{i}.png"), f"{c}/{i}.png", str(c), int(lab), "good" if lab == 0 else "bad", None)
                    for i, (c, lab) in enumerate(zip(categories, labels)))
    return Benchmark("cases", Path("."), samples)


def _data(seed: int, n: int = 60):
    """Three categories of n normal + n anomalous images; x: N(0, 1) normals, N(1.5, 1) anomalies."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.r_[np.zeros(n), np.ones(n)].astype(int), len(CATEGORIES))
    categories = np.repeat(np.array(CATEGORIES), 2 * n)
    return labels, categories, rng.normal(size=labels.size) + 1.5 * labels


def _judge(labels, categories, host, device, **kwargs):
    bench = _bench(labels, categories)
    return compare(scored(bench, host), scored(bench, device), bench, **kwargs)


def _honest(case: str, x: np.ndarray, host: np.ndarray, scale: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(host, device) of a device that ranks as the host does."""
    if case == "fp16 round trip":
        return host, host.astype(np.float16).astype(np.float64)
    if case == "host + constant":
        return host, host + 0.2 * np.max(np.abs(host)) + scale
    if case == "2h + 1":
        return host, 2.0 * host + 1.0
    if case == "log h":
        positive = host - host.min() + scale  # log needs positive scores
        return positive, np.log(positive)
    if case == "relative noise 1e-4":
        return host, host * (1.0 + 1e-4 * rng.normal(size=host.size))
    if case == "exact host ties":
        tied = np.round(host / scale, 1) * scale  # x to one decimal: hundreds of exact ties
        return tied, tied * (1.0 + 1e-9 * rng.normal(size=host.size))
    raise ValueError(case)


HONEST = ("host + constant", "2h + 1", "log h", "relative noise 1e-4", "exact host ties")


@pytest.mark.parametrize("case", HONEST)
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", SEEDS)
def test_an_honest_device_passes(case, scale, offset, seed):
    labels, categories, x = _data(seed)
    h, d = _honest(case, x, scale * (offset + x), scale, np.random.default_rng(seed + 1000))
    report = _judge(labels, categories, h, d)
    assert report.passed, (case, scale, offset, report.verdict())
    assert report.mean["reorderings"] == 0


@pytest.mark.parametrize("offset", OFFSETS[:2])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", SEEDS)
def test_the_host_scores_rounded_to_fp16_pass_where_fp16_resolves_them(scale, offset, seed):
    labels, categories, x = _data(seed)
    h, d = _honest("fp16 round trip", x, scale * (offset + x), scale, None)
    report = _judge(labels, categories, h, d)
    assert report.passed, (scale, offset, report.verdict())


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", SEEDS)
def test_fp16_ties_of_scores_packed_below_its_resolution_fail_with_the_fix(scale, seed):
    """Offset 1000: FP16's ulp at 1000 is half the spread, so the round trip ties hundreds of ordered pairs: a loss
    of resolution every FP16 device has, one-sided by nature, never excused; the verdict says how to fix it. At
    scale 1e3 the scores (1e6) overflow FP16 to inf: the NaN/inf failure."""
    labels, categories, x = _data(seed)
    host = scale * (1000.0 + x)
    with np.errstate(over="ignore"):
        device = host.astype(np.float16).astype(np.float64)
    report = _judge(labels, categories, host, device)
    assert not report.passed, report.verdict()
    if scale * 1000 > float(np.finfo(np.float16).max):
        assert report.decided_by == NONFINITE and "NaN/inf" in report.verdict()
        return
    assert report.decided_by == RESOLUTION, report.verdict()
    assert report.mean["resolution_ties"] > 100 and RESOLUTION_FIX in report.verdict()


def _broken(case: str, labels, categories, host, rng) -> np.ndarray:
    anomalous = labels == 1
    c0 = categories == "c0"
    device = host.copy()
    spread = np.subtract(*np.percentile(host, [75, 25])) / 1.349
    if case == "shuffle of one category":
        device[c0] = rng.permutation(host[c0])
    elif case == "top 3 anomalies below every normal":
        top = np.flatnonzero(c0 & anomalous)[np.argsort(host[c0 & anomalous])[-3:]]
        low = host[c0 & ~anomalous].min()
        device[top] = low - 1e-3 * spread
    elif case == "anomalies lowered by a third of the spread":
        device[anomalous] -= spread / 3
    elif case == "random permutation with one outlier":
        host = host.copy()
        host[0] = host.min() - 100 * spread  # one far outlier inflates a standard deviation tenfold
        device = host.copy()
        device[1:] = rng.permutation(host[1:])  # the outlier keeps its place, the rest is shuffled
        return host, device
    elif case == "1 - h":
        device = 1.0 - host
    elif case == "anomalies saturated to one value":
        device[anomalous] = np.median(host[anomalous])
    else:
        raise ValueError(case)
    return host, device


BROKEN = ("shuffle of one category", "top 3 anomalies below every normal", "anomalies lowered by a third of the spread",
          "random permutation with one outlier", "1 - h", "anomalies saturated to one value")


@pytest.mark.parametrize("case", BROKEN)
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_broken_device_fails(case, scale, offset, seed):
    labels, categories, x = _data(seed)
    host, device = _broken(case, labels, categories, scale * (offset + x), np.random.default_rng(seed + 2000))
    report = _judge(labels, categories, host, device)
    assert abs(report.mean["drift"]) > 0.2 or case == "anomalies saturated to one value"
    assert not report.passed, (case, scale, offset, report.verdict())
    assert report.decided_by in (REORDERINGS, NEAR_TIE_SHIFT, RESOLUTION)
    assert f"raw drift {report.mean['drift']:+.3f}" in report.verdict()  # the paper's criterion beside the verdict


# --------------------------------------------------------------------------- the review's cases, each a regression


def _two_class(rng, n, low, high):
    labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
    return labels, np.where(labels == 1, rng.beta(*high, labels.size), rng.beta(*low, labels.size))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_loss_hidden_in_near_ties_of_sigmoid_scores_near_1_fails(seed):
    """host 0.9 + 0.1 Beta, every anomalous score lowered by half the host's standard deviation: passed on main with
    915 near-ties and a raw drift of -8.5 points."""
    rng = np.random.default_rng(seed)
    labels, x = _two_class(rng, 150, (2, 5), (5, 2))
    categories = np.where(np.arange(labels.size) % 2 == 0, "a", "b")
    host = 0.9 + 0.1 * x
    device = host - 0.5 * np.std(host) * labels
    report = _judge(labels, categories, host, device)
    assert report.mean["drift"] < -2 and not report.passed, report.verdict()
    assert report.decided_by in (NEAR_TIE_SHIFT, REORDERINGS)
    assert report.mean["near_ties"] == 0 or report.mean["near_tie_one_sided"]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_same_loss_at_1000_plus_normal_scores_fails(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(200), np.ones(200)].astype(int)
    host = 1000.0 + rng.normal(size=400) + labels
    device = host - 0.5 * np.std(host) * labels
    report = _judge(labels, np.full(400, "part"), host, device)
    assert report.mean["drift"] < -2 and not report.passed, report.verdict()


@pytest.mark.parametrize("band", [(0.95, 1.0), (0.98, 1.0), (1950.0, 2000.0)])
@pytest.mark.parametrize("seed", SEEDS)
def test_the_top_anomalies_pushed_below_every_normal_fail_in_packed_scores(band, seed):
    """Scores in [0.95, 1] or 1000 + 1000 x: the top three anomalies of one of three categories pushed below every
    normal passed on main (raw -0.3); a plain |drift| < 0.2 rule fails it."""
    rng = np.random.default_rng(seed)
    n = 300
    labels = np.tile(np.r_[np.zeros(n), np.ones(n)].astype(int), 3)
    categories = np.repeat(np.array(CATEGORIES), 2 * n)
    x = np.where(labels == 1, rng.beta(5, 2, labels.size), rng.beta(2, 5, labels.size))
    host = band[0] + (band[1] - band[0]) * x
    device = host.copy()
    inside = np.flatnonzero((categories == "c0") & (labels == 1))
    top = inside[np.argsort(host[inside])[-3:]]
    device[top] = host[(categories == "c0") & (labels == 0)].min() * (1 - 1e-7)
    report = _judge(labels, categories, host, device)
    assert report.mean["drift"] < -0.2 and not report.passed, report.verdict()


@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_permutation_behind_one_outlier_fails(seed):
    """One host score at 0.0 among scores in 0.96-1, kept in place, the rest permuted: np.std made the permutation
    look like rounding (passed on main: 5,270 near-ties, 0 real reorderings, raw -36.0)."""
    rng = np.random.default_rng(seed)
    labels, x = _two_class(rng, 100, (2, 5), (5, 2))
    host = 0.96 + 0.04 * x
    host[0] = 0.0
    device = host.copy()
    device[1:] = rng.permutation(host[1:])
    report = _judge(labels, np.full(labels.size, "part"), host, device)
    assert not report.passed and report.mean["near_ties"] == 0, report.verdict()
    assert report.categories[0].spread_ratio > 1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bias", [0.0, 0.2, -0.2, 5.0])
def test_an_honest_device_with_a_constant_bias_passes(seed, bias):
    """Host Beta(2,5)/Beta(5,3), device = host (1 + 0.015 N) + bias: failed on main with + 0.2 (0.417), passed
    without it; a shift every score shares reorders nothing."""
    rng = np.random.default_rng(seed)
    labels, host = _two_class(rng, 200, (2, 5), (5, 3))
    device = host * (1 + 0.015 * rng.normal(size=host.size)) + bias
    report = _judge(labels, np.full(labels.size, "part"), host, device)
    assert report.passed, report.verdict()
    assert report.categories[0].error_intercept == pytest.approx(bias, abs=0.01)


def test_opposite_shifts_in_two_categories_fail_the_category_gate():
    """A shift of one class up in one category and down in another: the benchmark mean can cancel (the paper's
    criterion), each category cannot."""
    labels, categories, x = _data(0)
    device = x.copy()
    device[(categories == "c0") & (labels == 1)] -= 0.3
    device[(categories == "c1") & (labels == 1)] += 0.3
    report = _judge(labels, categories, x, device, gate="category")
    by_cat = {c.category: c for c in report.categories}
    assert not by_cat["c0"].passed and not by_cat["c1"].passed and by_cat["c2"].passed, report.verdict()
    assert "c0" in report.verdict() and "c1" in report.verdict()


def test_each_part_of_the_verdict_is_in_the_report():
    """Raw drift with its interval, reordering drift, near-tie count and signed sum, resolvability and the rule that
    decided, for every category and the benchmark, in the terminal table and fidelity.json."""
    labels, categories, x = _data(1)
    host = 1000.0 + x
    device = host - (labels == 1) * 0.3
    report = _judge(labels, categories, host, device)
    assert not report.passed and report.decided_by == NEAR_TIE_SHIFT
    assert "a systematic shift hidden in near-ties" in report.verdict() and "excludes 0" in report.verdict()
    table = report.table()
    for column in ("near-tie sum", "spread ratio", "gate drift", "decided by"):
        assert column in table
    data = report.to_json()
    assert data["decided_by"] == NEAR_TIE_SHIFT and data["gate_drift"] == pytest.approx(report.gate_value)
    for c in data["categories"]:
        for key in ("drift", "ci", "reordering_gross", "near_ties", "near_tie_drift", "near_tie_ci", "spread_ratio",
                    "decided_by", "gate_drift", "resolution_ties"):
            assert key in c
    assert data["mean"]["near_tie_one_sided"] is True


# ------------------------------------------------- a second review's cases (each passed or broke the first version)


def _demo_like(rng, categories: int, per: int = 24):
    labels = np.tile(np.r_[np.zeros(per), np.ones(per)].astype(int), categories)
    cats = np.repeat(np.array([f"c{i}" for i in range(categories)]), 2 * per)
    return labels, cats, np.abs(0.2 + 0.08 * rng.normal(size=labels.size) + 0.06 * labels)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_small_decoy_category_cannot_hide_the_others_shift(seed):
    """Nine demo-like categories with every anomaly lowered within FP16's reach, and a 2 + 2 category whose two
    near-ties cancel with an enormous variance: the pooled test alone passed it (raw -3.2)."""
    rng = np.random.default_rng(seed)
    labels, cats, host = _demo_like(rng, 9)
    device = host - 0.011 * labels
    labels = np.r_[labels, [0, 0, 1, 1]]
    cats = np.r_[cats, ["decoy"] * 4]
    host = np.r_[host, [0.200, 0.300, 0.199, 0.301]]
    device = np.r_[device, [0.200, 0.300, 0.2005, 0.2995]]
    report = _judge(labels, cats, host, device)
    assert report.mean["drift"] < -2 and not report.passed, report.verdict()


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("offset", [20.0, 100.0, 1000.0])
def test_a_few_anomalies_moved_almost_a_standard_deviation_fail(k, offset):
    """k anomalies in the normals' bulk lowered by 0.99 robust sd, nothing else moving: within FP16's reach at an
    offset, and a population test over k images cannot reject (z ~ sqrt(k)); their moves are outliers of the
    device's own errors."""
    rng = np.random.default_rng(k)
    labels = np.r_[np.zeros(2000), np.ones(50)].astype(int)
    host = offset + rng.normal(size=labels.size) + labels
    anomalous = np.flatnonzero(labels == 1)
    chosen = anomalous[np.argsort(np.abs(host[anomalous] - (offset + 0.5)))[:k]]
    device = host.copy()
    device[chosen] -= 0.99 * np.subtract(*np.percentile(host, [75, 25])) / 1.349
    report = _judge(labels, np.full(labels.size, "part"), host, device)
    assert report.mean["drift"] < -0.2 and not report.passed, report.verdict()
    assert report.decided_by == REORDERINGS


@pytest.mark.parametrize("noise", [0.0, 6e-3])
def test_one_of_two_anomalies_dragged_down_fails(noise):
    """500 normals and 2 anomalies: moving one gives a near-tie z of 1 whatever its size (passed at -19 points)."""
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(500), np.ones(2)].astype(int)
    host = 100.0 + rng.normal(size=labels.size) + labels
    device = host + rng.uniform(-noise, noise, host.size)
    device[-1] -= 0.99 * np.subtract(*np.percentile(host, [75, 25])) / 1.349
    report = _judge(labels, np.full(labels.size, "part"), host, device)
    assert report.mean["drift"] < -1 and not report.passed, report.verdict()


@pytest.mark.parametrize("anomalies", [1, 2, 3, 5])
def test_honest_noise_passes_with_a_class_of_a_few_images(anomalies):
    """±6e-3 noise with 500 normals and 1-5 anomalies: the raw drift swings by up to ±3 points from noise alone;
    with one anomaly the near-ties cannot be tested, with a few their interval uses Student's t."""
    failed = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        labels = np.r_[np.zeros(500), np.ones(anomalies)].astype(int)
        host = 0.2 + 0.08 * rng.normal(size=labels.size) + 0.06 * labels
        report = _judge(labels, np.full(labels.size, "part"), host, host + rng.uniform(-6e-3, 6e-3, host.size))
        failed += not report.passed
    assert failed == 0


def test_a_category_with_one_anomaly_does_not_void_the_pooled_test():
    rng = np.random.default_rng(0)
    labels, cats, host = _demo_like(rng, 9)
    one = rng.normal(size=51) * 0.08 + 0.2
    labels, cats = np.r_[labels, np.zeros(50), [1]].astype(int), np.r_[cats, ["single"] * 51]
    host = np.r_[host, one]
    report = _judge(labels, cats, host, host + rng.uniform(-6e-3, 6e-3, host.size))
    assert report.passed and report.mean["near_tie_var"] is not None, report.verdict()


@pytest.mark.parametrize("origin", [0.0, 100.0])
def test_fp16_ties_do_not_depend_on_where_the_score_s_zero_is(origin):
    """host = raw - origin, device = fp16(raw) - origin: the device only ties pairs, it reverses none; a tie beyond
    FP16's reach at the centred scale counted as a real reordering in both directions (gate 0.54, raw -0.02)."""
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(250), np.ones(250)].astype(int)
    raw = 100.0 + 0.5 * rng.normal(size=500) + 0.4 * labels
    host, device = raw - origin, raw.astype(np.float16).astype(np.float64) - origin
    report = _judge(labels, np.full(500, "part"), host, device)
    assert report.mean["reorderings"] == 0 and report.mean["resolution_ties"] > 0
    assert report.gate_value == pytest.approx(abs(report.mean["drift"]), abs=1e-9)


@pytest.mark.parametrize("value", [2.0 ** 1023, 1.7976931348623157e308])
def test_the_largest_finite_scores_are_judged(value):
    labels, categories, x = _data(0)
    host = value * (0.5 + 0.1 * (x - x.min()) / (x.max() - x.min()))
    report = _judge(labels, categories, host, host.copy())
    assert report.passed and report.gate_value == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_a_decoy_category_cannot_drown_a_concentrated_loss_in_the_pooled_variance(seed):
    """Nine demo-like categories with honest-looking noise, in each the four anomalies with the most normals just below
    them lowered by eight robust sds of that noise, plus a 2 + 2 decoy with an enormous near-tie variance: the plain
    mean's variance (sum / C²) let the decoy pass 55-90% of such runs; inverse-variance pooling does not."""
    rng = np.random.default_rng(seed)
    labels, cats, host = _demo_like(rng, 9)
    device = host + rng.uniform(-2.2e-3, 2.2e-3, host.size)
    move = 8 * 1.4826 * 1.1e-3 * 0.97  # eight robust sds of the uniform noise (MAD 1.1e-3)
    for c in np.unique(cats):
        anomalous = np.flatnonzero((cats == c) & (labels == 1))
        normals = host[(cats == c) & (labels == 0)]
        crossed = [np.count_nonzero((normals < host[i]) & (normals > host[i] - move)) for i in anomalous]
        device[anomalous[np.argsort(crossed)[-4:]]] = host[anomalous[np.argsort(crossed)[-4:]]] - move
    labels = np.r_[labels, [0, 0, 1, 1]]
    cats = np.r_[cats, ["decoy"] * 4]
    host = np.r_[host, [0.200, 0.300, 0.199, 0.301]]
    device = np.r_[device, [0.200, 0.300, 0.2005, 0.2995]]
    report = _judge(labels, cats, host, device)
    assert report.mean["drift"] < -1 and not report.passed, report.verdict()
