"""A score file written on the device (``edgedeploy score``), checked before it is compared.

A device score file is accepted only when it provably scores *this* benchmark with *this* model:

* every row parses and no image appears twice (``edgedeploy.runtime.scorefile.read_scores``); NaN and
  inf scores are read as they are, and fail the gate with the images named (not bad input);
* every benchmark image has a row, and every row is a benchmark image with the same category and
  label (rows of categories left out with ``--categories`` are ignored);
* its header names the same checkpoint (``checkpoint_sha256``; "seeded" for the seeded reference
  weights), the same recipe and, when present, the same benchmark. A different ``model_sha256``
  (the graph the device compiled) is reported as a warning: the same checkpoint exported with
  other tool versions gives other graph bytes.

Anything else is a :class:`~edgedeploy.runtime.scorefile.ScoreFileError` that names the rows (exit code 2).
"""

from __future__ import annotations

import csv
from pathlib import Path

from edgedeploy.evaluation.data import Benchmark
from edgedeploy.evaluation.data.benchmarks import normalise_name
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.runtime.scorefile import ScoreFileError, ScoreTable, read_maps, read_scores
from edgedeploy.runtime.batch import ScoredBenchmark

_SHOWN = 5
_SEEDED_ALIASES = {"", "seeded", "none", "null", "-"}


def normalise_checkpoint(value: str | None) -> str:
    value = (value or "").strip()
    return "seeded" if value.lower() in _SEEDED_ALIASES else value.lower()


def _line_numbers(path: Path) -> dict[str, int]:
    """Line number of each row's first occurrence (for messages)."""
    lines = path.read_text().splitlines()
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    numbers: dict[str, int] = {}
    for offset, record in enumerate(csv.reader(lines[start + 1:])):
        if record:
            numbers.setdefault(record[0], start + 2 + offset)
    return numbers


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def check_header(path: Path, meta: dict[str, str], bench: Benchmark, recipe: Recipe, checkpoint_sha256: str,
                 model_sha256: str | None, target: str | None = None) -> list[str]:
    """Errors raised, warnings returned, for the provenance in a device score file's header."""
    ours = normalise_checkpoint(checkpoint_sha256)
    if "checkpoint_sha256" not in meta:
        raise ScoreFileError(f"{path} has no '# checkpoint_sha256:' header line, so nothing shows it was scored with "
                             "this model; write it with `edgedeploy score` from the bundle's manifest")
    theirs = normalise_checkpoint(meta["checkpoint_sha256"])
    if theirs == "unknown":
        raise ScoreFileError(f"{path} does not say which checkpoint produced it (checkpoint_sha256: unknown, as when a "
                             "model file is scored without its bundle's manifest.json); score the model inside its "
                             "bundle folder with `edgedeploy score`")
    if theirs != ours:
        raise ScoreFileError(f"{path} was scored with checkpoint {theirs[:16]} but this run uses {ours[:16]} "
                             f"({'seeded reference weights' if ours == 'seeded' else 'its sha256'}): pass the same "
                             "--checkpoint, or score the device again with the bundle built from this one")
    if "recipe" not in meta:
        raise ScoreFileError(f"{path} has no '# recipe:' header line; write it with `edgedeploy score`")
    if meta["recipe"] not in (recipe.name, recipe.sha256):
        raise ScoreFileError(f"{path} was scored with recipe {meta['recipe']} but this run uses {recipe.name}: "
                             "pass the same --recipe")
    if meta.get("bench") and normalise_name(meta["bench"]) != bench.name:
        raise ScoreFileError(f"{path} scores benchmark {meta['bench']} but this run checks {bench.name}: pass the "
                             "matching --bench")
    their_target = meta.get("target", "").strip()
    if target and their_target and their_target not in ("none", "unknown") and their_target != target:
        raise ScoreFileError(f"{path} was scored with the {their_target} bundle but this run checks --target {target}: "
                             "pass the matching --target")
    warnings = []
    theirs_model = meta.get("model_sha256", "").strip()
    if model_sha256 and theirs_model and theirs_model != model_sha256:
        warnings.append(f"{path} was scored with graph {theirs_model[:16]}, not this bundle's model.onnx "
                        f"({model_sha256[:16]}): same checkpoint and recipe, but exported differently")
    return warnings


