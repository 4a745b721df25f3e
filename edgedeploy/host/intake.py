"""Any anomaly model as ONNX (anomalib, Dinomaly, INP-Former, your own): read it, fill its card, make it static.

Stage *intake* stands where *export* stands for EdgeZSAD, and the rest of the pipeline (simplify, audit,
compile, fidelity, precision) runs as it does for EdgeZSAD. It:

* fixes the input to 1 x 3 x S x S (S from the card): a dynamic batch becomes 1 and a dynamic spatial
  size becomes S, each said in a warning, because the devices need static shapes;
* drops the outputs the card does not read (anomalib's ``pred_label`` and ``pred_mask``: thresholded
  copies of the score and map, which edgedeploy's metrics do not use), with the nodes only they needed;
* records the map's resolution, as the graph computes it, in the card;
* runs the *user's original file* and the fixed graph under ONNX Runtime on the verification photographs
  (``edgedeploy.host.export.verification_images``, fed through the card) and keeps the original's outputs
  as the reference the simplify stage verifies against too.

Outputs are compared within ``ONNX_TOLERANCE`` times the output's largest magnitude (at least 1): an
imported model's scores and maps need not lie in [0, 1] (a PaDiM map holds Mahalanobis distances).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.hashing import sha256_file, sha256_json
from edgedeploy.core.modelcard import CardError, ModelCard, card_for_graph, load_card, with_map_size

ONNX_TOLERANCE = 1e-3
INTAKE_VERSION = 3  # part of the stage key: a change to what intake writes must not reuse older results
Log = Callable[[str], None]


@dataclass(frozen=True)
class ImportedModel:
    """An ONNX model brought with ``--onnx``: what build, fidelity and precision read where EdgeZSAD has a recipe."""

    path: Path
    file_sha256: str
    card: ModelCard
    card_fields: dict                 # what the user's card file said (empty without --card)
    opset: int
    tolerance: float = ONNX_TOLERANCE
    kind: ClassVar[str] = "onnx"
    reference_source: ClassVar[str] = "the original ONNX"  # what made the outputs intake and simplify verify against

    @property
    def name(self) -> str:
        return f"onnx-{self.path.stem}"

    @property
    def sha256(self) -> str:
        """Stands where a recipe's hash does (stage keys, score headers): the file and the card the user gave."""
        return sha256_json({"onnx": self.file_sha256, "card": self.card_fields})

    def tolerance_for(self, reference: np.ndarray) -> float:
        return self.tolerance * max(1.0, float(np.max(np.abs(reference))) if np.size(reference) else 1.0)

    def target_options(self, target: str) -> dict:
        return {}

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "kind": self.kind, "onnx": str(self.path),
                "onnx_sha256": self.file_sha256, "input_size": self.card.input_size, "opset": self.opset}


def graph_io(model) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """(name, shape) of the graph's real inputs (initializers left out) and of its outputs; a dynamic dim is
    its name (``dim_param``) or None."""
    initializers = {t.name for t in model.graph.initializer}

    def shape(value) -> list:
        dims = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]

    inputs = [(v.name, shape(v)) for v in model.graph.input if v.name not in initializers]
    return inputs, [(v.name, shape(v)) for v in model.graph.output]


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def load_imported(onnx_path: str | Path, card_path: str | Path | None = None) -> ImportedModel:
    """Read ``onnx_path`` (structure only) and its card: ``card_path``'s fields merged with what the graph says."""
    from edgedeploy.core.onnxfile import load_onnx

    path = Path(onnx_path)
    model = load_onnx(path, load_weights=False)
    fields = load_card(card_path) if card_path is not None else {}
    inputs, outputs = graph_io(model)
    card = card_for_graph(inputs, outputs, fields, where=str(path))
    if card_path is not None:
        card = replace(card, source=f"card {card_path}" + (" + anomalib export" if "anomalib" in card.source else ""))
    return ImportedModel(path, sha256_file(path), card, fields, _opset(model))


