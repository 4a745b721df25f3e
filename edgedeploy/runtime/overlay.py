"""Anomaly maps a person can look at: the map laid over the image, at the image's size, as a PNG.

numpy and Pillow only (no matplotlib, no scipy): the device writes these.

* **The map at the image's size.** The raw map (the model's ``h x w`` output) goes through the same
  post-processing as every other path (``edgedeploy.core.postprocess.postprocess_maps``: bilinear upsampling with
  ``align_corners=False`` to the model's input size ``S``, then a Gaussian of the card's ``smooth_sigma`` with
  scipy's ``mode="reflect"`` and ``truncate=4``), then a bilinear resize (same sampling) from ``S x S`` to the
  image's ``H x W``. All three steps are linear and separable, so each axis is one small matrix and the whole chain
  is ``A_y @ map @ A_x.T`` (``H x h`` by ``h x w`` by ``w x W``), built once per size and cached: a few
  milliseconds even for a megapixel image, and equal to ``postprocess_maps`` to float rounding (tested against it).
  The model saw the image squeezed to ``S x S``; the map is stretched back the same way, so it lies over the part.
* **A fixed colour scale** ``[lo, hi]``: a map value ``lo`` (or below) is the coldest colour, ``hi`` (or above) the
  hottest, the same for every image, so two overlays compare. It comes from ``--map-range``, else the bundle's
  decision record (``map_range``: the host's maps of the calibration images, normal median to the anomalous 99.5th
  percentile), else ``[0, 1]`` (the EdgeZSAD map is a probability).
* **Colours**: the "jet" colour map (dark blue, cyan, yellow, red), blended over the image with an opacity that
  grows with the value (``ALPHA_MIN`` at ``lo`` to ``ALPHA_MAX`` at ``hi``), so normal regions stay readable and
  hot regions stand out.
* The PNG carries its score, decision, threshold and colour scale as text chunks (``edgedeploy:*``). It is
  encoded here (PNG's Sub row filter in numpy, zlib's run-length strategy at level 1): about 3x faster than
  Pillow's encoder at level 1 (whose adaptive filtering is most of its time), for a file of the same size.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import atomic_path

DEFAULT_RANGE = (0.0, 1.0)
ALPHA_MIN, ALPHA_MAX = 0.25, 0.7
TRUNCATE = 4.0          # scipy.ndimage.gaussian_filter's default, as edgedeploy.core.postprocess uses it
PNG_COMPRESS_LEVEL = 1  # zlib level (with Z_RLE on Sub-filtered rows): fast to write on a device
SCALE_GRID = 64         # maps are sampled on a 64 x 64 grid to choose a colour scale (scale_from_maps)

# matplotlib's "jet" segment data (x, value) per channel, written out so that no matplotlib is needed
_JET = {"r": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
        "g": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
        "b": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0))}


def _lut() -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.interp(x, *zip(*_JET[c])) for c in "rgb"], axis=1)
    colours = np.round(rgb * 255.0).astype(np.uint8)
    alpha = np.round((ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * x) * 255.0).astype(np.uint8)  # of 255
    return colours, alpha


COLOURS, ALPHA = _lut()
_POINT = [COLOURS[:, c].tolist() for c in range(3)] + [ALPHA.tolist()]  # Pillow point() tables: r, g, b, opacity


# ------------------------------------------------------------------------------------------- the map's operator


def _bilinear(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): bilinear resampling with align_corners=False (edgedeploy.core.postprocess's sampling)."""
    m = np.zeros((n_out, n_in))
    if n_in == n_out:
        np.fill_diagonal(m, 1.0)
        return m
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.where(i0 == i1, 0.0, src - i0)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
    return m


