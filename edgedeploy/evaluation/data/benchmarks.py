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

import csv
import json
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
    "read_visa_split",
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

_LAYOUT_HINT = {
    "mvtec": "MVTec-AD is expected laid out as <root>/<category>/test/<defect>/NNN.png",
    "mpdd": "MPDD is expected laid out as <root>/<category>/test/<defect>/NNN.png",
    "dtd-synthetic": "DTD-Synthetic is expected laid out as <root>/<category>/test/<defect>/NNN.png",
    "visa": "VisA is expected laid out as <root>/split_csv/1cls.csv and <root>/<object>/Data/Images/...",
    "btad": "BTAD is expected laid out as <root>/01|02|03/test/{ok,ko}/NNNN.bmp",
    "ksdd2": "KSDD2 is expected laid out as <root>/test/N.png with N_GT.png masks",
    "real-iad": "Real-IAD is expected laid out as <root>/<category>/{OK,NG}/... with <root>/realiad_jsons/<category>.json",
    "demo": "the demo benchmark is generated in MVTec-AD layout",
}

_SPLITS = ("test", "train")


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


def _abs(p: str | Path) -> Path:
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


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _select_categories(
    bench: str, root: Path, available: Sequence[str], wanted: Sequence[str] | None
) -> list[str]:
    if isinstance(wanted, str):
        wanted = [wanted]
    if not available:
        raise DataError(
            f"no categories found for {bench} under {root}: {_LAYOUT_HINT[bench]}; check --data-root"
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


def _finish(name: str, root: Path, samples: Iterable[Sample], categories: Sequence[str]) -> Benchmark:
    ordered = tuple(sorted(samples, key=lambda s: (s.category, s.rel_path)))
    present = {s.category for s in ordered}
    for cat in categories:
        if cat not in present:
            raise DataError(f"{name} category {cat!r} has no images under {root / cat}; restore its files or leave it out")
    return Benchmark(name=name, root=root, samples=ordered)


def _find_mask(gt_dir: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
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
    return [Sample(p, _rel(p, root), cat, 0, "good", None) for p in imgs]


# --------------------------------------------------------------------------------- MVTec layout


def _load_mvtec_layout(name: str, root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    if (root / "test").is_dir() and not any((d / "test").is_dir() for d in _subdirs(root)):
        raise DataError(
            f"{root} looks like a single {name} category folder; pass its parent {root.parent} as the "
            f"data root ({_LAYOUT_HINT[name]})"
        )
    available = [d.name for d in _subdirs(root) if (d / "test").is_dir()]
    cats = _select_categories(name, root, available, categories)
    samples: list[Sample] = []
    for cat in cats:
        cat_dir = root / cat
        if split == "train":
            samples += _train_normals(cat_dir / "train" / "good", root, cat,
                                      f"{_LAYOUT_HINT[name]} with normal images in <category>/train/good")
            continue
        for defect_dir in _subdirs(cat_dir / "test"):
            defect = defect_dir.name
            for img in _images_in(defect_dir):
                if defect == "good":
                    samples.append(Sample(img, _rel(img, root), cat, 0, "good", None))
                    continue
                gt_dir = cat_dir / "ground_truth" / defect
                mask = _find_mask(gt_dir, img.stem, ("_mask", ""))
                if mask is None:
                    raise DataError(
                        f"no mask for anomalous image {img}: expected {gt_dir / (img.stem + '_mask.png')}; "
                        "restore the mask or remove the image"
                    )
                samples.append(Sample(img, _rel(img, root), cat, 1, defect, mask))
    return _finish(name, root, samples, cats)


# ------------------------------------------------------------------------------------------ BTAD


def _load_btad(root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    available = [d.name for d in _subdirs(root) if (d / "test").is_dir()]
    cats = _select_categories("btad", root, available, categories)
    samples: list[Sample] = []
    for cat in cats:
        cat_dir = root / cat
        if split == "train":
            samples += _train_normals(cat_dir / "train" / "ok", root, cat,
                                      "BTAD keeps normal training images in <root>/<category>/train/ok")
            continue
        for img in _images_in(cat_dir / "test" / "ok"):
            samples.append(Sample(img, _rel(img, root), cat, 0, "good", None))
        gt_dir = cat_dir / "ground_truth" / "ko"
        for img in _images_in(cat_dir / "test" / "ko"):
            mask = _find_mask(gt_dir, img.stem, ("", "_mask"))
            if mask is None:
                raise DataError(
                    f"no mask for anomalous image {img}: expected {gt_dir / (img.stem + '.png')} (or .bmp); "
                    "restore the mask or remove the image"
                )
            samples.append(Sample(img, _rel(img, root), cat, 1, "ko", mask))
    return _finish("btad", root, samples, cats)


# ----------------------------------------------------------------------------------------- KSDD2


def _load_ksdd2(root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    from edgedeploy.evaluation.data.preprocess import read_mask_array

    folder = root / split
    if not folder.is_dir():
        raise DataError(f"no {split} folder in {root}: {_LAYOUT_HINT['ksdd2']}; check --data-root")
    cats = _select_categories("ksdd2", root, ["ksdd2"], categories)
    samples: list[Sample] = []
    for img in _images_in(folder):
        if img.stem.endswith("_GT"):
            continue
        mask = _find_mask(folder, img.stem, ("_GT",))
        if mask is None:
            raise DataError(
                f"no mask for image {img}: expected {folder / (img.stem + '_GT.png')} (KSDD2 has one for "
                "every image); restore it or remove the image"
            )
        if read_mask_array(mask).any():
            samples.append(Sample(img, _rel(img, root), "ksdd2", 1, "defect", mask))
        else:
            samples.append(Sample(img, _rel(img, root), "ksdd2", 0, "good", None))
    if not samples:
        raise DataError(f"no images in {folder}: {_LAYOUT_HINT['ksdd2']}; check --data-root")
    return _finish("ksdd2", root, samples, cats)


# ------------------------------------------------------------------------------------------ VisA

_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def read_visa_split(
    csv_path: str | Path,
    root: str | Path,
    split: str = "test",
    categories: Sequence[str] | None = None,
    check_files: bool = True,
) -> list[Sample]:
    """Read a VisA split csv (``object,split,label,image,mask``) into samples.

    ``image``/``mask`` are relative to ``root``. With ``check_files`` every image and mask must
    exist. Samples come back sorted by ``(category, rel_path)``.
    """
    csv_path = _abs(csv_path)
    root = _abs(root)
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r} for visa; use one of: {', '.join(_SPLITS)}")
    if not csv_path.is_file():
        raise DataError(f"VisA split file not found: {csv_path}; {_LAYOUT_HINT['visa']}")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in _VISA_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"VisA split file {csv_path} lacks column(s) {', '.join(missing)}; expected header "
                    f"{','.join(_VISA_COLUMNS)}"
                )
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read VisA split file {csv_path}: {' '.join(str(exc).split())}; re-copy it") from exc

    all_objects = sorted({(r.get("object") or "").strip() for _, r in rows} - {""})
    in_split = [(n, r) for n, r in rows if (r.get("split") or "").strip() == split]
    objects = sorted({r["object"].strip() for _, r in in_split})
    if categories is not None:
        if isinstance(categories, str):
            categories = [categories]
        if not categories:
            raise DataError(f"no visa categories selected; available in {csv_path}: {', '.join(objects or all_objects)}")
        unknown = [c for c in categories if c not in objects]
        if unknown:
            raise DataError(
                f"unknown visa categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(repr(c) for c in unknown)} in {csv_path} ({split} split); "
                f"available: {', '.join(objects or all_objects)}"
            )
        wanted = set(categories)
    else:
        wanted = set(objects)
    if not in_split:
        raise DataError(f"VisA split file {csv_path} has no rows with split {split!r}; check the file")

    samples: list[Sample] = []
    for line, row in in_split:
        obj = row["object"].strip()
        if obj not in wanted:
            continue
        label_text = (row.get("label") or "").strip().lower()
        if label_text not in ("normal", "anomaly"):
            raise DataError(
                f"VisA split file {csv_path} line {line}: label {row.get('label')!r} is neither 'normal' nor 'anomaly'"
            )
        image_rel = (row.get("image") or "").strip().replace("\\", "/")
        mask_rel = (row.get("mask") or "").strip().replace("\\", "/")
        if not image_rel:
            raise DataError(f"VisA split file {csv_path} line {line}: empty image path")
        image = root / image_rel
        label = 1 if label_text == "anomaly" else 0
        mask: Path | None = None
        if label:
            if not mask_rel:
                raise DataError(
                    f"VisA split file {csv_path} line {line}: anomalous image {image} has no mask path"
                )
            mask = root / mask_rel
        if check_files:
            if not image.is_file():
                raise DataError(f"image listed in {csv_path} line {line} not found: {image}; check --data-root ({_LAYOUT_HINT['visa']})")
            if mask is not None and not mask.is_file():
                raise DataError(f"no mask for anomalous image {image}: {mask} not found; restore the mask")
        samples.append(
            Sample(image, image_rel, obj, label, "anomaly" if label else "good", mask)
        )
    samples.sort(key=lambda s: (s.category, s.rel_path))
    return samples


def _load_visa(root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DataError(f"VisA split file not found: {csv_path}; {_LAYOUT_HINT['visa']}")
    samples = read_visa_split(csv_path, root, split=split, categories=categories)
    cats = sorted({s.category for s in samples})
    return _finish("visa", root, samples, cats)


# -------------------------------------------------------------------------------------- Real-IAD


def _realiad_json_dir(root: Path) -> Path | None:
    for base in (root, root.parent):
        for cand in (base / "realiad_jsons", base / "realiad_jsons" / "realiad_jsons"):
            if cand.is_dir() and any(p.suffix == ".json" for p in cand.iterdir()):
                return cand
    return None


def _load_realiad(root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    json_dir = _realiad_json_dir(root)
    if json_dir is None:
        raise DataError(f"no Real-IAD split files (realiad_jsons/<category>.json) found in {root}; {_LAYOUT_HINT['real-iad']}")
    available = sorted(p.stem for p in json_dir.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    cats = _select_categories("real-iad", root, available, categories)
    samples: list[Sample] = []
    for cat in cats:
        jpath = json_dir / f"{cat}.json"
        try:
            doc = json.loads(jpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read Real-IAD split file {jpath}: {' '.join(str(exc).split())}; re-copy it") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get(split), list):
            raise DataError(f"Real-IAD split file {jpath} has no {split!r} list; expected {{meta, train, test}}")
        meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
        normal_class = str(meta.get("normal_class") or "OK")
        cat_dir = root / cat
        for i, entry in enumerate(doc[split]):
            where = f"{jpath} {split}[{i}]"
            if not isinstance(entry, dict) or not entry.get("image_path"):
                raise DataError(f"Real-IAD split file entry {where} has no image_path; re-copy the file")
            img = _realiad_path(root, cat_dir, str(entry["image_path"]))
            if not img.is_file():
                raise DataError(f"image listed in {where} not found: {img}; check --data-root ({_LAYOUT_HINT['real-iad']})")
            anomaly_class = str(entry.get("anomaly_class") or normal_class)
            if anomaly_class == normal_class:
                samples.append(Sample(img, _rel(img, root), cat, 0, "good", None))
                continue
            mask: Path | None = None
            if entry.get("mask_path"):
                mask = _realiad_path(root, cat_dir, str(entry["mask_path"]))
            else:
                mask = _find_mask(img.parent, img.stem, ("_mask", ""))
                if mask == img:
                    mask = None
            if mask is None or not mask.is_file():
                expected = mask if mask is not None else img.with_name(img.stem + "_mask.png")
                raise DataError(f"no mask for anomalous image {img}: {expected} not found (listed in {jpath}); restore the mask")
            samples.append(Sample(img, _rel(img, root), cat, 1, anomaly_class, mask))
    return _finish("real-iad", root, samples, cats)


def _realiad_path(root: Path, cat_dir: Path, rel: str) -> Path:
    rel = rel.replace("\\", "/").lstrip("/")
    primary = cat_dir / rel
    if primary.exists():
        return primary
    alt = root / rel
    return alt if alt.exists() else primary


# -------------------------------------------------------------------------------------- frontend


def _normalise_name(name: str) -> str:
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
    bench = _normalise_name(name)
    if bench not in BENCHMARK_NAMES:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}")
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r} for {bench}; use one of: {', '.join(_SPLITS)}")

    if bench == "demo":
        from edgedeploy.evaluation.data.demo import ensure_demo

        root = ensure_demo(None if data_root is None else _abs(data_root))
        return _load_mvtec_layout("demo", _abs(root), categories, split)

    if data_root is None or str(data_root).strip() == "":
        env = data_root_env_var(bench)
        value = os.environ.get(env, "").strip()
        if not value:
            raise DataError(
                f"no data root for {bench}: pass --data-root or set {env} ({_LAYOUT_HINT[bench]}); "
                "or try --bench demo, which needs no download"
            )
        data_root = value
    root = _abs(data_root)
    if not root.exists():
        raise DataError(f"data root for {bench} does not exist: {root}; pass --data-root with the extracted dataset ({_LAYOUT_HINT[bench]})")
    if not root.is_dir():
        raise DataError(f"data root for {bench} is not a folder: {root}; pass the extracted dataset folder ({_LAYOUT_HINT[bench]})")

    if bench in ("mvtec", "mpdd", "dtd-synthetic"):
        return _load_mvtec_layout(bench, root, categories, split)
    if bench == "btad":
        return _load_btad(root, categories, split)
    if bench == "ksdd2":
        return _load_ksdd2(root, categories, split)
    if bench == "visa":
        return _load_visa(root, categories, split)
    return _load_realiad(root, categories, split)
