"""The host's own optimised FP32 copy of a bundle graph.

The bundle's ``model.onnx`` is what ships and is never changed. The host reference (``--host onnx``)
may score with a copy that computes the same function faster:

* **GELU fusion**: TinyViT's exported GELU, ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``, becomes
  one ``com.microsoft.Gelu`` (ONNX Runtime's fused kernel, the exact erf form, not the tanh
  approximation). Where the exporter folded the ``0.5`` into the next convolution, the chain
  ``Mul(x, Add(Erf(Div(x, sqrt 2)), 1))`` is ``2 * Gelu(x)``: one Gelu, and the 2 goes back into the
  next convolution's weights (exact: :func:`_fold_two_into_convs`), or a Mul by 2 where it cannot. ONNX Runtime's own GeluFusion (and ``onnxruntime.transformers``' FusionGelu) fuse the 11
  chains of the first form in TinyViT-21M-512 but not the 12 of the second (the convolutional stages),
  which otherwise stay four kernels, four passes over the widest tensors; here all 23 are fused.
* **Attention fusion**: each window-attention core, ``Split`` of the qkv projection into per-head q, k, v
  (``B x S x N x H``) -> ``Transpose`` each -> ``Mul(q, scale) @ k^T`` -> ``Softmax`` -> ``@ v`` ->
  ``Transpose`` back, becomes one ``com.microsoft.MultiHeadAttention`` on ``B x S x (N*H)`` views of
  the three Split outputs (ONNX Runtime's CPU kernel does not take the packed ``B x S x N x 3 x H``
  layout). The exported TinyViT-21M-512 graph has no additive attention bias to carry; all 10 blocks
  are fused.

Session settings stay ONNX Runtime's defaults (every graph optimisation, one intra-op thread per core,
spinning between kernels): measured side by side, threads that sleep instead were 4% slower on an idle
2-core machine (and faster only while other work shared the cores), disabling the NCHWc layout
transformer 14% slower. I/O binding is not used: on the CPU the input array is passed without a copy
and the outputs are two small tensors.

A fused kernel rounds differently from the op chain (``x * (1/sqrt 2)`` against ``x / sqrt 2``, one
rounding fewer; the attention scale applied to the scores rather than to q), so the copy is not bit-identical: :func:`host_graph` checks it against the
unoptimised graph on the export's verification photographs, records the largest score and map
differences next to the cached copy, and refuses a copy whose difference exceeds the recipe's
tolerance (``export.tolerance``, the bound the export itself is held to). The version and the
recorded differences join the score cache identity, so scores of another host graph never mix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import atomic_path, write_json_atomic
from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.resources import cache_root

HOST_GRAPH_VERSION = "host-graph-3"  # bump with any change to the rewrites: it keys the copy and the score cache
_MS_DOMAIN = "com.microsoft"
_SQRT2 = float(np.sqrt(np.float32(2.0)))


@dataclass(frozen=True)
class HostGraph:
    """An optimised copy and what it was checked to: the largest |difference| of each output from the
    unoptimised graph on the verification images."""

    path: Path
    max_abs_diff: dict[str, float]
    images: int

    def identity(self) -> dict[str, str]:
        """What joins the score cache identity and the score file header."""
        return {"host_graph": HOST_GRAPH_VERSION,
                **{f"host_graph_max_abs_diff_{name}": f"{diff:.3g}" for name, diff in self.max_abs_diff.items()}}


# ------------------------------------------------------------------------------------ GELU fusion


class _Graph:
    """Producer/consumer lookups of one ONNX graph, and its scalar constants."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.scalars: dict[str, float] = {}
        for init in graph.initializer:
            self._scalar(init.name, numpy_helper.to_array(init))
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self._scalar(node.output[0], numpy_helper.to_array(node.attribute[0].t))

    def _scalar(self, name: str, value: np.ndarray) -> None:
        if value.size == 1 and value.dtype == np.float32:
            self.scalars[name] = float(value.reshape(()))

    def only_consumer(self, tensor: str, op_type: str):
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == op_type and tensor not in self.outputs:
            return users[0]
        return None

    def other_input(self, node, known: str) -> str | None:
        others = [i for i in node.input if i != known]
        return others[0] if len(node.input) == 2 and len(others) == 1 else None

    def is_scalar(self, name: str | None, value: float, rel: float = 1e-6) -> bool:
        return name in self.scalars and abs(self.scalars[name] - value) <= rel * abs(value)


