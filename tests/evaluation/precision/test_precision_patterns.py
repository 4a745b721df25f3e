"""Producing patterns and regions of nodes."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgedeploy.evaluation.precision.graph_index import index_model
from edgedeploy.evaluation.precision.patterns import classify, regions


def _model(nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_attention_norms_and_gelu_are_recognised():
    f = TensorProto.FLOAT
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    nodes = [
        # attention: q * scale, q @ k^T, + bias, softmax, @ v
        helper.make_node("Mul", ["q", "scale"], ["qs"], name="/blk/attn/Mul"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="/blk/attn/Transpose"),
        helper.make_node("MatMul", ["qs", "kt"], ["logits"], name="/blk/attn/MatMul"),
        helper.make_node("Add", ["logits", "bias"], ["biased"], name="/blk/attn/Add"),
        helper.make_node("Softmax", ["biased"], ["p"], axis=-1, name="/blk/attn/Softmax"),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="/blk/attn/MatMul_1"),
        # decomposed LayerNorm
        helper.make_node("ReduceMean", ["ctx"], ["mu"], axes=[-1], name="/blk/ln/ReduceMean"),
        helper.make_node("Sub", ["ctx", "mu"], ["d"], name="/blk/ln/Sub"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="/blk/ln/Pow"),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1], name="/blk/ln/ReduceMean_1"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="/blk/ln/Add"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="/blk/ln/Sqrt"),
        helper.make_node("Div", ["d", "sd"], ["ln"], name="/blk/ln/Div"),
        # GELU
        helper.make_node("Div", ["ln", "sqrt2"], ["g1"], name="/blk/act/Div"),
        helper.make_node("Erf", ["g1"], ["g2"], name="/blk/act/Erf"),
        helper.make_node("Add", ["g2", "one"], ["g3"], name="/blk/act/Add"),
        helper.make_node("Mul", ["ln", "g3"], ["g4"], name="/blk/act/Mul"),
        helper.make_node("Mul", ["g4", "half"], ["g5"], name="/blk/act/Mul_1"),
        # L2 normalisation, unnamed Gemm after it (inherits its region)
        helper.make_node("Mul", ["g5", "g5"], ["sq"], name="/head/Mul"),
        helper.make_node("ReduceSum", ["sq", "axes"], ["ss"], keepdims=1, name="/head/ReduceSum"),
        helper.make_node("Sqrt", ["ss"], ["norm"], name="/head/Sqrt"),
        helper.make_node("Div", ["g5", "norm"], ["unit"], name="/head/Div"),
        helper.make_node("MatMul", ["unit", "w"], ["out"], name=""),
    ]
    inits = [c("scale", 0.125), c("bias", np.zeros((1, 4, 4))), c("two", 2.0), c("eps", 1e-5), c("sqrt2", 1.414),
             c("one", 1.0), c("half", 0.5), numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             c("w", np.ones((8, 2)))]
    inputs = [helper.make_tensor_value_info(n, f, [1, 4, 8]) for n in ("q", "k", "v")]
    model = _model(nodes, inits, inputs, [helper.make_tensor_value_info("out", f, [1, 4, 2])])
    index = index_model(model)
    labels = classify(index)
    assert labels["/blk/attn/MatMul"] == "attention MatMul (QK^T)"
    assert labels["/blk/attn/MatMul_1"] == "attention MatMul (AV)"
    assert labels["/blk/attn/Softmax"] == "Softmax"
    assert labels["/blk/attn/Add"] == labels["/blk/attn/Mul"] == "attention scale/bias"
    assert labels["/blk/attn/Transpose"] == "data movement"
    for name in ("ReduceMean", "Sub", "Pow", "ReduceMean_1", "Add", "Sqrt", "Div"):
        assert labels[f"/blk/ln/{name}"] == "LayerNorm (decomposed)", name
    for name in ("Div", "Erf", "Add", "Mul", "Mul_1"):
        assert labels[f"/blk/act/{name}"] == "GELU (Erf)", name
    for name in ("Mul", "ReduceSum", "Sqrt", "Div"):
        assert labels[f"/head/{name}"] == "Pow/ReduceSum (L2 norm)", name
    unnamed = "MatMul(out)"
    assert labels[unnamed] == "Linear"
    where = regions(index)
    assert where["/blk/attn/Softmax"] == "blk" and where[unnamed] == "head"


def test_a_one_node_gelu_is_labelled_gelu():
    """QNN targets' graphs hold each GELU as one ONNX Gelu (opset 20): the label is the same as the erf chain's."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Gelu", ["x"], ["y"], name="/blk/act/Gelu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [1, 4])],
                              [helper.make_tensor_value_info("y", f, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    assert classify(index_model(model))["/blk/act/Gelu"] == "GELU (Erf)"