def _gaussian(n: int, sigma: float) -> np.ndarray:
    """(n, n): scipy.ndimage.gaussian_filter1d(mode="reflect", truncate=4) as a matrix (identity for sigma <= 0)."""
    if sigma is None or float(sigma) <= 0:
        return np.eye(n)
    sd = float(sigma)
    radius = int(TRUNCATE * sd + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sd * sd) * offsets.astype(np.float64) ** 2)
    weights /= weights.sum()
    index = np.arange(n)[:, None] + offsets[None, :]      # the samples each output reads
    index = np.mod(index, 2 * n)                           # "reflect": d c b a | a b c d | d c b a
    index = np.where(index >= n, 2 * n - 1 - index, index)
    m = np.zeros((n, n))
    np.add.at(m, (np.repeat(np.arange(n), len(offsets)), index.ravel()), np.tile(weights, n))
    return m


@lru_cache(maxsize=64)
def axis_operator(n_map: int, size: int, sigma: float, n_out: int) -> np.ndarray:
    """(n_out, n_map) float32: upsample n_map -> size, smooth with sigma at size, resample size -> n_out."""
    op = _bilinear(size, n_out) @ _gaussian(size, sigma) @ _bilinear(n_map, size)
    return np.ascontiguousarray(op, dtype=np.float32)


def map_at_size(raw: np.ndarray, input_size: int, sigma: float, height: int, width: int) -> np.ndarray:
    """A raw anomaly map ((h, w) or (1, h, w)) post-processed as ``postprocess_maps(raw, input_size, sigma)`` does,
    then resampled to ``height x width``: float32 (height, width)."""
    m = np.asarray(raw, dtype=np.float32)
    m = m.reshape(m.shape[-2], m.shape[-1])
    ay = axis_operator(m.shape[0], int(input_size), float(sigma), int(height))
    ax = axis_operator(m.shape[1], int(input_size), float(sigma), int(width))
    return (ay @ m) @ ax.T


# ------------------------------------------------------------------------------------------- colour scale


