"""The one runner interface every backend implements, host or device (after Polygraphy's ``BaseRunner``).

A runner is made cheaply, *activated* when there is work (a session, an engine, a model is loaded),
*infers* one batch of pre-processed images (float32 (N, 3, S, S) in [0, 1]) into image scores and raw
anomaly maps, and times itself: ``inference_times`` holds the seconds of each image, as the runner
measured them (a runner that can time the device alone records per image inside ``_infer``; others are
timed around the call), and ``last_inference_time()`` the last call's. ``identity()`` is what decides its
outputs (the score cache key) and ``meta()`` the provenance a score file's header carries.

Device runners live beside this module (ONNX Runtime, TensorRT, AI Hub) and import no PyTorch; the
host-side ones (PyTorch FP32, real FP16 on CUDA, the FP16 emulation) in ``edgedeploy.host.runners``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from edgedeploy.core.errors import EdgeDeployError

OUTPUTS = ("score", "anomaly_map")


class ModelFileError(EdgeDeployError):
    """The model to run is missing, of an unknown kind, or has unexpected inputs/outputs."""


class Runner:
    runner: str = ""       # the name score files and caches record
    label: str = ""        # what the report calls it
    batch_size: int = 1    # images per ``infer`` call
    timed: str = "around each infer call"  # what one recorded inference time covers
    wall_time_is_inference: bool = True    # False where a call's wall time is not the model's (a remote job)
    on_target: bool = False                # True where it runs on the bundle's target device (its latency is the device's)

    def __init__(self) -> None:
        self.is_active = False
        self.inference_times: list[float] = []
        self._last: float | None = None
        self._recorded = 0

    @property
    def input_size(self) -> int:
        raise NotImplementedError

    def identity(self) -> dict:
        return {"runner": self.runner}

    def meta(self) -> dict[str, str]:
        return {"runner": self.runner}

    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def _activate(self) -> None:
        """Load what inference needs (a session, an engine, a model)."""

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores float64 (N,), raw anomaly maps float32 (N, h, w)) for one batch."""
        self.activate()
        before = len(self.inference_times)
        start = time.perf_counter()
        scores, maps = self._infer(images)
        self._last = time.perf_counter() - start
        if self.wall_time_is_inference and len(self.inference_times) == before and len(images):
            self.inference_times += [self._last / len(images)] * len(images)
        return scores, maps

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def record_inference(self, seconds: float) -> None:
        """For runners that time one image at a time inside ``_infer`` (the device alone, no copies)."""
        self.inference_times.append(float(seconds))

    def last_inference_time(self) -> float | None:
        return self._last

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def _deactivate(self) -> None:
        """Release what ``_activate`` loaded."""

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()


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
