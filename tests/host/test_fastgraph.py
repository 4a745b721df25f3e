"""The host's optimised FP32 copy: GELU chains fused, checked against the unoptimised graph, cached by version."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.onnxfile import ort_session
from edgedeploy.host.fastgraph import HOST_GRAPH_VERSION, fuse_gelu, host_graph


def _erf_gelu(x: str, tag: str, halved: bool, constants: bool) -> tuple[list, list]:
    """TinyViT's exported GELU on ``x`` (``tag_out`` its output); scalars as Constant nodes or initializers."""
    values = {"sqrt2": np.sqrt(np.float32(2.0)), "one": np.float32(1.0), "half": np.float32(0.5)}
    nodes, inits = [], []
    for key, value in values.items():
        name = f"{tag}_{key}"
        tensor = numpy_helper.from_array(np.array(value, np.float32), name)
        if constants:
            nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            inits.append(tensor)
    nodes += [helper.make_node("Div", [x, f"{tag}_sqrt2"], [f"{tag}_d"]),
              helper.make_node("Erf", [f"{tag}_d"], [f"{tag}_e"]),
              helper.make_node("Add", [f"{tag}_e", f"{tag}_one"], [f"{tag}_a"]),
              helper.make_node("Mul", [x, f"{tag}_a"], [f"{tag}_m" if halved else f"{tag}_out"])]
    if halved:
        nodes.append(helper.make_node("Mul", [f"{tag}_m", f"{tag}_half"], [f"{tag}_out"]))
    return nodes, inits


