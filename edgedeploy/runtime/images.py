"""``edgedeploy score --images DIR_OR_FILE``: unlabeled images on the device, scored and decided OK / NG.

What the production line has is a folder of new images (any layout, recursively) or one image, not a benchmark.
Each image is decoded and pre-processed exactly as a benchmark's (``edgedeploy.evaluation.data.load_image``, fed
through the bundle's model card) by the one batch loop (``edgedeploy.runtime.batch.score_benchmark``), with the
same latency figures as ``score --bench``. Where the bundle's manifest holds a decision record (``edgedeploy
fidelity --write-threshold``), each score gets a decision, **NG when score >= threshold** (``runtime.decision``);
a record written for another model is refused. ``--maps DIR`` writes one overlay PNG per image
(``runtime.overlay``), rendered on a thread while the next batch runs, so the device's inference does not wait.

An unreadable or truncated image is a warning and a row with an ``error``; the run goes on and exits 1 at the end.
No PyTorch, no scipy, no matplotlib: numpy, Pillow and the runner's runtime.

The CSV (``--out``; without it, a folder's rows go to stdout)::

    # edgedeploy-image-scores: 1
    # model_sha256: ...        (and the runner, recipe, target, threshold, colour scale, latency)
    path,score,decision,error
    line3/cam1/0001.png,0.8125,NG,
    line3/cam1/0002.png,,,cannot decode image ...: image file is truncated
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgedeploy.core.errors import CHECK_FAILED, DataError, EdgeDeployError
from edgedeploy.evaluation.data.benchmarks import IMAGE_EXTENSIONS, Benchmark, Sample
from edgedeploy.runtime.cache import NoCache

Log = Callable[[str], None]
FORMAT_VERSION = "1"
COLUMNS = ("path", "score", "decision", "error")
UNLABELED = -1
KINDS = "PNG, JPEG, BMP or TIFF"


@dataclass(frozen=True)
class ImageSet:
    """The images ``--images`` names: a folder walked recursively, or one file."""

    root: Path
    samples: tuple[Sample, ...]
    single: bool
    ignored: int = 0  # files that are not images (by their suffix)

    def bench(self) -> Benchmark:
        return Benchmark("images", self.root, self.samples)


@dataclass
class ImageResult:
    path: str               # relative to the --images folder (the file's name for one image)
    score: float | None     # None where the image failed
    decision: str = ""      # NG / OK, "" without a threshold or where the image failed
    error: str = ""
    overlay: Path | None = None


@dataclass
class ImageRun:
    results: list[ImageResult]
    meta: dict[str, str]
    threshold: object | None = None  # runtime.decision.Threshold
    overlay_seconds: float = 0.0     # rendering and writing the overlays, summed over images (on their thread)
    overlay_wait: float = 0.0        # what the run waited for them after the last batch
    seconds: float = 0.0             # the batch loop's wall time
    files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.results if r.error]

    @property
    def exit_code(self) -> int:
        return CHECK_FAILED if self.failed else 0


# ------------------------------------------------------------------------------------------- inputs


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def find_images(path: str | Path, category: str | None = None, exclude: tuple[Path, ...] = ()) -> ImageSet:
    """Every PNG, JPEG, BMP and TIFF file under ``path`` (recursively, hidden files and folders and the ``exclude``
    folders skipped, sorted by relative path), or ``path`` itself when it is a file."""
    path = Path(path)
    label_category = category or ""
    if path.is_file():
        if not _is_image(path.name):
            raise DataError(f"--images {path} is not a {KINDS} file (by its suffix: {', '.join(IMAGE_EXTENSIONS)})")
        full = path.resolve()
        return ImageSet(full.parent, (Sample(full, path.name, label_category, UNLABELED, "", None),), single=True)
    if not path.is_dir():
        raise DataError(f"--images {path} does not exist: give a folder of images or one image file")
    root = path.resolve()
    skip = {Path(p).resolve() for p in exclude}
    samples, ignored = [], 0
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in skip)
        for name in files:
            if _is_image(name):
                full = here / name
                samples.append(Sample(full, full.relative_to(root).as_posix(), label_category, UNLABELED, "", None))
            elif not name.startswith("."):
                ignored += 1
    if not samples:
        others = f" ({ignored} other file{'s' if ignored != 1 else ''} ignored)" if ignored else ""
        raise DataError(f"no {KINDS} images in {path} (searched recursively){others}: give the folder the images are "
                        "in, or one image file")
    samples.sort(key=lambda s: s.rel_path)
    return ImageSet(root, tuple(samples), single=False, ignored=ignored)


def bundle_model_file(model: str | Path, runtime: str | None, log: Log) -> Path:
    """``--model`` as a file: a bundle folder gives the model its target runs (``model.engine`` on a TensorRT
    bundle where built, ``model_ctx.onnx`` with ``--runtime qnn-htp`` where compiled, else ``model.onnx``)."""
    path = Path(model)
    if not path.is_dir():
        return path
    from edgedeploy.runtime.bundle import read_manifest

    manifest = read_manifest(path)
    target = manifest["target"]
    candidates = []
    if runtime == "qnn-htp":
        candidates.append("model_ctx.onnx")
    elif runtime is None and target.get("runtime") == "tensorrt":
        candidates.append("model.engine")
    candidates.append(str((manifest.get("model") or {}).get("path") or "model.onnx"))
    for name in candidates:
        if (path / name).is_file():
            chosen = path / name
            break
    else:
        raise DataError(f"bundle {path} has no {' or '.join(candidates)}: rebuild it with `edgedeploy build --target "
                        f"{target.get('name', 'TARGET')}`")
    how = {".engine": "TensorRT", ".onnx": f"QNN {runtime[4:].upper()}" if runtime else "ONNX Runtime on the CPU"}
    note = ""
    if chosen.name == "model.onnx" and target.get("runtime") == "tensorrt" and runtime is None:
        note = "; no model.engine in it yet (`edgedeploy engine build` makes it on the Jetson)"
    log(f"model: {chosen} ({how.get(chosen.suffix, chosen.suffix)}{note})")
    return chosen


def overlay_paths(images: ImageSet, maps_dir: Path) -> dict[str, Path]:
    """Each image's overlay: ``DIR/<its relative path>`` as .png (``name.ext.png`` where two images share a stem)."""
    stems: dict[str, int] = {}
    for s in images.samples:
        key = str(Path(s.rel_path).with_suffix(""))
        stems[key] = stems.get(key, 0) + 1
    out = {}
    for s in images.samples:
        rel = Path(s.rel_path)
        unique = stems[str(rel.with_suffix(""))] == 1
        out[s.rel_path] = maps_dir / (rel.with_suffix(".png") if unique else rel.with_name(rel.name + ".png"))
    return out


