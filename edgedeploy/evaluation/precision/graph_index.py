"""A read-only index of an ONNX graph: node names as the audit prints them, producers, consumers, types, shapes.

Built once per model (shape inference included) and shared by the range analysis, the pattern
classifier and the keep-list search. Small constant tensors (initializers and ``Constant`` outputs
up to :data:`SMALL_CONSTANT` elements) are kept as arrays so patterns can read exponents and scales.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgedeploy.core.errors import OnnxModelError
from edgedeploy.core.onnxfile import load_onnx

SMALL_CONSTANT = 16
FLOAT = TensorProto.FLOAT


def node_name(node: onnx.NodeProto) -> str:
    """The node's name as ``edgedeploy audit`` prints it (unnamed nodes: ``Op(outputs)``)."""
    return node.name or f"{node.op_type}({', '.join(node.output)})"


@dataclass
class GraphIndex:
    model: onnx.ModelProto  # the shape-inferred model (weights included)
    order: list[str]  # node names in graph (topological) order
    nodes: dict[str, onnx.NodeProto]
    producer: dict[str, str]  # tensor -> node name
    consumers: dict[str, list[str]]  # tensor -> node names, in graph order
    types: dict[str, int]  # tensor -> ONNX elem type
    shapes: dict[str, list[int | None]]  # tensor -> dims (None where unknown)
    initializers: set[str] = field(default_factory=set)
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # small initializers and Constant outputs
    graph_inputs: list[str] = field(default_factory=list)
    graph_outputs: list[str] = field(default_factory=list)

    @property
    def position(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.order)}

    def op(self, name: str) -> str:
        return self.nodes[name].op_type

    def inputs(self, name: str) -> list[str]:
        return [t for t in self.nodes[name].input if t]

    def outputs(self, name: str) -> list[str]:
        return [t for t in self.nodes[name].output if t]

    def is_float(self, tensor: str) -> bool:
        return self.types.get(tensor) == FLOAT

    def is_constant(self, tensor: str) -> bool:
        """An initializer or the output of a Constant node (not an activation)."""
        if tensor in self.initializers:
            return True
        prod = self.producer.get(tensor)
        return prod is not None and self.nodes[prod].op_type == "Constant"

    def data_inputs(self, name: str) -> list[str]:
        """Float activation inputs of a node (no weights, no constants)."""
        return [t for t in self.inputs(name) if self.is_float(t) and not self.is_constant(t)]

    def producer_of(self, tensor: str) -> str | None:
        return self.producer.get(tensor)

    def consumers_of(self, name: str) -> list[str]:
        """Every node reading any output of node ``name`` (graph order, each once)."""
        seen: dict[str, None] = {}
        for out in self.outputs(name):
            for c in self.consumers.get(out, []):
                seen.setdefault(c, None)
        return list(seen)

    def numel(self, tensor: str) -> int | None:
        dims = self.shapes.get(tensor)
        if dims is None or any(d is None for d in dims):
            return None
        return int(np.prod(dims, dtype=np.int64)) if dims else 1

    def constant_value(self, tensor: str) -> np.ndarray | None:
        return self.constants.get(tensor)


def _dims(type_proto: onnx.TypeProto) -> list[int | None] | None:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]


def index_model(model: onnx.ModelProto) -> GraphIndex:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and friends
        raise OnnxModelError(f"ONNX shape inference failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                             "build the model with `edgedeploy build` (it simplifies the graph) first") from None
    graph = inferred.graph
    types: dict[str, int] = {}
    shapes: dict[str, list[int | None]] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
            dims = _dims(value.type)
            if dims is not None:
                shapes[value.name] = dims
    constants: dict[str, np.ndarray] = {}
    initializers = set()
    for init in graph.initializer:
        initializers.add(init.name)
        types[init.name] = init.data_type
        shapes[init.name] = list(init.dims)
        if int(np.prod(init.dims, dtype=np.int64)) <= SMALL_CONSTANT:
            constants[init.name] = numpy_helper.to_array(init)
    order: list[str] = []
    nodes: dict[str, onnx.NodeProto] = {}
    producer: dict[str, str] = {}
    consumers: dict[str, list[str]] = defaultdict(list)
    for node in graph.node:
        name = node_name(node)
        if name in nodes:  # duplicate names would make keep-lists ambiguous; make them unique here
            name = f"{name}#{len(order)}"
        order.append(name)
        nodes[name] = node
        for out in node.output:
            if out:
                producer[out] = name
        for inp in dict.fromkeys(i for i in node.input if i):
            consumers[inp].append(name)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t is not None:
                    types[node.output[0]] = attr.t.data_type
                    shapes[node.output[0]] = list(attr.t.dims)
                    if int(np.prod(attr.t.dims, dtype=np.int64)) <= SMALL_CONSTANT:
                        constants[node.output[0]] = numpy_helper.to_array(attr.t)
    init_names = initializers
    return GraphIndex(inferred, order, nodes, producer, dict(consumers), types, shapes, initializers,
                      constants, [i.name for i in graph.input if i.name not in init_names],
                      [o.name for o in graph.output])


def load_index(path: str | Path) -> GraphIndex:
    return index_model(load_onnx(path))
