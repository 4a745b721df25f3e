"""QNN advice and trtexec flags from a search result."""

from __future__ import annotations

from edgedeploy.evaluation.precision.emit import qnn_advice, tensorrt_flags
from edgedeploy.evaluation.precision.ranges import Finding, RangeReport
from edgedeploy.evaluation.precision.search import Budget, Evaluation, SearchResult
from edgedeploy.core.profiles import load_profile

def _result(baseline_ok: bool, keep=()) -> SearchResult:
    base = Evaluation((), 0.0 if baseline_ok else 3.0, 0.001 if baseline_ok else 0.05, passed=baseline_ok)
    best = Evaluation(tuple(keep), 0.0, 0.001, passed=True) if keep else base
    return SearchResult(base, best, tuple(keep), baseline_ok or bool(keep), [], [], "", Budget())

def _ranges(*rules) -> RangeReport:
    findings = [Finding("warning", rule, f"/readout/n{i}", "Op", "p", "readout", "t", 1.0, "m", "f")
                for i, rule in enumerate(rules)]
    return RangeReport("m", ["a"], 4.0, 0.5, [], {}, [], findings, 1)

def test_qnn_advice():
    ok = qnn_advice(_result(True), _ranges(), {}, "default_graph_gpu_precision=FLOAT16")
    assert ok["precision"] == "FLOAT16" and not ok["alternatives"]
    assert ok["hub_profile_options"] == "--compute_unit gpu --qnn_options default_graph_gpu_precision=FLOAT16"
    risky = qnn_advice(_result(True), _ranges("internal-overflow"), {}, None)
    assert risky["precision"] == "FLOAT16" and risky["alternatives"] == ["HYBRID"] and "HYBRID" in risky["why"]
    where = {"/readout/a": "readout", "/readout/b": "readout"}
    failing = qnn_advice(_result(False, ["/readout/a", "/readout/b"]), _ranges("overflow"), where, None, ["readout"])
    assert failing["precision"] == "FLOAT32" and "HYBRID" in failing["why"]
    assert any("rescale" in alt for alt in failing["alternatives"])
    assert any("/readout/" in alt and "CPU" in alt for alt in failing["alternatives"])
    rounding = qnn_advice(_result(False, ["/readout/a"]), _ranges(), where, None, ["stages.3"])
    assert "rounding" in rounding["why"] and not rounding["alternatives"]
    assert set(failing["modes"]) == {"FLOAT16", "HYBRID", "FLOAT32", "USER_PROVIDED"}

def test_tensorrt_flags(overflow_onnx):
    profile = load_profile("jetson-orin-nano")
    assert tensorrt_flags(profile, (), overflow_onnx)["flags"] == []
    flags = tensorrt_flags(profile, ("/encoder/proj/MatMul",), overflow_onnx)["flags"]
    assert flags == ["--precisionConstraints=obey",
                     "--layerPrecisions=/encoder/proj/MatMul*:fp32",
                     "--layerOutputTypes=/encoder/proj/MatMul*:fp32"]
