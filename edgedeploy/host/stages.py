"""A cache of finished pipeline stages, keyed by the hashes of everything a stage reads.

Each stage runs in a temporary folder that is renamed into place only after its outputs are written
and hashed and its ``stage.json`` record is saved, so a build killed at any moment leaves nothing a
later run accepts as finished; a later run with the same inputs reuses the folder instead.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgedeploy.core.hashing import sha256_file, sha256_json

RECORD = "stage.json"


@dataclass
class StageRecord:
    name: str
    key: str
    cached: bool
    seconds: float
    inputs: dict[str, str]
    outputs: dict[str, dict[str, str]]
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def output_path(self, root: Path, name: str) -> Path:
        return root / self.outputs[name]["path"]

    def to_dict(self) -> dict:
        return asdict(self)


StageFn = Callable[[Path], tuple[dict, list[str]]]


class StageCache:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned()

    def _remove_abandoned(self) -> None:
        for tmp in self.root.glob(".*.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)

    def run(self, name: str, inputs: dict[str, str], outputs: list[str], fn: StageFn) -> StageRecord:
        """Reuse the finished stage for these inputs, or run ``fn(folder)`` which must write ``outputs``."""
        key = sha256_json({"stage": name, "inputs": inputs})[:16]
        final = self.root / f"{name}-{key}"
        cached = self._load(final)
        if cached is not None:
            cached.cached, cached.seconds = True, 0.0
            return cached
        work = self.root / f".{name}-{key}.tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        start = time.perf_counter()
        try:
            details, warnings = fn(work)
            record = StageRecord(
                name=name, key=key, cached=False, seconds=round(time.perf_counter() - start, 3), inputs=inputs,
                outputs={out: {"path": f"{final.name}/{out}", "sha256": sha256_file(work / out)} for out in outputs},
                warnings=warnings, details=details)
            (work / RECORD).write_text(json.dumps(record.to_dict(), indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return record

    def _load(self, folder: Path) -> StageRecord | None:
        try:
            record = StageRecord(**json.loads((folder / RECORD).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        for out in record.outputs.values():
            path = self.root / out["path"]
            if not path.is_file() or sha256_file(path) != out["sha256"]:
                return None
        return record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