def _match_gelu(g: _Graph, div) -> tuple[str, list, str, bool] | None:
    """For ``Div(x, sqrt 2)`` starting an erf GELU: (x, the chain's nodes, its output, halved?)."""
    if div.op_type != "Div" or not g.is_scalar(div.input[1], _SQRT2):
        return None
    x = div.input[0]
    erf = g.only_consumer(div.output[0], "Erf")
    add = erf and g.only_consumer(erf.output[0], "Add")
    if not add or not g.is_scalar(g.other_input(add, erf.output[0]), 1.0):
        return None
    mul = g.only_consumer(add.output[0], "Mul")
    if not mul or g.other_input(mul, add.output[0]) != x:
        return None
    half = g.only_consumer(mul.output[0], "Mul")
    if half is not None and g.is_scalar(g.other_input(half, mul.output[0]), 0.5):
        return x, [div, erf, add, mul, half], half.output[0], True
    return x, [div, erf, add, mul], mul.output[0], False


def fuse_gelu(model) -> int:
    """Replace every erf GELU chain (with or without its final ``* 0.5``) by ``com.microsoft.Gelu``;
    return how many were fused."""
    from onnx import helper, numpy_helper

    g = _Graph(model.graph)
    replaced: dict[int, list] = {}  # position of the chain's first node -> its replacement nodes
    dropped: set[int] = set()
    position = {id(node): k for k, node in enumerate(model.graph.node)}
    two = None
    for node in list(model.graph.node):
        match = _match_gelu(g, node)
        if match is None or id(node) in dropped:
            continue
        x, chain, out, halved = match
        name = f"{node.name.rsplit('/', 1)[0]}/Gelu" if node.name else f"host_graph/{out}/Gelu"
        if halved or _fold_two_into_convs(g, model, out):
            new = [helper.make_node("Gelu", [x], [out], name=name, domain=_MS_DOMAIN)]
        else:
            if two is None:
                two = "host_graph/two"
                model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), two))
            new = [helper.make_node("Gelu", [x], [f"{out}/gelu"], name=name, domain=_MS_DOMAIN),
                   helper.make_node("Mul", [f"{out}/gelu", two], [out], name=f"{name}/times2")]
        replaced[position[id(node)]] = new
        dropped.update(id(n) for n in chain)
    return _splice(model, replaced, dropped)


def _splice(model, replaced: dict[int, list], dropped: set[int]) -> int:
    """Put each replacement where its chain began (keys: positions in ``model.graph.node``), drop the
    chains' nodes (``id`` of each), declare the com.microsoft domain if used; return how many replaced."""
    from onnx import helper

    nodes = []
    for k, node in enumerate(model.graph.node):
        if k in replaced:
            nodes += replaced[k]
        elif id(node) not in dropped:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if replaced and not any(op.domain == _MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
    return len(replaced)


def _fold_two_into_convs(g: _Graph, model, tensor: str) -> bool:
    """Where ``tensor`` (the ``x * (1 + erf)`` that is twice a GELU) is read only as the data input of
    convolutions whose weights nothing else reads, double those weights instead of multiplying by 2, and
    return True. ``Conv(2g, W) == Conv(g, 2W)`` bit for bit: each product is the same real number rounded
    once (doubling is exact), so the sums are the same."""
    from onnx import numpy_helper

    readers = g.consumers.get(tensor, [])
    if not readers or tensor in g.outputs or any(n.op_type != "Conv" or n.input[0] != tensor for n in readers):
        return False
    weights = [_weight_holder(g, model, conv.input[1]) for conv in readers]
    if any(w is None for w in weights):
        return False
    for holder in weights:
        holder.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(holder) * np.float32(2.0), holder.name))
    return True


def _weight_holder(g: _Graph, model, name: str):
    """The TensorProto holding weight ``name`` (an initializer or a Constant node's value) when exactly one
    node reads it; else None."""
    if len(g.consumers.get(name, [])) != 1 or name in g.outputs:
        return None
    for init in model.graph.initializer:
        if init.name == name:
            return init
    node = g.producer.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return node.attribute[0].t
    return None


