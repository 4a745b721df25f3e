"""This CPU's float32 matmul limit and a graph's FLOPs: the yardstick ``bench_scoring.py`` measures against.

The roofline is the best rate of a square float32 matmul (2n³ FLOPs), through numpy's BLAS and
through ONNX Runtime's own GEMM (MLAS), whichever is higher: what this CPU sustains on the one
kernel that dominates a ViT. A graph's FLOPs count its MatMul, Gemm and Conv nodes (2 per
multiply-add, from ONNX shape inference); element-wise ops, softmax and normalisation are left out,
as the published GFLOPs figures of vision models leave them out.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np


class MatmulRoofline:
    """An n x n float32 matmul through numpy and through ONNX Runtime (MLAS), set up once and sampled often."""

    def __init__(self, n: int = 2048):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in ("a", "b", "c")]
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", spec[:2], spec[2:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        self.a, self.b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
        self.flops = 2 * n**3
        self.sample()  # warm-up: thread pools, page faults

    def sample(self) -> tuple[float, float]:
        """(numpy GFLOP/s, ONNX Runtime GFLOP/s) of one matmul each."""
        feed = {"a": self.a, "b": self.b}
        numpy_s = _seconds(lambda: self.a @ self.b)
        ort_s = _seconds(lambda: self.session.run(None, feed))
        return self.flops / numpy_s / 1e9, self.flops / ort_s / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def graph_flops(onnx_path: Path) -> dict[str, int]:
    """FLOPs of one run of the graph by op type (MatMul, Gemm, Conv), from ONNX shape inference."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    flops: dict[str, int] = {}
    for node in model.graph.node:
        count = _node_flops(node, shapes)
        if count:
            flops[node.op_type] = flops.get(node.op_type, 0) + count
    return flops


def _node_flops(node, shapes: dict[str, list[int]]) -> int:
    if node.op_type == "MatMul":
        a, out = shapes[node.input[0]], shapes[node.output[0]]
        return 2 * math.prod(out) * a[-1]
    if node.op_type == "Gemm":
        a, out = shapes[node.input[0]], shapes[node.output[0]]
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return 2 * math.prod(out) * (a[0] if trans_a else a[1])
    if node.op_type == "Conv":
        weight, out = shapes[node.input[1]], shapes[node.output[0]]
        return 2 * math.prod(out) * math.prod(weight[1:])  # weight: (C_out, C_in / groups, kh, kw)
    return 0
