"""Benchmark loaders: the on-disk layouts users already have, read into one sample list.

Every loader returns a :class:`Benchmark` whose ``samples`` are sorted by ``(category, rel_path)``;
``rel_path`` (posix, relative to the benchmark root) is the key used in score files.

Layouts (``<root>`` is the ``data_root`` argument or ``$EDGEDEPLOY_DATA_<NAME>``):

* ``mvtec``, ``mpdd``, ``dtd-synthetic`` (and the built-in ``demo``):
  ``<root>/<cat>/test/<defect>/NNN.png``, masks ``<root>/<cat>/ground_truth/<defect>/NNN_mask.png``
  (``NNN.png`` accepted too); ``good`` is normal. Categories are the subfolders holding a
  ``test/`` folder. ``split="train"`` reads ``<cat>/train/good`` (normal only).
* ``visa``: ``<root>/split_csv/1cls.csv`` with columns ``object,split,label,image,mask``;
  ``label`` is ``normal`` or ``anomaly``; ``image``/``mask`` are paths relative to ``<root>``
  (mask empty for normal rows). ``defect`` is ``"anomaly"`` for anomalous rows (the csv carries
  no defect type).
* ``btad``: ``<root>/<01|02|03>/test/{ok,ko}/*``, masks ``<root>/<cat>/ground_truth/ko/<stem>.bmp``
  or ``.png``; ``defect`` is ``"ko"``. ``split="train"`` reads ``<cat>/train/ok``.
* ``ksdd2``: ``<root>/test/N.png`` with ``N_GT.png`` for every image; the label is whether the
  mask has any nonzero pixel (so every mask is read once at load time). Single category ``ksdd2``;
  ``defect`` is ``"defect"``. ``split="train"`` reads ``<root>/train`` the same way.
* ``real-iad``: images ``<root>/<cat>/{OK,NG/<code>}/.../*.jpg``, masks beside them as ``.png``;
  splits in ``<root>/realiad_jsons/<cat>.json`` (also found in ``<root>/realiad_jsons/realiad_jsons/``,
  the folder name of the official archive, and in those folders next to ``<root>`` when ``<root>``
  is e.g. ``Real-IAD/realiad_512``). Categories are the json files found there.

  JSON format, checked against the public loaders that read the official files (anomalib's
  ``RealIADDataset`` and others): ``{"meta": {"prefix": ..., "normal_class": "OK", ...},
  "train": [...], "test": [...]}``; each entry is a dict with ``category``, ``anomaly_class``
  (``"OK"``, i.e. ``meta.normal_class``, for normal; a defect code such as ``"AK"`` otherwise),
  ``image_path`` and ``mask_path`` (``null`` for normal), both relative to ``<root>/<cat>/``.
  Assumptions beyond that (not verifiable without the data): a path that does not exist under
  ``<root>/<cat>/`` is also tried under ``<root>/``; an anomalous entry without ``mask_path``
  falls back to ``<stem>_mask.png`` or ``<stem>.png`` beside the image, else it is an error.
  ``defect`` is the ``anomaly_class`` code (``"good"`` for normal).

All user mistakes (no root, missing root, unknown bench/category/split, empty category, an
anomalous image without mask, a malformed split file) raise :class:`~edgedeploy.core.errors.DataError`
with a one-line message naming the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgedeploy.core.errors import DataError

__all__ = [
    "Sample",
    "Benchmark",
    "BENCHMARK_NAMES",
    "IMAGE_EXTENSIONS",
    "load_benchmark",
    "data_root_env_var",
]

BENCHMARK_NAMES: tuple[str, ...] = (
    "mvtec",
    "visa",
    "btad",
    "mpdd",
    "ksdd2",
    "dtd-synthetic",
    "real-iad",
    "demo",
)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

LAYOUT_HINT = {
    "mvtec": "MVTec-AD is expected laid out as <root>/<category>/test/<defect>/NNN.png",
    "mpdd": "MPDD is expected laid out as <root>/<category>/test/<defect>/NNN.png",
    "dtd-synthetic": "DTD-Synthetic is expected laid out as <root>/<category>/test/<defect>/NNN.png",
    "visa": "VisA is expected laid out as <root>/split_csv/1cls.csv and <root>/<object>/Data/Images/...",
    "btad": "BTAD is expected laid out as <root>/01|02|03/test/{ok,ko}/NNNN.bmp",
    "ksdd2": "KSDD2 is expected laid out as <root>/test/N.png with N_GT.png masks",
    "real-iad": "Real-IAD is expected laid out as <root>/<category>/{OK,NG}/... with <root>/realiad_jsons/<category>.json",
    "demo": "the demo benchmark is generated in MVTec-AD layout",
}

SPLITS = ("test", "train")


@dataclass(frozen=True)
class Sample:
    """One benchmark image."""

    path: Path  # absolute image path
    rel_path: str  # posix path relative to the benchmark root (the key in score files)
    category: str
    label: int  # 0 normal, 1 anomalous
    defect: str  # 'good' for normal, else the defect type / folder name
    mask_path: Path | None  # None for normal images


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: its name, absolute root, and samples sorted by (category, rel_path)."""

    name: str
    root: Path
    samples: tuple[Sample, ...]

    @property
    def categories(self) -> list[str]:
        return sorted({s.category for s in self.samples})

    def by_category(self) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {c: [] for c in self.categories}
        for s in self.samples:
            out[s.category].append(s)
        return out

    def __len__(self) -> int:
        return len(self.samples)


