"""Stage *gelu*: the exported erf GELU written as one ONNX ``Gelu`` (opset 20), for devices that take Gelu but not Erf.

torch exports GELU at opset 17 as ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``; where the exporter folded the
``0.5`` into the next convolution (TinyViT's convolutional stages) the chain ends at ``Mul(x, 1 + erf)``, twice a GELU.
QNN has no Erf op: QAIRT 2.25's ``qnn-onnx-converter`` turns an Erf into Gelu only when it matches a whole GELU
(``op_graph_optimizations.py``, ``match_gelu``), and ONNX Runtime's QNN EP only fuses whole patterns too
(``qnn_node_group/gelu_fusion.cc``). Measured with onnxruntime-qnn 2.7.0 (QNN SDK 2.51) on its HTP backend: the 11
whole chains of TinyViT-21M-512 and -5M-224 are taken, the 12 halved ones are not (their ``Erf`` nodes fall back to
the CPU), and the EP takes ONNX ``Gelu`` at opset 20, ``com.microsoft.Gelu`` and ``LayerNormalization``.

The form chosen: **ONNX ``Gelu`` (``approximate="none"``, exact erf) at opset 20**, the graph's default-domain opset
raised from 17 with ``onnx.version_converter``. It is a standard op, so the audit's ``custom-op`` rule holds, and
QAIRT 2.25's ONNX converter registers it (``nn_translations.py``: ``OnnxGeluTranslation``, ``register_op_schema('Gelu',
[20])``); ``com.microsoft.Gelu`` is a contrib op that converter does not know. At opset 20 every op of the TinyViT
graphs resolves to a schema version that converter registers, except Reshape (version 19: float8 types added, same
semantics), for which it only warns. The rb5-gen2 profile allows opsets 17..21.

The chains are found by the host graph's GELU matcher (``edgedeploy.host.fastgraph.fuse_gelu``, the one pattern
matcher for this in the project): a halved chain becomes one Gelu; an unhalved one becomes one Gelu with its factor
2 folded into the weights of the convolutions that read it (exact: doubling is exact in FP32 and FP16), or a Gelu
followed by ``Mul(2)`` where the weights are shared. fastgraph writes ``com.microsoft.Gelu``; this stage moves those
nodes to the default domain (the same function: ONNX Gelu with ``approximate="none"`` is ``com.microsoft.Gelu``).

TensorRT targets never run this stage: their profiles list Erf, and their graph is the simplified one, unchanged.
The result is verified like every other stage (the rule of ``edgedeploy.host.export.verify_against_reference``: the
recipe's photographs against PyTorch, or an imported model's original ONNX, within the recipe's tolerance), and the
largest difference from the input graph on the same images is recorded too (the rewrite's own rounding, ~1e-7).
"""

from __future__ import annotations

from pathlib import Path

from edgedeploy.core.files import atomic_path
from edgedeploy.core.profiles import DeviceProfile

GELU_VERSION = "gelu-opset20-1"  # bump with any change to the rewrite: it keys the stage
GELU_OPSET = 20
_MS_DOMAIN = "com.microsoft"
_TWO = "gelu/two"


def wants_gelu_op(profile: DeviceProfile) -> bool:
    """A profile that lists ONNX Gelu but not Erf, and allows an opset where Gelu exists (20+)."""
    return "Erf" not in profile.supported_ops and "Gelu" in profile.supported_ops and profile.opset_max >= GELU_OPSET


def erf_gelu_chains(model) -> tuple[int, int]:
    """(whole, halved-away) erf GELU chains in ``model``, as fastgraph's matcher finds them."""
    from edgedeploy.host.fastgraph import _Graph, _match_gelu

    if not any(node.op_type == "Erf" for node in model.graph.node):
        return 0, 0
    lookups = _Graph(model.graph)
    matches = [m for m in (_match_gelu(lookups, n) for n in model.graph.node if n.op_type == "Div") if m is not None]
    return sum(m[3] for m in matches), sum(not m[3] for m in matches)


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def write_gelu(onnx_path: str | Path, out_path: str | Path) -> dict:
    """Write ``onnx_path`` with every erf GELU chain as ONNX Gelu (opset raised to 20 where below) to ``out_path``;
    return what was done."""
    import onnx
    from onnx import version_converter

    from edgedeploy.core.onnxfile import load_onnx
    from edgedeploy.host.fastgraph import _drop_unread_constants, fuse_gelu

    model = load_onnx(onnx_path)
    whole, halved_away = erf_gelu_chains(model)
    before = _default_opset(model)
    if before < GELU_OPSET:
        model = version_converter.convert_version(model, GELU_OPSET)
    fused = fuse_gelu(model)
    for node in model.graph.node:
        if node.op_type == "Gelu" and node.domain == _MS_DOMAIN:
            node.domain = ""
    times_two = 0
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == "host_graph/two":  # fastgraph's name for its factor 2: this graph is the device's
                node.input[k] = _TWO
                times_two += 1
    for init in model.graph.initializer:
        if init.name == "host_graph/two":
            init.name = _TWO
    if not any(node.domain == _MS_DOMAIN for node in model.graph.node):
        kept = [o for o in model.opset_import if o.domain != _MS_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    _drop_unread_constants(model)
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return {"version": GELU_VERSION, "opset": [before, max(before, GELU_OPSET)], "gelu": fused, "whole_chains": whole,
            "halved_away_chains": halved_away, "factor_two_folded_into_conv": halved_away - times_two,
            "factor_two_as_mul": times_two, "erf_left": sum(n.op_type == "Erf" for n in model.graph.node)}


def gelu_stage(onnx_path: Path, out_path: Path, reference_path: Path, model) -> tuple[dict, list[str]]:
    """The stage: rewrite, then verify against the reference outputs (PyTorch, or an imported model's original),
    within the tolerance every stage is held to, and record the difference from the input graph too; ``model`` is a
    Recipe or an ImportedModel (its card feeds the graph). Each graph runs once over the images (the full-size graph
    takes seconds per pass on two cores)."""
    from edgedeploy.core.errors import BuildError
    from edgedeploy.core.onnxfile import max_abs_diffs, run_onnx
    from edgedeploy.host.export import VERIFICATION_PHOTOS, load_reference

    card = model.card
    images, reference = load_reference(reference_path, card.output_names)
    with atomic_path(out_path) as tmp:
        done = write_gelu(onnx_path, tmp)
        after = run_onnx(tmp, card.prepare(images), card.input_name)
        before = run_onnx(onnx_path, card.prepare(images), card.input_name)
        diffs = max_abs_diffs(reference, after, card.output_names)  # as export.verify_against_reference judges
        allowed = {name: model.tolerance_for(reference[name]) for name in card.output_names}
        worst = max(diffs, key=lambda name: diffs[name] / allowed[name])
        if diffs[worst] > allowed[worst]:
            raise BuildError(f"gelu: ONNX output {worst!r} differs from {model.reference_source} by {diffs[worst]:.3g} "
                             f"(tolerance {allowed[worst]:g}); the graph is not equivalent, do not deploy it")
    details = {"verified_images": int(len(images)), "photos": list(VERIFICATION_PHOTOS), "max_abs_diff": diffs,
               "tolerance": model.tolerance if len(set(allowed.values())) == 1 else allowed,
               "against": model.reference_source,
               "max_abs_diff_vs_input_graph": max_abs_diffs(before, after, card.output_names), **done}
    warnings = []
    if done["erf_left"]:
        warnings.append(f"gelu: {done['erf_left']} Erf nodes are not part of an erf GELU and stay: the audit names them")
    return details, warnings
