"""The one batch loop: a benchmark through a runner into a score table (``edgedeploy.runtime.scorefile``).

Every image is read with the shared pre-processing (``edgedeploy.evaluation.data.load_image``), and each
result is cached by (runner identity, image content hash) in a :class:`~edgedeploy.runtime.cache.ScoreCache`,
one batch at a time, so a re-run costs nothing and an interrupted run resumes. The runner is activated only
when an image needs scoring. While a batch runs, the next one is read and pre-processed on a thread (decoding
releases the GIL), so decoding hides behind inference. A corrupt or missing image is never skipped: the run
scores the rest, then stops with an error naming every image it could not read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedeploy.core.errors import DataError
from edgedeploy.core.hashing import sha256_file
from edgedeploy.evaluation.data import Benchmark, load_image
from edgedeploy.runtime.base import Runner
from edgedeploy.runtime.cache import NoCache, ScoreCache
from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable, first_items



@dataclass
class ScoredBenchmark:
    """One runner's results on one benchmark: the score table, raw maps by path, and what it cost."""

    label: str
    table: ScoreTable
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0
    unreadable: list[str] = field(default_factory=list)  # "path (why)", with skip_unreadable: images left out

    def summary(self) -> str:
        total = self.computed + self.cached
        rate = f", {self.computed / self.seconds:.2f} images/s" if self.computed and self.seconds > 0 else ""
        return (f"{self.label}: {total} images ({self.cached} from cache, {self.computed} scored "
                f"in {self.seconds:.1f}s{rate})")


def image_hashes(bench: Benchmark) -> tuple[list[str | None], list[str]]:
    """sha256 of every image file (None where unreadable), and a problem line per unreadable one."""
    hashes: list[str | None] = []
    problems: list[str] = []
    for sample in bench.samples:
        try:
            hashes.append(sha256_file(sample.path))
        except OSError as exc:
            hashes.append(None)
            problems.append(f"{sample.path} ({exc.strerror or type(exc).__name__})")
    return hashes, problems


def _progress(total: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="img", file=sys.stderr, disable=(None if enabled else True),
                leave=False, dynamic_ncols=True)


def score_benchmark(runner: Runner, bench: Benchmark, cache: ScoreCache | None = None, progress: bool = True,
                    meta: dict[str, str] | None = None,
                    on_batch: Callable[[int], None] | None = None, skip_unreadable: bool = False) -> ScoredBenchmark:
    """Score every image of ``bench`` with ``runner``, reusing and extending ``cache``.

    Raises :class:`DataError` naming every image that could not be read or decoded (after scoring
    all the others, whose results are cached); with ``skip_unreadable`` (unlabeled images, ``score --images``)
    those are left out of the table and named in ``unreadable`` instead.
    """
    cache = cache if cache is not None else NoCache({})
    start = time.perf_counter()
    hashes, problems = image_hashes(bench)
    known = cache.load()
    todo: dict[str, int] = {}
    for i, sha in enumerate(hashes):
        if sha is not None and sha not in known and sha not in todo:
            todo[sha] = i
    computed = 0
    pending = list(todo.items())
    batches = [pending[begin:begin + runner.batch_size] for begin in range(0, len(pending), runner.batch_size)]
    with _progress(len(todo), runner.label, progress) as bar:
        for batch, images, shas, unreadable in _read_ahead(bench, batches, runner):
            problems += unreadable
            if images:
                scores, maps = runner.infer(np.stack(images))
                cache.append(shas, scores, maps)
                for k, sha in enumerate(shas):
                    known[sha] = (float(scores[k]), maps[k])
                computed += len(shas)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(computed)
    seconds = time.perf_counter() - start
    if problems and not skip_unreadable:
        raise DataError(f"{len(problems)} image{'s' if len(problems) > 1 else ''} of {bench.name} could not be read: "
                        f"{first_items(problems)}; re-copy or remove {'them' if len(problems) > 1 else 'it'} "
                        "(the other images' scores are cached)")
    cache.compact()
    rows, maps_by_path = [], {}
    for sample, sha in zip(bench.samples, hashes):
        if skip_unreadable and (sha is None or sha not in known):
            continue
        score, amap = known[sha]
        rows.append(ScoreRow(sample.rel_path, sample.category, sample.label, score))
        if amap is not None:
            maps_by_path[sample.rel_path] = amap
    header = {**runner.meta(), "bench": bench.name, **(meta or {})}
    table = ScoreTable(header, rows)
    return ScoredBenchmark(runner.label, table, maps_by_path, computed=computed,
                           cached=len(rows) - computed, seconds=seconds, unreadable=problems)


def _read_ahead(bench: Benchmark, batches: list[list[tuple[str, int]]], runner: Runner):
    """Each batch with its images read (``_read_batch``); the next batch is read on a thread while the
    caller runs this one."""
    if not batches:
        return
    size = runner.input_size
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(_read_batch, bench, batches[0], size)
        for k, batch in enumerate(batches):
            images, shas, unreadable = upcoming.result()
            if k + 1 < len(batches):
                upcoming = reader.submit(_read_batch, bench, batches[k + 1], size)
            yield batch, images, shas, unreadable


def _read_batch(bench: Benchmark, batch: list[tuple[str, int]], size: int
                ) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The pre-processed images of one batch, their hashes, and a problem line per unreadable image."""
    images, shas, problems = [], [], []
    for sha, index in batch:
        try:
            images.append(load_image(bench.samples[index].path, size))
            shas.append(sha)
        except DataError as exc:
            problems.append(_problem(bench.samples[index].path, exc))
    return images, shas, problems


def _problem(path: Path, exc: Exception) -> str:
    """``path (why)`` from a pre-processing error message."""
    message = str(exc).split("; ")[0]
    why = message.split(str(path), 1)[1].lstrip(": ") if str(path) in message else ""
    if not why:
        why = "not found" if "not found" in message else message
    return f"{path} ({why})"
