"""The one runner interface every backend implements, host or device (after Polygraphy's ``BaseRunner``).

A runner is made cheaply, *activated* when there is work (a session, an engine, a model is loaded),
*infers* one batch of pre-processed images (float32 (N, 3, S, S) in [0, 1]) into image scores and raw
anomaly maps (fed and read through the model's card, ``edgedeploy.core.modelcard``: the one pre- and
post-processing path every runner shares), and times itself: ``inference_times`` holds the seconds of each image, as the runner
measured them (a runner that can time the device alone records per image inside ``_infer``; others are
timed around the call), and ``last_inference_time()`` the last call's. ``identity()`` is what decides its
outputs (the score cache key) and ``meta()`` the provenance a score file's header carries.

Device runners live beside this module (ONNX Runtime, TensorRT, AI Hub) and import no PyTorch; the
host-side ones (PyTorch FP32, real FP16 on CUDA, the FP16 emulation) in ``edgedeploy.host.runners``.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.modelcard import CardError, ModelCard, Shape, card_for_graph, card_from_manifest


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


class ModelFileRunner(Runner):
    """A runner of one model file whose bytes decide its scores (the weights are in the graph): ``model_sha256`` is
    the file's hash, given by the caller or computed once when first asked."""

    path = None
    _model_sha256: str | None = None

    @property
    def model_sha256(self) -> str:
        if self._model_sha256 is None:
            from edgedeploy.core.hashing import sha256_file

            self._model_sha256 = sha256_file(self.path)
        return self._model_sha256


def resolve_card(card: ModelCard | None, manifest: dict | None, inputs: Sequence[tuple[str, Shape]],
                 outputs: Sequence[tuple[str, Shape]], where: str, fields: dict | None = None) -> ModelCard:
    """The card a runner feeds and reads by: the one given, else its bundle's, else the graph's names (an anomalib
    or EdgeZSAD export) completed by the card ``fields`` of a ``--card`` file; checked against the graph."""
    if card is None and manifest:
        if fields:
            raise CardError(f"{where} is in a bundle, whose manifest.json holds its card: drop --card")
        card = card_from_manifest(manifest, f"{where}'s manifest.json")
    elif card is None:
        card = card_for_graph(inputs, outputs, fields, where=where)
    card.check_io(inputs, outputs, where)
    return card
