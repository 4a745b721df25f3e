"""Scorers: one benchmark in, one per-image score file (``edgedeploy.runtime.scorefile``) out.

=====================  ===================  ==========================================================
runner                 what runs            role
=====================  ===================  ==========================================================
``torch``              PyTorch FP32 eager   the host reference (``build_model``), batched; ``torch-cuda``
                                            on a GPU (``--host-device``)
``torch-fp16``         PyTorch FP16 on      a device stand-in: real FP16 arithmetic (tensor cores)
                       CUDA
``onnxruntime-cpu``    ONNX Runtime FP32    the exported graph (the bundle's ``model.onnx``) on the host
``fp16-emulation``     ONNX Runtime FP32    the bundle's graph with FP16 rounding (``fp16.py``):
                       on an FP16-rounded   the default device when no device is reachable
                       graph
=====================  ===================  ==========================================================

TensorRT engines and AI Hub inference jobs score on (or for) the device with ``edgedeploy score``;
their score files enter through ``--device-scores`` (see ``device_scores.py``).

Every scorer reads images with the shared pre-processing (``edgedeploy.evaluation.data.load_image``), and
:func:`score_benchmark` caches each result by (scorer identity, image content hash) in a
:class:`~edgedeploy.runtime.cache.ScoreCache`, one batch at a time, so a re-run costs nothing and
an interrupted run resumes. A corrupt or missing image is never skipped: the run scores the rest,
then stops with an error naming every image it could not read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from edgedeploy import __version__
from edgedeploy.evaluation.data import Benchmark, load_image
from edgedeploy.core.errors import DataError
from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable
from edgedeploy.runtime.cache import NoCache, ScoreCache

SEEDED = "seeded"
_SHOWN = 5


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


class Scorer:
    """Scores a batch of pre-processed images (float32 (N, 3, S, S) in [0, 1])."""

    runner: str = ""
    label: str = ""
    batch_size: int = 1

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    @property
    def input_size(self) -> int:
        return self.recipe.model.input_size

    def identity(self) -> dict:
        """What decides this scorer's outputs; the score cache key."""
        raise NotImplementedError

    def meta(self) -> dict[str, str]:
        """The provenance written into the score file header."""
        raise NotImplementedError

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (N,), raw anomaly maps (N, h, w)) for a batch."""
        raise NotImplementedError


class TorchScorer(Scorer):
    """Host PyTorch eager, built on the first batch: the FP32 reference (CPU, or CUDA without TF32), or with
    ``half=True`` on CUDA the model in real FP16 arithmetic, a device stand-in (``--device torch-fp16``)."""

    def __init__(self, recipe: Recipe, checkpoint: Path | None, checkpoint_sha256: str,
                 weights_fingerprint: str, batch_size: int = 4, tune_malloc: bool = True, device: str = "cpu",
                 half: bool = False):
        super().__init__(recipe)
        self.checkpoint = checkpoint
        self.checkpoint_sha256 = checkpoint_sha256
        self.weights_fingerprint = weights_fingerprint
        self.batch_size = max(1, int(batch_size))
        self.tune_malloc = tune_malloc  # edgedeploy.host.hostmem: about 2x faster on the CPU, same numbers
        self.device, self.half = device, half
        self.runner = "torch-fp16" if half else ("torch" if device == "cpu" else f"torch-{device}")
        precision = "FP16" if half else "FP32"
        where = "" if device == "cpu" else f" on {device.upper()}"
        self.label = f"{'device stand-in' if half else 'host'} PyTorch {precision}{where}"
        self._model = None
        self.source: str | None = None

    def identity(self) -> dict:
        # The graph hash fingerprints the weights build_model loads (with no --checkpoint, the
        # default may change), so the cache never mixes scores of two different models.
        identity = {"runner": self.runner, "checkpoint": self.checkpoint_sha256, "recipe": self.recipe.sha256,
                    "weights": self.weights_fingerprint, "edgedeploy": __version__,
                    "torch": _version("torch"), "timm": _version("timm")}
        if self.device != "cpu":
            from edgedeploy.evaluation.fidelity.gpu import gpu_name

            identity["gpu"] = gpu_name()
        return identity

    def meta(self) -> dict[str, str]:
        return {"model_sha256": f"- (PyTorch eager; exported as {self.weights_fingerprint})",
                "checkpoint_sha256": self.checkpoint_sha256, "recipe": self.recipe.name, "runner": self.runner}

    def _load(self):
        if self._model is None:
            from edgedeploy.host.model import build_model

            if self.device == "cpu" and self.tune_malloc:
                from edgedeploy.host.hostmem import keep_freed_memory

                keep_freed_memory()
            if self.device != "cpu" and not self.half:
                from edgedeploy.evaluation.fidelity.gpu import strict_fp32

                strict_fp32()
            loaded = build_model(self.recipe, self.checkpoint)
            model = loaded.model.to(self.device)
            self._model, self.source = (model.half() if self.half else model), loaded.source
        return self._model

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        model = self._load()
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        with torch.inference_mode():
            score, amap = model(x.half() if self.half else x)
        score, amap = score.float().cpu().numpy(), amap.float().cpu().numpy()
        return score.astype(np.float64).reshape(-1), amap[:, 0].astype(np.float32)


class OnnxScorer(Scorer):
    """An ONNX graph run by ONNX Runtime on the CPU, one image at a time (the graph is static batch 1)."""

    def __init__(self, onnx_path: Path, recipe: Recipe, checkpoint_sha256: str, runner: str = "onnxruntime-cpu",
                 label: str = "host ONNX Runtime FP32", model_sha256: str | None = None,
                 extra_identity: dict | None = None, disabled_optimizers: Iterable[str] = ()):
        super().__init__(recipe)
        self.onnx_path = Path(onnx_path)
        self.runner, self.label = runner, label
        self.checkpoint_sha256 = checkpoint_sha256
        self.model_sha256 = model_sha256 or sha256_file(self.onnx_path)
        self.extra_identity = dict(extra_identity or {})
        self.disabled_optimizers = list(disabled_optimizers)
        self._session = None

    def identity(self) -> dict:
        # the graph's bytes hold the weights: its hash decides the scores (a checkpoint re-saved with
        # other metadata but the same weights exports the same graph, and stays a cache hit)
        return {"runner": self.runner, "model": self.model_sha256, "recipe": self.recipe.sha256,
                "edgedeploy": __version__, "onnxruntime": _version("onnxruntime"), **self.extra_identity}

    def meta(self) -> dict[str, str]:
        meta = {"model_sha256": self.model_sha256, "checkpoint_sha256": self.checkpoint_sha256,
                "recipe": self.recipe.name, "runner": self.runner}
        meta.update({k: str(v) for k, v in self.extra_identity.items() if k != "source_model"})
        return meta

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            kwargs = {"disabled_optimizers": self.disabled_optimizers} if self.disabled_optimizers else {}
            self._session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"],
                                                 **kwargs)
        return self._session

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        session = self.session()
        names = list(self.recipe.output_names)
        scores, maps = [], []
        for i in range(len(images)):
            score, amap = session.run(names, {self.recipe.input_name: np.ascontiguousarray(images[i:i + 1])})
            scores.append(float(np.asarray(score).reshape(-1)[0]))
            maps.append(np.asarray(amap, dtype=np.float32).reshape(amap.shape[-2:]))
        return np.asarray(scores, dtype=np.float64), np.stack(maps)


def fp16_emulation_scorer(onnx_path: Path, recipe: Recipe, checkpoint_sha256: str, keep_fp32: Iterable[str] = (),
                          model_sha256: str | None = None, cache_dir: Path | None = None) -> OnnxScorer:
    """The device emulated on the host: the FP16-rounded graph of ``onnx_path`` (cached) under ONNX Runtime."""
    from edgedeploy.host.fp16 import EMULATION_VERSION, emulated_model

    model_sha256 = model_sha256 or sha256_file(onnx_path)
    keep = sorted(set(keep_fp32))
    emulated = emulated_model(onnx_path, keep, cache_dir=cache_dir, model_sha256=model_sha256)
    # the score file names the graph the device would run (the bundle's), not the derived one
    return OnnxScorer(emulated, recipe, checkpoint_sha256, runner="fp16-emulation",
                      label="device FP16 emulation (ONNX Runtime CPU)", model_sha256=model_sha256,
                      extra_identity={"emulation": EMULATION_VERSION, "keep_fp32": ",".join(keep) or "none"},
                      disabled_optimizers=("CastChainElimination",))


# ------------------------------------------------------------------------------------- scoring


@dataclass
class ScoredBenchmark:
    """One scorer's results on one benchmark: the score table, raw maps by path, and what it cost."""

    label: str
    table: ScoreTable
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0

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


