"""The search's answer in the forms each target takes.

* ``edgedeploy build --keep-fp32 ...``: node names, compacted into globs where a glob matches
  exactly the chosen nodes (checked with the same resolver the build uses,
  :func:`edgedeploy.targets.keepfp32.expand_keep_fp32`).
* TensorRT (Jetson): ``--precisionConstraints=obey --layerPrecisions=N:fp32,... --layerOutputTypes=...``,
  the flags the bundle's ``build_engine.sh`` gets from ``edgedeploy build --keep-fp32`` (made by the
  TensorRT script writer itself, so the two never disagree).
* QNN GPU (RB5 Gen2): precision is one setting per graph (``default_graph_gpu_precision``: FLOAT16,
  HYBRID = FP16 storage with FP32 arithmetic, FLOAT32, or USER_PROVIDED), so a per-node keep-list
  does not apply there; the advice says which graph precision to use, or which nodes to move out
  of the device graph, and why.
"""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import Iterable
from pathlib import Path

from onnx import TensorProto

from edgedeploy.evaluation.precision.graph_index import GraphIndex
from edgedeploy.evaluation.precision.patterns import block_of
from edgedeploy.evaluation.precision.ranges import RangeReport
from edgedeploy.evaluation.precision.search import SearchResult

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
PRECISION_FLAGS = ("--precisionConstraints", "--layerPrecisions", "--layerOutputTypes")
QNN_PRECISIONS = {
    "FLOAT16": "FP16 storage and arithmetic (the profile's default: fastest)",
    "HYBRID": "FP16 storage, FP32 arithmetic inside each op (QNN_GPU_PRECISION_HYBRID)",
    "FLOAT32": "FP32 storage and arithmetic for the whole graph (slowest, twice the activation memory)",
    "USER_PROVIDED": "the tensor data types of the converted model",
}


def keepable_nodes(index: GraphIndex, onnx_path: str | Path) -> set[str]:
    """Nodes ``edgedeploy build --keep-fp32`` accepts: named, float-computing, not Constant."""
    try:
        from edgedeploy.targets.keepfp32 import KeepFp32Error, expand_keep_fp32
    except ImportError:  # the compilers' module is not installed: the same rule, here
        expand_keep_fp32, KeepFp32Error = None, Exception
    if expand_keep_fp32 is not None:
        try:
            return set(expand_keep_fp32(onnx_path, ("*",)))
        except KeepFp32Error:
            pass  # a node name trtexec cannot express: apply the rule without it
    out = set()
    for name in index.order:
        node = index.nodes[name]
        if node.name != name or node.op_type == "Constant" or any(sep in name for sep in ",:"):
            continue
        if all(index.types.get(t, TensorProto.FLOAT) in FLOAT_TYPES for t in index.outputs(name)):
            out.add(name)
    return out


def compact_patterns(keep: Iterable[str], index: GraphIndex, keepable: set[str]) -> list[str]:
    """``keep`` as --keep-fp32 arguments: globs where one matches exactly a subset of ``keep``, else names."""
    chosen = list(keep)
    wanted = set(chosen)
    if not wanted:
        return []
    order = [n for n in index.order if n in keepable]
    globs: list[str] = []
    for name in chosen:  # region, block and op-suffix globs, widest first
        parts = name.strip("/").split("/")
        options = []
        if name.startswith("/") and len(parts) > 1:
            options.append(f"/{parts[0]}/*")
            block = block_of(name)
            if block:
                options.append(f"{block}/*")
            if len(parts) >= 2:
                options.append(f"*/{'/'.join(parts[-2:])}")
        for glob in dict.fromkeys(options):
            if glob in globs:
                break
            matched = [n for n in order if fnmatch.fnmatchcase(n, glob)]
            if len(matched) > 1 and set(matched) <= wanted:
                globs.append(glob)
                break
    covered: set[str] = set()
    kept_globs = []
    for glob in globs:  # drop globs a wider one already covers
        matched = {n for n in order if fnmatch.fnmatchcase(n, glob)}
        if not matched <= covered:
            kept_globs.append(glob)
            covered |= matched
    names = [n for n in chosen if n not in covered]
    return [*kept_globs, *names]


def verified_arguments(keep: tuple[str, ...], index: GraphIndex, keepable: set[str],
                       onnx_path: str | Path) -> list[str]:
    """Compact arguments, checked to resolve to exactly ``keep`` as the build resolves them; else names."""
    args = compact_patterns(keep, index, keepable)
    if not keep:
        return []
    try:
        from edgedeploy.targets.keepfp32 import expand_keep_fp32
    except ImportError:
        return list(keep)
    try:
        if set(expand_keep_fp32(onnx_path, tuple(args))) == set(keep):
            return args
        return list(expand_keep_fp32(onnx_path, tuple(keep)))
    except Exception:  # noqa: BLE001 - never let the compaction hide the answer: exact names
        return list(keep)


