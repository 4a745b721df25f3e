"""The fixed, seeded sampling of source images per category.

Rule (documented in docs/training.md, the same on every machine):

1. Read the source benchmark's listed splits with the shared loaders (``load_benchmark``); drop
   images whose camera view (Real-IAD: ``..._C3_...`` in the file name) is not in
   ``sampling.views`` when views are given.
2. Per category and label, rank the candidates by ``sha256("<seed>|<category>|<rel_path>")`` and
   keep the first ``normal_per_category`` normal and ``anomalous_per_category`` anomalous images
   (all of them when null or when fewer exist). The rank of an image depends only on its own name,
   so the choice does not depend on listing order, and adding images to a corpus moves an image
   out of the selection only when a new one ranks before it.
3. The selection is listed sorted by (category, label, rel_path); its **sampling hash** is the
   sha256 of the recipe's source/sampling settings and, per image, its path, label, defect, and
   the sha256 of the image and mask files.

Bad input is one :class:`TrainError` line: an empty selection, a category without normal or
without anomalous images (the pixel loss needs masks), an anomalous image whose mask is empty
(mislabelled), an image whose camera view cannot be read while views are filtered.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgedeploy.evaluation.data import Sample, load_benchmark
from edgedeploy.evaluation.data.preprocess import read_mask_array
from edgedeploy.core.hashing import sha256_file, sha256_json
from edgedeploy.core.errors import TrainError
from edgedeploy.host.train.recipe import BenchSpec, Sampling

_VIEW = re.compile(r"(?:^|_)(C\d+)(?=_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class SourceItem:
    sample: Sample
    image_sha256: str
    mask_sha256: str | None

    @property
    def label(self) -> int:
        return self.sample.label


@dataclass
class SourceSet:
    spec: BenchSpec                    # the benchmark and the categories actually used
    root: Path
    items: list[SourceItem]            # sorted by (category, label, rel_path)
    counts: dict[str, dict[str, int]]  # category -> normal / anomalous picked and available
    sha256: str
    notes: list[str] = field(default_factory=list)

    @property
    def n_normal(self) -> int:
        return sum(1 for i in self.items if i.label == 0)

    @property
    def n_anomalous(self) -> int:
        return sum(1 for i in self.items if i.label == 1)

    def summary(self) -> dict:
        return {"source": self.spec.label, "sha256": self.sha256, "images": len(self.items),
                "normal": self.n_normal, "anomalous": self.n_anomalous, "per_category": self.counts}


def camera_view(sample: Sample) -> str | None:
    """The Real-IAD camera view (``C1``..``C5``) named in the file name, upper-cased; None if absent."""
    found = _VIEW.findall(Path(sample.rel_path).stem)
    return found[-1].upper() if found else None


def rank_key(seed: int, category: str, rel_path: str) -> str:
    return hashlib.sha256(f"{seed}|{category}|{rel_path}".encode()).hexdigest()


def pick(samples: list[Sample], n: int | None, seed: int) -> list[Sample]:
    """The first ``n`` samples by :func:`rank_key` (all when ``n`` is None), listed by rel_path."""
    ranked = sorted(samples, key=lambda s: (rank_key(seed, s.category, s.rel_path), s.rel_path))
    chosen = ranked if n is None else ranked[:n]
    return sorted(chosen, key=lambda s: s.rel_path)


def load_candidates(spec: BenchSpec, data_root: str | Path | None, splits: tuple[str, ...]) -> tuple[Path, list[Sample]]:
    """Every image of the listed splits (deduplicated by path), and the benchmark root."""
    seen: dict[str, Sample] = {}
    root: Path | None = None
    for split in splits:
        bench = load_benchmark(spec.bench, data_root, list(spec.categories) if spec.categories else None, split)
        root = bench.root
        for s in bench.samples:
            seen.setdefault(s.rel_path, s)
    assert root is not None
    return root, sorted(seen.values(), key=lambda s: (s.category, s.rel_path))


def sample_source(spec: BenchSpec, sampling: Sampling, seed: int, data_root: str | Path | None = None,
                  option: str = "source") -> SourceSet:
    root, candidates = load_candidates(spec, data_root, sampling.splits)
    notes: list[str] = []
    views = set(v.upper() for v in sampling.views) if sampling.views else None
    if views is not None:
        kept = []
        for s in candidates:
            view = camera_view(s)
            if view is None:
                raise TrainError(f"cannot tell the camera view of {s.path} (expected _C1_.._C5_ in the file name); "
                                 f"set sampling.views to null for a benchmark without views")
            if view in views:
                kept.append(s)
        candidates = kept
    by_cat: dict[str, list[Sample]] = {}
    for s in candidates:
        by_cat.setdefault(s.category, []).append(s)
    where = f"{spec.bench} ({', '.join(sampling.splits)} split{'s' if len(sampling.splits) > 1 else ''}"
    where += f", views {', '.join(sorted(views))})" if views else ")"
    if not candidates:
        raise TrainError(f"the {option} set is empty: no images in {where} under {root}; check --data-root, "
                         "the categories and sampling.views")
    wanted = list(spec.categories) if spec.categories else sorted(by_cat)
    picked: list[Sample] = []
    counts: dict[str, dict[str, int]] = {}
    for cat in wanted:
        pool = by_cat.get(cat, [])
        normal = [s for s in pool if s.label == 0]
        anomalous = [s for s in pool if s.label == 1]
        if not pool:
            raise TrainError(f"{option} category {cat!r} has no images in {where}; leave it out or fix the data")
        if not anomalous:
            raise TrainError(f"{option} category {cat!r} has no anomalous images in {where}: the image and pixel "
                             "losses need defects with masks; add a split that has them (e.g. test) or leave it out")
        if not normal:
            raise TrainError(f"{option} category {cat!r} has no normal images in {where}: the image loss needs both "
                             "kinds; add a split that has them (e.g. train) or leave it out")
        chosen_n = pick(normal, sampling.normal_per_category, seed)
        chosen_a = pick(anomalous, sampling.anomalous_per_category, seed)
        for want, got, kind in ((sampling.normal_per_category, chosen_n, "normal"),
                                (sampling.anomalous_per_category, chosen_a, "anomalous")):
            if want is not None and len(got) < want:
                notes.append(f"{cat}: {len(got)} {kind} images available, fewer than the {want} the recipe asks for; "
                             "using all of them")
        counts[cat] = {"normal": len(chosen_n), "anomalous": len(chosen_a),
                       "available_normal": len(normal), "available_anomalous": len(anomalous)}
        picked += chosen_n + chosen_a
    items = []
    for s in sorted(picked, key=lambda s: (s.category, s.label, s.rel_path)):
        mask_sha = None
        if s.label == 1:
            if s.mask_path is None:
                raise TrainError(f"anomalous {option} image {s.path} has no mask: the pixel loss needs one; "
                                 "restore it or relabel the image")
            if not read_mask_array(s.mask_path).any():
                raise TrainError(f"anomalous {option} image {s.path} has an empty mask {s.mask_path}: mislabelled? "
                                 "fix its label or its mask")
            mask_sha = sha256_file(s.mask_path)
        items.append(SourceItem(s, sha256_file(s.path), mask_sha))
    used = BenchSpec(spec.bench, tuple(wanted))
    digest = sha256_json({
        "format": 1, "bench": spec.bench, "categories": wanted, "seed": seed, "sampling": asdict(sampling),
        "items": [[i.sample.rel_path, i.label, i.sample.defect, i.image_sha256, i.mask_sha256] for i in items],
    })
    return SourceSet(used, root, items, counts, digest, notes)
