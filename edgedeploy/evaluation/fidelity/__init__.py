"""Host vs device fidelity: score a benchmark on both sides, compare image AUROC, write a report.

Public API::

    emulate_fp16, emulated_model          FP16 emulation of an ONNX graph (fp16.py)
    Scorer, TorchScorer, OnnxScorer,      scorers writing edgedeploy.runtime.scorefile tables (scorers.py)
    fp16_emulation_scorer, score_benchmark
    ScoreCache                            the host score cache (cache.py)
    load_device_scores                    a device score file, checked (device_scores.py)
    compare, FidelityReport               the drift report (report.py)
    FidelityOptions, run_fidelity         one run, as ``edgedeploy fidelity`` does it (run.py)

Nothing here imports torch or matplotlib at import time.
"""

from importlib import import_module

_EXPORTS = {
    "ScoreCache": "cache", "load_device_scores": "device_scores", "emulate_fp16": "fp16", "emulated_model": "fp16",
    "FidelityReport": "report", "compare": "report", "FidelityOptions": "run", "run_fidelity": "run",
    "OnnxScorer": "scorers", "Scorer": "scorers", "TorchScorer": "scorers", "fp16_emulation_scorer": "scorers",
    "score_benchmark": "scorers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # lazy, so that `edgedeploy --help` does not load numpy/scipy through this package
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