def command_line(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _model_words(args: list[str], model: list[str]) -> list[str]:
    """The options that pick the model (``model``: --checkpoint/--recipe or --onnx/--card) and its FP32 keeps,
    shared by the build and fidelity commands."""
    words = list(model)
    for arg in args:
        words += ["--keep-fp32", arg]
    return words


def build_command(target: str, args: list[str], model: list[str]) -> str:
    return command_line(["edgedeploy", "build", "--target", target, *_model_words(args, model)])


def fidelity_command(bench: str, target: str, args: list[str], model: list[str],
                     data_root: Path | None, categories: list[str] | None, max_drift: float | None = None,
                     gate: str | None = None) -> str:
    """The ``edgedeploy fidelity`` check of the keep-list on every image, with the budget and gate the search used
    (both left out where they are fidelity's defaults, 0.2 and benchmark)."""
    words = ["edgedeploy", "fidelity", "--bench", bench, "--target", target, "--host", "onnx"]
    if data_root is not None:
        words += ["--data-root", str(data_root)]
    if categories:
        words += ["--categories", ",".join(categories)]
    if max_drift is not None and max_drift != 0.2:
        words += ["--max-drift", f"{max_drift:g}"]
    if gate is not None and gate != "benchmark":
        words += ["--gate", gate]
    return command_line(words + _model_words(args, model))


def tensorrt_flags(profile, keep: tuple[str, ...], onnx_path: str | Path) -> dict:
    """The trtexec precision flags for ``keep``, from the TensorRT script writer."""
    if not keep:
        return {"layer_specs": [], "flags": [], "note": "nothing to keep: --fp16 alone (as build_engine.sh has it)"}
    try:
        from edgedeploy.targets.keepfp32 import layer_patterns, node_names
        from edgedeploy.targets.tensorrt.trtexec import BuildSettings, trtexec_flags
    except ImportError as exc:
        specs = list(keep)
        spec = ",".join(f"{name}:fp32" for name in specs)
        return {"layer_specs": specs, "flags": ["--precisionConstraints=obey", f"--layerPrecisions={spec}",
                                                f"--layerOutputTypes={spec}"],
                "note": f"written here (TensorRT script writer not importable: {exc})"}
    specs = layer_patterns(keep, node_names(onnx_path))
    flags = [f.text for f in trtexec_flags(BuildSettings.from_profile(profile), specs)
             if f.text.startswith(PRECISION_FLAGS)]
    return {"layer_specs": specs, "flags": flags,
            "note": "added to build_engine.sh by `edgedeploy build --keep-fp32` (NAME* also covers the extra layers "
                    "NAME_<n> TensorRT's ONNX parser makes from one node)"}


def qnn_advice(result: SearchResult, ranges: RangeReport | None, regions: dict[str, str],
               current_options: str | None, output_regions: Iterable[str] = ()) -> dict:
    """What to do on the QNN GPU, where precision is set per graph, not per node."""
    internal = sorted({f.node for f in ranges.findings if f.rule == "internal-overflow"}) if ranges else []
    stored = sorted({f.node for f in ranges.findings if f.rule == "overflow"}) if ranges else []
    keep_regions = sorted({regions.get(n, "?") for n in result.keep})
    alternatives = []
    if result.baseline.within(result.budget) and not internal:
        precision = "FLOAT16"
        why = ("the FP16 emulation (FP16 storage of every tensor) is within budget and no kernel-internal risk was "
               "found: keep FP16")
    elif result.baseline.within(result.budget):
        precision = "FLOAT16"
        why = (f"within budget in the emulation, but {len(internal)} node(s) would overflow inside the kernel if the "
               f"GPU computes them in FP16 ({', '.join(internal[:3])}{' ...' if len(internal) > 3 else ''}); if the "
               "device fidelity check drifts, use HYBRID (FP16 storage, FP32 arithmetic)")
        alternatives.append("HYBRID")
    else:
        precision = "FLOAT32"
        why = ("pure FP16 fails the budget in the emulation, which already stores in FP16 and computes inside each "
               "op in FP32 -- what HYBRID does -- so HYBRID will not fix it, and the GPU backend cannot keep single "
               "nodes in FP32")
        if stored:
            why += f"; {len(stored)} stored tensor(s) overflow FP16 ({', '.join(stored[:3])})"
            alternatives.append("rescale in the model so the overflowing tensors stay below 65504 (fold a 1/s "
                                "factor into the producing weights and s into what reads them)")
        else:
            why += "; nothing overflows: the drift is FP16 rounding, not range"
        head = set(output_regions)
        if result.keep and len(keep_regions) == 1 and keep_regions[0] in head:
            alternatives.append(f"keep FLOAT16 and run /{keep_regions[0]}/ (where the whole keep-list lies, at the "
                                "end of the graph) on the CPU after the GPU graph, in FP32")
    options = f"default_graph_gpu_precision={precision}"
    return {
        "precision": precision,
        "why": why,
        "qnn_options": options,
        "current_qnn_options": current_options,
        "hub_profile_options": f"--compute_unit gpu --qnn_options {options}",
        "how": ("copy the rb5-gen2 device profile (device_profiles/rb5-gen2.yaml; `edgedeploy targets` prints "
                "where it is installed), set build.qnn_options to "
                f"\"{options}\", and pass the copy as --target (AI Hub profile/inference jobs use it); for the "
                "offline QAIRT path set the GPU backend's precision mode in qnn/gpu_config.json to match"),
        "modes": QNN_PRECISIONS,
        "alternatives": alternatives,
        "per_node_keep_list": "not applicable: the QNN GPU backend sets precision per graph",
    }
