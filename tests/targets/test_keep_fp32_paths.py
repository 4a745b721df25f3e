"""--keep-fp32: the in-process build and build_engine.sh's trtexec command constrain the same TensorRT layers."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from edgedeploy.targets.keepfp32 import layer_patterns, node_names
from edgedeploy.targets.tensorrt.engine import apply_keep_fp32
from edgedeploy.targets.tensorrt.trtexec import BuildSettings, trtexec_flags

KEEP = ("/a/Softmax", "/a/Softmax_1", "/n/LayerNormalization", "/r/ReduceSum")


@pytest.fixture
def onnx_path(tmp_path):
    """Two Softmax nodes whose names nest (/a/Softmax, /a/Softmax_1), a LayerNorm, two ReduceSums likewise."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [8], [1.0] * 8)
    nodes = [
        helper.make_node("Softmax", ["x"], ["s0"], name="/a/Softmax"),
        helper.make_node("Softmax", ["s0"], ["s1"], name="/a/Softmax_1"),
        helper.make_node("LayerNormalization", ["s1", "scale"], ["ln"], name="/n/LayerNormalization"),
        helper.make_node("ReduceSum", ["ln"], ["r0"], name="/r/ReduceSum", keepdims=1),
        helper.make_node("ReduceSum", ["r0"], ["y"], name="/r/ReduceSum_1", keepdims=1),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[scale])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _parsed(trt, path):
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    assert trt.OnnxParser(network, None).parse_from_file(str(path))
    assert all(layer.type != trt.LayerType.CONSTANT for layer in network.layers)  # no constant layers to weigh
    return network


def _flag_values(specs: list[str]) -> dict[str, dict[str, str]]:
    """{"--layerPrecisions": {spec: type}, "--layerOutputTypes": {...}} from the flags build_engine.sh passes."""
    settings = BuildSettings(1024, 3, "8.7", "10.3", "/usr/src/tensorrt/bin/trtexec")
    values = dict(f.text.split("=", 1) for f in trtexec_flags(settings, specs) if "=" in f.text)
    return {flag: dict(item.rsplit(":", 1) for item in values[flag].split(","))
            for flag in ("--layerPrecisions", "--layerOutputTypes")}


def _trtexec_10_3(trt, network, precisions: dict[str, str], output_types: dict[str, str]) -> None:
    """trtexec 10.3 under --precisionConstraints=obey, written here from NVIDIA/TensorRT v10.3.0
    samples/common/sampleEngines.cpp (setLayerPrecisions, then setLayerOutputTypes) and sampleUtils
    (findPlausible, matchStringWithOneWildcard), apart from edgedeploy's code: an exact name is always
    applied; a wildcard match is skipped for layers that compute no floats, by each pass's own tests."""
    non_activation = (trt.int32, trt.int64, trt.bool, trt.uint8)
    types = {"fp32": trt.float32}

    def plausible(table, name):
        for pattern, value in table.items():
            head, star, tail = pattern.partition("*")
            if star and len(name) >= len(head) + len(tail) and name.startswith(head) and name.endswith(tail):
                return value
        return None

    for layer in network.layers:  # setLayerPrecisions
        if layer.name in precisions:
            layer.precision = types[precisions[layer.name]]
            continue
        wanted = plausible(precisions, layer.name)
        if wanted is None or layer.precision in non_activation:
            continue
        first_in = layer.get_input(0) if layer.num_inputs else None
        first_out = layer.get_output(0) if layer.num_outputs else None
        if first_in is not None and first_in.is_shape_tensor:
            continue
        if first_in is not None and first_out is not None and first_in.dtype in non_activation \
                and first_out.dtype in non_activation:
            continue
        layer.precision = types[wanted]
    for layer in network.layers:  # setLayerOutputTypes
        wanted = output_types.get(layer.name)
        if wanted is None:
            wanted = plausible(output_types, layer.name)
            if wanted is None or layer.precision in (trt.int32, trt.bool):
                continue
        for i in range(layer.num_outputs):
            layer.set_output_type(i, types[wanted])


def _constraints(network) -> dict[str, tuple]:
    return {layer.name: (layer.precision_is_set, layer.precision, dict(layer.output_types)) for layer in network.layers}


def test_in_process_and_trtexec_constrain_the_same_layers(fake_trt, onnx_path):
    specs = layer_patterns(KEEP, node_names(onnx_path))
    assert specs == ["/a/Softmax", "/a/Softmax_1*", "/n/LayerNormalization*", "/r/ReduceSum"]
    in_process, by_trtexec = _parsed(fake_trt, onnx_path), _parsed(fake_trt, onnx_path)
    kept = apply_keep_fp32(fake_trt, in_process, specs, log=lambda line: None)
    flags = _flag_values(specs)
    _trtexec_10_3(fake_trt, by_trtexec, flags["--layerPrecisions"], flags["--layerOutputTypes"])
    assert _constraints(in_process) == _constraints(by_trtexec)
    assert sorted(kept) == sorted(name for name, (is_set, _, _) in _constraints(by_trtexec).items() if is_set)


def test_the_rule_is_trtexecs_for_exact_names_and_wildcards(fake_trt, onnx_path):
    """An exact name is constrained whatever it computes (here /a/Softmax's INT32 shape helper, which took the
    node's own name); a wildcard skips integer helpers (/a/Softmax_1's) and reaches every float layer."""
    network = _parsed(fake_trt, onnx_path)
    kept = apply_keep_fp32(fake_trt, network, layer_patterns(KEEP, node_names(onnx_path)), log=lambda line: None)
    layers = {layer.name: layer for layer in network.layers}
    assert layers["/a/Softmax"].get_output(0).dtype == fake_trt.int32 and "/a/Softmax" in kept
    assert layers["/a/Softmax"].output_types == {0: fake_trt.float32}
    assert layers["/a/Softmax_1"].get_output(0).dtype == fake_trt.int32
    assert "/a/Softmax_1" not in kept and layers["/a/Softmax_1"].output_types == {}
    float_softmax_1 = [n for n in layers if n.startswith("/a/Softmax_1_")]
    layernorm = [n for n in layers if n.startswith("/n/LayerNormalization")]
    assert len(float_softmax_1) == 1 and len(layernorm) == 2
    assert sorted(kept) == sorted(["/a/Softmax", *float_softmax_1, *layernorm, "/r/ReduceSum"])
    assert "/r/ReduceSum_1" not in kept
