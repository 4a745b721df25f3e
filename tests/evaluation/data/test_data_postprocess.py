"""Shared anomaly-map post-processing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from edgedeploy.core.postprocess import postprocess_maps, smooth_map, upsample_map


def _reference_bilinear(m: np.ndarray, size: int) -> np.ndarray:
    """Per-pixel align_corners=False bilinear, written the slow obvious way."""
    h, w = m.shape
    out = np.zeros((size, size))
    for oy in range(size):
        sy = max((oy + 0.5) * h / size - 0.5, 0.0)
        y0 = min(int(sy), h - 1)
        y1 = min(y0 + 1, h - 1)
        ly = sy - y0 if y1 != y0 else 0.0
        for ox in range(size):
            sx = max((ox + 0.5) * w / size - 0.5, 0.0)
            x0 = min(int(sx), w - 1)
            x1 = min(x0 + 1, w - 1)
            lx = sx - x0 if x1 != x0 else 0.0
            top = m[y0, x0] * (1 - lx) + m[y0, x1] * lx
            bot = m[y1, x0] * (1 - lx) + m[y1, x1] * lx
            out[oy, ox] = top * (1 - ly) + bot * ly
    return out


def test_known_values():
    # torch.nn.functional.interpolate([[0, 1]], size=4, mode="linear", align_corners=False) = [0, .25, .75, 1]
    m = np.array([[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(upsample_map(m, 4)[0], [0.0, 0.25, 0.75, 1.0], atol=1e-7)
    np.testing.assert_allclose(upsample_map(m.T, 4)[:, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-7)


@pytest.mark.parametrize("shape,size", [((5, 7), 16), ((8, 8), 32), ((32, 32), 20), ((3, 3), 3)])
def test_matches_reference(shape, size):
    m = np.random.default_rng(0).random(shape)
    np.testing.assert_allclose(upsample_map(m, size), _reference_bilinear(m, size), rtol=0, atol=1e-6)


def test_shapes_and_dtype():
    rng = np.random.default_rng(1)
    m = rng.random((3, 1, 8, 8)).astype(np.float32)
    a = upsample_map(m, 32)
    b = upsample_map(m[:, 0], 32)
    c = np.stack([upsample_map(x[0], 32) for x in m])
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert upsample_map(m[0, 0], 32).shape == (32, 32)
    np.testing.assert_array_equal(upsample_map(np.full((4, 4), 0.3), 17), np.full((17, 17), 0.3, np.float32))
    with pytest.raises(ValueError):
        upsample_map(rng.random((2, 3, 4, 4)), 8)
    with pytest.raises(ValueError):
        upsample_map(rng.random(4), 8)


def test_deterministic():
    m = np.random.default_rng(2).random((4, 1, 32, 32)).astype(np.float32)
    a = postprocess_maps(m, 512)
    b = postprocess_maps(m.copy(), 512)
    assert a.tobytes() == b.tobytes()


def test_smooth():
    m = np.zeros((33, 33), np.float32)
    m[16, 16] = 1.0
    s = smooth_map(m, sigma=4.0)
    assert s.dtype == np.float32 and s.shape == (33, 33)
    np.testing.assert_allclose(s, ndimage.gaussian_filter(m.astype(np.float64), 4.0), atol=1e-7)
    assert s.argmax() == 16 * 33 + 16 and abs(float(s.sum()) - 1.0) < 1e-3
    batch = smooth_map(np.stack([m, 2 * m]), sigma=2.0)
    np.testing.assert_allclose(batch[1], 2 * batch[0], rtol=1e-6)
    np.testing.assert_array_equal(smooth_map(m, sigma=0), m)


def test_postprocess_is_upsample_then_smooth():
    m = np.random.default_rng(3).random((2, 1, 16, 16)).astype(np.float32)
    out = postprocess_maps(m, 64, sigma=4.0)
    assert out.shape == (2, 64, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(out, smooth_map(upsample_map(m, 64), 4.0))
