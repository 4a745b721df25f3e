"""ONNX Runtime on the CPU: a bundle's ``model.onnx`` on any machine, the host's FP32 graph, the FP16 emulation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

import numpy as np

from edgedeploy import __version__
from edgedeploy.core.errors import ToolFailedError
from edgedeploy.core.extras import package_version
from edgedeploy.core.modelcard import ModelCard, card_digest
from edgedeploy.runtime.base import ModelFileError, ModelFileRunner, resolve_card


class OnnxRuntimeRunner(ModelFileRunner):
    """One image at a time (the exported graph has a static batch of 1), CPU execution provider; each image
    is timed around its ``session.run`` alone.

    ``identity_extra`` joins the cache identity and ``meta_extra`` the score file header (a host-side caller
    adds its recipe and checkpoint there); ``disabled_optimizers`` names ONNX Runtime graph rewrites to skip.
    ``card`` says how to feed the graph and read it; without one, the ``manifest`` of the model's bundle
    gives it, else the graph's own input and output names (``edgedeploy.runtime.base.resolve_card``).
    """

    timed = "ONNX Runtime session.run on the CPU"

    def __init__(self, path: str | Path, runner: str = "onnxruntime-cpu", label: str = "ONNX Runtime FP32 (CPU)",
                 model_sha256: str | None = None, identity_extra: dict | None = None, meta_extra: dict | None = None,
                 disabled_optimizers: Iterable[str] = (), batch_size: int = 16, card: ModelCard | None = None,
                 manifest: dict | None = None, card_fields: dict | None = None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file {self.path} does not exist: pass a bundle's model.onnx")
        self.runner, self.label, self.batch_size = runner, label, batch_size
        self._model_sha256 = model_sha256
        self.identity_extra = dict(identity_extra or {})
        self.meta_extra = dict(meta_extra or {})
        self.disabled_optimizers = list(disabled_optimizers)
        self.card, self.manifest, self.card_fields = card, manifest, card_fields
        self.session = None

    @property
    def input_size(self) -> int:
        self.activate()
        return self._input_size

    def identity(self) -> dict:
        # the graph's bytes hold the weights: its hash decides the scores
        if self.card is None:  # the card decides the scores too; without one given, the graph's names give it
            self.activate()
        return {"runner": self.runner, "model": self.model_sha256, "edgedeploy": __version__,
                "onnxruntime": package_version("onnxruntime"), "card": card_digest(self.card), **self.identity_extra}

    def meta(self) -> dict[str, str]:
        return {"model_sha256": self.model_sha256, "runner": self.runner,
                **{k: str(v) for k, v in self.meta_extra.items()}}

    def _activate(self) -> None:
        from edgedeploy.core.onnxfile import ort_session

        try:
            self.session = ort_session(self.path, disabled_optimizers=self.disabled_optimizers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelFileError(f"ONNX Runtime cannot load {self.path} ({type(exc).__name__}): is it an ONNX model? "
                                 "Rebuild the bundle") from None
        inputs = [(i.name, list(i.shape)) for i in self.session.get_inputs()]
        outputs = [(o.name, list(o.shape)) for o in self.session.get_outputs()]
        self.card = resolve_card(self.card, self.manifest, inputs, outputs, str(self.path), self.card_fields)
        self.output_names = [name for name, _ in outputs]
        self._input_size = self.card.input_size

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        per_image = []
        try:
            for img in images:
                feed = {self.card.input_name: self.card.prepare(img[None])}
                start = time.perf_counter()
                per_image.append(self.session.run(None, feed))
                self.record_inference(time.perf_counter() - start)
        except Exception as exc:  # onnxruntime's Fail/RuntimeException types
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ToolFailedError(f"ONNX Runtime failed running {self.path.name} ({type(exc).__name__}: {detail}); "
                                  "check the model with `edgedeploy audit`") from None
        named = {name: np.concatenate([outs[k] for outs in per_image]) for k, name in enumerate(self.output_names)}
        return self.card.read_outputs(named, len(images))

    def _deactivate(self) -> None:
        self.session = None
