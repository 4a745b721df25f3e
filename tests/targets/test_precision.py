"""--keep-fp32: names and globs resolved against model.onnx, refused with a reason, mapped to TensorRT layers."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from edgedeploy.targets.keepfp32 import KeepFp32Error, expand_keep_fp32, layer_patterns, match_layer


@pytest.fixture
def small_onnx(tmp_path):
    """x -> /a/Softmax -> /a/Softmax_1 -> /b/ArgMax (int64); a Constant and an unnamed node besides."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [1, 1])
    nodes = [
        helper.make_node("Constant", [], ["c"], name="/a/Constant", value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])),
        helper.make_node("Mul", ["x", "c"], ["m"], name="/a/Mul"),
        helper.make_node("Softmax", ["m"], ["s"], name="/a/Softmax"),
        helper.make_node("Softmax", ["s"], ["s1"], name="/a/Softmax_1"),
        helper.make_node("Relu", ["s1"], ["r"]),  # unnamed: TensorRT would name it otherwise
        helper.make_node("ArgMax", ["r"], ["y"], name="/b/ArgMax", keepdims=1, axis=1),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def test_exact_names_and_globs_resolve_in_graph_order(small_onnx):
    assert expand_keep_fp32(small_onnx, ["/a/Softmax_1", "/a/Mul"]) == ("/a/Mul", "/a/Softmax_1")
    assert expand_keep_fp32(small_onnx, ["*/Softmax*"]) == ("/a/Softmax", "/a/Softmax_1")
    assert expand_keep_fp32(small_onnx, ["/a/*"]) == ("/a/Mul", "/a/Softmax", "/a/Softmax_1")  # Constant skipped
    assert expand_keep_fp32(small_onnx, []) == ()


def test_unknown_name_suggests_the_closest(small_onnx):
    with pytest.raises(KeepFp32Error) as err:
        expand_keep_fp32(small_onnx, ["/a/Softmx"])
    assert "matches no node" in str(err.value) and "did you mean '/a/Softmax'" in str(err.value)
    assert "\n" not in str(err.value)


def test_glob_without_match_and_nodes_without_float_layers_are_refused(small_onnx):
    with pytest.raises(KeepFp32Error, match="matches no node"):
        expand_keep_fp32(small_onnx, ["/zzz/*"])
    with pytest.raises(KeepFp32Error, match="does not compute floating-point tensors"):
        expand_keep_fp32(small_onnx, ["/b/ArgMax"])
    with pytest.raises(KeepFp32Error, match="adds no TensorRT layer"):
        expand_keep_fp32(small_onnx, ["/a/Constant"])
    with pytest.raises(KeepFp32Error, match="matches only nodes without a float TensorRT layer"):
        expand_keep_fp32(small_onnx, ["/b/*"])


def test_names_trtexec_cannot_express_are_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu:0")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(KeepFp32Error, match="contains ',' or ':'"):
        expand_keep_fp32(tmp_path / "m.onnx", ["relu:0"])


def test_layer_patterns_use_a_wildcard_only_when_unambiguous():
    names = ["/a/Softmax", "/a/Softmax_1", "/a/LayerNorm", "/a/Conv", "/a/ConvTranspose"]
    assert layer_patterns(("/a/Softmax", "/a/Softmax_1", "/a/LayerNorm", "/a/Conv"), names) == [
        "/a/Softmax", "/a/Softmax_1*", "/a/LayerNorm*", "/a/Conv"]


def test_match_layer_as_trtexec_matches_one_wildcard():
    """sampleUtils.cpp matchStringWithOneWildcard: prefix, anything (possibly nothing), suffix."""
    specs = ["/a/LayerNorm*", "/b/Add"]
    assert match_layer("/b/Add", specs) == "exact"
    assert match_layer("/a/LayerNorm", specs) == "wildcard" and match_layer("/a/LayerNorm_12", specs) == "wildcard"
    assert match_layer("/b/Add_1", specs) is None and match_layer("/c/LayerNorm", specs) is None
    assert match_layer("/a/x?y", ["/a/x?*"]) == "wildcard" and match_layer("/a/xzy", ["/a/x?*"]) is None  # no globs
    assert match_layer("/a/[1]/Mul", ["/a/[1]*"]) == "wildcard"
    assert match_layer("/a/b", ["/a/*/b"]) is None  # too short for prefix + suffix
