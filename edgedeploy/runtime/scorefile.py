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
``<name>.maps.npz`` keyed by ``path``. Files are written atomically, in UTF-8 whatever the locale.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import atomic_path

FORMAT_VERSION = "1"
COLUMNS = ("path", "category", "label", "score")
LABELS = {"0": 0, "1": 1}
# What ``repr(float)`` writes and a person types: a decimal with an optional exponent, or nan/inf/infinity in any
# case, signed or not (C's printf writes "-nan"). Not the rest of what float() takes: "1_0" (10.0), "\t1\n",
# other scripts' digits ("١").
SCORE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


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
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue().encode("utf-8"))  # what read_scores decodes, not the locale's encoding


def read_maps(scores_path: str | Path) -> dict[str, np.ndarray]:
    path = maps_path(scores_path)
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return {k.replace("|", "/"): data[k] for k in data.files}


def split_header(lines: list[str]) -> tuple[dict[str, str], int]:
    """The ``# key: value`` lines a score file opens with, and the index of its first other line.

    A UTF-8 byte-order mark before the first ``#`` (editors on Windows write one) is ignored.
    """
    meta: dict[str, str] = {}
    body_start = 0
    for body_start, line in enumerate(lines):
        if body_start == 0:
            line = line.removeprefix("\ufeff")
        if not line.startswith("#"):
            break
        key, _, value = line[1:].partition(":")
        meta[key.strip()] = value.strip()
    return meta, body_start


def read_scores(path: str | Path) -> ScoreTable:
    """Parse a score file, rejecting duplicate rows and text where a number belongs, with the rows named.

    NaN and inf scores are kept as they are: a device that overflowed has failed the fidelity gate, which
    reads them and names the images; it has not written a malformed file.

    The file is strict, because a lenient reader turns a broken file into a wrong verdict rather than an
    error: it is UTF-8 (a leading byte-order mark is allowed; an undecodable byte is reported with its line);
    a label is ``0`` or ``1``; a score is a decimal number (``0.0123``, ``-3.5e+200``, ``1e-05``) or
    ``nan``/``inf``/``infinity`` in any case, signed or not. Python's ``float()`` would also take ``1_0`` (as
    10.0) and ``int()`` ``+1``: those are refused. ASCII spaces around a label or a score are stripped (as a
    hand-edited ``a, 0, 0.5`` has them); other whitespace is refused, and ``path`` and ``category`` are read
    as written. Every error is a :class:`ScoreFileError` naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ScoreFileError(f"score file {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScoreFileError(f"score file {path} cannot be read ({exc.strerror or exc}): check its "
                             "permissions") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # exc.object is the bytes after any byte-order mark, and exc.start an offset into them
        lineno = exc.object.count(b"\n", 0, exc.start) + 1
        raise ScoreFileError(f"{path} line {lineno}: byte 0x{exc.object[exc.start]:02x} is not UTF-8; save the "
                             "file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or write it with "
                             "`edgedeploy score`") from None
    # lines end at "\n" only (not at the other breaks str.splitlines knows), so line numbers are the byte offsets'
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    meta, body_start = split_header(lines)
    if meta.get("edgedeploy-scores") != FORMAT_VERSION:
        raise ScoreFileError(f"{path} is not an edgedeploy score file (no '# edgedeploy-scores: {FORMAT_VERSION}' header); "
                             "write it with `edgedeploy score`")
    reader = csv.reader(lines[body_start:])
    try:
        header = next(reader, None)
        if tuple(header or ()) != COLUMNS:
            raise ScoreFileError(f"{path}: header is {header}, expected {','.join(COLUMNS)}")
        rows, seen, duplicates = [], set(), []
        for record in reader:
            lineno = body_start + reader.line_num
            rows.append(_row(path, lineno, record))
            if rows[-1].path in seen:
                duplicates.append(f"{rows[-1].path} (line {lineno})")
            seen.add(rows[-1].path)
    except csv.Error as exc:
        raise ScoreFileError(f"{path} line {body_start + reader.line_num}: {exc}; write one row per line as "
                             "path,category,label,score") from None
    if duplicates:
        raise ScoreFileError(f"{path}: duplicate rows for {first_items(duplicates)}; keep one row per image")
    return ScoreTable(meta, rows)


def _row(path: Path, lineno: int, record: list[str]) -> ScoreRow:
    if len(record) != len(COLUMNS):
        raise ScoreFileError(f"{path} line {lineno}: expected {len(COLUMNS)} columns, got {len(record)}")
    rel, category, label, score = record
    if label.strip(" ") not in LABELS:
        raise ScoreFileError(f"{path} line {lineno}: label {label!r} of {rel}: label must be 0 (normal) or "
                             "1 (anomalous); fix that row")
    if not SCORE.fullmatch(score.strip(" ")):
        raise ScoreFileError(f"{path} line {lineno}: score {score!r} of {rel} is not a number; write a decimal such as "
                             "0.0123 or 1e-05 (nan and inf are allowed)")
    return ScoreRow(rel, category, LABELS[label.strip(" ")], float(score))


def first_items(items: list[str], shown: int = 5) -> str:
    """The first ``shown`` items, comma-separated, and how many more there are."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