# ------------------------------------------------------------------------------------ attention fusion


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _match_attention(g: _Graph, shapes: dict[str, list[int]], softmax):
    """For the Softmax of TinyViT's exported attention, the pieces of
    ``Reshape(Transpose(Softmax(Mul(Transpose(q), s) @ Transpose(k)) @ Transpose(v)))`` with q, k, v the
    three outputs of one Split over heads (each ``B x S x N x H``): (q, k, v, scale, the chain's nodes,
    the final Reshape, B, S, N, H); else None."""
    if softmax.op_type != "Softmax" or next((a.i for a in softmax.attribute if a.name == "axis"), -1) not in (-1, 3):
        return None
    scores = g.producer.get(softmax.input[0])
    mm2 = g.only_consumer(softmax.output[0], "MatMul")
    if scores is None or scores.op_type != "MatMul" or mm2 is None or mm2.input[0] != softmax.output[0]:
        return None
    if g.only_consumer(scores.output[0], "Softmax") is not softmax:
        return None
    mul, kt = g.producer.get(scores.input[0]), g.producer.get(scores.input[1])
    vt = g.producer.get(mm2.input[1])
    if mul is None or mul.op_type != "Mul" or kt is None or vt is None:
        return None
    qt = next((g.producer.get(i) for i in mul.input if i not in g.scalars), None)
    scale = next((g.scalars[i] for i in mul.input if i in g.scalars), None)
    if qt is None or scale is None or len(mul.input) != 2:
        return None
    out_t = g.only_consumer(mm2.output[0], "Transpose")
    reshape = out_t and g.only_consumer(out_t.output[0], "Reshape")
    wanted = ((qt, [0, 2, 1, 3], mul), (kt, [0, 2, 3, 1], scores), (vt, [0, 2, 1, 3], mm2))
    if reshape is None or _perm(out_t) != [0, 2, 1, 3]:
        return None
    for node, perm, reader in wanted:
        if node.op_type != "Transpose" or _perm(node) != perm or g.only_consumer(node.output[0], reader.op_type) is not reader:
            return None
    q, k, v = qt.input[0], kt.input[0], vt.input[0]
    split = g.producer.get(q)
    if (split is None or split.op_type != "Split" or list(split.output) != [q, k, v]
            or g.only_consumer(mul.output[0], "MatMul") is not scores):
        return None
    if any(g.only_consumer(t, "Transpose") is None for t in (q, k, v)):
        return None
    dims = [shapes.get(t) for t in (q, k, v)]
    if dims[0] is None or len(dims[0]) != 4 or any(d != dims[0] for d in dims) or not all(d > 0 for d in dims[0]):
        return None
    b, s, n, h = dims[0]
    return q, k, v, scale, [qt, mul, kt, scores, softmax, vt, mm2, out_t], reshape, b, s, n, h


def fuse_attention(model) -> int:
    """Replace every TinyViT attention core (the q/k/v Transposes, the scale Mul, both MatMuls, the Softmax
    and the Transpose back) by one ``com.microsoft.MultiHeadAttention`` on ``B x S x (N*H)`` views of the
    Split's outputs; return how many were fused. The scale moves from q to the scores (``(s q) k`` against
    ``s (q k)``: a different rounding, within the check's tolerance)."""
    import onnx
    from onnx import helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
              for v in inferred.graph.value_info if v.type.tensor_type.HasField("shape")}
    g = _Graph(model.graph)
    replaced: dict[int, list] = {}
    dropped: set[int] = set()
    position = {id(node): k for k, node in enumerate(model.graph.node)}
    for node in list(model.graph.node):
        match = _match_attention(g, shapes, node) if node.op_type == "Softmax" else None
        if match is None:
            continue
        q, k, v, scale, chain, reshape, b, s, n, h = match
        base = node.name.rsplit("/", 1)[0] if node.name else f"host_graph/{node.output[0]}"
        shape = f"{base}/mha_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array([b, s, n * h], np.int64), shape))
        views = [f"{t}/bsd" for t in (q, k, v)]
        new = [helper.make_node("Reshape", [t, shape], [view], name=f"{base}/{tag}_bsd")
               for t, view, tag in zip((q, k, v), views, "qkv")]
        out = f"{chain[-1].output[0]}/mha"  # a new name: B x S x (N*H), not the B x S x N x H it replaces
        new.append(helper.make_node("MultiHeadAttention", views, [out], name=f"{base}/MultiHeadAttention",
                                    domain=_MS_DOMAIN, num_heads=n, scale=scale))
        reshape.input[0] = out
        replaced[position[id(chain[0])]] = new  # the q Transpose: after the Split, before every reader
        dropped.update(id(c) for c in chain)
    return _splice(model, replaced, dropped)


