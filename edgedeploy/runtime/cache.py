"""The host score cache: a re-run costs nothing, an interrupted run resumes where it stopped.

One folder per scorer identity under ``$EDGEDEPLOY_CACHE/scores/`` (default
``~/.cache/edgedeploy/scores/``). The identity is a dict (runner, checkpoint hash or "seeded",
recipe hash, model hash, tool versions, ...) hashed into the folder name and kept beside the results
in ``key.json``. Results are keyed by the sha256 of each image file's bytes, so a renamed or copied
image is still a hit and an edited one is a miss.

Each scored batch is appended as one chunk file ``chunk-*.npz`` (arrays ``sha``, ``score``, ``map``),
written under a temporary name and renamed into place: a run killed at any moment loses at most
the batch in flight, and never leaves a half-written chunk that a later run would read. When a
folder holds many chunks they are merged into one (written first, then the merged ones removed).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np

from edgedeploy.core.files import atomic_path, write_json_atomic
from edgedeploy.core.hashing import sha256_json
from edgedeploy.core.resources import cache_root

CACHE_VERSION = 1
_MERGE_ABOVE = 32


def scores_cache_root() -> Path:
    return cache_root() / "scores"


class ScoreCache:
    """Scores and raw anomaly maps of one scorer identity, by image content hash."""

    def __init__(self, identity: dict, root: str | os.PathLike[str] | None = None):
        self.identity = {"cache_version": CACHE_VERSION, **identity}
        self.key = sha256_json(self.identity)[:24]
        self.folder = Path(root) if root is not None else scores_cache_root()
        self.folder = self.folder / self.key

    def _chunks(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.name.startswith("chunk-") and p.suffix == ".npz")
        except OSError:
            return []

    def load(self) -> dict[str, tuple[float, np.ndarray | None]]:
        """Everything cached so far: image sha256 -> (score, raw map or None). Unreadable chunks are ignored."""
        results: dict[str, tuple[float, np.ndarray | None]] = {}
        for chunk in self._chunks():
            try:
                with np.load(chunk, allow_pickle=False) as data:
                    shas, scores = data["sha"], data["score"]
                    maps = data["map"] if "map" in data.files else None
                    for i, sha in enumerate(shas):
                        results[str(sha)] = (float(scores[i]), None if maps is None else maps[i])
            except (OSError, ValueError, KeyError, EOFError):
                continue  # a chunk from a foreign or damaged write: its images are scored again
        return results

    def append(self, shas: list[str], scores: np.ndarray, maps: np.ndarray | None) -> None:
        """Add one batch of results, atomically."""
        if not shas:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "key.json"
        if not key_file.is_file():
            write_json_atomic(key_file, self.identity)
        self._write_chunk(shas, np.asarray(scores, dtype=np.float64), maps)

    def _write_chunk(self, shas: list[str], scores: np.ndarray, maps: np.ndarray | None) -> Path:
        path = self.folder / f"chunk-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        arrays = {"sha": np.asarray(shas, dtype="U64"), "score": scores}
        if maps is not None:
            arrays["map"] = np.asarray(maps, dtype=np.float32)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        return path

    def compact(self) -> None:
        """Merge the chunks into one when there are many (a finished run calls this)."""
        chunks = self._chunks()
        if len(chunks) <= _MERGE_ABOVE:
            return
        results = self.load()
        if not results:
            return
        shas = list(results)
        maps = [results[s][1] for s in shas]
        if not all(m is not None for m in maps) or len({m.shape for m in maps}) != 1:
            return  # mixed chunks (not written by one scorer): leave them as they are
        self._write_chunk(shas, np.array([results[s][0] for s in shas]), np.stack(maps))
        for chunk in chunks:
            chunk.unlink(missing_ok=True)


class NoCache(ScoreCache):
    """``--no-cache``: nothing read, nothing written."""

    def load(self) -> dict[str, tuple[float, np.ndarray | None]]:
        return {}

    def append(self, shas: list[str], scores: np.ndarray, maps: np.ndarray | None) -> None:
        return None

    def compact(self) -> None:
        return None
