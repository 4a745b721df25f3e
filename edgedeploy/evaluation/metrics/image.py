"""Image-level metrics: AUROC, average precision and the best F1 over thresholds."""

from __future__ import annotations

import numpy as np

from edgedeploy.evaluation.metrics._checks import labels_and_scores
from edgedeploy.evaluation.metrics._ranking import mann_whitney_auroc


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve; labels 1 = anomalous, higher score = more anomalous.

    Ties count exactly as in ``sklearn.metrics.roc_auc_score`` (half credit per tied
    normal/anomalous pair).
    """
    lab, sc = labels_and_scores(labels, scores, "image AUROC")
    return mann_whitney_auroc(np.sort(sc[~lab]), sc[lab])


def _threshold_counts(lab: np.ndarray, sc: np.ndarray):
    """Per distinct threshold, highest first: the threshold, true positives, predicted positives.

    A sample is predicted anomalous when its score is >= the threshold, so all samples tied at
    a threshold enter together.
    """
    order = np.argsort(sc)[::-1]
    sc_desc = sc[order]
    tp_cum = np.cumsum(lab[order], dtype=np.int64)
    last_of_run = np.flatnonzero(np.append(sc_desc[1:] != sc_desc[:-1], True))
    return sc_desc[last_of_run], tp_cum[last_of_run], last_of_run + 1


def image_ap(labels, scores) -> float:
    """Average precision, sum over thresholds of (recall step) x precision, without interpolation.

    Same definition as ``sklearn.metrics.average_precision_score``.
    """
    lab, sc = labels_and_scores(labels, scores, "image AP")
    _, tp, predicted = _threshold_counts(lab, sc)
    recall_steps = np.diff(tp, prepend=0)
    return float(np.sum(recall_steps * (tp / predicted)) / tp[-1])


def f1_max(labels, scores) -> tuple[float, float]:
    """Best F1 over all distinct thresholds, and the threshold reaching it.

    Anomalous means score >= threshold. When several thresholds reach the same best F1, the
    highest one is returned (fewest images flagged).
    """
    lab, sc = labels_and_scores(labels, scores, "F1-max")
    thresholds, tp, predicted = _threshold_counts(lab, sc)
    f1 = 2.0 * tp / (predicted + tp[-1])
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])