def gelu_graph(path):
    """x -> GELU (with * 0.5, initializers) -> Mul(3) -> GELU without * 0.5 (Constant nodes) -> y"""
    first, inits = _erf_gelu("x", "g1", halved=True, constants=False)
    second, more = _erf_gelu("s", "g2", halved=False, constants=True)
    scale = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    nodes = [*first, helper.make_node("Mul", ["g1_out", "three"], ["s"]), *second,
             helper.make_node("Identity", ["g2_out"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "gelu", io[:1], io[1:], [*inits, *more, scale]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _run(path, x):
    session = ort_session(path)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_both_gelu_forms_fused_and_equal_within_rounding(tmp_path):
    src = gelu_graph(tmp_path / "m.onnx")
    model = onnx.load(str(src))
    assert fuse_gelu(model) == 2
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gelu") == 2 and "Erf" not in ops and "Div" not in ops
    onnx.save(model, str(tmp_path / "f.onnx"))
    x = np.random.default_rng(0).normal(0, 3, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "f.onnx", x), _run(src, x), rtol=1e-6, atol=1e-6)


def test_a_chain_whose_tensor_feeds_another_node_is_left_alone(tmp_path):
    src = gelu_graph(tmp_path / "m.onnx")
    model = onnx.load(str(src))
    model.graph.node.append(helper.make_node("Identity", ["g1_e"], ["leak"]))  # the Erf output is used twice
    model.graph.output.append(helper.make_tensor_value_info("leak", TensorProto.FLOAT, [1, 3, 8, 8]))
    assert fuse_gelu(model) == 1


def test_host_graph_is_checked_recorded_and_cached(tmp_path, monkeypatch):
    from edgedeploy.host import fastgraph

    src = gelu_graph(tmp_path / "m.onnx")
    images = np.random.default_rng(1).normal(0, 3, (2, 3, 8, 8)).astype(np.float32)
    monkeypatch.setattr(fastgraph, "_check_images", lambda path: images)  # the photographs need a 1x3xSxS graph
    copy = host_graph(src, tolerance=1e-3, cache_dir=tmp_path / "cache")
    stamp = copy.path.stat().st_mtime_ns
    assert copy.images == 2 and 0 <= copy.max_abs_diff["y"] < 1e-5
    assert host_graph(src, tolerance=1e-3, cache_dir=tmp_path / "cache").path.stat().st_mtime_ns == stamp
    assert copy.identity()["host_graph"] == HOST_GRAPH_VERSION
    with pytest.raises(EdgeDeployError, match="tolerance"):
        host_graph(src, tolerance=-1.0, cache_dir=tmp_path / "cache")


def _conv_graph(path, nodes, inits):
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
          helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])]
    model = helper.make_model(helper.make_graph(nodes, "conv", io[:1], io[1:], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


def test_the_two_of_an_unhalved_gelu_goes_into_the_next_convolution(tmp_path):
    """Gelu -> Conv(2W) computes the same bits as Gelu -> Mul(2) -> Conv(W)."""
    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    conv = helper.make_node("Conv", ["g_out", "w"], ["y"], pads=[1, 1, 1, 1])
    chain, inits = _erf_gelu("x", "g", halved=False, constants=True)
    src = _conv_graph(tmp_path / "m.onnx", [*chain, conv], [*inits, weight])
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    times2 = _conv_graph(tmp_path / "t.onnx", [helper.make_node("Gelu", ["x"], ["gelu"], domain="com.microsoft"),
                                               helper.make_node("Mul", ["gelu", "two"], ["g_out"]), conv],
                         [two, weight])
    fused = onnx.load(str(src))
    assert fuse_gelu(fused) == 1
    assert [n.op_type for n in fused.graph.node if n.op_type != "Constant"] == ["Gelu", "Conv"]
    onnx.save(fused, str(tmp_path / "f.onnx"))
    x = rng.normal(0, 2, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "f.onnx", x), _run(times2, x))
    np.testing.assert_allclose(_run(tmp_path / "f.onnx", x), _run(src, x), rtol=1e-5, atol=1e-5)


def attention_graph(path, b=2, s=16, n=3, h=8, scalar_as_constant=False):
    """TinyViT's exported attention core: x (B x S x 3NH) -> Reshape(B, S, N, 3H) -> Split(H, H, H) ->
    Transpose q/k^T/v -> Mul(q, H^-0.5) @ k^T -> Softmax -> @ v -> Transpose -> Reshape(B, S, NH) -> y"""
    scale = numpy_helper.from_array(np.array(h ** -0.5, np.float32), "scale")
    inits = [numpy_helper.from_array(np.array([b, s, n, -1], np.int64), "heads"),
             numpy_helper.from_array(np.array([h, h, h], np.int64), "sizes"),
             numpy_helper.from_array(np.array([b, s, n * h], np.int64), "merged")]
    nodes = [helper.make_node("Constant", [], ["scale"], value=scale)] if scalar_as_constant else []
    inits += [] if scalar_as_constant else [scale]
    nodes += [helper.make_node("Reshape", ["x", "heads"], ["r"]),
              helper.make_node("Split", ["r", "sizes"], ["q", "k", "v"], axis=3),
              helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1, 3]),
              helper.make_node("Mul", ["qt", "scale"], ["qs"]),
              helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v"], ["vt"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qs", "kt"], ["a"]),
              helper.make_node("Softmax", ["a"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merged"], ["y"])]
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, s, 3 * n * h]),
          helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, s, n * h])]
    model = helper.make_model(helper.make_graph(nodes, "attention", io[:1], io[1:], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("scalar_as_constant", [False, True])
def test_attention_fused_into_multi_head_attention_and_equal_within_rounding(tmp_path, scalar_as_constant):
    from edgedeploy.host.fastgraph import fuse_attention

    src = attention_graph(tmp_path / "m.onnx", scalar_as_constant=scalar_as_constant)
    model = onnx.load(str(src))
    assert fuse_attention(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops and "Transpose" not in ops
    assert ops.count("MatMul") == 0
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "f.onnx"))
    x = np.random.default_rng(2).normal(0, 2, (2, 16, 72)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "f.onnx", x), _run(src, x), rtol=1e-5, atol=1e-6)


def test_attention_whose_probabilities_are_read_elsewhere_is_left_alone(tmp_path):
    from edgedeploy.host.fastgraph import fuse_attention

    model = onnx.load(str(attention_graph(tmp_path / "m.onnx")))
    model.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    assert fuse_attention(model) == 0
    model = onnx.load(str(attention_graph(tmp_path / "m.onnx")))
    model.graph.node[3].op_type = "Add"  # no scale: q + s is not attention
    assert fuse_attention(model) == 0