def parse_map_range(text: str) -> tuple[float, float]:
    """``--map-range LO,HI`` -> (lo, hi), hi > lo."""
    try:
        lo, hi = (float(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        raise EdgeDeployError(f"--map-range {text!r}: give two numbers LO,HI (the map values drawn coldest and "
                              "hottest), e.g. 0,1") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise EdgeDeployError(f"--map-range {text!r}: HI must be above LO, both finite")
    return lo, hi


def scale_from_maps(maps: Sequence[np.ndarray], labels: Sequence[int] | None, input_size: int,
                    sigma: float) -> tuple[float, float] | None:
    """A fixed colour scale from a set of raw maps (the host's, on labelled images): ``lo`` the median pixel of the
    normal images (typical background is the coldest colour), ``hi`` the 99.5th percentile pixel of the anomalous
    ones (a typical defect is the hottest); without labels, the 50th and 99.9th percentiles of all pixels. Maps are
    post-processed at ``input_size`` and sampled on a ``SCALE_GRID`` grid. None when there are no finite values."""
    if not maps:
        return None
    grid = [map_at_size(m, input_size, sigma, SCALE_GRID, SCALE_GRID).ravel() for m in maps]
    values = np.stack(grid)
    finite = np.isfinite(values)
    labels_arr = np.asarray(labels) if labels is not None else None
    normal = values[labels_arr == 0][finite[labels_arr == 0]] if labels_arr is not None else np.empty(0)
    bad = values[labels_arr == 1][finite[labels_arr == 1]] if labels_arr is not None else np.empty(0)
    pooled = values[finite]
    if not pooled.size:
        return None
    lo = float(np.percentile(normal if normal.size else pooled, 50.0))
    hi = float(np.percentile(bad, 99.5)) if bad.size else float(np.percentile(pooled, 99.9))
    if not hi > lo:
        hi = float(pooled.max())
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    return lo, hi


# ------------------------------------------------------------------------------------------- drawing


def display_image(path: str | Path) -> Image.Image:
    """The image at ``path`` as an RGB Pillow image for display, decoded as the model's pre-processing decodes it
    (16-bit gray at full scale, alpha dropped, palette expanded; ``edgedeploy.evaluation.data.preprocess``)."""
    from edgedeploy.evaluation.data.preprocess import _open, _planes

    with _open(path, "image") as im:
        if im.mode == "RGB":
            return im.copy()
        if im.mode == "L":
            return im.convert("RGB")
        planes = _planes(im)
    rgb = np.stack(planes * 3 if len(planes) == 1 else planes, axis=2)
    return Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")


def colour_index(heat: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """uint8 (H, W): the colour-scale position of each map value, ``lo`` -> 0, ``hi`` -> 255 (clipped; NaN -> 0)."""
    lo, hi = scale
    v = np.asarray(heat, dtype=np.float32)
    index = (v - np.float32(lo)) * np.float32(255.0 / (hi - lo)) + np.float32(0.5)
    np.clip(index, 0, 255, out=index)
    index[np.isnan(index)] = 0
    return index.astype(np.uint8)


def blend(image: Image.Image, heat: np.ndarray, scale: tuple[float, float]) -> Image.Image:
    """``heat`` (H, W) coloured on the fixed ``scale`` and laid over the RGB ``image`` of the same size (Pillow's
    lookup and composite, in C)."""
    index = Image.fromarray(colour_index(heat, scale), "L")
    colours = Image.merge("RGB", [index.point(_POINT[c]) for c in range(3)])
    return Image.composite(colours, image, index.point(_POINT[3]))


def render(image_path: str | Path, raw_map: np.ndarray, input_size: int, sigma: float,
           scale: tuple[float, float]) -> Image.Image:
    """The overlay of ``raw_map`` on the image at ``image_path``, at the image's size (an RGB Pillow image)."""
    image = display_image(image_path)
    heat = map_at_size(raw_map, input_size, sigma, image.height, image.width)
    return blend(image, heat, scale)


def png_bytes(image: Image.Image, text: Mapping[str, str] | None = None) -> bytes:
    """An RGB image as PNG bytes, with ``text`` as UTF-8 ``iTXt`` chunks. Written here rather than by Pillow's
    encoder, whose adaptive row filtering is most of its time: every row gets PNG's Sub filter (the byte left of each
    byte subtracted, in numpy) and zlib's run-length strategy at level 1, about 3x faster than Pillow at level 1 for
    a file of the same size. Any PNG reader decodes it (tested with Pillow)."""
    import struct
    import zlib

    rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
    h, w = rgb.shape[:2]
    rows = rgb.reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = 1                                              # filter type 1: Sub
    raw[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=raw[:, 4:])     # modulo 256, as the filter is defined
    deflate = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = deflate.compress(raw.tobytes()) + deflate.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    for key, value in (text or {}).items():  # iTXt: keyword, no compression, no language, UTF-8 text
        out.append(chunk(b"iTXt", key.encode("latin-1")[:79] + b"\0\0\0\0\0" + str(value).encode("utf-8")))
    out += [chunk(b"IDAT", data), chunk(b"IEND", b"")]
    return b"".join(out)


def write_png(path: str | Path, image: Image.Image, text: Mapping[str, str] | None = None) -> Path:
    """``image`` as a PNG at ``path``, atomically, with ``text`` as ``edgedeploy:KEY`` text chunks."""
    path = Path(path)
    data = png_bytes(image, {f"edgedeploy:{key}": value for key, value in (text or {}).items()})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_overlay(out_path: str | Path, image_path: str | Path, raw_map: np.ndarray, input_size: int, sigma: float,
                  scale: tuple[float, float], text: Mapping[str, str] | None = None) -> Path:
    """Render and write one overlay PNG; ``text`` (score, decision, ...) goes into its text chunks."""
    meta = {"map_range": f"{scale[0]!r},{scale[1]!r}", "source": str(image_path), **(text or {})}
    return write_png(out_path, render(image_path, raw_map, input_size, sigma, scale), meta)