def _drop_unread_constants(model) -> None:
    """Remove the Constant nodes (the fused chains' sqrt 2, 1 and 0.5) that no node and no output reads."""
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    kept = [n for n in model.graph.node if n.op_type != "Constant" or any(o in read for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def optimise_graph(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> dict[str, int]:
    """Write the host's optimised copy of ``onnx_path`` to ``out_path``; return the number of each fusion."""
    import onnx

    from edgedeploy.core.onnxfile import load_onnx

    model = load_onnx(onnx_path)
    fused = fuse_gelu(model)
    attention = fuse_attention(model)
    _drop_unread_constants(model)
    model.doc_string = (f"{HOST_GRAPH_VERSION} of {Path(onnx_path).name}: {fused} GELU chains, "
                        f"{attention} attention blocks fused")
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return {"gelu_fused": fused, "attention_fused": attention}


# ------------------------------------------------------------------------------------ check + cache


def compare_graphs(reference: Path, candidate: Path, images: np.ndarray) -> dict[str, float]:
    """Largest |difference| of each output of ``candidate`` from ``reference`` over ``images``."""
    from edgedeploy.core.onnxfile import max_abs_diffs, run_onnx

    expected, got = run_onnx(reference, images), run_onnx(candidate, images)
    return max_abs_diffs(expected, got, tuple(expected))


def host_graph(onnx_path: str | os.PathLike[str], tolerance: float, model_sha256: str | None = None,
               cache_dir: str | os.PathLike[str] | None = None) -> HostGraph:
    """The cached, checked optimised copy of ``onnx_path`` (made on first use).

    Cached under ``cache_dir`` (default ``$EDGEDEPLOY_CACHE/host-graph/``) by the graph's sha256 and
    :data:`HOST_GRAPH_VERSION`, with a ``.json`` record of the check. Raises :class:`EdgeDeployError`
    when the copy differs from the unoptimised graph by more than ``tolerance`` on any output.
    """
    onnx_path = Path(onnx_path)
    model_sha256 = model_sha256 or sha256_file(onnx_path)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "host-graph"
    key = f"{model_sha256[:24]}-{HOST_GRAPH_VERSION}"
    target, record_path = folder / f"{key}.onnx", folder / f"{key}.json"
    record = _read_record(record_path) if target.is_file() else None
    if record is None:
        folder.mkdir(parents=True, exist_ok=True)
        fused = optimise_graph(onnx_path, target)
        images = _check_images(onnx_path)
        diffs = compare_graphs(onnx_path, target, images)
        record = {"source": str(onnx_path), "model_sha256": model_sha256, "version": HOST_GRAPH_VERSION,
                  **fused, "images": int(len(images)), "max_abs_diff": diffs}
        write_json_atomic(record_path, record)
    worst = max(record["max_abs_diff"], key=record["max_abs_diff"].get)
    if record["max_abs_diff"][worst] > tolerance:
        raise EdgeDeployError(f"the host's optimised graph ({HOST_GRAPH_VERSION}) differs from {onnx_path.name} by "
                              f"{record['max_abs_diff'][worst]:.3g} on {worst!r} (tolerance {tolerance:g}); "
                              "score with the unoptimised graph")
    return HostGraph(target, dict(record["max_abs_diff"]), int(record["images"]))


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("version") == HOST_GRAPH_VERSION else None


def _check_images(onnx_path: Path) -> np.ndarray:
    """The export's verification photographs at the graph's input size."""
    import onnx

    from edgedeploy.host.export import verification_images

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return verification_images(int(dims[2].dim_value))
