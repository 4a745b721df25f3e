"""The built-in ``demo`` benchmark: real texture photographs with synthetic defects, no download.

Source textures are the photographs shipped inside scikit-image (``skimage.data.brick()``,
``grass()``, ``gravel()``; 512x512 uint8 grayscale). For each category a fixed-seed
``numpy.random.default_rng`` draws every image: a random square crop (288..448 px), a random
quarter-turn rotation and mirror, bicubic resampling back to 512x512, a brightness gain/offset,
and a mild per-category colour tint (so images are 3-channel RGB). Defective images get one
synthetic defect each:

* ``crack``   a thin dark branching random-walk line,
* ``hole``    a dark irregular blob, darker towards its centre,
* ``scratch`` a thin bright or dark gently curved stroke,
* ``stain``   a translucent coloured irregular blob.

The ground-truth mask is exactly the set of pixels the defect changed (a pixel the paint happened
to leave at its old value is not marked). Defects are hard-edged, so masks are crisp.

Per category: ``test/good`` 24 images, 24 defective test images (6 of each defect type, numbered
per type from ``000``), ``ground_truth/<defect>/NNN_mask.png`` (0/255), and ``train/good`` 8 normal
images: MVTec-AD layout, 3 categories, 144 test images in all.

Why 24 x 24: image AUROC counts normal/anomalous pairs, so one pair that swaps order on the device
moves a category's AUROC by 100 / (normal x anomalous) points. At 24 x 24 that is 0.174 points,
finer than the default drift budget of 0.2; the first demo (10 x 10) moved 1 point per swapped
pair, so any single near-tie that FP16 rounding reversed failed the check. Scoring the 144 images
on the host and under FP16 emulation takes about 2.5 minutes on a 2-core machine.

Cache: ``$EDGEDEPLOY_CACHE/demo-v2``, else ``~/.cache/edgedeploy/demo-v2``. The tree is written
to a temporary sibling folder, its ``VERSION`` manifest (header line, then ``sha256 size path``
per file, sorted) written last, and the folder renamed into place in one step. A cached tree is
reused only when every file in its manifest is present with that size and hash; otherwise it is
regenerated. Output is byte-identical across runs (PNG written by Pillow with fixed parameters,
no metadata).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from edgedeploy.core.errors import DataError, ToolUnavailableError

__all__ = [
    "DEMO_VERSION",
    "DEMO_CATEGORIES",
    "demo_cache_dir",
    "ensure_demo",
    "generate_demo",
    "verify_demo",
    "render_category",
]

DEMO_VERSION = "demo-v2"
_MANIFEST = "VERSION"
_HEADER = "edgedeploy demo benchmark v2"
SIZE = 512
N_TEST_GOOD = 24
N_TRAIN_GOOD = 8
DEFECT_PLAN = ("crack", "hole", "scratch", "stain") * 6
_PNG_COMPRESS_LEVEL = 1

# name -> (skimage.data loader, seed, RGB tint)
DEMO_CATEGORIES: dict[str, tuple[str, int, tuple[float, float, float]]] = {
    "brick": ("brick", 1101, (1.04, 0.94, 0.86)),
    "grass": ("grass", 2202, (0.90, 1.04, 0.84)),
    "gravel": ("gravel", 3303, (0.98, 0.97, 0.95)),
}


def demo_cache_dir() -> Path:
    """Where the demo benchmark lives: ``$EDGEDEPLOY_CACHE/demo-v2`` or ``~/.cache/edgedeploy/demo-v2``."""
    from edgedeploy.core.resources import cache_root

    return cache_root() / DEMO_VERSION


# ------------------------------------------------------------------------------------ rendering


def _texture(loader: str) -> np.ndarray:
    try:
        from skimage import data as skdata
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ToolUnavailableError(
            "the demo benchmark needs scikit-image for its texture photographs: pip install scikit-image"
        ) from exc
    img = np.asarray(getattr(skdata, loader)())
    if img.ndim == 3:  # pragma: no cover - these textures are grayscale
        img = img[..., :3].mean(axis=-1).round().astype(np.uint8)
    return np.ascontiguousarray(img, dtype=np.uint8)


def _variant(texture: np.ndarray, rng: np.random.Generator, tint: np.ndarray) -> np.ndarray:
    """A crop / quarter turn / mirror / brightness / tint variant of ``texture``: uint8 (512, 512, 3)."""
    h, w = texture.shape
    side = int(rng.integers(288, min(h, w, 448) + 1))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    patch = np.rot90(texture[y0 : y0 + side, x0 : x0 + side], k=int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    im = Image.fromarray(np.ascontiguousarray(patch)).resize((SIZE, SIZE), Image.BICUBIC)
    gray = np.asarray(im, dtype=np.float64) / 255.0
    gray = gray * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    colour = tint * (1.0 + rng.uniform(-0.03, 0.03, size=3))
    rgb = gray[..., None] * colour[None, None, :]
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _blob(rng: np.random.Generator, r_lo: float, r_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """An irregular star-convex blob: its region and normalised radius (0 centre .. 1 edge)."""
    r0 = rng.uniform(r_lo, r_hi)
    cy, cx = rng.uniform(r_hi * 1.5 + 8, SIZE - r_hi * 1.5 - 8, size=2)
    amps = rng.uniform(0.0, 0.18, size=3)
    phases = rng.uniform(0.0, 2 * np.pi, size=3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    theta = np.arctan2(dy, dx)
    radius = r0 * (1.0 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(zip(amps, phases))))
    rel = np.hypot(dy, dx) / radius
    return rel <= 1.0, rel


def _stroke(points: np.ndarray, radius: float) -> np.ndarray:
    """Region within ``radius`` px of a densely sampled polyline (points (K, 2) as y, x)."""
    from scipy import ndimage  # lazy: importing edgedeploy.evaluation.data must not need scipy

    seed = np.zeros((SIZE, SIZE), dtype=bool)
    pts = np.clip(np.round(points).astype(np.int64), 0, SIZE - 1)
    seed[pts[:, 0], pts[:, 1]] = True
    return ndimage.distance_transform_edt(~seed) <= radius


def _densify(vertices: np.ndarray) -> np.ndarray:
    out = [vertices[:1]]
    for a, b in zip(vertices[:-1], vertices[1:]):
        n = max(2, int(np.ceil(np.hypot(*(b - a)) * 2)))
        t = np.linspace(0.0, 1.0, n)[1:, None]
        out.append(a + (b - a) * t)
    return np.concatenate(out, axis=0)


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    length = rng.uniform(110, 240)
    angle = rng.uniform(0, np.pi)
    d = np.array([np.sin(angle), np.cos(angle)])
    centre = rng.uniform(120, SIZE - 120, size=2)
    p0, p1 = centre - d * length / 2, centre + d * length / 2
    ctrl = centre + np.array([-d[1], d[0]]) * rng.uniform(-30, 30)
    t = np.linspace(0.0, 1.0, int(length * 3))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t**2 * p1
    region = _stroke(pts, rng.uniform(1.0, 2.2))
    level = rng.uniform(232, 250) if rng.random() < 0.5 else rng.uniform(8, 24)
    noise = rng.normal(0.0, 4.0, size=int(region.sum()))
    out = img.copy()
    out[region] = np.clip(np.round(level + noise), 0, 255).astype(np.uint8)[:, None]
    return out, region


def _crack(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    def walk(start: np.ndarray, heading: float, steps: int) -> np.ndarray:
        verts = [start]
        for _ in range(steps):
            heading += rng.normal(0.0, 0.35)
            nxt = verts[-1] + 3.0 * np.array([np.sin(heading), np.cos(heading)])
            verts.append(np.clip(nxt, 4, SIZE - 5))
        return np.array(verts)

    trunk = walk(rng.uniform(140, SIZE - 140, size=2), rng.uniform(0, 2 * np.pi), int(rng.integers(45, 80)))
    lines = [trunk]
    for _ in range(int(rng.integers(1, 3))):
        at = trunk[int(rng.integers(len(trunk) // 4, len(trunk) - 1))]
        lines.append(walk(at, rng.uniform(0, 2 * np.pi), int(rng.integers(12, 30))))
    pts = np.concatenate([_densify(v) for v in lines], axis=0)
    region = _stroke(pts, rng.uniform(0.8, 1.5))
    out = img.copy()
    out[region] = np.round(img[region].astype(np.float64) * 0.22).astype(np.uint8)
    return out, region


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    region, rel = _blob(rng, 12, 30)
    base = 10.0 + 30.0 * rel[region] + rng.normal(0.0, 3.0, size=int(region.sum()))
    out = img.copy()
    out[region] = np.clip(np.round(base), 0, 255).astype(np.uint8)[:, None]
    return out, region


_STAIN_COLOURS = np.array([[150, 90, 40], [60, 80, 150], [170, 160, 40], [120, 40, 90]], dtype=np.float64)


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    region, _ = _blob(rng, 22, 48)
    colour = _STAIN_COLOURS[int(rng.integers(0, len(_STAIN_COLOURS)))]
    alpha = rng.uniform(0.5, 0.7)
    out = img.copy()
    mixed = img[region].astype(np.float64) * (1 - alpha) + colour[None, :] * alpha
    out[region] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return out, region


_DEFECTS = {"crack": _crack, "hole": _hole, "scratch": _scratch, "stain": _stain}


def render_category(name: str) -> dict[str, list]:
    """Render one demo category in memory.

    Returns ``{"train": [img, ...], "good": [img, ...], "defects": [(defect, clean, img, mask), ...]}``
    with uint8 (512, 512, 3) images and bool (512, 512) masks; ``mask == (img != clean).any(-1)``.
    """
    loader, seed, tint = DEMO_CATEGORIES[name]
    texture = _texture(loader)
    rng = np.random.default_rng(seed)
    tint_arr = np.asarray(tint, dtype=np.float64)
    train = [_variant(texture, rng, tint_arr) for _ in range(N_TRAIN_GOOD)]
    good = [_variant(texture, rng, tint_arr) for _ in range(N_TEST_GOOD)]
    defects = []
    for defect in DEFECT_PLAN:
        clean = _variant(texture, rng, tint_arr)
        img, _region = _DEFECTS[defect](clean, rng)
        mask = np.any(img != clean, axis=-1)
        defects.append((defect, clean, img, mask))
    return {"train": train, "good": good, "defects": defects}


# ---------------------------------------------------------------------------------------- files


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", compress_level=_PNG_COMPRESS_LEVEL, optimize=False)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def generate_demo(out_dir: str | Path) -> Path:
    """Write the demo tree into ``out_dir`` (created; should be empty), ``VERSION`` last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for cat in sorted(DEMO_CATEGORIES):
        parts = render_category(cat)
        for i, img in enumerate(parts["train"]):
            files.append(out / cat / "train" / "good" / f"{i:03d}.png")
            _save_png(img, files[-1])
        for i, img in enumerate(parts["good"]):
            files.append(out / cat / "test" / "good" / f"{i:03d}.png")
            _save_png(img, files[-1])
        counters: dict[str, int] = {}
        for defect, _clean, img, mask in parts["defects"]:
            n = counters.get(defect, 0)
            counters[defect] = n + 1
            files.append(out / cat / "test" / defect / f"{n:03d}.png")
            _save_png(img, files[-1])
            files.append(out / cat / "ground_truth" / defect / f"{n:03d}_mask.png")
            _save_png(mask.astype(np.uint8) * 255, files[-1])
    lines = [_HEADER]
    for f in sorted(files, key=lambda p: p.relative_to(out).as_posix()):
        lines.append(f"{_sha256(f)} {f.stat().st_size} {f.relative_to(out).as_posix()}")
    tmp = out / (_MANIFEST + ".partial")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out / _MANIFEST)
    return out


