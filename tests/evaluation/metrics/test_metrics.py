"""Metrics against scikit-learn and against a slow, loop-based AUPRO reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.metrics import (
    MetricInputError,
    aupro,
    evaluate_category,
    f1_max,
    image_ap,
    image_auroc,
    mean_over_categories,
    pixel_auroc,
    rank_correlations,
)

TIE_STYLES = ["integers", "one_decimal", "continuous"]


def _scores(rng, n, style, labels=None):
    if style == "integers":
        return rng.integers(0, 6, n)
    base = rng.random(n) + (0.3 * labels if labels is not None else 0.0)
    return np.round(base, 1) if style == "one_decimal" else base


def _image_problem(seed, n, style):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    return labels, _scores(rng, n, style, labels)


def _sklearn_f1_max(labels, scores):
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(f1.max())


def _f1_at(labels, scores, threshold):
    predicted = scores >= threshold
    tp = np.count_nonzero(predicted & (labels == 1))
    return 2 * tp / (np.count_nonzero(predicted) + np.count_nonzero(labels == 1))


PROBLEMS = [(seed, n, style) for seed in range(4) for n in (7, 60, 1000) for style in TIE_STYLES]


@pytest.mark.parametrize("seed,n,style", PROBLEMS)
def test_image_metrics_match_sklearn(seed, n, style):
    labels, scores = _image_problem(seed, n, style)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    expected_ap = average_precision_score(labels, scores)
    assert image_ap(labels, scores) == pytest.approx(expected_ap, abs=1e-9)
    f1, threshold = f1_max(labels, scores)
    assert f1 == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-9)
    assert _f1_at(labels, scores, threshold) == pytest.approx(f1, abs=1e-12)
    higher = np.unique(scores)[np.unique(scores) > threshold]
    assert all(_f1_at(labels, scores, t) < f1 - 1e-12 for t in higher)


def test_image_metrics_return_python_floats_and_accept_bool_labels():
    labels, scores = _image_problem(0, 40, "integers")
    flags = labels == 1
    values = [image_auroc(flags, scores), image_ap(flags, scores), *f1_max(labels, scores)]
    assert all(type(v) is float for v in values)
    assert values[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_image_metrics_on_perfect_and_inverted_scores():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert image_auroc(labels, scores) == 1.0
    assert image_auroc(labels, -scores) == 0.0
    assert image_auroc(labels, np.zeros(5)) == 0.5
    assert image_ap(labels, scores) == 1.0
    assert f1_max(labels, scores) == (1.0, 0.8)


def _pixel_problem(seed, n=3, h=9, w=11, style="one_decimal"):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(1, n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, h), rng.integers(0, w)
            r_end, c_end = r + rng.integers(1, 3), c + rng.integers(1, 4)
            masks[i, max(r - 1, 0) : r_end, max(c - 1, 0) : c_end] = True
    noise = rng.random(masks.shape)
    if style == "integers":
        maps = np.clip(np.round(3 * noise + 2 * masks), 0, 4).astype(np.int64)
    elif style == "one_decimal":
        maps = np.round(0.7 * noise + 0.4 * masks, 1)
    else:
        maps = (0.7 * noise + 0.4 * masks).astype(np.float32)
    return masks, maps


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("style", TIE_STYLES)
def test_pixel_auroc_matches_sklearn(seed, style):
    masks, maps = _pixel_problem(seed, style=style)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-9)


def test_pixel_auroc_leaves_inputs_untouched_and_takes_single_image():
    masks, maps = _pixel_problem(1, style="continuous")
    before = maps.copy()
    pixel_auroc(masks.astype(np.uint8), maps)
    np.testing.assert_array_equal(maps, before)
    assert pixel_auroc(masks[1], maps[1]) == pytest.approx(
        roc_auc_score(masks[1].ravel(), maps[1].ravel()), abs=1e-9
    )


def _reference_aupro(masks, maps, fpr_limit=0.3):
    """Plain transcription of the definition: every distinct threshold, regions per image."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, count + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for threshold in sorted(np.unique(maps), reverse=True):
        flagged = maps >= threshold
        fprs.append((flagged & normal).sum() / normal.sum())
        pros.append(np.mean([flagged[i][region].mean() for i, region in regions]))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_at) / 2
            break
    return area / fpr_limit


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("style", TIE_STYLES)
def test_aupro_matches_reference(seed, style):
    masks, maps = _pixel_problem(seed, n=4, h=12, w=10, style=style)
    assert aupro(masks, maps) == pytest.approx(_reference_aupro(masks, maps), abs=1e-6)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_reference_at_other_limits(fpr_limit):
    masks, maps = _pixel_problem(11, n=4, h=12, w=10, style="continuous")
    expected = _reference_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-6)


def test_aupro_regions_are_8_connected_within_an_image_only():
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True  # diagonal neighbours: one region
    masks[1, 1, 1] = True  # same place, next image: its own region
    maps = np.zeros((2, 6, 6))
    maps[0, 1, 1] = maps[1, 1, 1] = 1.0
    # At the top threshold no normal pixel is flagged and regions overlap 1/2 and 1, so PRO is
    # 3/4 from FPR 0 on; 4-connectivity or cross-image merging would give a different value.
    assert aupro(masks, maps) == pytest.approx(_reference_aupro(masks, maps), abs=1e-12)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.75 + 0.25 / 2, abs=1e-12)


