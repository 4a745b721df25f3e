"""The benchmark as the board scores it: tensors pre-processed on the host, through the model card.

Each image goes through the one shared pre-processing (``edgedeploy.evaluation.data.load_image`` at the bundle's
card input size): exactly what ``score_benchmark`` feeds a runner on the host. The board then decodes nothing and
resizes nothing; its runner feeds the graph through the same card (``Runner.infer``), so the board does no
pre-processing the host does not do.

The tensors go into ``part-NNNN.npy`` files (float32 ``(n, 3, S, S)``, at most ``PART_BYTES`` each, so a dropped
copy resends one part) and an ``index.json`` (benchmark name, root, size, and per image its path, category, label,
part and row). They are cached under ``$EDGEDEPLOY_CACHE/remote-inputs/<digest>/``, keyed by the images' content
hashes and the size, and written atomically, ``index.json`` last. Size on the wire: ``n x 3 x S x S x 4`` bytes
(0.6 MB per image at 224, 3.1 MB at 512).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgedeploy.core.errors import DataError
from edgedeploy.core.files import atomic_path, write_json_atomic
from edgedeploy.core.hashing import sha256_file, sha256_json
from edgedeploy.core.resources import cache_root
from edgedeploy.evaluation.data import Benchmark, load_image
from edgedeploy.remote.agent import INPUTS_FORMAT

PART_BYTES = 64 << 20
PREPROCESS = "load_image-1"  # the shared pre-processing's contract (edgedeploy.evaluation.data.preprocess)

Log = Callable[[str], None]


@dataclass
class LocalFile:
    name: str      # relative to its remote folder
    path: Path
    sha256: str
    bytes: int


@dataclass
class PreparedInputs:
    folder: Path
    digest: str
    size: int
    bench: str
    count: int
    files: list[LocalFile]  # the parts, then index.json (copied last)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)


def card_size(manifest: dict, where: str) -> int:
    """The input size the bundle's card feeds its graph."""
    from edgedeploy.core.modelcard import card_from_manifest

    return int(card_from_manifest(manifest, where).input_size)


def _files(folder: Path, index: dict) -> list[LocalFile]:
    parts = [LocalFile(p["name"], folder / p["name"], p["sha256"], p["bytes"]) for p in index["parts"]]
    idx = folder / "index.json"
    return parts + [LocalFile("index.json", idx, sha256_file(idx), idx.stat().st_size)]


def prepare_inputs(bench: Benchmark, size: int, log: Log = print) -> PreparedInputs:
    """Pre-process every image of ``bench`` at ``size`` into cached tensor parts; refuse unreadable images (all named)."""
    from edgedeploy.runtime.batch import image_hashes
    from edgedeploy.runtime.scorefile import first_items

    hashes, problems = image_hashes(bench)
    if problems:
        raise DataError(f"{len(problems)} image(s) of {bench.name} cannot be read: {first_items(problems)}; nothing "
                        "was sent to the board")
    samples = [(s.rel_path, s.category, int(s.label), h) for s, h in zip(bench.samples, hashes)]
    digest = sha256_json({"format": INPUTS_FORMAT, "preprocess": PREPROCESS, "size": int(size), "bench": bench.name,
                          "samples": samples})
    folder = cache_root() / "remote-inputs" / digest[:24]
    index_path = folder / "index.json"
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            if index.get("digest") == digest and all((folder / p["name"]).is_file() for p in index["parts"]):
                return PreparedInputs(folder, digest, int(size), bench.name, len(samples), _files(folder, index))
        except (OSError, ValueError, KeyError):
            pass
    per_part = max(1, PART_BYTES // (3 * size * size * 4))
    log(f"pre-processing {len(samples)} images at {size}x{size} for the board (the shared load_image, the bundle's "
        f"card), {per_part} per part")
    parts, entries, unreadable = [], [], []
    for begin in range(0, len(bench.samples), per_part):
        chunk = bench.samples[begin:begin + per_part]
        arrays = []
        name = f"part-{len(parts):04d}.npy"
        for sample in chunk:
            try:
                arrays.append(load_image(sample.path, size))
            except DataError as exc:
                unreadable.append(f"{sample.path} ({str(exc).split(';')[0]})")
                continue
            entries.append({"path": sample.rel_path, "category": sample.category, "label": int(sample.label),
                            "part": name, "row": len(arrays) - 1})
        if unreadable:
            continue
        data = np.stack(arrays).astype(np.float32, copy=False)
        path = folder / name
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, data, allow_pickle=False)
        parts.append({"name": name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "count": len(arrays)})
    if unreadable:
        raise DataError(f"{len(unreadable)} image(s) of {bench.name} cannot be decoded: {first_items(unreadable)}; "
                        "nothing was sent to the board")
    index = {"format": INPUTS_FORMAT, "digest": digest, "bench": bench.name, "data_root": str(bench.root),
             "size": int(size), "preprocess": PREPROCESS, "samples": entries, "parts": parts}
    write_json_atomic(index_path, index)
    return PreparedInputs(folder, digest, int(size), bench.name, len(samples), _files(folder, index))
