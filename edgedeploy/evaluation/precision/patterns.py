"""What each node is part of: the pattern that produced a tensor, and the graph region it sits in.

Patterns (the FP16 failure modes of DESIGN.md name them):

=============================  ==============================================================
``LayerNorm``                  a ``LayerNormalization`` op (opset >= 17)
``LayerNorm (decomposed)``     ReduceMean -> Sub -> Pow/Mul(x, x) -> ReduceMean -> Add -> Sqrt -> Div
``Softmax``                    a ``Softmax`` op
``attention MatMul (QK^T)``    the MatMul whose logits feed a Softmax (through scale/bias ops)
``attention MatMul (AV)``      the MatMul reading the Softmax probabilities
``attention scale/bias``       Mul/Div/Add between Q, the QK^T MatMul and the Softmax
``Pow/ReduceMean (variance)``  a squaring (Pow 2 or Mul(x, x)) reduced by ReduceMean, then Add/Sqrt/Div
``Pow/ReduceSum (L2 norm)``    the same with ReduceSum (a hand-written L2 normalisation)
``GELU (Erf)``                 Div -> Erf -> Add -> Mul -> Mul (torch's exact GELU), or one ``Gelu`` node
``Conv``, ``Linear``           Conv; Gemm or MatMul not in attention
``data movement``              Reshape, Transpose, Split, Slice, Concat, ... (values unchanged)
=============================  ==============================================================

Any other node's pattern is its op type. Regions are the module path of the export
(``/stages.2/blocks/blocks.0/attn/Softmax`` -> ``stages.2``; ``/readout/Mul`` -> ``readout``); nodes
the simplifier renamed (``Gemm_73``) inherit the region of the node that feeds them.
"""

from __future__ import annotations

import re

import numpy as np

from edgedeploy.evaluation.precision.graph_index import GraphIndex

LAYERNORM = "LayerNorm"
LAYERNORM_DECOMPOSED = "LayerNorm (decomposed)"
SOFTMAX = "Softmax"
ATTN_QK = "attention MatMul (QK^T)"
ATTN_AV = "attention MatMul (AV)"
ATTN_SCALE = "attention scale/bias"
POW_REDUCEMEAN = "Pow/ReduceMean (variance)"
POW_REDUCESUM = "Pow/ReduceSum (L2 norm)"
GELU = "GELU (Erf)"
CONV = "Conv"
LINEAR = "Linear"
DATA = "data movement"

# Ops whose outputs hold (a selection of) their input values, unchanged: FP16-exact once the input is.
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
SELECT_OPS = frozenset({"Split", "Slice", "Gather", "GatherElements", "GatherND", "Concat", "Expand", "Tile",
                        "DepthToSpace", "SpaceToDepth"})
DATA_OPS = LAYOUT_OPS | SELECT_OPS

# Patterns the keep-list search offers as op classes (in this order), when the graph has them.
RISK_PATTERNS = (SOFTMAX, LAYERNORM, LAYERNORM_DECOMPOSED, POW_REDUCEMEAN, POW_REDUCESUM, ATTN_QK, ATTN_AV)
# ... and as one class: the attention core, so kept logits reach a kept Softmax and kept probabilities a kept AV.
ATTENTION_CORE = (ATTN_QK, ATTN_SCALE, SOFTMAX, ATTN_AV)

_PASS_THROUGH = ("Cast", "Identity", "Dropout")
_ELEMENTWISE_SCALE = ("Add", "Mul", "Div", "Sub", "Where")
_NORM_TAIL = ("Add", "Sqrt", "Reciprocal", "Max", "Clip")


def is_squaring(index: GraphIndex, name: str) -> bool:
    node = index.nodes[name]
    if node.op_type == "Mul":
        return len(node.input) == 2 and node.input[0] == node.input[1]
    if node.op_type == "Pow" and len(node.input) == 2:
        exponent = index.constant_value(node.input[1])
        return exponent is not None and exponent.size == 1 and float(np.asarray(exponent).reshape(-1)[0]) == 2.0
    return False


def _single_consumer(index: GraphIndex, name: str) -> str | None:
    consumers = index.consumers_of(name)
    return consumers[0] if len(consumers) == 1 else None


def _producer(index: GraphIndex, tensor: str) -> str | None:
    prod = index.producer_of(tensor)
    return prod if prod is not None and index.op(prod) != "Constant" else None


def classify(index: GraphIndex) -> dict[str, str]:
    """node name -> pattern label, for every node of the graph."""
    labels: dict[str, str] = {}

    def mark(name: str | None, label: str) -> None:
        if name is not None and name not in labels:
            labels[name] = label

    for name in index.order:
        op = index.op(name)
        if op == "LayerNormalization":
            mark(name, LAYERNORM)
        elif op == "Softmax":
            _mark_attention(index, name, mark)
        elif is_squaring(index, name):
            _mark_norm_chain(index, name, mark)
        elif op == "Erf":
            _mark_gelu(index, name, mark)
        elif op == "Gelu":  # the one-node form (ONNX opset 20, or com.microsoft), as QNN targets' graphs hold it
            mark(name, GELU)
    for name in index.order:
        op = index.op(name)
        if name in labels:
            continue
        if op == "Conv":
            labels[name] = CONV
        elif op in ("Gemm", "MatMul"):
            labels[name] = LINEAR
        elif op in DATA_OPS:
            labels[name] = DATA
        else:
            labels[name] = op
    return labels


