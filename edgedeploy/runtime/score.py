"""The device-side scorer: run a benchmark through a deployed model and write the per-image score file.

One entry point for every artifact a bundle holds, chosen by the model file's suffix:

* ``model.onnx``   ONNX Runtime on the CPU (runner ``onnxruntime-cpu``), anywhere;
* ``model.engine`` TensorRT on the Jetson (runner ``tensorrt``), refused on another GPU/TensorRT;
* ``model.dlc``    Qualcomm AI Hub inference jobs on the bundle's hub device (runner ``qai-hub``).

Images go through the shared pre-processing (``edgedeploy.evaluation.data``); scores go to
``edgedeploy.runtime.scorefile.write_scores``, which ``edgedeploy fidelity --device-scores`` reads. This
module and what it imports need numpy, Pillow, onnxruntime (for ONNX) or tensorrt (for engines),
never PyTorch: a Jetson runs it without torch installed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable, write_scores

Log = Callable[[str], None]
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
OUTPUTS = ("score", "anomaly_map")


class ModelFileError(EdgeDeployError):
    """The model to score is missing, of an unknown kind, or has unexpected inputs/outputs."""


class Scorer(Protocol):
    runner: str
    input_size: int
    batch_size: int
    graph_sha256: str | None
    extra_meta: dict

    def predict_named(self, images: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OnnxScorer:
    """ONNX Runtime on the CPU, one image at a time (the exported graph has batch 1)."""

    runner = "onnxruntime-cpu"
    batch_size = 16

    def __init__(self, path: Path):
        from edgedeploy.core.onnxfile import ort_session

        try:
            self.session = ort_session(path)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelFileError(f"ONNX Runtime cannot load {path} ({type(exc).__name__}): is it an ONNX model? "
                                 "Rebuild the bundle") from None
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) for d in shape[2:]) or shape[2] != shape[3]:
            raise ModelFileError(f"{path} has inputs {[(i.name, i.shape) for i in inputs]}: expected one 1x3xSxS image "
                                 "input (an EdgeZSAD bundle's model.onnx)")
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_size = int(shape[2])
        self.graph_sha256 = None  # the file's own hash, filled in by open_scorer
        self.extra_meta: dict = {}

    def predict_named(self, images: np.ndarray) -> dict[str, np.ndarray]:
        per_image = [self.session.run(None, {self.input_name: np.ascontiguousarray(img[None], dtype=np.float32)})
                     for img in images]
        return {name: np.concatenate([outs[k] for outs in per_image]) for k, name in enumerate(self.output_names)}

    def close(self) -> None:
        pass


def open_scorer(model: str | Path, log: Log = print) -> Scorer:
    """A scorer for ``model`` (by suffix), its provenance attached as ``graph_sha256``/``manifest``."""
    from edgedeploy.core.hashing import sha256_file
    from edgedeploy.runtime.bundle import bundle_of

    path = Path(model)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist: pass a bundle's model.onnx, model.engine or model.dlc")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        scorer = OnnxScorer(path)
        scorer.graph_sha256 = sha256_file(path)
    elif suffix in ENGINE_SUFFIXES:
        from edgedeploy.runtime.tensorrt import TensorRTScorer

        scorer = TensorRTScorer(path)
    elif suffix == ".dlc":
        from edgedeploy.runtime.bundle import BundleError, require_runtime
        from edgedeploy.targets.qnn.hub import HubScorer

        bundle_dir, manifest = bundle_of(path)
        if manifest is None:
            raise BundleError(f"{path} is not inside a bundle with a manifest.json: AI Hub scoring needs the bundle's "
                              "compile job record; pass out/rb5-gen2/model.dlc")
        require_runtime(bundle_dir, manifest, "qnn", "AI Hub scoring")
        scorer = HubScorer(path, manifest, bundle_dir, log)
        scorer.graph_sha256 = manifest["model"]["sha256"]
    else:
        raise ModelFileError(f"cannot score {path}: expected a .onnx (ONNX Runtime), .engine (TensorRT) or .dlc "
                             "(AI Hub) file")
    scorer.manifest = bundle_of(path)[1]
    scorer.path = path
    return scorer


def split_outputs(named: dict[str, np.ndarray], count: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,), maps (N, h, w)) from a model's outputs: by name, else by size (a score is one value)."""
    if all(name in named for name in OUTPUTS):
        score, amap = named["score"], named["anomaly_map"]
    elif len(named) == 2:
        score, amap = sorted(named.values(), key=lambda a: a.size)
    else:
        raise ModelFileError(f"model outputs {sorted(named)}: expected `score` and `anomaly_map`")
    score = np.asarray(score, dtype=np.float64).reshape(count, -1)
    amap = np.asarray(amap, dtype=np.float32)
    if score.shape[1] != 1 or amap.size % count:
        raise ModelFileError(f"model outputs have shapes {score.shape} and {amap.shape} for {count} images: expected one "
                             "score and one map per image")
    side = amap.reshape(count, -1).shape[1]
    h = amap.shape[-2] if amap.ndim >= 3 else int(math.isqrt(side))
    return score[:, 0], amap.reshape(count, h, -1)


