"""Range analysis: streaming FP16 statistics per tensor, and the findings they give."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedeploy.evaluation.data import load_image
from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.precision.graph_index import index_model, load_index
from edgedeploy.evaluation.precision.ranges import FP16_FLUSH, FP16_MAX, RangeAnalyzer, TensorStats, analyse


def _images(bench, n=4):
    return [(s.rel_path, load_image(s.path, 16)) for s in bench.samples[:n]]


def test_layernorm_fed_by_large_matmul_is_an_overflow(overflow_onnx, tiny_bench):
    report = analyse(load_index(overflow_onnx), str(overflow_onnx), "image", _images(tiny_bench))
    errors = report.errors
    assert [(f.rule, f.node, f.op, f.tensor) for f in errors] == [
        ("overflow", "/encoder/proj/MatMul", "MatMul", "hidden")]
    finding = errors[0]
    assert finding.pattern == "Linear" and finding.region == "encoder"
    assert finding.value > FP16_MAX and "feeds LayerNorm" in finding.message
    stats = {t.tensor: t for t in report.tensors}
    assert stats["hidden"].overflow > 0 and stats["hidden"].max_image
    assert stats["normed"].max_abs < 10  # the LayerNorm output itself is small
    assert report.flagged_nodes() == ["/encoder/proj/MatMul"]
    assert report.bounds["tokens"] == pytest.approx(report.bounds["image"])  # data movement: bounded by its source


def _chain_model(scale: float, op: str = "Mul") -> onnx.ModelProto:
    """x (1, 4, 8) -> op by ``scale`` -> LayerNorm -> Reshape -> y."""
    nodes = [helper.make_node(op, ["x", "s"], ["h"], name="/m/scale"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1, name="/m/norm/LayerNormalization"),
             helper.make_node("Reshape", ["n", "shape"], ["y"], name="/m/Reshape")]
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.ones(8, np.float32), "g"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(np.array([1, 32], np.int64), "shape")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, values, **kwargs):
    index = index_model(model)
    return analyse(index, "m", "x", [(f"img{i}", v) for i, v in enumerate(values)], **kwargs)


def test_underflow_and_internal_overflow_and_near():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.0, (1, 4, 8)).astype(np.float32)
    tiny = _run(_chain_model(1e-9), [x])  # the weight itself flushes to zero in FP16, and so does its product
    assert [(f.rule, f.node) for f in tiny.findings] == [("weights", "/m/scale"), ("underflow", "/m/scale")]
    assert tiny.findings[1].value == 1.0  # every value flushes
    big = _run(_chain_model(1000.0), [x])
    assert {(f.rule, f.node) for f in big.findings} == {("internal-overflow", "/m/norm/LayerNormalization")}
    near = _run(_chain_model(30000.0), [x])
    assert ("near-overflow", "/m/scale") in {(f.rule, f.node) for f in near.findings}
    assert not near.errors
    loose = _run(_chain_model(30000.0), [x], margin=1.0)
    assert ("near-overflow", "/m/scale") not in {(f.rule, f.node) for f in loose.findings}


def test_fold_counts_match_numpy():
    values = np.array([0.0, 1e-9, -2.0 ** -25, 2.0 ** -24, 1e-5, -3e-5, 1.0, -70000.0, 20000.0, np.nan], np.float32)
    index = index_model(_chain_model(1.0))
    analyzer = RangeAnalyzer(index, "m", "x", margin=4.0)
    stats = TensorStats("t", "n", "Mul", "Mul", "r", [10])
    analyzer._fold(stats, values.copy(), "img")
    assert stats.count == 10 and stats.nonfinite == 1 and stats.max_abs == float("inf")
    assert stats.zeros == 1
    finite = np.abs(values[np.isfinite(values)])
    with np.errstate(over="ignore"):
        half = finite.astype(np.float16)
    assert stats.flush == int(np.count_nonzero((half == 0) & (finite > 0)))  # exactly what FP16 rounding flushes
    assert stats.subnormal == int(np.count_nonzero((finite > 0) & (finite < 2.0 ** -14)))
    assert stats.overflow == 1 and stats.near == 2
    assert FP16_FLUSH == 2.0 ** -25


def test_segments_give_the_same_statistics(overflow_onnx, tiny_bench):
    index = load_index(overflow_onnx)
    images = _images(tiny_bench, 3)
    whole = analyse(index, "m", "image", images, memory_mib=1e6)
    split = analyse(index, "m", "image", images, memory_mib=1e-6)  # one measured tensor per segment
    assert whole.segments == 1 and split.segments > 3
    assert whole.to_dict(timing=False) | {"summary": None} == split.to_dict(timing=False) | {"summary": None}


def test_bad_arguments(overflow_onnx):
    index = load_index(overflow_onnx)
    with pytest.raises(EdgeDeployError, match="margin"):
        RangeAnalyzer(index, "m", "image", margin=0.5)
    with pytest.raises(EdgeDeployError, match="no input 'pixels'"):
        RangeAnalyzer(index, "m", "pixels")
    with pytest.raises(EdgeDeployError, match="no calibration images"):
        analyse(index, "m", "image", [])


def test_reference_model_analysis_is_deterministic(small_build, small_recipe):
    """On the real (small) EdgeZSAD graph: the analysis runs, flags nothing absurd, and repeats exactly."""
    from edgedeploy.evaluation.data import load_benchmark

    model = small_build.bundle_dir / "model.onnx"
    bench = load_benchmark("demo", categories=["brick"])
    images = [(s.rel_path, load_image(s.path, small_recipe.model.input_size)) for s in bench.samples[:2]]
    index = load_index(model)
    first = analyse(index, str(model), small_recipe.input_name, images, memory_mib=8)
    second = analyse(load_index(model), str(model), small_recipe.input_name, images, memory_mib=8)
    a, b = first.to_dict(timing=False), second.to_dict(timing=False)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert first.segments > 1 and len(first.tensors) > 100
    patterns = {t.pattern for t in first.tensors}
    assert {"LayerNorm", "Softmax", "attention MatMul (QK^T)", "attention MatMul (AV)",
            "Pow/ReduceSum (L2 norm)"} <= patterns
    assert not first.errors  # seeded weights stay far inside FP16's range