def verify_demo(path: str | Path) -> bool:
    """True when ``path`` holds a complete demo tree: every manifest entry present, same size and hash."""
    root = Path(path)
    try:
        lines = (root / _MANIFEST).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    if not lines or lines[0] != _HEADER or len(lines) < 2:
        return False
    for line in lines[1:]:
        parts = line.split(" ", 2)
        if len(parts) != 3:
            return False
        digest, size, rel = parts
        f = root / rel
        try:
            if not f.is_file() or f.stat().st_size != int(size) or _sha256(f) != digest:
                return False
        except (OSError, ValueError):
            return False
    return True


def _looks_like_demo(path: Path) -> bool:
    """An (incomplete) earlier demo tree we may replace: empty, or only demo categories/manifest."""
    allowed = set(DEMO_CATEGORIES) | {_MANIFEST, _MANIFEST + ".partial"}
    try:
        return all(p.name in allowed for p in path.iterdir())
    except OSError:
        return False


def ensure_demo(path: str | Path | None = None) -> Path:
    """Return a complete demo tree at ``path`` (default :func:`demo_cache_dir`), generating it if needed."""
    target = Path(os.path.abspath(Path(path).expanduser())) if path is not None else demo_cache_dir()
    if verify_demo(target):
        return target
    if target.exists() and not target.is_dir():
        raise DataError(f"demo benchmark path {target} is a file; remove it or pass another --data-root")
    if target.exists() and not _looks_like_demo(target):
        raise DataError(
            f"{target} exists and is not a complete demo benchmark; remove it, or pass an empty or new "
            "folder as --data-root (or none, to use the cache)"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise DataError(
            f"cannot write the demo benchmark to {target.parent}: {' '.join(str(exc).split())}; "
            "set EDGEDEPLOY_CACHE to a writable folder"
        ) from exc
    try:
        generate_demo(tmp)
        os.chmod(tmp, 0o755)
        if target.exists():
            if verify_demo(target):  # another process finished first
                return target
            stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if verify_demo(target):  # lost a race to another process: use its copy
                return target
            raise
    except OSError as exc:
        raise DataError(
            f"cannot write the demo benchmark to {target}: {' '.join(str(exc).split())}; "
            "set EDGEDEPLOY_CACHE to a writable folder"
        ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
