"""Sorting-based building blocks shared by the image- and pixel-level metrics."""

from __future__ import annotations

import numpy as np


def distinct_runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index of each run of equal values in a sorted array, and the run lengths."""
    change = np.empty(sorted_values.size, dtype=bool)
    change[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=sorted_values.size)
    return starts, lengths


def mann_whitney_auroc(neg_sorted: np.ndarray, pos: np.ndarray) -> float:
    """AUROC as P(pos > neg) + P(pos == neg) / 2, counted exactly in integers.

    Only the positive scores are grouped; each distinct positive value looks up how many
    negatives lie strictly below it and how many are equal, in the sorted negatives. The
    result equals the trapezoidal ROC area over all distinct thresholds (what scikit-learn
    computes), because a threshold shared by both classes adds a diagonal segment, i.e. half
    credit for each tied pair.
    """
    pos_sorted = np.sort(pos)
    starts, counts = distinct_runs(pos_sorted)
    values = pos_sorted[starts]
    below = np.searchsorted(neg_sorted, values, side="left")
    below_or_equal = np.searchsorted(neg_sorted, values, side="right")
    # 2*U = sum over positives of (2*#neg_below + #neg_equal), an integer well inside int64.
    twice_u = int(np.dot(counts.astype(np.int64), (below + below_or_equal).astype(np.int64)))
    return twice_u / (2 * int(pos.size) * int(neg_sorted.size))