# ------------------------------------------------------------------------------------------- overlays


class _OverlayWriter(NoCache):
    """Stands in the batch loop's cache slot: each batch's maps are handed to a thread that renders the overlays
    while the next batch runs (nothing is cached)."""

    def __init__(self, images: ImageSet, targets: dict[str, Path], input_size: int, sigma: float,
                 scale: tuple[float, float], threshold):
        super().__init__({})
        from edgedeploy.runtime.batch import image_hashes

        self.targets, self.input_size, self.sigma, self.scale, self.threshold = targets, input_size, sigma, scale, threshold
        hashes, _ = image_hashes(images.bench())
        self.by_sha: dict[str, list[Sample]] = {}
        for sample, sha in zip(images.samples, hashes):
            if sha is not None:
                self.by_sha.setdefault(sha, []).append(sample)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlay")
        self.futures: dict[str, Future] = {}

    def append(self, shas, scores, maps) -> None:
        for sha, score, amap in zip(shas, scores, maps if maps is not None else [None] * len(shas)):
            for sample in self.by_sha.get(sha, []):
                if amap is not None:
                    self.futures[sample.rel_path] = self.pool.submit(self._one, sample, float(score), np.array(amap))

    def _one(self, sample: Sample, score: float, amap: np.ndarray) -> float:
        from edgedeploy.runtime.overlay import write_overlay

        start = time.perf_counter()
        text = {"image": sample.rel_path, "score": repr(score)}
        if self.threshold is not None:
            text.update({"decision": self.threshold.decide(score), "threshold": repr(self.threshold.value)})
        write_overlay(self.targets[sample.rel_path], sample.path, amap, self.input_size, self.sigma, self.scale, text)
        return time.perf_counter() - start

    def finish(self) -> tuple[dict[str, str], float]:
        """Wait for every overlay: the errors by image, and the seconds spent rendering them."""
        errors, seconds = {}, 0.0
        for rel, future in self.futures.items():
            try:
                seconds += future.result()
            except (OSError, EdgeDeployError, ValueError) as exc:
                errors[rel] = f"overlay not written: {' '.join(str(exc).split()) or type(exc).__name__}"
        self.pool.shutdown(wait=True)
        return errors, seconds

    def cancel(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _colour_scale(map_range, record, log: Log) -> tuple[float, float]:
    from edgedeploy.runtime.decision import map_range as recorded_range
    from edgedeploy.runtime.overlay import DEFAULT_RANGE, parse_map_range

    if map_range is not None:
        scale = parse_map_range(map_range) if isinstance(map_range, str) else tuple(map(float, map_range))
        log(f"overlays: fixed colour scale [{scale[0]:.6g}, {scale[1]:.6g}] (--map-range)")
        return scale  # type: ignore[return-value]
    scale = recorded_range(record)
    if scale is not None:
        log(f"overlays: fixed colour scale [{scale[0]:.6g}, {scale[1]:.6g}] (the bundle's decision record: the host's "
            "maps of the calibration images)")
        return scale
    log(f"overlays: fixed colour scale [{DEFAULT_RANGE[0]:g}, {DEFAULT_RANGE[1]:g}] (the bundle records none; "
        "`fidelity --write-threshold` records one from the host's maps, or give --map-range LO,HI)")
    return DEFAULT_RANGE


# ------------------------------------------------------------------------------------------- the run


def _errors_by_path(images: ImageSet, problems: list[str]) -> dict[str, str]:
    """``path (why)`` lines of the batch loop, back to the images they name."""
    out = {}
    for sample in images.samples:
        prefix = f"{sample.path} ("
        for line in problems:
            if line.startswith(prefix):
                out[sample.rel_path] = line[len(prefix):-1] if line.endswith(")") else line[len(prefix):]
                break
    return out


def check_outputs(out: Path | None, maps_dir: Path | None) -> None:
    from edgedeploy.core.files import ensure_writable_dir, ensure_writable_file

    if out is not None:
        ensure_writable_file(out, "--out")
    if maps_dir is not None:
        if maps_dir.is_file():
            raise EdgeDeployError(f"--maps {maps_dir} is a file: give a folder for the overlay PNGs")
        ensure_writable_dir(maps_dir, "--maps")


def score_images(model: str | Path, images: str | Path, out: str | Path | None = None, category: str | None = None,
                 maps_dir: str | Path | None = None, map_range: str | tuple[float, float] | None = None,
                 log: Log = print, progress: bool = True, card: str | Path | None = None, runtime: str | None = None,
                 allow_cpu_fallback: bool = False, qnn_precision: str | None = None) -> ImageRun:
    """Score ``images`` (a folder, recursively, or one file) with ``model`` (a file, or a bundle folder), decide each
    against the bundle's threshold where it has one, write ``out`` and the overlays in ``maps_dir``."""
    from edgedeploy.runtime import decision as decisions
    from edgedeploy.runtime.batch import score_benchmark
    from edgedeploy.runtime.score import latency_meta, open_runner, provenance

    out = Path(out) if out is not None else None
    maps_dir = Path(maps_dir) if maps_dir is not None else None
    if isinstance(map_range, str):
        from edgedeploy.runtime.overlay import parse_map_range

        parse_map_range(map_range)  # a bad range is refused before any work
    found = find_images(images, category, exclude=tuple(p for p in (maps_dir,) if p is not None))
    check_outputs(out, maps_dir)
    model = bundle_model_file(model, runtime, log)
    runner = open_runner(model, log, card, runtime=runtime, allow_cpu_fallback=allow_cpu_fallback,
                         qnn_precision=qnn_precision)
    writer: _OverlayWriter | None = None
    try:
        manifest = getattr(runner, "manifest", None)
        record = decisions.record_of(manifest)
        threshold = None
        if record is not None:
            decisions.check_model(record, manifest, runner.meta().get("model_sha256"), Path(model).name)
            threshold = decisions.choose(record, category, runner.runner)
            log(f"decision: NG when score >= {threshold.describe()}")
        else:
            where = (f"the bundle {Path(model).parent} has no decision threshold" if manifest is not None else
                     f"{Path(model).name} is not in a bundle, so it has no decision threshold")
            target = ((manifest or {}).get("target") or {}).get("name", "TARGET")
            log(f"note: {where}: scores only{' (--category is unused)' if category else ''}; "
                + decisions.HOW_TO_ADD.format(target=target))
        if maps_dir is not None:
            model_card = getattr(runner, "card", None)
            size = model_card.input_size if model_card is not None else runner.input_size
            sigma = model_card.smooth_sigma if model_card is not None else 0.0
            writer = _OverlayWriter(found, overlay_paths(found, maps_dir), size, sigma,
                                    _colour_scale(map_range, record, log), threshold)
        scored = score_benchmark(runner, found.bench(), cache=writer, progress=progress, skip_unreadable=True)
        meta = provenance(runner, "none (unlabeled images)")
    except BaseException:
        if writer is not None:
            writer.cancel()
        raise
    finally:
        runner.deactivate()
    wait_start = time.perf_counter()
    overlay_errors, overlay_seconds = writer.finish() if writer is not None else ({}, 0.0)
    overlay_wait = time.perf_counter() - wait_start

    meta.update(latency_meta(runner, log))
    meta["images"] = str(Path(images))
    meta["scores"] = "oriented: higher = more anomalous (the model card's polarity applied)"
    if threshold is not None:
        meta.update(threshold.header())
    else:
        meta["threshold"] = "none"
    if writer is not None:
        meta["map_range"] = f"{writer.scale[0]!r},{writer.scale[1]!r}"
        meta["maps"] = str(maps_dir)

    unreadable = _errors_by_path(found, scored.unreadable)
    rows = scored.table.by_path()
    results = []
    for sample in found.samples:
        rel = sample.rel_path
        if rel in unreadable or rel not in rows:
            results.append(ImageResult(rel, None, error=unreadable.get(rel, "not scored")))
            continue
        score = rows[rel].score
        result = ImageResult(rel, score, overlay=writer.targets.get(rel) if writer is not None else None)
        if not math.isfinite(score):
            result.error = "score is NaN or inf (the precision overflowed)"
        elif threshold is not None:
            result.decision = threshold.decide(score)
        if rel in overlay_errors:
            result.error = "; ".join(e for e in (result.error, overlay_errors[rel]) if e)
            result.overlay = None
        results.append(result)
    run = ImageRun(results, meta, threshold, overlay_seconds, overlay_wait, scored.seconds)
    for r in run.failed:
        log(f"warning: {found.root / r.path if not found.single else r.path}: {r.error}")
    _summary(run, found, writer, log)
    if out is not None:
        write_image_scores(out, run)
        run.files.append(out)
    return run


def _summary(run: ImageRun, found: ImageSet, writer, log: Log) -> None:
    scored = [r for r in run.results if r.score is not None]
    counts = ""
    if run.threshold is not None:
        ng = sum(r.decision == "NG" for r in run.results)
        ok = sum(r.decision == "OK" for r in run.results)
        counts = f": {ng} NG, {ok} OK"
    failed = f"; {len(run.failed)} failed (named above)" if run.failed else ""
    ignored = f"; {found.ignored} non-image file{'s' if found.ignored != 1 else ''} ignored" if found.ignored else ""
    log(f"scored {len(scored)} of {len(run.results)} image{'s' if len(run.results) != 1 else ''}{counts}{failed}{ignored}")
    if writer is not None:
        written = sum(r.overlay is not None for r in run.results)
        per = 1000.0 * run.overlay_seconds / written if written else 0.0
        log(f"overlays: {written} PNGs in {run.meta.get('maps', '')} ({per:.1f} ms per image to render and write, on a "
            "thread beside inference; "
            f"the run waited {run.overlay_wait:.2f}s for them after the last batch)")


def csv_text(run: ImageRun, header: bool = True) -> str:
    buf = io.StringIO()
    if header:
        buf.write(f"# edgedeploy-image-scores: {FORMAT_VERSION}\n")
        for key, value in run.meta.items():
            buf.write(f"# {key}: {' '.join(str(value).split())}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in run.results:
        writer.writerow((r.path, "" if r.score is None else repr(float(r.score)), r.decision, r.error))
    return buf.getvalue()


def write_image_scores(path: str | Path, run: ImageRun) -> None:
    from edgedeploy.core.files import write_text_atomic

    write_text_atomic(path, csv_text(run))


def read_image_scores(path: str | Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(header, rows as dicts) of a file ``write_image_scores`` wrote."""
    from edgedeploy.runtime.scorefile import split_header

    lines = Path(path).read_text().splitlines()
    meta, start = split_header(lines)
    if meta.get("edgedeploy-image-scores") != FORMAT_VERSION:
        raise DataError(f"{path} is not an edgedeploy image score file (no '# edgedeploy-image-scores: "
                        f"{FORMAT_VERSION}' header)")
    return meta, list(csv.DictReader(lines[start:]))


def single_line(run: ImageRun) -> str:
    """One image's result, as ``score --images FILE`` prints it."""
    r = run.results[0]
    if r.score is None:
        return f"{r.path}: not scored ({r.error})"
    if r.decision:
        decided = f"  {r.decision} ({run.threshold.describe()})"
    else:
        decided = " (no decision threshold in the bundle)" if run.threshold is None else ""
    overlay = f"; overlay {r.overlay}" if r.overlay is not None else ""
    error = f"; {r.error}" if r.error else ""
    return f"{r.path}: score {r.score:.6g}{decided}{overlay}{error}"


# ------------------------------------------------------------------------------------------- the command line


def check_score_options(bench: str | None, images: Path | None, out: Path | None, category: str | None,
                        maps_dir: Path | None, map_range: str | None, data_root: Path | None,
                        categories: tuple[str, ...], save_maps: bool) -> None:
    """``edgedeploy score``: --bench (a benchmark, into a score file) or --images (unlabeled images), not both."""
    import click

    if images is not None and bench is not None:
        raise click.UsageError("--images and --bench contradict each other: --bench scores a benchmark's labelled test "
                               "images into a score file, --images scores a folder or an image; give one")
    if images is None and bench is None:
        raise click.UsageError("give --bench NAME (a benchmark, with --out) or --images DIR_OR_FILE (unlabeled images)")
    if images is None:
        only = [name for name, value in (("--category", category), ("--maps", maps_dir), ("--map-range", map_range))
                if value is not None]
        if only:
            raise click.UsageError(f"{', '.join(only)} appl{'ies' if len(only) == 1 else 'y'} to --images (with --bench, "
                                   "--categories picks categories and --save-maps keeps the raw maps)")
        if out is None:
            raise click.UsageError("--out is needed with --bench: the score file to write")
        return
    bench_only = [name for name, value in (("--data-root", data_root), ("--categories", categories),
                                           ("--save-maps", save_maps)) if value]
    if bench_only:
        raise click.UsageError(f"{', '.join(bench_only)} appl{'ies' if len(bench_only) == 1 else 'y'} to --bench; with "
                               "--images, --category NAME picks the category's threshold and --maps DIR writes overlays")
    if map_range is not None and maps_dir is None:
        raise click.UsageError("--map-range sets the colour scale of the overlays: add --maps DIR")


def images_command(model: Path, images: Path, out: Path | None, category: str | None, maps_dir: Path | None,
                   map_range: str | None, **runner_options) -> int:
    """``edgedeploy score --images``: run, print, and return the exit code (1 when an image failed)."""
    import click

    run = score_images(model, images, out, category=category, maps_dir=maps_dir, map_range=map_range,
                       log=lambda line: click.echo(line, err=True), **runner_options)
    if len(run.results) == 1 and Path(images).is_file():
        click.echo(single_line(run))
    elif out is None:
        click.echo(csv_text(run, header=False), nl=False)
    if out is not None:
        click.echo(f"scores: {out} ({len(run.results)} images, runner {run.meta['runner']}, model "
                   f"{run.meta['model_sha256'][:12]})", err=len(run.results) == 1)
    return run.exit_code