# --------------------------------------------------------------------------------------- helpers


def parse_categories(values: Iterable[str]) -> list[str] | None:
    """Category names from CLI values that may be repeated and/or comma-separated; None means all."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return names or None


def data_root_env_var(name: str) -> str:
    """``EDGEDEPLOY_DATA_<NAME>`` for a benchmark name (upper-cased, ``-`` -> ``_``)."""
    return "EDGEDEPLOY_DATA_" + name.upper().replace("-", "_")


def absolute(p: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p))))


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if _is_image(p))
    except OSError:
        return []


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def select_categories(
    bench: str, root: Path, available: Sequence[str], wanted: Sequence[str] | None
) -> list[str]:
    if isinstance(wanted, str):
        wanted = [wanted]
    if not available:
        raise DataError(
            f"no categories found for {bench} under {root}: {LAYOUT_HINT[bench]}; check --data-root"
        )
    if wanted is None:
        return list(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise DataError(
            f"unknown {bench} categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(repr(c) for c in unknown)} under {root}; available: {', '.join(available)}"
        )
    if not wanted:
        raise DataError(f"no {bench} categories selected; available under {root}: {', '.join(available)}")
    return list(dict.fromkeys(wanted))


def finish(name: str, root: Path, samples: Iterable[Sample], categories: Sequence[str]) -> Benchmark:
    ordered = tuple(sorted(samples, key=lambda s: (s.category, s.rel_path)))
    present = {s.category for s in ordered}
    for cat in categories:
        if cat not in present:
            raise DataError(f"{name} category {cat!r} has no images under {root / cat}; restore its files or leave it out")
    return Benchmark(name=name, root=root, samples=ordered)


def find_mask(gt_dir: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        for ext in IMAGE_EXTENSIONS:
            for e in (ext, ext.upper()):
                cand = gt_dir / f"{stem}{suffix}{e}"
                if cand.is_file():
                    return cand
    return None


def _train_normals(folder: Path, root: Path, cat: str, layout_hint: str) -> list[Sample]:
    """The normal training images in ``folder``, or a one-line error when it holds none."""
    imgs = _images_in(folder)
    if not imgs:
        raise DataError(f"no training images in {folder}; {layout_hint}")
    return [Sample(p, relative(p, root), cat, 0, "good", None) for p in imgs]


# --------------------------------------------------------------------------------- MVTec layout


def _load_mvtec_layout(name: str, root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    if (root / "test").is_dir() and not any((d / "test").is_dir() for d in _subdirs(root)):
        raise DataError(
            f"{root} looks like a single {name} category folder; pass its parent {root.parent} as the "
            f"data root ({LAYOUT_HINT[name]})"
        )
    available = [d.name for d in _subdirs(root) if (d / "test").is_dir()]
    cats = select_categories(name, root, available, categories)
    samples: list[Sample] = []
    for cat in cats:
        cat_dir = root / cat
        if split == "train":
            samples += _train_normals(cat_dir / "train" / "good", root, cat,
                                      f"{LAYOUT_HINT[name]} with normal images in <category>/train/good")
            continue
        for defect_dir in _subdirs(cat_dir / "test"):
            defect = defect_dir.name
            for img in _images_in(defect_dir):
                if defect == "good":
                    samples.append(Sample(img, relative(img, root), cat, 0, "good", None))
                    continue
                gt_dir = cat_dir / "ground_truth" / defect
                mask = find_mask(gt_dir, img.stem, ("_mask", ""))
                if mask is None:
                    raise DataError(
                        f"no mask for anomalous image {img}: expected {gt_dir / (img.stem + '_mask.png')}; "
                        "restore the mask or remove the image"
                    )
                samples.append(Sample(img, relative(img, root), cat, 1, defect, mask))
    return finish(name, root, samples, cats)


# ------------------------------------------------------------------------------------------ BTAD


def _load_btad(root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    available = [d.name for d in _subdirs(root) if (d / "test").is_dir()]
    cats = select_categories("btad", root, available, categories)
    samples: list[Sample] = []
    for cat in cats:
        cat_dir = root / cat
        if split == "train":
            samples += _train_normals(cat_dir / "train" / "ok", root, cat,
                                      "BTAD keeps normal training images in <root>/<category>/train/ok")
            continue
        for img in _images_in(cat_dir / "test" / "ok"):
            samples.append(Sample(img, relative(img, root), cat, 0, "good", None))
        gt_dir = cat_dir / "ground_truth" / "ko"
        for img in _images_in(cat_dir / "test" / "ko"):
            mask = find_mask(gt_dir, img.stem, ("", "_mask"))
            if mask is None:
                raise DataError(
                    f"no mask for anomalous image {img}: expected {gt_dir / (img.stem + '.png')} (or .bmp); "
                    "restore the mask or remove the image"
                )
            samples.append(Sample(img, relative(img, root), cat, 1, "ko", mask))
    return finish("btad", root, samples, cats)


# ----------------------------------------------------------------------------------------- KSDD2


def _load_ksdd2(root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    from edgedeploy.evaluation.data.preprocess import read_mask_array

    folder = root / split
    if not folder.is_dir():
        raise DataError(f"no {split} folder in {root}: {LAYOUT_HINT['ksdd2']}; check --data-root")
    cats = select_categories("ksdd2", root, ["ksdd2"], categories)
    samples: list[Sample] = []
    for img in _images_in(folder):
        if img.stem.endswith("_GT"):
            continue
        mask = find_mask(folder, img.stem, ("_GT",))
        if mask is None:
            raise DataError(
                f"no mask for image {img}: expected {folder / (img.stem + '_GT.png')} (KSDD2 has one for "
                "every image); restore it or remove the image"
            )
        if read_mask_array(mask).any():
            samples.append(Sample(img, relative(img, root), "ksdd2", 1, "defect", mask))
        else:
            samples.append(Sample(img, relative(img, root), "ksdd2", 0, "good", None))
    if not samples:
        raise DataError(f"no images in {folder}: {LAYOUT_HINT['ksdd2']}; check --data-root")
    return finish("ksdd2", root, samples, cats)


def normalise_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"mvtec-ad": "mvtec", "mvtecad": "mvtec", "realiad": "real-iad", "dtd": "dtd-synthetic",
               "dtdsynthetic": "dtd-synthetic", "ksdd": "ksdd2"}
    return aliases.get(key, key)


def load_benchmark(
    name: str,
    data_root: str | Path | None = None,
    categories: Sequence[str] | None = None,
    split: str = "test",
) -> Benchmark:
    """Load benchmark ``name`` (one of :data:`BENCHMARK_NAMES`) from ``data_root``.

    ``data_root`` None -> ``$EDGEDEPLOY_DATA_<NAME>``; for ``demo`` -> the demo cache, generated
    on first use. ``categories`` None -> all. ``split`` is ``"test"`` (default) or ``"train"``.
    """
    bench = normalise_name(name)
    if bench not in BENCHMARK_NAMES:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {bench}; use one of: {', '.join(SPLITS)}")

    if bench == "demo":
        from edgedeploy.evaluation.data.demo import ensure_demo

        root = ensure_demo(None if data_root is None else absolute(data_root))
        return _load_mvtec_layout("demo", absolute(root), categories, split)

    if data_root is None or str(data_root).strip() == "":
        env = data_root_env_var(bench)
        value = os.environ.get(env, "").strip()
        if not value:
            raise DataError(
                f"no data root for {bench}: pass --data-root or set {env} ({LAYOUT_HINT[bench]}); "
                "or try --bench demo, which needs no download"
            )
        data_root = value
    root = absolute(data_root)
    if not root.exists():
        raise DataError(f"data root for {bench} does not exist: {root}; pass --data-root with the extracted dataset ({LAYOUT_HINT[bench]})")
    if not root.is_dir():
        raise DataError(f"data root for {bench} is not a folder: {root}; pass the extracted dataset folder ({LAYOUT_HINT[bench]})")

    if bench in ("mvtec", "mpdd", "dtd-synthetic"):
        return _load_mvtec_layout(bench, root, categories, split)
    if bench == "btad":
        return _load_btad(root, categories, split)
    if bench == "ksdd2":
        return _load_ksdd2(root, categories, split)
    from edgedeploy.evaluation.data.splitfiles import load_realiad, load_visa

    if bench == "visa":
        return load_visa(root, categories, split)
    return load_realiad(root, categories, split)