def _mark_attention(index: GraphIndex, softmax: str, mark) -> None:
    mark(softmax, SOFTMAX)
    # backwards from the logits: scale / bias ops, then the QK^T MatMul
    current = index.nodes[softmax].input[0]
    for _ in range(5):
        prod = _producer(index, current)
        if prod is None:
            break
        op = index.op(prod)
        if op == "MatMul":
            mark(prod, ATTN_QK)
            for operand in index.data_inputs(prod):  # q * scale before the MatMul
                scale = _producer(index, operand)
                if scale is not None and index.op(scale) in ("Mul", "Div") and len(index.data_inputs(scale)) == 1:
                    mark(scale, ATTN_SCALE)
            break
        if op in _ELEMENTWISE_SCALE or op in _PASS_THROUGH:
            mark(prod, ATTN_SCALE)
            data = index.data_inputs(prod)
            if not data:
                break
            current = data[0]
            continue
        break
    # forwards: the MatMul reading the probabilities
    frontier = [softmax]
    for _ in range(3):
        following = []
        for name in frontier:
            for consumer in index.consumers_of(name):
                op = index.op(consumer)
                if op == "MatMul":
                    mark(consumer, ATTN_AV)
                elif op in _PASS_THROUGH:
                    following.append(consumer)
        frontier = following
        if not frontier:
            break


def _mark_norm_chain(index: GraphIndex, square: str, mark) -> None:
    reduce = next((c for c in index.consumers_of(square) if index.op(c) in ("ReduceMean", "ReduceSum")), None)
    if reduce is None:
        return
    # a decomposed LayerNorm squares (x - mean(x))
    source = index.data_inputs(square)
    sub = _producer(index, source[0]) if source else None
    decomposed = False
    if sub is not None and index.op(sub) == "Sub":
        mean = _producer(index, index.nodes[sub].input[1]) if len(index.nodes[sub].input) > 1 else None
        if mean is not None and index.op(mean) == "ReduceMean":
            decomposed = True
            mark(mean, LAYERNORM_DECOMPOSED)
            mark(sub, LAYERNORM_DECOMPOSED)
    label = LAYERNORM_DECOMPOSED if decomposed else (
        POW_REDUCEMEAN if index.op(reduce) == "ReduceMean" else POW_REDUCESUM)
    mark(square, label)
    mark(reduce, label)
    current, normalised = reduce, False
    for _ in range(6):  # eps, sqrt, reciprocal, then the Mul/Div that normalises the input with it
        nxt = _single_consumer(index, current)
        if nxt is None:
            break
        op = index.op(nxt)
        if op in ("Div", "Mul"):
            mark(nxt, label)
            chain_out = set(index.outputs(current))
            if any(t not in chain_out for t in index.data_inputs(nxt)):
                normalised = True  # it also reads the input: this is the normalising op
                break
            current = nxt  # 1 / sqrt(...) with a constant numerator
            continue
        if op in _NORM_TAIL:
            mark(nxt, label)
            current = nxt
            continue
        break
    if not normalised and current != reduce:
        for consumer in index.consumers_of(current):
            if index.op(consumer) in ("Mul", "Div"):
                mark(consumer, label)


def _mark_gelu(index: GraphIndex, erf: str, mark) -> None:
    data = index.data_inputs(erf)
    before = _producer(index, data[0]) if data else None
    if before is not None and index.op(before) in ("Div", "Mul"):
        mark(before, GELU)
    mark(erf, GELU)
    current = erf
    for expected in ("Add", "Mul", "Mul"):
        nxt = _single_consumer(index, current)
        if nxt is None or index.op(nxt) != expected:
            break
        mark(nxt, GELU)
        current = nxt


# ------------------------------------------------------------------------------------- regions

_REGION = re.compile(r"^/([^/]+)/")
_BLOCK = re.compile(r"^(/[^/]+/blocks/blocks\.\d+)/")


def regions(index: GraphIndex) -> dict[str, str]:
    """node name -> region (the first component of its module path; inherited when the node has none)."""
    out: dict[str, str] = {}
    for name in index.order:
        match = _REGION.match(name)
        if match:
            out[name] = match.group(1)
    for name in index.order:  # forwards: from the producers
        if name in out:
            continue
        for tensor in index.inputs(name):
            prod = index.producer_of(tensor)
            if prod in out and index.op(prod) != "Constant":
                out[name] = out[prod]
                break
    for name in reversed(index.order):  # backwards: from the consumers (graph-head nodes)
        if name in out:
            continue
        for consumer in index.consumers_of(name):
            if consumer in out:
                out[name] = out[consumer]
                break
    for name in index.order:
        out.setdefault(name, "(graph)")
    return out


def block_of(name: str) -> str | None:
    """``/stages.1/blocks/blocks.0`` for a node inside a transformer/conv block, else None."""
    match = _BLOCK.match(name)
    return match.group(1) if match else None


def region_sort_key(region: str) -> tuple:
    match = re.match(r"^(.*?)(\d+)$", region)
    return (match.group(1), int(match.group(2))) if match else (region, -1)