def score_benchmark(scorer: Scorer, bench: Benchmark, cache: ScoreCache | None = None, progress: bool = True,
                    meta: dict[str, str] | None = None,
                    on_batch: Callable[[int], None] | None = None) -> ScoredBenchmark:
    """Score every image of ``bench`` with ``scorer``, reusing and extending ``cache``.

    Raises :class:`DataError` naming every image that could not be read or decoded (after scoring
    all the others, whose results are cached).
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
    with _progress(len(todo), scorer.label, progress) as bar:
        pending = list(todo.items())
        for begin in range(0, len(pending), scorer.batch_size):
            batch = pending[begin:begin + scorer.batch_size]
            images, shas = [], []
            for sha, index in batch:
                try:
                    images.append(load_image(bench.samples[index].path, scorer.input_size))
                    shas.append(sha)
                except DataError as exc:
                    problems.append(_problem(bench.samples[index].path, exc))
            if images:
                scores, maps = scorer.run(np.stack(images))
                cache.append(shas, scores, maps)
                for k, sha in enumerate(shas):
                    known[sha] = (float(scores[k]), maps[k])
                computed += len(shas)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(computed)
    seconds = time.perf_counter() - start
    if problems:
        raise DataError(f"{len(problems)} image{'s' if len(problems) > 1 else ''} of {bench.name} could not be read: "
                        f"{_first(problems)}; re-copy or remove {'them' if len(problems) > 1 else 'it'} "
                        "(the other images' scores are cached)")
    cache.compact()
    rows, maps_by_path = [], {}
    for sample, sha in zip(bench.samples, hashes):
        score, amap = known[sha]
        rows.append(ScoreRow(sample.rel_path, sample.category, sample.label, score))
        if amap is not None:
            maps_by_path[sample.rel_path] = amap
    header = {**scorer.meta(), "bench": bench.name, **(meta or {})}
    table = ScoreTable(header, rows)
    return ScoredBenchmark(scorer.label, table, maps_by_path, computed=computed,
                           cached=len(bench.samples) - computed, seconds=seconds)


def _problem(path: Path, exc: Exception) -> str:
    """``path (why)`` from a pre-processing error message."""
    message = str(exc).split("; ")[0]
    why = message.split(str(path), 1)[1].lstrip(": ") if str(path) in message else ""
    if not why:
        why = "not found" if "not found" in message else message
    return f"{path} ({why})"


def _first(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more
