"""Shared pre-processing: every source mode decodes to the same array for the same content."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgedeploy.evaluation.data import load_batch, load_image, load_mask
from edgedeploy.core.errors import DataError

RNG = np.random.default_rng(7)
GRAY = np.concatenate([np.arange(256, dtype=np.uint8), RNG.integers(0, 256, 40 * 40 - 256, dtype=np.uint8)])
GRAY = GRAY.reshape(40, 40)


def _save(im: Image.Image, path: Path) -> Path:
    im.save(path)
    return path


@pytest.fixture()
def gray_variants(tmp_path):
    """The same 40x40 gray content stored as L, RGB, RGBA, P, LA, 16-bit PNG and TIFF, 8-bit TIFF."""
    g = GRAY
    rgb = np.stack([g, g, g], -1)
    rgba = np.concatenate([rgb, RNG.integers(0, 256, (40, 40, 1), dtype=np.uint8)], -1)
    # an exact palette: index i -> gray (i, i, i)
    pal = Image.new("P", (40, 40))
    pal.putpalette([v for i in range(256) for v in (i, i, i)])
    pal.putdata(list(g.flatten()))
    g16 = g.astype(np.uint16) * 257
    out = {
        "L": _save(Image.fromarray(g), tmp_path / "l.png"),
        "RGB": _save(Image.fromarray(rgb), tmp_path / "rgb.png"),
        "RGBA": _save(Image.fromarray(rgba), tmp_path / "rgba.png"),
        "LA": _save(Image.fromarray(np.stack([g, 255 - g], -1)), tmp_path / "la.png"),
        "P": _save(pal, tmp_path / "p.png"),
        "I;16": _save(Image.fromarray(g16), tmp_path / "g16.png"),
        "I;16 tif": _save(Image.fromarray(g16), tmp_path / "g16.tif"),
        "BMP": _save(Image.fromarray(rgb), tmp_path / "rgb.bmp"),
    }
    return out


def test_modes_are_what_we_think(gray_variants):
    modes = {}
    for k, v in gray_variants.items():
        with Image.open(v) as im:
            modes[k] = im.mode
    assert modes["P"] == "P" and modes["RGBA"] == "RGBA" and modes["LA"] == "LA"
    assert modes["I;16"].startswith("I")  # I;16 on current Pillow, I on older ones


@pytest.mark.parametrize("size", [40, 64, 24])
def test_identical_content_identical_array(gray_variants, size):
    ref = load_image(gray_variants["L"], size)
    assert ref.shape == (3, size, size) and ref.dtype == np.float32
    assert ref.min() >= 0.0 and ref.max() <= 1.0
    for name, path in gray_variants.items():
        got = load_image(path, size)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, ref, err_msg=name)


def test_values_and_scaling(gray_variants):
    a = load_image(gray_variants["I;16"], 40)
    np.testing.assert_array_equal(a[0], (GRAY.astype(np.float64) / 255).astype(np.float32))
    assert a.max() == 1.0  # 65535 -> 1.0, not clipped at 255/65535


def test_rgb_channel_order(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[..., 0] = 255
    arr[..., 2] = 51
    x = load_image(_save(Image.fromarray(arr), tmp_path / "red.png"), 4)
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 0.0, 0.2], atol=1e-7)


def test_resize_bilinear_float(tmp_path):
    """Resized in float (no 8-bit rounding), with Pillow's bilinear filter."""
    arr = RNG.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    x = load_image(_save(Image.fromarray(arr), tmp_path / "x.png"), 16)
    ref = Image.fromarray((arr[..., 1].astype(np.float64) / 255).astype(np.float32)).resize((16, 16), Image.BILINEAR)
    np.testing.assert_array_equal(x[1], np.asarray(ref))
    # close to the 8-bit Pillow resize, but not rounded to it
    rgb8 = np.asarray(Image.fromarray(arr).resize((16, 16), Image.BILINEAR)).astype(np.float32) / 255
    assert np.abs(x.transpose(1, 2, 0) - rgb8).max() <= 1.0 / 255 + 1e-6


def test_batch(gray_variants):
    paths = [gray_variants["L"], gray_variants["RGB"]]
    b = load_batch(paths, 32)
    assert b.shape == (2, 3, 32, 32) and b.dtype == np.float32
    np.testing.assert_array_equal(b[0], b[1])
    assert load_batch([], 8).shape == (0, 3, 8, 8)


def test_corrupt_and_truncated(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(DataError) as e:
        load_image(junk, 8)
    msg = str(e.value)
    assert str(junk) in msg and "cannot decode image" in msg and "re-copy" in msg and "\n" not in msg

    good = tmp_path / "full.png"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError) as e:
        load_image(trunc, 8)
    assert str(trunc) in str(e.value)

    missing = tmp_path / "missing.png"
    with pytest.raises(DataError) as e:
        load_image(missing, 8)
    assert str(missing) in str(e.value)
    with pytest.raises(DataError) as e:
        load_mask(junk, 8)
    assert str(junk) in str(e.value)


def test_bad_size(gray_variants):
    with pytest.raises(ValueError):
        load_image(gray_variants["L"], 0)


def test_mask(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 10:20] = 255
    m[0, 0] = 1  # any nonzero counts
    p = _save(Image.fromarray(m), tmp_path / "m.png")
    full = load_mask(p, 20)
    assert full.dtype == bool and full.shape == (20, 20)
    same = load_mask(_save(Image.fromarray(np.zeros((8, 8), np.uint8)), tmp_path / "z.png"), 8)
    assert not same.any()
    exact = load_mask(_save(Image.fromarray(m[:, :20]), tmp_path / "sq.png"), 20)
    np.testing.assert_array_equal(exact, m[:, :20] > 0)
    # nearest: values stay binary, region scales
    up = load_mask(p, 60)
    assert up.sum() > 0 and set(np.unique(up)) <= {False, True}
    # RGB and 16-bit masks
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[1, 1, 2] = 200
    assert load_mask(_save(Image.fromarray(rgb), tmp_path / "rgb.png"), 8).sum() == 1
    g16 = np.zeros((8, 8), np.uint16)
    g16[2, 2] = 65535
    assert load_mask(_save(Image.fromarray(g16), tmp_path / "g16.png"), 8).sum() == 1


def test_no_torch_import():
    root = Path(__file__).resolve().parents[3] / "edgedeploy"
    for f in [*sorted((root / "evaluation" / "data").glob("*.py")), root / "core" / "postprocess.py"]:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{f} imports torch"
