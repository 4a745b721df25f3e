"""The host-side runners: the PyTorch reference (FP32 on the CPU or CUDA), the model in real FP16 on CUDA, the
exported graph under ONNX Runtime as the host sees it, and the FP16 emulation of the bundle's graph.

They implement ``edgedeploy.runtime.base.Runner`` as the device runners do, so ``fidelity`` and ``precision``
score through the same batch loop and cache (``edgedeploy.runtime.batch``). TensorRT engines and AI Hub
jobs score on (or for) the device with ``edgedeploy score``; their score files enter ``fidelity`` through
``--device-scores``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from edgedeploy import __version__
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.host.intake import ImportedModel
from edgedeploy.runtime.base import Runner
from edgedeploy.core.extras import package_version
from edgedeploy.core.hashing import sha256_file
from edgedeploy.runtime.onnxruntime import OnnxRuntimeRunner


class TorchRunner(Runner):
    """Host PyTorch eager, built on the first batch: the FP32 reference (CPU, or CUDA without TF32), or with
    ``half=True`` on CUDA the model in real FP16 arithmetic, a device stand-in (``--device torch-fp16``)."""

    def __init__(self, recipe: Recipe, checkpoint: Path | None, checkpoint_sha256: str,
                 weights_fingerprint: str, batch_size: int = 4, tune_malloc: bool = True, device: str = "cpu",
                 half: bool = False):
        super().__init__()
        self.recipe = recipe
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

    @property
    def input_size(self) -> int:
        return self.recipe.model.input_size

    def identity(self) -> dict:
        # The graph hash fingerprints the weights build_model loads (with no --checkpoint, the
        # default may change), so the cache never mixes scores of two different models.
        identity = {"runner": self.runner, "checkpoint": self.checkpoint_sha256, "recipe": self.recipe.sha256,
                    "weights": self.weights_fingerprint, "edgedeploy": __version__,
                    "torch": package_version("torch"), "timm": package_version("timm")}
        if self.device != "cpu":
            from edgedeploy.host.gpu import gpu_name

            identity["gpu"] = gpu_name()
        return identity

    def meta(self) -> dict[str, str]:
        return {"model_sha256": f"- (PyTorch eager; exported as {self.weights_fingerprint})",
                "checkpoint_sha256": self.checkpoint_sha256, "recipe": self.recipe.name, "runner": self.runner}

    def _activate(self) -> None:
        from edgedeploy.host.model import build_model

        if self.device == "cpu" and self.tune_malloc:
            from edgedeploy.host.hostmem import keep_freed_memory

            keep_freed_memory()
        if self.device != "cpu" and not self.half:
            from edgedeploy.host.gpu import strict_fp32

            strict_fp32()
        loaded = build_model(self.recipe, self.checkpoint)
        model = loaded.model.to(self.device)
        self._model, self.source = (model.half() if self.half else model), loaded.source

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        model = self._model
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        with torch.inference_mode():
            score, amap = model(x.half() if self.half else x)
        score, amap = score.float().cpu().numpy(), amap.float().cpu().numpy()
        return score.astype(np.float64).reshape(-1), amap[:, 0].astype(np.float32)


def graph_runner(onnx_path: Path, recipe: Recipe | ImportedModel, checkpoint_sha256: str, runner: str = "onnxruntime-cpu",
                 label: str = "host ONNX Runtime FP32", model_sha256: str | None = None, extra: dict | None = None,
                 disabled_optimizers: Iterable[str] = (), optimised: bool = False) -> OnnxRuntimeRunner:
    """An exported graph under ONNX Runtime, fed and read through the recipe's (or imported model's) card, its
    cache identity and score-file header naming the recipe and checkpoint (``extra`` goes into both).

    ``optimised``: run the host's checked optimised copy (``edgedeploy.host.fastgraph``) instead of the file
    itself, for the FP32 host reference only (never for a device stand-in or an emulated graph, whose
    rounding points a fusion would remove); its version and recorded differences join the identity and
    header, the model hash stays the bundle graph's.
    """
    from edgedeploy.host.fastgraph import host_graph

    extra = dict(extra or {})
    model_sha256 = model_sha256 or sha256_file(onnx_path)
    path = Path(onnx_path)
    if optimised:
        copy = host_graph(onnx_path, recipe.tolerance, model_sha256=model_sha256)
        path = copy.path
        extra.update(copy.identity())
    return OnnxRuntimeRunner(path, runner=runner, label=label, model_sha256=model_sha256,
                             identity_extra={"recipe": recipe.sha256, **extra},
                             meta_extra={"checkpoint_sha256": checkpoint_sha256, "recipe": recipe.name,
                                         **{k: v for k, v in extra.items() if k != "source_model"}},
                             disabled_optimizers=disabled_optimizers, batch_size=1, card=recipe.card)


def fp16_emulation_runner(onnx_path: Path, recipe: Recipe | ImportedModel, checkpoint_sha256: str, keep_fp32: Iterable[str] = (),
                          model_sha256: str | None = None, cache_dir: Path | None = None) -> OnnxRuntimeRunner:
    """The device emulated on the host: the FP16-rounded graph of ``onnx_path`` (cached) under ONNX Runtime."""
    from edgedeploy.host.fp16 import EMULATION_VERSION, emulated_model

    model_sha256 = model_sha256 or sha256_file(onnx_path)
    keep = sorted(set(keep_fp32))
    emulated = emulated_model(onnx_path, keep, cache_dir=cache_dir, model_sha256=model_sha256)
    # the score file names the graph the device would run (the bundle's), not the derived one
    return graph_runner(emulated, recipe, checkpoint_sha256, runner="fp16-emulation",
                        label="device FP16 emulation (ONNX Runtime CPU)", model_sha256=model_sha256,
                        extra={"emulation": EMULATION_VERSION, "keep_fp32": ",".join(keep) or "none"},
                        disabled_optimizers=("CastChainElimination",))


def qnn_htp_runner(onnx_path: Path, recipe: Recipe | ImportedModel, checkpoint_sha256: str, profile,
                   model_sha256: str | None = None, allow_cpu_fallback: bool = False, quantized: str | None = None):
    """The bundle's graph on Qualcomm's QNN HTP backend in FP16 (``onnxruntime-qnn``), as a device stand-in: on an
    x86_64 host that is Qualcomm's arithmetic emulated on the CPU, not the device's speed; on the board, the NPU.
    ``quantized``: the graph is a QDQ graph at that precision (w8a16, w8a8): the HTP runs its Q/DQ groups in integer
    arithmetic and its float parts in FP16."""
    from edgedeploy.runtime.qnn import QnnRunner, QnnSettings, machine

    model_sha256 = model_sha256 or sha256_file(onnx_path)
    where = "on the board" if machine() == "aarch64" else f"emulated on this {machine()} host: not the device's speed"
    return QnnRunner(onnx_path, "htp", precision="fp16", allow_cpu_fallback=allow_cpu_fallback, card=recipe.card,
                     settings=QnnSettings.from_profile(profile), model_sha256=model_sha256,
                     label=(f"device QNN HTP FP16 (Qualcomm's arithmetic, {where})" if quantized is None else
                            f"device QNN HTP, the {quantized.upper()} QDQ graph (Qualcomm's integer arithmetic, float "
                            f"parts FP16, {where})"),
                     identity_extra={"recipe": recipe.sha256, **({"quantized": quantized} if quantized else {})},
                     meta_extra={"checkpoint_sha256": checkpoint_sha256, "recipe": recipe.name,
                                 **({"quantized": quantized} if quantized else {})})

