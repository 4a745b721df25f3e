"""FP16 emulation of a device on the host: a derived ONNX graph that ONNX Runtime runs on the CPU.

:func:`emulate_fp16` rewrites an FP32 graph so that every number a device running it in FP16
would *store* is an FP16 value, while each op still computes in FP32:

* float initializers (weights) are rounded to the nearest FP16 value (round-to-nearest-even) and
  stored back as float32; weights beyond +-65504 are clamped to +-65504, as TensorRT does when it
  converts weights ("values out of FP16 range, clamped");
* the float graph inputs are rounded to FP16 on entry (the device converts its FP32 input binding);
* after every node, each float output passes through ``Cast(to=FLOAT16) -> Cast(to=FLOAT)``: an
  activation beyond +-65504 becomes +-inf and a magnitude below 2**-25 becomes 0, exactly as when
  the device writes it to an FP16 buffer. Pure data movement (Reshape, Transpose, Split, Gather,
  Concat, MaxPool, ...) of values that are already FP16 is exact, so those nodes get no casts; where
  ONNX Runtime can, they move the FP16 tensor itself and widen the result once (half the bytes);
* float ``Constant`` nodes (weights the exporter left as nodes) are rounded and clamped once, like
  initializers, instead of cast after every run.

``keep_fp32`` names nodes left in FP32 (the device's ``--layerPrecisions=name:fp32``): their
outputs are not rounded and the weights only they read stay FP32. A later "precision" search
calls :func:`emulate_fp16` with different keep sets; :func:`emulated_model` caches each result by
(model hash, keep set, emulation version).

What this captures, and what it cannot (see docs/fidelity.md): it captures weight rounding and
FP16 storage of every activation, with overflow to inf and underflow to zero between ops. It does
not capture FP16 *arithmetic inside* a kernel (a reduction, a LayerNorm variance or a Softmax sum
accumulated in FP16 on the device is accumulated in FP32 here), fused kernels whose intermediate
precision differs from op-by-op execution (fused attention, GELU, LayerNorm), or the builder's
tactic choice (which kernels run, and which layers it silently keeps in FP32).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import atomic_path, write_json_atomic
from edgedeploy.core.hashing import sha256_file, sha256_json
from edgedeploy.core.resources import cache_root

EMULATION_VERSION = "fp16-emulation-2"  # 2: constants rounded once, data movement on the FP16 twins
FP16_MAX = 65504.0
_SUFFIX_RAW = "__fp32"
_SUFFIX_HALF = "__fp16"

# Ops whose float outputs are a selection or rearrangement of their float inputs' values: when
# every float input is already an FP16 value, so is every output, and rounding again changes nothing.
EXACT_OPS = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Split", "Slice", "Concat",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "MaxPool", "ReduceMax", "ReduceMin",
    "Max", "Min", "Relu", "Abs", "Neg", "TopK", "DepthToSpace", "SpaceToDepth", "Where",
})
# Exact ops that only move values, which ONNX Runtime's CPU provider runs on FP16 tensors as they are:
# fed the FP16 twins of their inputs, they move half the bytes (``_move_in_fp16``).
FP16_MOVES = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Split", "Slice",
                        "Concat", "Gather", "Expand", "Tile"})


def round_to_fp16(values: np.ndarray, clamp: bool = False) -> np.ndarray:
    """``values`` rounded to the nearest FP16 value, returned as float32.

    Beyond +-65504 the result is +-inf, or +-65504 with ``clamp`` (how weights are converted).
    """
    arr = np.asarray(values, dtype=np.float32)
    if clamp:
        arr = np.clip(arr, -FP16_MAX, FP16_MAX)
    with np.errstate(over="ignore"):
        return arr.astype(np.float16).astype(np.float32)


def emulate_fp16(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                 keep_fp32: Iterable[str] = (), lean: bool = True) -> Path:
    """Write the FP16 emulation of the FP32 graph at ``onnx_path`` to ``out_path``; return ``out_path``.

    ``keep_fp32``: node names to leave in FP32. An unknown name is an error naming it.
    ``lean=False`` writes the first emulation's graph (a cast pair after every Constant, data movement
    in FP32): the same outputs, bit for bit (tested on the demo), at more cost; kept as the reference
    the lean graph is checked against.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgedeploy.core.onnxfile import load_onnx

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    model = load_onnx(onnx_path)
    graph = model.graph
    keep = set(keep_fp32)
    names = {node.name for node in graph.node}
    unknown = sorted(keep - names)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise EdgeDeployError(f"keep-fp32: no node named {shown} in {onnx_path}; node names are listed "
                              "in the bundle's audit.json (or open the model in Netron)")

    float_types = _float_tensors(model)
    initializers = {init.name: init for init in graph.initializer}
    rounded = _round_initializers(graph, initializers, keep, numpy_helper)  # tensors holding FP16 values
    if lean:
        rounded |= _round_constants(graph, keep, numpy_helper)
    half_of: dict[str, str] = {}  # a rounded tensor -> its FP16 twin (the output of its Cast(FLOAT16))
    fp16_only = _read_only_by_moves(graph, keep) if lean else set()
    new_nodes = []
    for graph_input in graph.input:
        if graph_input.name in initializers or float_types.get(graph_input.name) != TensorProto.FLOAT:
            continue
        name = graph_input.name
        half, back = f"{name}{_SUFFIX_HALF}", f"{name}{_SUFFIX_RAW}_rounded"
        for node in graph.node:
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = back
        for output in graph.output:
            if output.name == name:
                raise EdgeDeployError(f"{onnx_path}: graph input {name} is also a graph output; cannot emulate")
        new_nodes += _cast_pair(helper, TensorProto, name, half, back, f"fp16_emulation/input/{name}")
        rounded.add(back)
        half_of[back] = half

    for node in graph.node:
        if node.name in keep or (node.op_type == "Constant" and node.output[0] in rounded):
            new_nodes.append(node)
            continue
        float_inputs = [i for i in node.input if i and float_types.get(i) == TensorProto.FLOAT]
        if lean and float_inputs and all(i in half_of and i in fp16_only for i in float_inputs) and \
                node.op_type in FP16_MOVES:
            new_nodes += _move_in_fp16(node, float_types, half_of, rounded)
            continue
        new_nodes.append(node)
        exact = node.op_type in EXACT_OPS and all(i in rounded for i in float_inputs)
        for k, out in enumerate(node.output):
            if not out or float_types.get(out) != TensorProto.FLOAT:
                continue
            if exact:
                rounded.add(out)
                continue
            raw = f"{out}{_SUFFIX_RAW}"
            node.output[k] = raw
            new_nodes += _cast_pair(helper, TensorProto, raw, f"{out}{_SUFFIX_HALF}", out,
                                    f"fp16_emulation/{node.name or out}/{k}")
            rounded.add(out)
            half_of[out] = f"{out}{_SUFFIX_HALF}"
    if lean:
        new_nodes = _drop_unread_casts(new_nodes, {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(new_nodes)
    model.doc_string = (f"{EMULATION_VERSION if lean else 'fp16-emulation-1'} of {onnx_path.name}; keep_fp32: "
                        f"{', '.join(sorted(keep)) or 'none'}")
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return out_path


def _round_constants(graph, keep: set[str], numpy_helper) -> set[str]:
    """Round (and clamp, as weights are) the float tensors of Constant nodes in place, where no kept node
    reads them; return their outputs. A rounded constant needs no cast pair: casting it again is exact."""
    from onnx import TensorProto

    kept_inputs = {i for node in graph.node if node.name in keep for i in node.input}
    done: set[str] = set()
    for node in graph.node:
        if (node.op_type != "Constant" or node.name in keep or node.output[0] in kept_inputs
                or len(node.attribute) != 1 or node.attribute[0].name != "value"
                or node.attribute[0].t.data_type != TensorProto.FLOAT):
            continue
        tensor = node.attribute[0].t
        tensor.CopyFrom(numpy_helper.from_array(round_to_fp16(numpy_helper.to_array(tensor), clamp=True), tensor.name))
        done.add(node.output[0])
    return done


def _read_only_by_moves(graph, keep: set[str]) -> set[str]:
    """Tensors every reader of which is a data-movement node that can take FP16 (and no graph output): moved
    in FP16, such a tensor is never widened. Elsewhere moving in FP16 would add a widening, not save one."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    return {name for name, nodes in readers.items() if name not in outputs
            and all(n.op_type in FP16_MOVES and n.name not in keep for n in nodes)}


def _move_in_fp16(node, float_types: dict[str, int], half_of: dict[str, str], rounded: set[str]) -> list:
    """Run a data-movement node on the FP16 twins of its float inputs and widen each output once after it.

    Moving FP16 values and widening them is moving the widened values (the widening is exact and per
    element), so the outputs are the same bits; the node moves half the bytes, and a tensor read only by
    such nodes is never widened at all (``_drop_unread_casts``)."""
    from onnx import TensorProto, helper

    for i, name in enumerate(node.input):
        if name in half_of:
            node.input[i] = half_of[name]
    nodes = [node]
    for k, out in enumerate(node.output):
        if not out or float_types.get(out) != TensorProto.FLOAT:
            continue
        half = f"{out}{_SUFFIX_HALF}"
        node.output[k] = half
        nodes.append(helper.make_node("Cast", [half], [out], to=TensorProto.FLOAT,
                                      name=f"fp16_emulation/{node.name or out}/{k}/to_fp32"))
        half_of[out] = half
        rounded.add(out)
    return nodes


def _drop_unread_casts(nodes: list, graph_outputs: set[str]) -> list:
    """``nodes`` without the Cast(FLOAT) widenings whose output no node and no graph output reads."""
    read = {name for node in nodes for name in node.input} | graph_outputs
    return [node for node in nodes
            if not (node.op_type == "Cast" and node.name.endswith("to_fp32") and node.output[0] not in read)]


def _float_tensors(model) -> dict[str, int]:
    """Element type of every tensor in the graph (from ONNX shape inference)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises InferenceError and friends
        raise EdgeDeployError(f"ONNX shape inference failed on the model to emulate ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160]}); re-export it") from None
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    missing = [o for n in g.node for o in n.output if o and o not in types]
    if missing:
        raise EdgeDeployError(f"ONNX shape inference left the type of {len(missing)} tensors unknown "
                              f"(first: {', '.join(missing[:3])}); simplify the model (edgedeploy build) first")
    return types


def _round_initializers(graph, initializers: dict, keep: set[str], numpy_helper) -> set[str]:
    """Round float weights in place (a weight read by kept and non-kept nodes is split in two);
    return the names of the rounded weights."""
    from onnx import TensorProto

    readers: dict[str, list] = {}
    for node in graph.node:
        for inp in node.input:
            if inp in initializers:
                readers.setdefault(inp, []).append(node)
    done: set[str] = set()
    for name, init in list(initializers.items()):
        if init.data_type != TensorProto.FLOAT:
            continue
        users = readers.get(name, [])
        kept = [n for n in users if n.name in keep]
        if kept and len(kept) == len(users):
            continue
        rounded = numpy_helper.from_array(round_to_fp16(numpy_helper.to_array(init), clamp=True), name)
        if not kept:
            init.CopyFrom(rounded)
            done.add(name)
            continue
        rounded.name = f"{name}{_SUFFIX_HALF}"
        graph.initializer.append(rounded)
        initializers[rounded.name] = graph.initializer[-1]
        for node in users:
            if node.name not in keep:
                for i, inp in enumerate(node.input):
                    if inp == name:
                        node.input[i] = rounded.name
        done.add(rounded.name)
    return done


def _cast_pair(helper, tensor_proto, src: str, half: str, dst: str, name: str) -> list:
    return [helper.make_node("Cast", [src], [half], to=tensor_proto.FLOAT16, name=f"{name}/to_fp16"),
            helper.make_node("Cast", [half], [dst], to=tensor_proto.FLOAT, name=f"{name}/to_fp32")]


# ------------------------------------------------------------------------------------------ cache


def emulation_key(model_sha256: str, keep_fp32: Iterable[str] = ()) -> str:
    """The cache key of one emulated model: (model hash, keep set, emulation version)."""
    return sha256_json({"model": model_sha256, "keep_fp32": sorted(set(keep_fp32)),
                        "version": EMULATION_VERSION})[:24]


def emulated_model(onnx_path: str | os.PathLike[str], keep_fp32: Iterable[str] = (),
                   cache_dir: str | os.PathLike[str] | None = None, model_sha256: str | None = None) -> Path:
    """The cached FP16 emulation of ``onnx_path`` for this keep set, written on first use.

    Cached under ``cache_dir`` (default ``$EDGEDEPLOY_CACHE/fp16/``) as ``<key>.onnx`` with a
    ``<key>.json`` note of what it was made from.
    """
    onnx_path = Path(onnx_path)
    keep = sorted(set(keep_fp32))
    model_sha256 = model_sha256 or sha256_file(onnx_path)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "fp16"
    key = emulation_key(model_sha256, keep)
    target = folder / f"{key}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    emulate_fp16(onnx_path, target, keep)
    write_json_atomic(folder / f"{key}.json", {"source": str(onnx_path), "model_sha256": model_sha256,
                                                "keep_fp32": keep, "version": EMULATION_VERSION})
    return target
