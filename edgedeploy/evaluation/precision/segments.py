"""Running a large graph in memory-bounded pieces: the range analysis cuts the FP32 graph into contiguous
segments whose exposed tensors fit a memory budget, and runs each as its own ONNX Runtime session."""

from __future__ import annotations

import resource
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from edgedeploy.evaluation.precision.graph_index import GraphIndex


@dataclass
class Segment:
    """A contiguous run of the graph's nodes, run as its own ONNX Runtime session."""

    nodes: list[str]
    inputs: list[str]  # tensors it reads that an earlier segment (or the graph input) produced
    measured: list[str]  # tracked tensors it produces
    handoff: list[str]  # tensors it produces that later segments read
    nbytes: float = 0.0


def cut_segments(index: GraphIndex, tracked: list[str], memory_mib: float) -> list[Segment]:
    """Cut the graph, in order, into segments whose measured tensors total at most ``memory_mib``."""
    budget = max(0.0, float(memory_mib)) * 2 ** 20
    tracked_set = set(tracked)
    groups: list[list[str]] = [[]]
    size = 0.0
    for name in index.order:
        if index.op(name) == "Constant":
            continue
        nbytes = sum(4.0 * (index.numel(t) or 0) for t in index.outputs(name) if t in tracked_set)
        if groups[-1] and nbytes and size + nbytes > budget:
            groups.append([])
            size = 0.0
        groups[-1].append(name)
        size += nbytes
    groups = [g for g in groups if g]
    segment_of = {name: k for k, group in enumerate(groups) for name in group}
    segments = []
    for k, group in enumerate(groups):
        produced = [t for name in group for t in index.outputs(name)]
        inputs: dict[str, None] = {}
        for name in group:
            for t in index.inputs(name):
                prod = index.producer_of(t)
                if t in index.initializers or (prod is not None and index.op(prod) == "Constant"):
                    continue
                if prod is None or segment_of.get(prod, -1) < k:
                    inputs.setdefault(t, None)
        later = {t for name in index.order if segment_of.get(name, -1) > k for t in index.inputs(name)}
        later |= set(index.graph_outputs)
        measured = [t for t in produced if t in tracked_set]
        handoff = [t for t in produced if t in later and t not in tracked_set]
        segments.append(Segment(group, list(inputs), measured, handoff,
                                sum(4.0 * (index.numel(t) or 0) for t in measured)))
    return segments


def segment_model(index: GraphIndex, segment: Segment) -> bytes:
    """The ONNX model of one segment: its nodes, the constants and weights they read, boundary I/O."""
    graph = index.model.graph
    wanted = {t for name in segment.nodes for t in index.inputs(name)}
    constants = [index.nodes[index.producer[t]] for t in sorted(wanted)
                 if t in index.producer and index.op(index.producer[t]) == "Constant"]
    nodes = list({id(n): n for n in constants}.values()) + [index.nodes[name] for name in segment.nodes]
    inits = [init for init in graph.initializer if init.name in wanted]
    inputs = [helper.make_tensor_value_info(t, index.types.get(t, TensorProto.FLOAT), index.shapes.get(t))
              for t in segment.inputs]
    outputs = [helper.make_tensor_value_info(t, index.types.get(t, TensorProto.FLOAT), index.shapes.get(t))
               for t in [*segment.measured, *segment.handoff]]
    sub = helper.make_graph(nodes, f"segment-{segment.nodes[0]}", inputs, outputs, initializer=inits)
    model = helper.make_model(sub, opset_imports=list(index.model.opset_import), ir_version=index.model.ir_version)
    return model.SerializeToString()


def segmentable(index: GraphIndex) -> bool:
    """Segments need every boundary tensor's type, and no subgraphs reading outer-scope names."""
    for node in index.nodes.values():
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            return False
    return all(t in index.types for name in index.order for t in index.outputs(name))


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """Resident memory of this process now (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0
