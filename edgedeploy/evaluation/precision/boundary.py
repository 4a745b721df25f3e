"""The FP16 emulation of a keep set, strict at FP32 -> FP16 boundaries.

:func:`edgedeploy.host.fp16.emulated_model` leaves a kept node's outputs unrounded, and every
node reading them reads FP32 values. On a TensorRT engine a layer that runs in FP16 converts its
inputs to FP16 first (a reformat), so keeping only the producer of a tensor does not protect it
from FP16 unless its readers are kept too; whether TensorRT runs such a reader in FP16 or FP32 is
the builder's choice. The search scores keep sets on the strict variant made here: the same
emulated graph, plus a ``Cast(FLOAT16) -> Cast(FLOAT)`` pair on every input that a non-kept node
reads from a kept one. A keep set within budget here is within budget whichever way the builder
chooses for the readers (as far as the emulation models the device at all).

Written next to the emulation cache, under ``$EDGEDEPLOY_CACHE/precision/`` as ``<key>.onnx``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from edgedeploy.core.files import atomic_path, write_json_atomic
from edgedeploy.core.hashing import sha256_json

BOUNDARY_VERSION = "fp16-inputs-1"
_EMULATION_PREFIX = "fp16_emulation/"


def strict_cache_dir() -> Path:
    from edgedeploy.core.resources import cache_root

    return cache_root() / "precision"


def strict_key(model_sha256: str, keep: Iterable[str]) -> str:
    from edgedeploy.host.fp16 import EMULATION_VERSION

    return sha256_json({"model": model_sha256, "keep_fp32": sorted(set(keep)), "emulation": EMULATION_VERSION,
                        "boundary": BOUNDARY_VERSION})[:24]


def round_kept_outputs_at_readers(emulated: str | os.PathLike[str], out_path: str | os.PathLike[str],
                                  keep: Iterable[str], float_tensors: set[str]) -> Path:
    """Copy the emulated graph, rounding to FP16 every kept node's float output where a non-kept node reads it."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(emulated))
    graph = model.graph
    keep_set = set(keep)
    producer = {out: node.name for node in graph.node for out in node.output if out}
    rounded: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        if node.name not in keep_set and not node.name.startswith(_EMULATION_PREFIX):
            for i, tensor in enumerate(node.input):
                if not tensor or producer.get(tensor) not in keep_set or tensor not in float_tensors:
                    continue
                if tensor not in rounded:
                    half, back = f"{tensor}__boundary_fp16", f"{tensor}__boundary_rounded"
                    nodes += [helper.make_node("Cast", [tensor], [half], to=TensorProto.FLOAT16,
                                               name=f"fp16_boundary/{tensor}/to_fp16"),
                              helper.make_node("Cast", [half], [back], to=TensorProto.FLOAT,
                                               name=f"fp16_boundary/{tensor}/to_fp32")]
                    rounded[tensor] = back
                node.input[i] = rounded[tensor]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    model.doc_string = f"{model.doc_string}; {BOUNDARY_VERSION}: FP16 readers of kept outputs read FP16 values"
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return Path(out_path)


def strict_emulated_model(onnx_path: str | os.PathLike[str], keep: Iterable[str], model_sha256: str,
                          float_tensors: set[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached strict emulation of ``onnx_path`` for ``keep`` (the plain one when ``keep`` is empty)."""
    from edgedeploy.host.fp16 import emulate_fp16, emulated_model

    keep = sorted(set(keep))
    if not keep:
        return emulated_model(onnx_path, keep, model_sha256=model_sha256)
    folder = Path(cache_dir) if cache_dir is not None else strict_cache_dir()
    key = strict_key(model_sha256, keep)
    target = folder / f"{key}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".emulating-") as tmp:
        base = emulate_fp16(onnx_path, Path(tmp) / "emulated.onnx", keep)
        round_kept_outputs_at_readers(base, target, keep, float_tensors)
    write_json_atomic(folder / f"{key}.json", {"source": str(onnx_path), "model_sha256": model_sha256,
                                                "keep_fp32": keep, "boundary": BOUNDARY_VERSION})
    return target
