"""Host vs device fidelity: score a benchmark on both sides, compare them, gate the drift, write a report.

Public API::

    compare, FidelityReport               the comparison, the report and its gate (compare.py, report.py, drift.py)
    load_device_scores                    a device score file, checked (device_scores.py)
    FidelityOptions, run_fidelity         one run, as ``edgedeploy fidelity`` does it (run.py)
    emulate_fp16, emulated_model          FP16 emulation of an ONNX graph (edgedeploy.host.fp16)
    score_benchmark                       the batch loop (edgedeploy.runtime.batch)

Nothing here imports torch or matplotlib at import time.
"""

from importlib import import_module

_EXPORTS = {
    "load_device_scores": "edgedeploy.evaluation.fidelity.device_scores",
    "emulate_fp16": "edgedeploy.host.fp16", "emulated_model": "edgedeploy.host.fp16",
    "FidelityReport": "edgedeploy.evaluation.fidelity.report", "compare": "edgedeploy.evaluation.fidelity.compare",
    "FidelityOptions": "edgedeploy.evaluation.fidelity.run", "run_fidelity": "edgedeploy.evaluation.fidelity.run",
    "score_benchmark": "edgedeploy.runtime.batch",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # lazy, so that `edgedeploy --help` does not load numpy/scipy through this package
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
