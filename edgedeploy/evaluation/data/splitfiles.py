"""The benchmarks described by split files rather than folders: VisA (``split_csv/1cls.csv``) and
Real-IAD (``realiad_jsons/<cat>.json``); layouts in ``benchmarks.py``'s docstring."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from edgedeploy.core.errors import DataError
from edgedeploy.evaluation.data.benchmarks import (LAYOUT_HINT, SPLITS, Benchmark, Sample, absolute, find_mask, finish,
                                                   relative, select_categories)


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
    csv_path = absolute(csv_path)
    root = absolute(root)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for visa; use one of: {', '.join(SPLITS)}")
    if not csv_path.is_file():
        raise DataError(f"VisA split file not found: {csv_path}; {LAYOUT_HINT['visa']}")
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
                raise DataError(f"image listed in {csv_path} line {line} not found: {image}; check --data-root ({LAYOUT_HINT['visa']})")
            if mask is not None and not mask.is_file():
                raise DataError(f"no mask for anomalous image {image}: {mask} not found; restore the mask")
        samples.append(
            Sample(image, image_rel, obj, label, "anomaly" if label else "good", mask)
        )
    samples.sort(key=lambda s: (s.category, s.rel_path))
    return samples


def load_visa(root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DataError(f"VisA split file not found: {csv_path}; {LAYOUT_HINT['visa']}")
    samples = read_visa_split(csv_path, root, split=split, categories=categories)
    cats = sorted({s.category for s in samples})
    return finish("visa", root, samples, cats)


# -------------------------------------------------------------------------------------- Real-IAD


def _realiad_json_dir(root: Path) -> Path | None:
    for base in (root, root.parent):
        for cand in (base / "realiad_jsons", base / "realiad_jsons" / "realiad_jsons"):
            if cand.is_dir() and any(p.suffix == ".json" for p in cand.iterdir()):
                return cand
    return None


def load_realiad(root: Path, categories: Sequence[str] | None, split: str) -> Benchmark:
    json_dir = _realiad_json_dir(root)
    if json_dir is None:
        raise DataError(f"no Real-IAD split files (realiad_jsons/<category>.json) found in {root}; {LAYOUT_HINT['real-iad']}")
    available = sorted(p.stem for p in json_dir.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    cats = select_categories("real-iad", root, available, categories)
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
                raise DataError(f"image listed in {where} not found: {img}; check --data-root ({LAYOUT_HINT['real-iad']})")
            anomaly_class = str(entry.get("anomaly_class") or normal_class)
            if anomaly_class == normal_class:
                samples.append(Sample(img, relative(img, root), cat, 0, "good", None))
                continue
            mask: Path | None = None
            if entry.get("mask_path"):
                mask = _realiad_path(root, cat_dir, str(entry["mask_path"]))
            else:
                mask = find_mask(img.parent, img.stem, ("_mask", ""))
                if mask == img:
                    mask = None
            if mask is None or not mask.is_file():
                expected = mask if mask is not None else img.with_name(img.stem + "_mask.png")
                raise DataError(f"no mask for anomalous image {img}: {expected} not found (listed in {jpath}); restore the mask")
            samples.append(Sample(img, relative(img, root), cat, 1, anomaly_class, mask))
    return finish("real-iad", root, samples, cats)


def _realiad_path(root: Path, cat_dir: Path, rel: str) -> Path:
    rel = rel.replace("\\", "/").lstrip("/")
    primary = cat_dir / rel
    if primary.exists():
        return primary
    alt = root / rel
    return alt if alt.exists() else primary


# -------------------------------------------------------------------------------------- frontend