def load_device_scores(path: str | Path, bench: Benchmark, recipe: Recipe, checkpoint_sha256: str,
                       model_sha256: str | None = None, all_categories: bool = True,
                       target: str | None = None) -> tuple[ScoredBenchmark, list[str]]:
    """Read and check a device score file against ``bench``; return it in benchmark order, and warnings.

    ``all_categories`` False means ``bench`` holds only the categories the user selected: rows of
    other categories are then ignored instead of reported as images not in the benchmark.
    """
    path = Path(path)
    table = read_scores(path)
    warnings = check_header(path, table.meta, bench, recipe, checkpoint_sha256, model_sha256, target)
    ignored = match_benchmark(path, table, bench, all_categories,
                              "Score the same images on the device (same --bench, --data-root and --categories)")
    if ignored:
        warnings.append(f"{path}: ignored {ignored} rows of categories not selected with --categories")
    return in_benchmark_order("device scores", path, table, bench), warnings


def match_benchmark(path: Path, table: ScoreTable, bench: Benchmark, all_categories: bool, fix: str) -> int:
    """Refuse, naming the rows (with line numbers), a score file whose images are not exactly ``bench``'s with the
    same categories and labels; ``fix`` ends the message. Returns how many rows of unselected categories were
    ignored (``all_categories`` False)."""
    lines = _line_numbers(path)
    expected = {s.rel_path: s for s in bench.samples}
    selected = set(bench.categories)
    rows = table.by_path()
    ignored = 0
    extra, wrong = [], []
    for row in table.rows:
        sample = expected.get(row.path)
        if sample is None:
            if not all_categories and row.category not in selected:
                ignored += 1
                continue
            extra.append(f"{row.path} (line {lines.get(row.path, '?')})")
        elif (row.category, row.label) != (sample.category, sample.label):
            wrong.append(f"{row.path} (line {lines.get(row.path, '?')}: {row.category}/label {row.label}, "
                         f"benchmark {sample.category}/label {sample.label})")
    missing = [rel for rel in expected if rel not in rows]
    problems = []
    if missing:
        problems.append(f"{len(missing)} benchmark image{'s' if len(missing) > 1 else ''} without a row: {_listing(missing)}")
    if extra:
        problems.append(f"{len(extra)} row{'s' if len(extra) > 1 else ''} for images not in the {bench.name} benchmark "
                        f"at {bench.root}: {_listing(extra)}")
    if wrong:
        problems.append(f"{len(wrong)} row{'s' if len(wrong) > 1 else ''} whose category or label differs from the "
                        f"benchmark: {_listing(wrong)}")
    if problems:
        raise ScoreFileError(f"{path} does not match the benchmark: {'; '.join(problems)}. {fix}")
    return ignored


def in_benchmark_order(side: str, path: Path, table: ScoreTable, bench: Benchmark) -> ScoredBenchmark:
    """A checked score file as a scored benchmark: its rows and maps in ``bench``'s order, the format line dropped."""
    rows = table.by_path()
    wanted = {s.rel_path for s in bench.samples}
    meta = {k: v for k, v in table.meta.items() if k != "edgedeploy-scores"}
    ordered = ScoreTable(meta, [rows[s.rel_path] for s in bench.samples])
    maps = {k: v for k, v in read_maps(path).items() if k in wanted}
    label = f"{side} ({meta.get('runner', 'unknown runner')}, {path.name})"
    return ScoredBenchmark(label, ordered, maps, computed=0, cached=len(bench.samples))
