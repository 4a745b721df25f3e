"""The per-image score file every scorer writes and ``edgedeploy fidelity`` reads.

A CSV a person can open, with the provenance that decides whether two score files are comparable
in ``#``-prefixed ``key: value`` header lines::

    # edgedeploy-scores: 1
    # model_sha256: ...        (hash of the graph that produced the scores)
    # checkpoint_sha256: ...   (or "seeded")
    # recipe: edgezsad-tinyvit21m-512
    # runner: onnxruntime-cpu | tensorrt | qai-hub | torch | fp16-emulation
    # bench: mvtec
    path,category,label,score
    bottle/test/good/000.png,bottle,0,0.0123

``path`` is relative to the benchmark root. Anomaly maps, when kept, go to a side file
``<name>.maps.npz`` keyed by ``path``. Files are written atomically.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import atomic_path, write_text_atomic

FORMAT_VERSION = "1"
COLUMNS = ("path", "category", "label", "score")


class ScoreFileError(EdgeDeployError):
    """A score file is malformed or does not match the benchmark or model it is compared with."""


@dataclass(frozen=True)
class ScoreRow:
    path: str
    category: str
    label: int
    score: float


@dataclass
class ScoreTable:
    meta: dict[str, str]
    rows: list[ScoreRow] = field(default_factory=list)

    def by_path(self) -> dict[str, ScoreRow]:
        return {row.path: row for row in self.rows}


def maps_path(scores_path: str | Path) -> Path:
    scores_path = Path(scores_path)
    return scores_path.with_name(scores_path.stem + ".maps.npz")


def write_scores(path: str | Path, table: ScoreTable, maps: dict[str, np.ndarray] | None = None) -> None:
    buf = io.StringIO()
    buf.write(f"# edgedeploy-scores: {FORMAT_VERSION}\n")
    for key, value in table.meta.items():
        buf.write(f"# {key}: {value}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in table.rows:
        writer.writerow((row.path, row.category, row.label, repr(float(row.score))))
    if maps is not None:
        with atomic_path(maps_path(path)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{k.replace("/", "|"): v for k, v in maps.items()})
    write_text_atomic(path, buf.getvalue())


def read_maps(scores_path: str | Path) -> dict[str, np.ndarray]:
    path = maps_path(scores_path)
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return {k.replace("|", "/"): data[k] for k in data.files}


def split_header(lines: list[str]) -> tuple[dict[str, str], int]:
    """The ``# key: value`` lines a score file opens with, and the index of its first other line."""
    meta: dict[str, str] = {}
    body_start = 0
    for body_start, line in enumerate(lines):
        if not line.startswith("#"):
            break
        key, _, value = line[1:].partition(":")
        meta[key.strip()] = value.strip()
    return meta, body_start


def read_scores(path: str | Path) -> ScoreTable:
    """Parse a score file, rejecting duplicate rows and text where a number belongs, with the rows named.

    NaN and inf scores are kept as they are: a device that overflowed has failed the fidelity gate, which
    reads them and names the images; it has not written a malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise ScoreFileError(f"score file {path} does not exist")
    lines = path.read_text().splitlines()
    meta, body_start = split_header(lines)
    if meta.get("edgedeploy-scores") != FORMAT_VERSION:
        raise ScoreFileError(f"{path} is not an edgedeploy score file (no '# edgedeploy-scores: {FORMAT_VERSION}' header); "
                             "write it with `edgedeploy score`")
    reader = csv.reader(lines[body_start:])
    header = next(reader, None)
    if tuple(header or ()) != COLUMNS:
        raise ScoreFileError(f"{path}: header is {header}, expected {','.join(COLUMNS)}")
    rows, seen, duplicates = [], set(), []
    for lineno, record in enumerate(reader, start=body_start + 2):
        if len(record) != len(COLUMNS):
            raise ScoreFileError(f"{path} line {lineno}: expected {len(COLUMNS)} columns, got {len(record)}")
        rel, category, label, score = record
        try:
            value = float(score)
            label_value = int(label)
        except ValueError:
            raise ScoreFileError(f"{path} line {lineno}: label {label!r} or score {score!r} is not a number") from None
        if rel in seen:
            duplicates.append(f"{rel} (line {lineno})")
        seen.add(rel)
        rows.append(ScoreRow(rel, category, label_value, value))
    if duplicates:
        raise ScoreFileError(f"{path}: duplicate rows for {first_items(duplicates)}; keep one row per image")
    return ScoreTable(meta, rows)


def first_items(items: list[str], shown: int = 5) -> str:
    """The first ``shown`` items, comma-separated, and how many more there are."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
