"""Input validation shared by the metric functions.

Every check raises :class:`MetricInputError` with a one-line message that names the metric and
says what is wrong with the input, so a caller can print it as is.
"""

from __future__ import annotations

import numpy as np

from edgedeploy.core.errors import EdgeDeployError


class MetricInputError(EdgeDeployError, ValueError):
    """Input a metric cannot be computed from (one class only, NaN scores, mismatched shapes...).

    It is a ``ValueError`` for library callers and an ``EdgeDeployError`` so the CLI reports it
    on one line without a traceback.
    """


def as_scores(values, what: str, name: str = "scores") -> np.ndarray:
    """Return ``values`` as a flat real array; reject empty, non-numeric or non-finite input."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MetricInputError(f"{what}: {name} must be real numbers, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise MetricInputError(f"{what}: got no {name}")
    check_finite(arr, what, name)
    return arr


def check_finite(arr: np.ndarray, what: str, name: str) -> None:
    # min/max propagate NaN and expose inf without allocating a boolean copy of a large array.
    if np.issubdtype(arr.dtype, np.floating) and not (
        np.isfinite(arr.min()) and np.isfinite(arr.max())
    ):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise MetricInputError(f"{what}: {name} contain NaN or inf ({bad} of {arr.size} values)")


def as_labels(labels, what: str) -> np.ndarray:
    """Return ``labels`` as a flat bool array (True = anomalous); only 0/1 or bool are accepted."""
    arr = np.asarray(labels).reshape(-1)
    if arr.size == 0:
        raise MetricInputError(f"{what}: got no labels")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise MetricInputError(f"{what}: labels must be 0/1, got dtype {arr.dtype}")
        bad = ~((arr == 0) | (arr == 1))
        if bad.any():
            examples = ", ".join(str(v) for v in np.unique(arr[bad])[:3])
            raise MetricInputError(
                f"{what}: labels must be 0 (normal) or 1 (anomalous), got {examples}"
            )
        arr = arr == 1
    return arr


def labels_and_scores(labels, scores, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a binary image-level problem: same length, finite scores, both classes present."""
    lab = as_labels(labels, what)
    sc = as_scores(scores, what)
    if lab.size != sc.size:
        raise MetricInputError(
            f"{what}: labels and scores differ in length ({lab.size} labels, {sc.size} scores)"
        )
    n_pos = int(np.count_nonzero(lab))
    n_neg = lab.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricInputError(
            f"{what} needs both normal and anomalous images; got {n_neg} normal, {n_pos} anomalous"
        )
    return lab, sc


def masks_and_maps(masks, maps, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate pixel-level input: equal shapes, finite maps. Images are stacked along axis 0.

    Maps keep their dtype (float32 stays float32), so large stacks are not copied to float64.
    A single (H, W) pair is treated as a stack of one image.
    """
    mk = np.asarray(masks)
    mp = np.asarray(maps)
    if mk.shape != mp.shape:
        raise MetricInputError(f"{what}: masks and maps differ in shape ({mk.shape} vs {mp.shape})")
    if mk.size == 0:
        raise MetricInputError(f"{what}: got no pixels")
    if mk.ndim == 2:
        mk, mp = mk[None], mp[None]
    elif mk.ndim != 3:
        raise MetricInputError(
            f"{what}: masks and maps must be (N, H, W) or (H, W), got {mk.shape}"
        )
    if mk.dtype != np.bool_:
        if not (np.issubdtype(mk.dtype, np.integer) or np.issubdtype(mk.dtype, np.floating)):
            raise MetricInputError(f"{what}: masks must be bool or 0/1, got dtype {mk.dtype}")
        mk = mk != 0
    if mp.dtype == np.bool_:
        mp = mp.astype(np.uint8)
    if not (np.issubdtype(mp.dtype, np.integer) or np.issubdtype(mp.dtype, np.floating)):
        raise MetricInputError(f"{what}: maps must be real numbers, got dtype {mp.dtype}")
    check_finite(mp, what, "maps")
    return mk, mp
