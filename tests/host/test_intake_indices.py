"""Intake stores INT64 index constants as INT32 only where the ONNX spec lets that op take int32 indices.

Gather and GatherElements take ``tensor(int32)`` or ``tensor(int64)`` indices; GatherND takes ``tensor(int64)``
alone (``onnx.defs.get_schema``), so its indices must stay INT64 or the graph no longer type-checks or loads.
The graph is written with ``onnx.helper`` (no torch): a Gather beside a GatherND, both on INT64 initializers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedeploy.host.intake import intake_onnx, load_imported, narrow_index_constants

OPSET = 17


def _gather_and_gathernd(path: Path) -> Path:
    """input 1x3x32x32 -> Gather (channels reversed) -> channel mean = anomaly_map 1x1x32x32;
    GatherND(anomaly_map, [[0, 0]]) -> 1x32x32 -> max = pred_score (1,)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])
    score = helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, [1])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, 32, 32])
    inits = [numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "gather_idx"),
             numpy_helper.from_array(np.array([[0, 0]], dtype=np.int64), "nd_idx")]
    nodes = [
        helper.make_node("Gather", ["input", "gather_idx"], ["picked"], name="gather", axis=1),
        helper.make_node("ReduceMean", ["picked"], ["anomaly_map"], name="mean", axes=[1], keepdims=1),
        helper.make_node("GatherND", ["anomaly_map", "nd_idx"], ["plane"], name="gathernd"),
        helper.make_node("ReduceMax", ["plane"], ["pred_score"], name="max", axes=[1, 2], keepdims=0),
    ]
    return _save(helper.make_graph(nodes, "g", [x], [score, amap], inits), path)


def _shared_index(path: Path) -> Path:
    """One INT64 initializer [[0, 1]] read as indices by a Gather (axis 0) and by a GatherND, on a 4x4 input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2, 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])
    nodes = [helper.make_node("Gather", ["x", "idx"], ["a"], name="gather", axis=0),
             helper.make_node("GatherND", ["x", "idx"], ["b"], name="gathernd")]
    inits = [numpy_helper.from_array(np.array([[0, 1]], dtype=np.int64), "idx")]
    return _save(helper.make_graph(nodes, "g", [x], [a, b], inits), path)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _index_types(proto) -> dict[str, int]:
    by_name = {t.name: t.data_type for t in proto.graph.initializer}
    return {node.name: by_name[node.input[1]] for node in proto.graph.node if node.op_type in ("Gather", "GatherND")}


def test_the_spec_decides_which_indices_may_be_int32():
    from edgedeploy.host.intake import int32_index_input

    assert int32_index_input("Gather", "", OPSET) == 1
    assert int32_index_input("GatherElements", "", OPSET) == 1
    assert int32_index_input("ScatterElements", "", OPSET) == 1
    assert int32_index_input("GatherND", "", OPSET) is None  # tensor(int64) only
    assert int32_index_input("ScatterND", "", OPSET) is None
    assert int32_index_input("Add", "", OPSET) is None  # no indices input
    assert int32_index_input("NoSuchOp", "", OPSET) is None


def test_intake_keeps_gathernd_indices_int64_and_the_graph_valid(tmp_path):
    pytest.importorskip("skimage")  # the verification photographs
    import onnxruntime as ort

    source = _gather_and_gathernd(tmp_path / "gathers.onnx")
    model = load_imported(source)
    folder = tmp_path / "intake"
    folder.mkdir()
    details, warnings = intake_onnx(model, folder)
    written = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(written, full_check=True)
    assert _index_types(written) == {"gather": TensorProto.INT32, "gathernd": TensorProto.INT64}
    assert details["int32_indices"] == ["gather"]
    assert any("stored as INT32" in w and "gather" in w for w in warnings)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    score, amap = session.run(["pred_score", "anomaly_map"], {"input": image})
    np.testing.assert_allclose(amap, image.mean(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(score, [amap.max()], rtol=1e-6)


def test_an_initializer_that_gathernd_also_reads_stays_int64(tmp_path):
    proto = onnx.load(str(_shared_index(tmp_path / "shared.onnx")))
    assert narrow_index_constants(proto) == []
    assert _index_types(proto) == {"gather": TensorProto.INT64, "gathernd": TensorProto.INT64}
    onnx.checker.check_model(proto, full_check=True)
