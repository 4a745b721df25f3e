"""``--keep-fp32``: which ONNX nodes stay in FP32 in an FP16 TensorRT engine, and how TensorRT names them.

Names are ONNX node names exactly as ``edgedeploy audit`` prints them (e.g.
``/stages.1/blocks/blocks.0/attn/Softmax``); a name with ``*``, ``?`` or ``[`` is a glob
(``fnmatch``). Every name must match a node of the bundle's ``model.onnx``.

TensorRT's ONNX parser names each layer after the node it came from; when one node becomes
several layers, or a name is taken, the parser appends ``_<n>`` (onnx-tensorrt
``ImporterContext::registerLayer`` / ``generateUniqueName``). So node ``N`` covers the layer ``N``
and the layers ``N_<n>``: the one-``*`` spec ``N*`` (trtexec's ``*`` may match nothing). When another
ONNX node's name starts with ``N`` (torch export names the second ``/readout/ReduceSum`` node
``/readout/ReduceSum_1``), a wildcard would catch that node too, so only ``N`` itself is named.

One rule for both builds, trtexec's (TensorRT 10.3 samples/common/sampleEngines.cpp,
``setLayerPrecisions`` / ``setLayerOutputTypes``; ``matchStringWithOneWildcard`` in sampleUtils.cpp):
a layer named exactly by a spec is constrained whatever it computes; a layer reached by a wildcard is
skipped when it computes no floats. The in-process build (``targets/tensorrt/engine.py``) applies the
same rule to the same specs, so both constrain the same layers; preferring ``N*`` keeps the
unconditional exact rule to the nodes where it cannot be avoided.
"""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path

import onnx
from onnx import TensorProto

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.onnxfile import load_onnx

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
NO_LAYER_OPS = ("Constant",)  # the ONNX parser adds no layer for these
SPEC_SEPARATORS = (",", ":")  # trtexec's spec grammar splits on these


class KeepFp32Error(EdgeDeployError):
    """A --keep-fp32 name that matches nothing, or a node that cannot be kept in FP32."""


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _float_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Named nodes whose outputs are all floating point (the ones a precision constraint applies to)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort; unknown types count as float
        inferred = model
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output, *graph.input)}
    nodes = {}
    for node in graph.node:
        if node.name and all(types.get(out, TensorProto.FLOAT) in FLOAT_TYPES for out in node.output if out):
            nodes[node.name] = node
    return nodes


def expand_keep_fp32(onnx_path: str | Path, patterns: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Resolve names/globs against the model's nodes; sorted in graph order, each node once.

    A glob silently skips nodes that make no layer (Constant) or compute non-float tensors; a name
    given exactly must be a float-computing node, otherwise the user is told why it cannot be kept.
    """
    if not patterns:
        return ()
    model = load_onnx(onnx_path, load_weights=False)
    order = [n.name for n in model.graph.node if n.name]
    all_nodes = {n.name: n for n in model.graph.node if n.name}
    keepable = {name: n for name, n in _float_nodes(model).items() if n.op_type not in NO_LAYER_OPS}
    chosen: set[str] = set()
    for pattern in patterns:
        if not _is_glob(pattern):
            chosen.add(_exact(pattern, all_nodes, keepable, onnx_path))
            continue
        matched = [name for name in order if fnmatch.fnmatchcase(name, pattern)]
        usable = [name for name in matched if name in keepable]
        if not usable:
            raise KeepFp32Error(_no_match(pattern, matched, order, onnx_path))
        chosen.update(usable)
    for name in chosen:
        if any(sep in name for sep in SPEC_SEPARATORS):
            raise KeepFp32Error(f"--keep-fp32: node name {name!r} contains ',' or ':', which trtexec's "
                                "--layerPrecisions cannot express; rename the node in the exported model")
    return tuple(name for name in order if name in chosen)


def _exact(name: str, all_nodes: dict, keepable: dict, onnx_path) -> str:
    if name not in all_nodes:
        raise KeepFp32Error(_no_match(name, [], list(all_nodes), onnx_path))
    if name not in keepable:
        op = all_nodes[name].op_type
        why = "adds no TensorRT layer" if op in NO_LAYER_OPS else "does not compute floating-point tensors"
        raise KeepFp32Error(f"--keep-fp32 {name!r}: this {op} node {why}, so it has no precision to keep; "
                            "name a float-computing node (see `edgedeploy audit`)")
    return name


def _no_match(pattern: str, matched: list[str], names: list[str], onnx_path) -> str:
    if matched:
        return (f"--keep-fp32 {pattern!r} matches only nodes without a float TensorRT layer "
                f"({', '.join(matched[:3])}{' ...' if len(matched) > 3 else ''}); name float-computing nodes")
    close = difflib.get_close_matches(pattern, names, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        "; use the node names `edgedeploy audit` prints (globs allowed, e.g. '*/attn/Softmax')"
    return f"--keep-fp32 {pattern!r} matches no node of {onnx_path}{hint}"


def layer_patterns(kept: tuple[str, ...], all_node_names: list[str] | set[str]) -> list[str]:
    """trtexec layer-name specs for the kept nodes: ``N*`` where no other node's name starts with ``N``, else ``N``."""
    names = set(all_node_names)
    return [node if any(other != node and other.startswith(node) for other in names) else f"{node}*"
            for node in kept]


def node_names(onnx_path: str | Path) -> list[str]:
    return [n.name for n in load_onnx(onnx_path, load_weights=False).graph.node if n.name]


def match_layer(layer_name: str, specs: list[str]) -> str | None:
    """How a TensorRT layer name matches the specs, as trtexec matches them: ``"exact"`` (a spec is the name),
    ``"wildcard"`` (a spec's one ``*`` stands for any run of characters, possibly none), or None."""
    if layer_name in specs:
        return "exact"
    for spec in specs:
        if "*" in spec:
            prefix, suffix = spec.split("*", 1)
            if len(layer_name) >= len(prefix) + len(suffix) and layer_name.startswith(prefix) \
                    and layer_name.endswith(suffix):
                return "wildcard"
    return None
