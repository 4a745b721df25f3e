"""Anomaly-map post-processing shared by the host and the device paths (numpy + scipy only).

The device graph returns the anomaly map at the model's feature resolution (upsampling stays out
of the graph: some device backends reject ``Resize``); both paths then call
:func:`postprocess_maps` here, so host and device maps differ only by what the model computed.

* :func:`upsample_map` is bilinear interpolation with ``align_corners=False`` semantics, i.e. the
  same sampling as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
  without antialiasing: output pixel ``o`` samples source coordinate
  ``(o + 0.5) * in / out - 0.5``, clamped below at 0, between the two nearest source pixels
  (the upper one clamped at the border). It is implemented here as a separable gather + lerp in
  float64 (no BLAS, no scipy.ndimage.zoom, whose grid differs), so it is deterministic and agrees
  with torch (which computes the coordinates in float32) to within a few 1e-6. The result is float32.
* :func:`smooth_map` is ``scipy.ndimage.gaussian_filter`` per image (``mode="reflect"``,
  ``truncate=4.0``) computed in float64, returned as float32. ``sigma <= 0`` means no smoothing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["upsample_map", "smooth_map", "postprocess_maps"]


def _as_stack(anomaly_map: np.ndarray) -> tuple[np.ndarray, bool]:
    """(h,w) | (N,h,w) | (N,1,h,w) -> float64 (N,h,w), and whether the input was a single map."""
    m = np.asarray(anomaly_map)
    if m.ndim == 2:
        return m.astype(np.float64)[None], True
    if m.ndim == 3:
        return m.astype(np.float64), False
    if m.ndim == 4 and m.shape[1] == 1:
        return m[:, 0].astype(np.float64), False
    raise ValueError(
        f"anomaly map must have shape (h, w), (N, h, w) or (N, 1, h, w), got {tuple(m.shape)}"
    )


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and weight of i1 for bilinear align_corners=False resampling."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    lam[i0 == i1] = 0.0
    return i0, i1, lam


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return int(size)


def upsample_map(anomaly_map: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resample (align_corners=False) to ``size x size``.

    ``(h, w)`` -> float32 ``(size, size)``; ``(N, h, w)`` or ``(N, 1, h, w)`` -> ``(N, size, size)``.
    """
    size = _check_size(size)
    m, single = _as_stack(anomaly_map)
    _, h, w = m.shape
    if h == 0 or w == 0:
        raise ValueError(f"anomaly map is empty: shape {tuple(np.shape(anomaly_map))}")
    if (h, w) != (size, size):
        y0, y1, ly = _axis_weights(h, size)
        m = m[:, y0, :] * (1.0 - ly)[None, :, None] + m[:, y1, :] * ly[None, :, None]
        x0, x1, lx = _axis_weights(w, size)
        m = m[:, :, x0] * (1.0 - lx)[None, None, :] + m[:, :, x1] * lx[None, None, :]
    out = m.astype(np.float32)
    return out[0] if single else out


def smooth_map(m: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Gaussian smoothing per image; same shape convention as :func:`upsample_map` (float32)."""
    stack, single = _as_stack(m)
    if sigma is not None and float(sigma) > 0:
        stack = np.stack(
            [ndimage.gaussian_filter(x, sigma=float(sigma), mode="reflect", truncate=4.0) for x in stack]
        ) if len(stack) else stack
    out = stack.astype(np.float32)
    return out[0] if single else out


def postprocess_maps(maps: np.ndarray, size: int, sigma: float = 4.0) -> np.ndarray:
    """:func:`upsample_map` to ``size`` then :func:`smooth_map` with ``sigma``."""
    up = upsample_map(maps, size)
    return smooth_map(up, sigma=sigma)