def describe(model: ImportedModel) -> list[str]:
    """What a person should read before trusting the card: its facts and every assumption made."""
    lines = [f"card ({model.card.source}): {model.card.describe()}"]
    lines += [f"note: card assumes {a}" for a in model.card.assumptions]
    if model.card.ignored_outputs:
        lines.append(f"note: outputs {', '.join(model.card.ignored_outputs)} are not read and are dropped from the "
                     "device graph")
    return lines


# ---------------------------------------------------------------------------------------------- the stage


def intake_onnx(model: ImportedModel, folder: Path) -> tuple[dict, list[str]]:
    """Write ``folder/model.onnx`` (static, unread outputs dropped) and ``folder/reference.npz``."""
    import onnx

    from edgedeploy.core.files import atomic_path
    from edgedeploy.core.onnxfile import run_onnx
    from edgedeploy.host.export import save_reference, verification_images, verify_against_reference

    proto = onnx.load(str(model.path))
    warnings = _fix_input(proto, model.card)
    dropped = _keep_outputs(proto, model.card.output_names)
    narrowed = narrow_index_constants(proto)
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    with atomic_path(folder / "model.onnx") as tmp:
        onnx.save(proto, str(tmp))
    images = verification_images(model.card.input_size)
    original = run_onnx(model.path, model.card.prepare(images), model.card.input_name)
    reference = {name: original[name] for name in model.card.output_names}
    card = _card_with_map_size(model.card, reference[model.card.map_output], str(model.path))
    save_reference(folder / "reference.npz", images, reference)
    details = verify_against_reference(folder / "model.onnx", replace(model, card=card), images, reference,
                                       stage="intake")
    details.update({"card": card.to_dict(), "fixed": warnings, "dropped_outputs": dropped, "int32_indices": narrowed})
    if narrowed:
        warnings.append(f"INT64 index constants of {len(narrowed)} node(s) stored as INT32 (same values; the ONNX "
                        "spec lets these ops take INT32 indices, and the device profiles take no INT64 on the data "
                        "path): " + ", ".join(narrowed[:5]))
    return details, warnings


def _fix_input(proto, card: ModelCard) -> list[str]:
    """Set the image input to 1 x 3 x S x S; one line per dimension that was dynamic."""
    (value,) = [v for v in proto.graph.input if v.name == card.input_name]
    dims = value.type.tensor_type.shape.dim
    notes = []
    for axis, wanted, what in ((0, 1, "batch"), (2, card.input_size, "height"), (3, card.input_size, "width")):
        dim = dims[axis]
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if dim.dim_value != wanted:
                raise CardError(f"{card.input_name}'s {what} is fixed at {dim.dim_value} in the graph, not {wanted}: "
                                f"{'edgedeploy runs one image at a time; export with batch 1 or a dynamic batch' if axis == 0 else 'fix input.size in the card'}")
            continue
        label = dim.dim_param or "?"
        dim.Clear()
        dim.dim_value = wanted
        notes.append(f"dynamic {what} '{label}' of input {card.input_name!r} fixed to {wanted}: the devices need "
                     "static shapes" + (" (the card's input.size)" if axis else ""))
    return notes


def _keep_outputs(proto, names: tuple[str, ...]) -> list[str]:
    """Keep only the outputs ``names`` (in that order) and the nodes they need; returns the dropped names.
    Every kept output's shape is cleared, as is all intermediate shape information, for shape inference to
    redo with the static input."""
    outputs = {o.name: o for o in proto.graph.output}
    dropped = [n for n in outputs if n not in names]
    kept = [outputs[n] for n in names]
    for out in kept:
        out.type.tensor_type.ClearField("shape")
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    needed, live = set(names), []
    for node in reversed(proto.graph.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(live))
    keep_init = [t for t in proto.graph.initializer if t.name in needed]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep_init)
    del proto.graph.value_info[:]
    return dropped


INT32_MAX = 2**31 - 1


