"""Image and mask loading shared by the host and the device paths.

One implementation, numpy + Pillow only (no torch), so that a Jetson that runs an engine with
TensorRT, numpy and Pillow feeds the model exactly the pixels the host did.

Conventions (the same for every source format):

* The result of :func:`load_image` is ``float32`` of shape ``(3, size, size)`` in ``[0, 1]``,
  channel order RGB. Normalisation (mean/std) is *not* applied here: the exported graph carries it.
* Decoding and colour handling, by Pillow mode:

  - ``1``, ``L``, ``LA``, ``La``: grayscale 8 bit, divided by 255, replicated to three channels;
  - ``I;16`` / ``I;16L`` / ``I;16B`` / ``I;16N``: grayscale 16 bit, divided by **65535** (not
    clipped to 255), replicated; ``I`` (32-bit integer, which is how some Pillow versions and
    formats hand out 16-bit samples) is also taken as 16-bit full scale: divided by 65535 and
    clipped to ``[0, 1]``;
  - ``F`` (32-bit float): taken as already in ``[0, 1]`` and clipped to it;
  - ``RGB``: divided by 255;
  - ``RGBA``, ``RGBa``, ``LA``, ``PA``: the alpha channel is **dropped** (not composited on any
    background): the stored colour values are used as they are. Inspection images carrying alpha
    are opaque in practice, and dropping it is what Pillow's own ``convert("RGB")`` does, so a
    tool that opens the file with Pillow sees the same colours;
  - ``P`` (palette): expanded through its palette to RGB (transparency ignored, as above);
  - anything else (``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...): Pillow's ``convert("RGB")``.

  So an 8-bit gray image, the same values stacked into RGB, the same gray as RGBA with any alpha,
  a palette image with those colours, and the 16-bit image holding ``v * 257`` all give the same
  array. EXIF orientation is not applied (benchmark images are stored upright). 16-bit RGB files
  are reduced to 8 bit by Pillow on decode.
* Resizing: after the conversion to float, each distinct channel is resized as a Pillow ``F``
  (float32) image with ``Image.BILINEAR`` to ``size x size``; one code path for every source mode,
  so no rounding to 8 bit happens in between. Pillow's bilinear filter widens its support when
  downscaling (antialiased, like ``torchvision`` ``antialias=True``). No resize when the image
  already is ``size x size``.
* Masks (:func:`load_mask`): nonzero in any colour channel = anomalous (alpha ignored, palette
  images looked up through the palette); resized with ``Image.NEAREST``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edgedeploy.core.errors import DataError

__all__ = ["load_image", "load_batch", "load_mask", "read_mask_array", "image_to_array"]

_GRAY8 = {"1", "L"}
_GRAY16 = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_GRAY = {"LA", "La"}
_ALPHA_RGB = {"RGBA", "RGBa", "RGBX"}


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return int(size)


def _open(path: str | Path, what: str) -> Image.Image:
    """Open and fully decode ``path``; any failure becomes a one-line :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{what} not found: {path}; check the benchmark root or remove the entry that names it"
        )
    im = None
    try:
        im = Image.open(path)
        im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        if im is not None:
            im.close()
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(
            f"cannot decode {what} {path}: {reason}; re-copy the file or remove it from the benchmark"
        ) from exc
    return im


def _planes(im: Image.Image) -> list[np.ndarray]:
    """The decoded image as 1 (gray) or 3 (RGB) float32 planes in [0, 1]."""
    mode = im.mode
    if mode in _ALPHA_GRAY:
        im = im.getchannel(0)
        mode = im.mode
    if mode == "1":
        im = im.convert("L")
        mode = "L"
    if mode in _GRAY8:
        return [(np.asarray(im, dtype=np.float64) / 255.0).astype(np.float32)]
    if mode in _GRAY16 or mode == "I":
        arr = np.asarray(im).astype(np.float64) / 65535.0
        return [np.clip(arr, 0.0, 1.0).astype(np.float32)]
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
        return [np.clip(arr, 0.0, 1.0).astype(np.float32)]
    if mode in _ALPHA_RGB:
        rgb = np.asarray(im)[..., :3]
    elif mode == "RGB":
        rgb = np.asarray(im)
    elif mode == "PA":
        rgb = np.asarray(im.convert("RGBA"))[..., :3]
    else:  # P, CMYK, YCbCr, LAB, HSV, ...
        rgb = np.asarray(im.convert("RGB"))
    rgb = rgb.astype(np.float64) / 255.0
    return [rgb[..., c].astype(np.float32) for c in range(3)]


def _resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    if plane.shape == (size, size):
        return plane
    im = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode F
    return np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32)


def image_to_array(im: Image.Image, size: int) -> np.ndarray:
    """An already decoded Pillow image -> float32 (3, size, size) in [0, 1] (see module doc)."""
    size = _check_size(size)
    planes = [_resize_plane(p, size) for p in _planes(im)]
    if len(planes) == 1:
        planes = planes * 3
    out = np.stack(planes, axis=0).astype(np.float32, copy=False)
    # bilinear interpolation of values in [0, 1] stays in [0, 1] up to float rounding
    np.clip(out, 0.0, 1.0, out=out)
    return np.ascontiguousarray(out)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` and return float32 ``(3, size, size)`` RGB in ``[0, 1]``.

    Raises :class:`DataError` naming the path when the file is missing, truncated or not an image.
    """
    size = _check_size(size)
    with _open(path, "image") as im:
        return image_to_array(im, size)


def load_batch(paths: Sequence[str | Path], size: int) -> np.ndarray:
    """:func:`load_image` over ``paths`` stacked into float32 ``(N, 3, size, size)``."""
    size = _check_size(size)
    out = np.empty((len(paths), 3, size, size), dtype=np.float32)
    for i, p in enumerate(paths):
        out[i] = load_image(p, size)
    return out


def _mask_bool(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in _ALPHA_GRAY:
        im, mode = im.getchannel(0), "L"
    if mode == "P":
        im, mode = im.convert("RGB"), "RGB"
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode not in _GRAY8 | _GRAY16 | _ALPHA_RGB | {"I", "F", "RGB"}:
        im, mode = im.convert("RGB"), "RGB"
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., :3]
        return np.any(arr != 0, axis=-1)
    return arr != 0


def read_mask_array(path: str | Path) -> np.ndarray:
    """The mask at ``path`` at its own resolution: bool (h, w), nonzero = anomalous."""
    with _open(path, "mask") as im:
        return _mask_bool(im)


def load_mask(path: str | Path, size: int) -> np.ndarray:
    """Decode the ground-truth mask at ``path``: bool ``(size, size)``, nonzero = anomalous.

    Resized with nearest-neighbour (Pillow ``Image.NEAREST``); raises :class:`DataError` naming
    the path when the file is missing or unreadable.
    """
    size = _check_size(size)
    m = read_mask_array(path)
    if m.shape == (size, size):
        return m
    im = Image.fromarray(m.astype(np.uint8) * 255)  # mode L
    return np.asarray(im.resize((size, size), Image.NEAREST)) > 0
