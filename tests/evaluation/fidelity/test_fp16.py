"""FP16 emulation: weights and activations rounded to FP16, overflow to inf, keep_fp32, caching."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.host.fp16 import emulate_fp16, emulated_model, round_to_fp16
from edgedeploy.host.runners import fp16_emulation_runner, graph_runner


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                disabled_optimizers=["CastChainElimination"])


def _run(path, x):
    return _session(path).run(None, {"x": np.asarray(x, np.float32)})[0]


def scale_graph(path, up=1000.0, extra_weight=None):
    """x -> Mul(up) "big" -> Div(up) "down" -> Reshape "flat" -> y: a large intermediate activation."""
    inits = [numpy_helper.from_array(np.array([up], np.float32), "up"),
             numpy_helper.from_array(np.array([4], np.int64), "shape")]
    nodes = [helper.make_node("Mul", ["x", "up"], ["big_out"], name="big"),
             helper.make_node("Div", ["big_out", "up"], ["down_out"], name="down"),
             helper.make_node("Reshape", ["down_out", "shape"], ["y"], name="flat")]
    if extra_weight is not None:
        inits.append(numpy_helper.from_array(np.asarray(extra_weight, np.float32), "w"))
        nodes[-1] = helper.make_node("Mul", ["down_out", "w"], ["y"], name="weigh")
    graph = helper.make_graph(nodes, "scale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_activation_beyond_fp16_range_becomes_inf_and_keep_fp32_prevents_it(tmp_path):
    src = scale_graph(tmp_path / "m.onnx")
    x = [100.0, -100.0, 1.0, 0.5]                     # 100 * 1000 = 1e5 > 65504
    np.testing.assert_allclose(_run(src, x), x)       # FP32: fine
    emulated = emulate_fp16(src, tmp_path / "e.onnx")
    y = _run(emulated, x)
    assert y[0] == np.inf and y[1] == -np.inf
    np.testing.assert_array_equal(y[2:], [1.0, 0.5])
    kept = emulate_fp16(src, tmp_path / "k.onnx", keep_fp32={"big"})
    np.testing.assert_array_equal(_run(kept, x), x)   # 1e5 stays FP32; /1000 is back in range


def test_activations_rounded_and_flushed_like_fp16(tmp_path):
    src = scale_graph(tmp_path / "m.onnx", up=1.0)
    x = np.array([1 / 3, 1e-8, 6e-5, 70000.0], np.float32)   # rounding, underflow to 0, subnormal, overflow
    y = _run(emulate_fp16(src, tmp_path / "e.onnx"), x)
    expected = round_to_fp16(x)
    np.testing.assert_array_equal(y, expected)
    assert y[0] != np.float32(1 / 3) and y[1] == 0.0 and 0 < y[2] < 6.2e-5 and y[3] == np.inf


def test_weights_rounded_and_clamped(tmp_path):
    src = scale_graph(tmp_path / "m.onnx", up=1.0, extra_weight=[0.1, 1e5, -1e5, 1.0])
    emulated = emulate_fp16(src, tmp_path / "e.onnx")
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(emulated)).graph.initializer}
    np.testing.assert_array_equal(weights["w"], [np.float32(np.float16(0.1)), 65504.0, -65504.0, 1.0])
    assert weights["w"].dtype == np.float32
    y = _run(emulated, [1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(y, [np.float16(0.1), 65504.0, -65504.0, 1.0])


def test_weight_read_by_kept_and_rounded_nodes_is_split(tmp_path):
    # "up" is read by "big" (kept) and "down": big keeps 1/3 in FP32, down divides by the FP16 value
    src = scale_graph(tmp_path / "m.onnx", up=1 / 3)
    kept = emulate_fp16(src, tmp_path / "k.onnx", keep_fp32=["big"])
    inits = {i.name: numpy_helper.to_array(i)[0] for i in onnx.load(str(kept)).graph.initializer if i.name != "shape"}
    assert inits["up"] == np.float32(1 / 3)
    assert inits["up__fp16"] == round_to_fp16(np.float32(1 / 3))


def test_unknown_keep_name_is_named(tmp_path):
    src = scale_graph(tmp_path / "m.onnx")
    with pytest.raises(EdgeDeployError, match="no node named nope"):
        emulate_fp16(src, tmp_path / "e.onnx", keep_fp32=["big", "nope"])


def test_pure_data_movement_is_not_rounded_again(tmp_path):
    src = scale_graph(tmp_path / "m.onnx")
    nodes = onnx.load(str(emulate_fp16(src, tmp_path / "e.onnx"))).graph.node
    to_fp16 = [n.name for n in nodes if n.op_type == "Cast" and n.name.endswith("to_fp16")]
    assert len(to_fp16) == 3 and not any("flat" in c for c in to_fp16)  # input, big, down; not the Reshape
    # the Reshape moves down's FP16 values and one Cast widens its result: down itself is never widened
    widen = [n.name for n in nodes if n.op_type == "Cast" and n.name.endswith("to_fp32")]
    assert widen == ["fp16_emulation/input/x/to_fp32", "fp16_emulation/big/0/to_fp32", "fp16_emulation/flat/0/to_fp32"]
    first = [n.name for n in onnx.load(str(emulate_fp16(src, tmp_path / "f.onnx", lean=False))).graph.node
             if n.op_type == "Cast"]
    assert len(first) == 6 and not any("flat" in c for c in first)


def test_emulated_model_is_cached_by_model_and_keep_set(tmp_path):
    src = scale_graph(tmp_path / "m.onnx")
    cache = tmp_path / "cache"
    first = emulated_model(src, cache_dir=cache)
    stamp = first.stat().st_mtime_ns
    assert emulated_model(src, cache_dir=cache) == first and first.stat().st_mtime_ns == stamp
    kept = emulated_model(src, keep_fp32=("big",), cache_dir=cache)
    assert kept != first and emulated_model(src, keep_fp32=["big", "big"], cache_dir=cache) == kept
    assert (cache / (first.stem + ".json")).is_file()


def test_real_graph_emulation_stays_close_but_not_equal(small_model, small_recipe, tmp_path):
    model = small_model
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 224, 224), dtype=np.float32)
    fp32 = graph_runner(model, small_recipe, "seeded")
    fp16 = fp16_emulation_runner(model, small_recipe, "seeded", cache_dir=tmp_path)
    (s32, m32), (s16, m16) = fp32.infer(images), fp16.infer(images)
    assert np.all(np.isfinite(s16)) and np.all(np.isfinite(m16))
    assert 0 < np.max(np.abs(s16 - s32)) < 5e-3
    assert 0 < np.max(np.abs(m16 - m32)) < 2e-2
    # the score output itself is an FP16 value, as the device hands it out
    np.testing.assert_array_equal(s16.astype(np.float32), round_to_fp16(s16))
    assert fp16.model_sha256 == fp32.model_sha256  # the file names the bundle's graph, not the derived one


def test_lean_emulation_is_bit_identical_to_the_first_on_demo_images(small_model, small_recipe, tmp_path):
    """Constants rounded once and data movement on FP16 twins remove casts, not rounding: every score and
    map of the real graph on real demo images is the same bits as with a cast pair after every node."""
    from edgedeploy.evaluation.data import load_batch, load_benchmark

    first = emulate_fp16(small_model, tmp_path / "first.onnx", lean=False)
    lean = emulate_fp16(small_model, tmp_path / "lean.onnx")
    casts = {p: sum(n.op_type == "Cast" for n in onnx.load(str(p)).graph.node) for p in (first, lean)}
    assert casts[lean] < casts[first]
    moved = [n for n in onnx.load(str(lean)).graph.node if n.op_type in ("Transpose", "Split")
             and all(i.endswith("__fp16") for i in n.input[:1])]
    assert moved  # the FP16 path is taken on this graph
    images = load_batch([s.path for s in load_benchmark("demo").samples[::6]], small_recipe.model.input_size)
    sessions = [_session(first), _session(lean)]
    for k in range(len(images)):
        a, b = (s.run(None, {"image": images[k:k + 1]}) for s in sessions)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_lean_emulation_rounds_constants_like_weights(tmp_path):
    """A weight the exporter left as a Constant node is clamped to 65504, as an initializer is, not cast to inf."""
    src = scale_graph(tmp_path / "m.onnx", up=1.0)
    model = onnx.load(str(src))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["big_w"], name="w",
                                                value=numpy_helper.from_array(np.array([1e5], np.float32))))
    model.graph.node[1].input[1] = "big_w"  # big: x * 1e5
    onnx.save(model, str(src))
    nodes = onnx.load(str(emulate_fp16(src, tmp_path / "e.onnx"))).graph.node
    assert not any(n.op_type == "Cast" and n.input[0].startswith("big_w") for n in nodes)
    np.testing.assert_array_equal(_run(tmp_path / "e.onnx", [1.0, 0.5, 0.0, -1.0])[[0, 2]], [65504.0, 0.0])