def test_aupro_extremes():
    masks, maps = _pixel_problem(3, style="continuous")
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, (~masks).astype(np.float32)) == pytest.approx(0.0, abs=1e-12)


def test_evaluate_category_reports_points():
    labels, scores = _image_problem(2, 3, "continuous")
    masks, maps = _pixel_problem(2, n=3, style="one_decimal")
    result = evaluate_category(labels, scores, masks, maps)
    assert set(result) == {"image_auroc", "image_ap", "f1_max", "pixel_auroc", "aupro"}
    assert result["image_auroc"] == pytest.approx(100 * roc_auc_score(labels, scores))
    assert result["pixel_auroc"] == pytest.approx(100 * roc_auc_score(masks.ravel(), maps.ravel()))
    assert result["aupro"] == pytest.approx(100 * _reference_aupro(masks, maps))
    without_regions = evaluate_category(labels, scores, np.zeros_like(masks), maps)
    assert set(without_regions) == {"image_auroc", "image_ap", "f1_max"}
    assert set(evaluate_category(labels, scores)) == {"image_auroc", "image_ap", "f1_max"}


def test_mean_over_categories_skips_missing_metrics():
    per_category = {
        "bottle": {"image_auroc": 90.0, "pixel_auroc": 95.0},
        "cable": {"image_auroc": 80.0},
        "wood": {"image_auroc": 70.0, "pixel_auroc": 85.0},
    }
    assert mean_over_categories(per_category) == {"image_auroc": 80.0, "pixel_auroc": 90.0}


def test_rank_correlations_match_scipy():
    rng = np.random.default_rng(5)
    host = np.round(rng.random(200), 2)
    device = host + rng.normal(0, 0.05, 200)
    result = rank_correlations(host, device)
    assert result["spearman"] == pytest.approx(stats.spearmanr(host, device).statistic, abs=1e-12)
    assert result["kendall"] == pytest.approx(stats.kendalltau(host, device).statistic, abs=1e-12)
    same = rank_correlations(host, host)
    assert same == {"spearman": pytest.approx(1.0), "kendall": pytest.approx(1.0)}


IMAGE_METRICS = [image_auroc, image_ap, f1_max]


@pytest.mark.parametrize("metric", IMAGE_METRICS)
@pytest.mark.parametrize(
    "labels,scores,fragment",
    [
        ([0] * 12, list(range(12)), "got 12 normal, 0 anomalous"),
        ([1, 1], [0.2, 0.4], "got 0 normal, 2 anomalous"),
        ([0, 1, 1], [0.1, 0.2], "differ in length (3 labels, 2 scores)"),
        ([0, 1], [0.1, np.nan], "NaN or inf (1 of 2 values)"),
        ([0, 1], [np.inf, 0.3], "NaN or inf"),
        ([], [], "got no labels"),
        ([0, 2], [0.1, 0.2], "labels must be 0 (normal) or 1 (anomalous), got 2"),
        ([0, 1], ["a", "b"], "must be real numbers"),
    ],
)
def test_image_metrics_reject_degenerate_input(metric, labels, scores, fragment):
    with pytest.raises(ValueError) as caught:
        metric(np.array(labels), np.array(scores))
    message = str(caught.value)
    assert fragment in message and "\n" not in message
    assert isinstance(caught.value, EdgeDeployError)


def test_image_auroc_message_names_the_metric():
    expected = "^image AUROC needs both normal and anomalous images; got 12 normal, 0 anomalous$"
    with pytest.raises(MetricInputError, match=expected):
        image_auroc(np.zeros(12, dtype=int), np.arange(12.0))


@pytest.mark.parametrize("metric", [pixel_auroc, aupro])
def test_pixel_metrics_reject_degenerate_input(metric):
    masks, maps = _pixel_problem(0)
    with pytest.raises(ValueError, match="masks are empty"):
        metric(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="needs normal pixels"):
        metric(np.ones_like(masks), maps)
    with pytest.raises(ValueError, match="differ in shape"):
        metric(masks, maps[:, :-1])
    bad = maps.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        metric(masks, bad)
    with pytest.raises(ValueError, match="no pixels"):
        metric(np.zeros((0, 4, 4), bool), np.zeros((0, 4, 4)))


@pytest.mark.parametrize("limit", [0, -0.1, 1.5, float("nan"), "0.3x"])
def test_aupro_rejects_bad_fpr_limit(limit):
    masks, maps = _pixel_problem(0)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=limit)


def test_summary_functions_reject_degenerate_input():
    labels, scores = _image_problem(0, 10, "integers")
    masks, maps = _pixel_problem(0, n=10)
    with pytest.raises(ValueError, match="only masks given"):
        evaluate_category(labels, scores, masks=masks)
    with pytest.raises(ValueError, match="no categories"):
        mean_over_categories({})
    with pytest.raises(ValueError, match="differ in length"):
        rank_correlations([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="constant"):
        rank_correlations([1, 1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        rank_correlations([1.0], [2.0])
