"""The overlays a person looks at: numpy + Pillow only, the maps' one post-processing, a fixed colour scale."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.runtime import overlay


@pytest.mark.parametrize("h, size, sigma", [(14, 224, 4.0), (32, 512, 4.0), (2, 32, 0.0), (3, 8, 4.0), (16, 16, 1.5)])
def test_map_at_input_size_is_the_shared_postprocessing(h, size, sigma):
    from edgedeploy.core.postprocess import postprocess_maps

    raw = np.random.default_rng(h).random((h, h)).astype(np.float32)
    ours = overlay.map_at_size(raw, size, sigma, size, size)
    assert ours.dtype == np.float32 and ours.shape == (size, size)
    np.testing.assert_allclose(ours, postprocess_maps(raw, size, sigma), atol=1e-6)


def test_map_at_the_image_size_is_the_postprocessed_map_resampled():
    from edgedeploy.core.postprocess import postprocess_maps

    raw = np.random.default_rng(0).random((1, 7, 7)).astype(np.float32)
    full = postprocess_maps(raw[0], 112, 4.0).astype(np.float64)
    ours = overlay.map_at_size(raw, 112, 4.0, 60, 150)  # a landscape image, squeezed to 112 x 112 for the model
    expected = overlay._bilinear(112, 60) @ full @ overlay._bilinear(112, 150).T
    assert ours.shape == (60, 150)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    flat = overlay.map_at_size(np.full((7, 7), 0.3, np.float32), 112, 4.0, 33, 47)
    np.testing.assert_allclose(flat, 0.3, atol=1e-6)  # a constant map stays constant (weights sum to 1)


def test_gaussian_reflects_like_scipy_even_beyond_a_short_axis():
    from scipy import ndimage

    x = np.random.default_rng(1).random(5)
    for sigma in (0.7, 4.0):  # radius 16 > 5 samples: the reflection repeats
        np.testing.assert_allclose(overlay._gaussian(5, sigma) @ x,
                                   ndimage.gaussian_filter1d(x, sigma, mode="reflect", truncate=4.0), atol=1e-12)


def test_the_colour_scale_is_fixed_not_per_image():
    image = Image.new("RGB", (8, 4), (128, 128, 128))
    low = np.asarray(overlay.blend(image, np.full((4, 8), 0.1, np.float32), (0.0, 1.0)))
    # the same value in an image whose other pixels are hotter keeps its colour
    mixed = np.full((4, 8), 0.1, np.float32)
    mixed[:, 4:] = 5.0
    both = np.asarray(overlay.blend(image, mixed, (0.0, 1.0)))
    assert (both[:, :4] == low[:, :4]).all()
    hot, cold = both[0, 7], np.asarray(overlay.blend(image, np.full((4, 8), -3.0, np.float32), (0.0, 1.0)))[0, 0]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # red above hi, blue below lo
    nan = np.asarray(overlay.blend(image, np.full((4, 8), np.nan, np.float32), (0.0, 1.0)))
    assert (nan == cold).all()  # NaN drawn as lo, never an exception


def test_display_image_decodes_like_the_model(tmp_path):
    gray16 = np.full((6, 9), 65535 // 2, np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    shown = np.asarray(overlay.display_image(tmp_path / "g16.png"))
    assert shown.shape == (6, 9, 3) and abs(int(shown[0, 0, 0]) - 128) <= 1  # full-scale 16 bit, not clipped at 255
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert tuple(np.asarray(overlay.display_image(tmp_path / "a.png"))[0, 0]) == (10, 20, 30)  # alpha dropped
    Image.new("L", (3, 3), 77).save(tmp_path / "l.bmp")
    assert tuple(np.asarray(overlay.display_image(tmp_path / "l.bmp"))[1, 1]) == (77, 77, 77)


def test_write_overlay_is_a_png_at_the_image_size_with_its_facts(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(tmp_path / "in.jpg")
    out = overlay.write_overlay(tmp_path / "deep" / "in.png", tmp_path / "in.jpg", np.eye(4, dtype=np.float32), 16, 1.0,
                                (0.0, 0.5), {"score": "0.25", "decision": "NG"})
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (50, 30) and im.mode == "RGB"
        assert im.text["edgedeploy:decision"] == "NG" and im.text["edgedeploy:map_range"] == "0.0,0.5"
    assert not list((tmp_path / "deep").glob(".*.tmp"))


def test_map_range_option_and_the_recorded_scale():
    assert overlay.parse_map_range("0,1") == (0.0, 1.0) and overlay.parse_map_range("-2:3.5") == (-2.0, 3.5)
    for bad in ("1", "a,b", "1,1", "2,1", "nan,1"):
        with pytest.raises(EdgeDeployError, match="--map-range"):
            overlay.parse_map_range(bad)
    rng = np.random.default_rng(0)
    normal = [rng.random((4, 4)).astype(np.float32) * 0.2 for _ in range(6)]
    bad = [m.copy() for m in normal[:3]]
    for m in bad:
        m[1:3, 1:3] = 0.9
    lo, hi = overlay.scale_from_maps(normal + bad, [0] * 6 + [1] * 3, 16, 0.0)
    assert 0.0 < lo < 0.2 < hi <= 0.9
    assert overlay.scale_from_maps([np.zeros((2, 2), np.float32)] * 2, [0, 1], 8, 0.0)[1] > 0.0  # never hi == lo


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (5, 1), (33, 20)])
def test_the_png_writer_round_trips_through_pillow(size, tmp_path):
    rgb = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    path = overlay.write_png(tmp_path / "x.png", Image.fromarray(rgb), {"path": "ünïcode/𝔵.png", "score": "0.5"})
    with Image.open(path) as im:
        im.load()
        assert np.array_equal(np.asarray(im), rgb) and im.text["edgedeploy:path"] == "ünïcode/𝔵.png"