def provenance(scorer: Scorer, bench: str) -> dict[str, str]:
    """The score file's header: what produced these scores, so fidelity can tell comparable files apart."""
    manifest = getattr(scorer, "manifest", None) or {}
    checkpoint = manifest.get("checkpoint") or {}
    if checkpoint.get("sha256"):
        checkpoint_sha = checkpoint["sha256"]
    else:
        checkpoint_sha = "seeded" if checkpoint.get("source") == "seeded" else "unknown"
    meta = {"model_sha256": scorer.graph_sha256 or "unknown", "checkpoint_sha256": checkpoint_sha,
            "recipe": (manifest.get("recipe") or {}).get("name", "unknown"), "runner": scorer.runner, "bench": bench,
            "model": Path(getattr(scorer, "path", "")).name, "target": (manifest.get("target") or {}).get("name", "none"),
            "image_size": str(scorer.input_size)}
    meta.update({k: str(v) for k, v in scorer.extra_meta.items()})
    return meta


def score_benchmark(model: str | Path, bench: str, out: str | Path, data_root: str | Path | None = None,
                    categories: Sequence[str] | None = None, save_maps: bool = False, log: Log = print) -> ScoreTable:
    """Score every test image of ``bench`` with ``model`` and write ``out`` (and ``<out>.maps.npz``)."""
    from edgedeploy.evaluation.data import load_batch, load_benchmark

    scorer = open_scorer(model, log)
    try:
        benchmark = load_benchmark(bench, data_root, list(categories) if categories else None)
    except BaseException:
        scorer.close()
        raise
    rows: list[ScoreRow] = []
    maps: dict[str, np.ndarray] = {}
    try:
        samples = benchmark.samples
        for start in range(0, len(samples), scorer.batch_size):
            chunk = samples[start:start + scorer.batch_size]
            images = load_batch([s.path for s in chunk], scorer.input_size)
            scores, amaps = split_outputs(scorer.predict_named(images), len(chunk))
            for sample, value, amap in zip(chunk, scores, amaps):
                rows.append(ScoreRow(sample.rel_path, sample.category, sample.label, float(value)))
                if save_maps:
                    maps[sample.rel_path] = amap
            if len(rows) == len(samples) or (start // scorer.batch_size) % 10 == 9:
                log(f"scored {len(rows)}/{len(samples)} images")
        meta = provenance(scorer, benchmark.name)
    finally:
        scorer.close()
    bad = [r.path for r in rows if not math.isfinite(r.score)]
    if bad:
        log(f"warning: {len(bad)} scores are NaN or infinite (first: {bad[0]}): the device's precision overflowed; "
            "fidelity will refuse this file")
    table = ScoreTable(meta, rows)
    if save_maps:
        table.meta["maps"] = "raw anomaly_map output at model resolution (upsample with edgedeploy.core.postprocess)"
    write_scores(out, table, maps if save_maps else None)
    return table
