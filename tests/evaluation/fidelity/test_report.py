"""The drift report: per-category metrics, the verdict, and the files a person reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from edgedeploy.evaluation.data import load_benchmark
from edgedeploy.evaluation.fidelity.compare import compare
from edgedeploy.runtime.batch import ScoredBenchmark
from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable


def _scored(bench, scores, label="x"):
    rows = [ScoreRow(s.rel_path, s.category, s.label, float(v)) for s, v in zip(bench.samples, scores)]
    return ScoredBenchmark(label, ScoreTable({"runner": label}, rows))


@pytest.fixture
def bench(mvtec_root):
    return load_benchmark("mvtec", mvtec_root)


def _host(bench):
    rng = np.random.default_rng(1)
    labels = np.array([s.label for s in bench.samples])
    return labels, labels * 0.3 + rng.random(len(labels))


def test_identical_scores_pass_with_zero_drift(bench):
    _, host = _host(bench)
    report = compare(_scored(bench, host), _scored(bench, host.copy()), bench, max_drift=0.2)
    assert report.passed
    for c in report.categories:
        assert c.drift == 0 and c.spearman == pytest.approx(1) and c.kendall == pytest.approx(1)
        assert c.max_abs_diff == 0 and c.flips == 0 and c.movers == []
    assert report.verdict().startswith("PASS")


def test_metrics_match_reference_implementations(bench):
    labels, host = _host(bench)
    device = host + np.random.default_rng(2).normal(0, 0.05, host.size)
    report = compare(_scored(bench, host), _scored(bench, device), bench, max_drift=100)
    cats = np.array([s.category for s in bench.samples])
    for c in report.categories:
        sel = cats == c.category
        h_auc, d_auc = 100 * roc_auc_score(labels[sel], host[sel]), 100 * roc_auc_score(labels[sel], device[sel])
        assert c.host_auroc == pytest.approx(h_auc) and c.device_auroc == pytest.approx(d_auc)
        assert c.drift == pytest.approx(d_auc - h_auc)
        assert c.spearman == pytest.approx(stats.spearmanr(host[sel], device[sel]).statistic)
        assert c.kendall == pytest.approx(stats.kendalltau(host[sel], device[sel]).statistic)
        assert c.max_abs_diff == pytest.approx(np.max(np.abs(device[sel] - host[sel])))
        assert c.mean_abs_diff == pytest.approx(np.mean(np.abs(device[sel] - host[sel])))
        flips = np.count_nonzero((host[sel] >= c.threshold) != (device[sel] >= c.threshold))
        assert c.flips == flips
    assert report.mean["drift"] == pytest.approx(np.mean([c.drift for c in report.categories]))
    assert report.mean["n"] == len(bench)


def test_drift_beyond_budget_fails_and_names_the_category(bench):
    labels, host = _host(bench)
    device = host.copy()
    # the best normal screw image jumps to the top, the worst anomalous one to the bottom: screw AUROC drops
    screw = [i for i, s in enumerate(bench.samples) if s.category == "screw"]
    good = max((i for i in screw if labels[i] == 0), key=lambda i: host[i])
    bad = min((i for i in screw if labels[i] == 1), key=lambda i: host[i])
    device[good], device[bad] = host.max() + 1.0, host.min() - 1.0
    report = compare(_scored(bench, host), _scored(bench, device), bench, max_drift=0.2)
    assert not report.passed
    by_cat = {c.category: c for c in report.categories}
    assert by_cat["bottle"].passed and not by_cat["screw"].passed and by_cat["screw"].drift < -0.2
    assert "screw" in report.verdict() and "bottle" not in report.verdict()
    movers = {m.path for m in by_cat["screw"].movers}
    assert bench.samples[good].rel_path in movers and bench.samples[bad].rel_path in movers
    assert report.top_movers(1)[0].category == "screw"


def test_budget_is_inclusive(bench):
    labels, host = _host(bench)
    device = host.copy()
    report = compare(_scored(bench, host), _scored(bench, device), bench, max_drift=0.0)
    assert report.passed


def test_nonfinite_device_scores_fail_their_category(bench):
    _, host = _host(bench)
    device = host.copy()
    device[0] = np.inf
    report = compare(_scored(bench, host), _scored(bench, device), bench)
    first = report.categories[0]
    assert not first.passed and first.nonfinite == [bench.samples[0].rel_path] and first.device_auroc is None
    assert "NaN/inf" in report.verdict()
    json.dumps(report.to_json())  # inf is written as a string: still valid JSON
    assert report.to_json()["categories"][0]["max_abs_diff"] == "inf"


def test_renderings(bench):
    _, host = _host(bench)
    device = host + 1e-3 * np.arange(host.size)
    report = compare(_scored(bench, host, "host PyTorch FP32"), _scored(bench, device, "device emu"), bench,
                     target="jetson-orin-nano", info={"model": "seeded reference weights"}, notes=["scores mean nothing"])
    table = report.table()
    header = table.splitlines()[0]
    for col in ("category", "host AUROC", "device AUROC", "drift", "spearman", "kendall", "max|Δs|", "flips"):
        assert col in header
    assert any(line.startswith("mean") for line in table.splitlines())
    md = report.markdown({"ROC": "roc.png"})
    assert "# Fidelity: mvtec on jetson-orin-nano" in md and "![ROC](roc.png)" in md
    assert "max\\|Δs\\|" in md and "> scores mean nothing" in md
    data = report.to_json()
    assert data["passed"] == report.passed and len(data["categories"]) == 2
    assert {"host_auroc", "device_auroc", "drift", "spearman", "kendall", "flip_share", "movers"} <= set(data["categories"][0])


def test_plots_are_written(bench, tmp_path):
    from edgedeploy.evaluation.fidelity.plots import roc_curve, write_plots

    labels, host = _host(bench)
    plots = write_plots(tmp_path, bench, _scored(bench, host), _scored(bench, host * 1.01), {}, "test")
    for name in plots.values():
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    fpr, tpr = roc_curve(labels, host)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, host))
