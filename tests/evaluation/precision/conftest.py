"""Fixtures for the precision tests: hand-built ONNX graphs that misbehave in FP16, and tiny benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedeploy.core.modelcard import ModelCard

SIZE = 16  # input image side of the hand-built models


class TinyRecipe:
    """Just what the scorers read from a recipe, for a 16x16 hand-built model."""

    class model:  # noqa: N801 - mimics Recipe.model
        input_size = SIZE

    name = "tiny-overflow"
    sha256 = "e" * 64
    input_name = "image"
    output_names = ("score", "anomaly_map")
    card = ModelCard("image", SIZE, "score", "anomaly_map", source="tests: tiny-overflow")


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def overflow_model(path: Path, scale: float = 1e4, seed: int = 0) -> Path:
    """image (1,3,16,16) -> 64 tokens x 12 -> MatMul by weights x ``scale`` (overflows FP16) -> LayerNorm
    -> MatMul -> anomaly_map (1,1,8,8); score = mean brightness + 1e-3 * mean(map), so the ranking is
    set by the brightness and the LayerNorm branch only has to stay finite."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((12, 8)) * scale).astype(np.float32)
    w2 = rng.standard_normal((8, 1)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Reshape", ["image", "tok_shape"], ["tokens"], name="/embed/Reshape"),
        helper.make_node("MatMul", ["tokens", "w1"], ["hidden"], name="/encoder/proj/MatMul"),
        helper.make_node("LayerNormalization", ["hidden", "gamma", "beta"], ["normed"], axis=-1, epsilon=1e-5,
                         name="/encoder/norm/LayerNormalization"),
        helper.make_node("MatMul", ["normed", "w2"], ["cell"], name="/head/MatMul"),
        helper.make_node("Reshape", ["cell", "map_shape"], ["anomaly_map"], name="/head/Reshape"),
        helper.make_node("ReduceMean", ["anomaly_map"], ["map_mean"], keepdims=0, name="/head/ReduceMean"),
        helper.make_node("ReduceMean", ["image"], ["brightness"], keepdims=0, name="/head/ReduceMean_1"),
        helper.make_node("Mul", ["map_mean", "small"], ["map_term"], name="/head/Mul"),
        helper.make_node("Add", ["brightness", "map_term"], ["total"], name="/head/Add"),
        helper.make_node("Reshape", ["total", "score_shape"], ["score"], name="/head/Reshape_1"),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 64, 12], dtype=np.int64), "tok_shape"),
        numpy_helper.from_array(np.array([1, 1, 8, 8], dtype=np.int64), "map_shape"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "score_shape"),
        _const("w1", w1), _const("w2", w2), _const("gamma", np.ones(8)), _const("beta", np.zeros(8)),
        _const("small", 1e-3),
    ]
    graph = helper.make_graph(
        nodes, "overflow", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, 8, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_recipe():
    return TinyRecipe()


@pytest.fixture
def overflow_onnx(tmp_path) -> Path:
    return overflow_model(tmp_path / "overflow.onnx")


@pytest.fixture
def tiny_bench(tmp_path, make_mvtec_tree):
    from edgedeploy.evaluation.data import load_benchmark

    root = make_mvtec_tree(tmp_path / "mvtec", size=SIZE, good_high=120, bad_low=120, bad_step=10, mask_box=None)
    return load_benchmark("mvtec", root)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGEDEPLOY_CACHE", str(folder))
    return folder
