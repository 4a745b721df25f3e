"""Loading ONNX files and running them with ONNX Runtime (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgedeploy.core.errors import OnnxModelError


def load_onnx(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise OnnxModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}): re-export it") from None
    if not model.graph.node:
        raise OnnxModelError(f"{path} holds no graph nodes: is it an ONNX model?")
    return model


def ort_session(path: str | Path, providers: list[str] | None = None, disabled_optimizers: list[str] | None = None):
    """An ONNX Runtime session on the CPU (quiet); ``disabled_optimizers`` names graph rewrites to skip."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    kwargs = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"], **kwargs)


def run_onnx(path: str | Path, inputs: np.ndarray, input_name: str | None = None) -> dict[str, np.ndarray]:
    """Run a model image by image (a static batch of 1 or a dynamic one): each output, by name, stacked over images
    (``input_name``: the graph's first input by default)."""
    session = ort_session(path)
    input_name = input_name or session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    per_image = [session.run(names, {input_name: inputs[i:i + 1]}) for i in range(len(inputs))]
    return {name: np.concatenate([outs[k] for outs in per_image]) for k, name in enumerate(names)}


def max_abs_diffs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                  names: tuple[str, ...]) -> dict[str, float]:
    return {name: float(np.max(np.abs(reference[name].astype(np.float64) - candidate[name].astype(np.float64))))
            for name in names}
