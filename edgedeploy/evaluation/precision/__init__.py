"""``edgedeploy precision``: FP16 range analysis and keep-FP32 search, on the host, no GPU needed.

Public API::

    GraphIndex, load_index, index_model        the graph, indexed (graph.py)
    classify, regions                          producing pattern and region of every node (patterns.py)
    RangeAnalyzer, analyse, RangeReport        streaming per-tensor FP16 range statistics (ranges.py)
    candidates, closure, search, Budget        the keep-list search (search.py)
    PrecisionOptions, run_precision            one run, as ``edgedeploy precision`` does it (run.py)

Nothing here imports torch; ONNX Runtime is imported when a session is made.
"""

from importlib import import_module

_EXPORTS = {
    "GraphIndex": "graph", "load_index": "graph", "index_model": "graph",
    "classify": "patterns", "regions": "patterns",
    "RangeAnalyzer": "ranges", "RangeReport": "ranges", "analyse": "ranges",
    "Budget": "search", "Candidate": "search", "Evaluation": "search", "candidates": "search", "closure": "search",
    "search": "search",
    "PrecisionOptions": "run", "run_precision": "run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