def int32_index_input(op_type: str, domain: str, opset: int) -> int | None:
    """The position of ``op_type``'s ``indices`` input when the ONNX spec (at ``opset``) lets it be tensor(int32).

    Read from ``onnx.defs.get_schema``, not a hand list: Gather, GatherElements, ScatterElements and OneHot take
    int32 or int64 indices; GatherND and ScatterND take int64 only, so their indices stay int64. Only a type
    parameter that nothing else in the op shares counts: changing it cannot break another input's or output's type.
    """
    import onnx

    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for k, formal in enumerate(schema.inputs):
        if formal.name != "indices":
            continue
        types = allowed.get(formal.type_str, {formal.type_str})
        shared = [f for f in list(schema.inputs) + list(schema.outputs)
                  if f is not formal and f.type_str == formal.type_str and formal.type_str in allowed]
        return k if "tensor(int32)" in types and not shared else None
    return None


def narrow_index_constants(proto) -> list[str]:
    """Store INT64 index initializers as INT32 where the op's spec allows int32 indices and every value fits;
    returns the nodes.

    Exact: the values are unchanged, and only ops whose ``indices`` input accepts tensor(int32) in the ONNX spec
    at the model's opset get it (``int32_index_input``); GatherND keeps int64, the only type it takes. Exporters
    write int64 (PyTorch's ``index_select``), which the device profiles refuse on the data path. An initializer
    that any other input (another kind of node, or an int64-only index) also reads is left alone.
    """
    from onnx import TensorProto, numpy_helper

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    opsets.setdefault("", opsets.get("ai.onnx", 0))
    slots: dict[tuple[str, str], int | None] = {}

    def index_slot(node) -> int | None:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        key = (domain, node.op_type)
        if key not in slots:
            slots[key] = int32_index_input(node.op_type, domain, opsets[domain]) if domain in opsets else None
        return slots[key]

    narrowable: dict[str, bool] = {}
    for node in proto.graph.node:
        k = index_slot(node)
        for i, name in enumerate(node.input):
            narrowable[name] = narrowable.get(name, True) and i == k
        for name in _subgraph_inputs(node):  # an If/Loop/Scan body's reader: its type is not checked here
            narrowable[name] = False
    for value in list(proto.graph.output) + list(proto.graph.input):  # a declared type that would then be wrong
        narrowable[value.name] = False
    by_name = {t.name: t for t in proto.graph.initializer}
    narrowed, done = [], set()
    for node in proto.graph.node:
        k = index_slot(node)
        tensor = by_name.get(node.input[k]) if k is not None and len(node.input) > k else None
        if tensor is None or not narrowable[tensor.name]:
            continue
        if tensor.name not in done:
            if tensor.data_type != TensorProto.INT64:
                continue
            values = numpy_helper.to_array(tensor)
            if values.size and np.abs(values).max() > INT32_MAX:
                continue
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.int32), tensor.name))
            done.add(tensor.name)
        narrowed.append(node.name or node.op_type)
    return narrowed


def _subgraph_inputs(node) -> set[str]:
    """Names an If/Loop/Scan body reads from the outer graph (kept alive with the node)."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in graph.node:
                names.update(i for i in inner.input if i)
    return names


def _card_with_map_size(card: ModelCard, amap: np.ndarray, where: str) -> ModelCard:
    if amap.ndim < 3:
        raise CardError(f"{where}'s map output {card.map_output!r} has shape {list(amap.shape)}: expected N x 1 x h x w "
                        "or N x h x w; name the map output in the card (outputs.anomaly_map)")
    return with_map_size(card, (int(amap.shape[-2]), int(amap.shape[-1])), where)


def require_onnx_only(onnx_path: Path | None, checkpoint: Path | None, recipe: str | None, card: Path | None) -> None:
    """``--onnx`` brings its own graph: a checkpoint or recipe (EdgeZSAD's) contradicts it; a card needs it."""
    if onnx_path is None:
        if card is not None:
            raise EdgeDeployError("--card describes an ONNX model given with --onnx: pass --onnx MODEL.onnx, or drop "
                                  "--card (EdgeZSAD's recipes carry their own card)")
        return
    for option, value in (("--checkpoint", checkpoint), ("--recipe", recipe)):
        if value is not None:
            raise EdgeDeployError(f"--onnx and {option} contradict each other: --onnx brings the whole model; "
                                  f"{option} selects EdgeZSAD weights or architecture. Drop one of them")
    if not Path(onnx_path).is_file():
        raise EdgeDeployError(f"ONNX model {onnx_path} does not exist: check the --onnx path")
