"""Stage *audit*: check an ONNX graph against a device profile before the device does.

Every finding names the node, its op, the rule it breaks and how to fix it. Errors stop a build;
warnings are risks a person should read (FP16-sensitive ops, op caveats, unknown shapes).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto

from edgedeploy.core.files import write_json_atomic
from edgedeploy.core.onnxfile import load_onnx
from edgedeploy.core.profiles import DeviceProfile

GRAPH = "(graph)"
DEFAULT_DOMAINS = ("", "ai.onnx")
GELU_FIX = ("write the GELU as ONNX Gelu (opset 20): `edgedeploy build` does it for a profile that lists Gelu and "
            "not Erf (docs/targets.md, \"The GELU for QNN\")")

# Inputs that carry shapes, axes or counts: converters read them at build time, so an INT64
# constant there is expected by the ONNX spec and harmless on the device.
SHAPE_LIKE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Unsqueeze": (1,),
    "Squeeze": (1,), "Pad": (1, 3), "TopK": (1,), "Split": (1,), "Resize": (1, 2, 3),
    "ConstantOfShape": (0,), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,),
    "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,),
    "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,), "OneHot": (1,), "CumSum": (1,), "Range": (0, 1, 2),
}

OP_FIXES = {
    "NonZero": "its output shape depends on the data: replace it with a mask multiply or fixed indexing in the PyTorch model",
    "Resize": "upsample outside the device graph (edgedeploy.core.postprocess) or use a fixed-factor op the profile supports",
    "Loop": "unroll the loop in PyTorch so the graph is static",
    "If": "remove data-dependent control flow from the model",
    "Scan": "unroll the recurrence in PyTorch",
    "Einsum": "write the contraction as MatMul/Transpose in the PyTorch model",
}

FP16_REASONS = {
    "LayerNormalization": "the variance of large activations can overflow FP16 (TensorRT warns about LayerNorm after self-attention)",
    "Softmax": "large logits overflow in exp and small probabilities flush to zero in FP16",
    "ReduceMean": "a mean over many large values can overflow FP16",
    "ReduceSum": "a sum over many values can overflow FP16",
    "Pow": "squaring activations above 256 overflows FP16",
    "Exp": "exp overflows FP16 above ~11",
    "Erf": "GELU inputs are usually safe, but extreme activations saturate",
    "Div": "a division by a small FP16 denominator can overflow",
    "Sqrt": "the operand is often a sum of squares that overflowed earlier",
}

SQUARING_OPS = ("Pow", "Mul")
REDUCE_OPS = ("ReduceMean", "ReduceSum")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    rule: str
    node: str
    op: str
    message: str
    fix: str


@dataclass
class AuditReport:
    model: str
    target: str
    findings: list[Finding] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    runtime_check: dict | None = None  # what the device's runtime said (audit_runtime.RuntimeCheck), QNN profiles

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        data = {"model": self.model, "target": self.target, "passed": self.passed,
                "errors": len(self.errors), "warnings": len(self.warnings),
                "stats": self.stats, "findings": [asdict(f) for f in self.findings]}
        if self.runtime_check is not None:
            data["runtime_check"] = self.runtime_check
        return data

    def write(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "AuditReport":
        """The report ``to_dict`` (or ``audit.json``) holds."""
        return cls(model=data["model"], target=data["target"], findings=[Finding(**f) for f in data["findings"]],
                   stats=data["stats"], runtime_check=data.get("runtime_check"))

    def runtime_line(self) -> str | None:
        """What the device's runtime said, in one line (None for a profile without a runtime check)."""
        if self.runtime_check is None:
            return None
        from edgedeploy.host.audit_runtime import RuntimeCheck

        return RuntimeCheck.from_dict(self.runtime_check).line()

    def summary_line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"audit {verdict} for {self.target}: {len(self.errors)} errors, {len(self.warnings)} warnings, "
                f"{self.stats.get('nodes', 0)} nodes, max rank {self.stats.get('max_rank', '?')}, "
                f"~{self.stats.get('device_memory_mib', 0):.0f} MiB on device")

    def table(self) -> str:
        """Errors one per row; warnings one row per (rule, op) with the first node and a count."""
        rows = [("severity", "rule", "node", "op", "what -> fix")]
        for finding in self.errors:
            rows.append(("ERROR", finding.rule, finding.node, finding.op, f"{finding.message} -> {finding.fix}"))
        groups: dict[tuple[str, str], list[Finding]] = defaultdict(list)
        for finding in self.warnings:
            groups[(finding.rule, finding.op)].append(finding)
        for (rule, op), found in groups.items():
            first = found[0]
            node = first.node if len(found) == 1 else f"{first.node} (+{len(found) - 1} more)"
            rows.append(("warning", rule, node, op, f"{first.message} -> {first.fix}"))
        widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((8, 15, 56, 22, 160))]
        lines = ["  ".join(_clip(cell, w).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        runtime = self.runtime_line()
        return "\n".join(lines + ([runtime] if runtime else []) + [self.summary_line()])


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass
class _Graph:
    model: onnx.ModelProto
    tensors: dict[str, tuple[int, list[int | None]]]  # name -> (elem_type, dims; None = unknown)
    producers: dict[str, onnx.NodeProto]
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]]
    initializers: dict[str, TensorProto]
    inference_error: str | None
    gelu: dict[str, str] | None = None       # gelu_chains(), built on first use
    gelu_tails: dict[str, str] = field(default_factory=dict)  # unhalved chain's Erf -> the chain's output tensor


def _node_name(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({', '.join(node.output)})"


def _dims(type_proto: onnx.TypeProto) -> tuple[int, list[int | None]] | None:
    if not type_proto.HasField("tensor_type"):
        return None
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return tensor.elem_type, None  # rank unknown
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
    return tensor.elem_type, dims


def _analyse(model: onnx.ModelProto) -> _Graph:
    inference_error = None
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference errors are reported, not fatal
        inference_error = str(exc).splitlines()[0][:200]
    graph = model.graph
    tensors: dict = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        info = _dims(value.type)
        if info is not None:
            tensors[value.name] = info
    initializers = {init.name: init for init in graph.initializer}
    for init in graph.initializer:
        tensors[init.name] = (init.data_type, list(init.dims))
    producers, consumers = {}, defaultdict(list)
    for node in graph.node:
        for out in node.output:
            producers[out] = node
        for idx, name in enumerate(node.input):
            if name:
                consumers[name].append((node, idx))
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = (attr.t.data_type, list(attr.t.dims))
    return _Graph(model, tensors, producers, consumers, initializers, inference_error)


def _dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type)


def _is_shape_like_use(node: onnx.NodeProto, index: int) -> bool:
    return index in SHAPE_LIKE_INPUTS.get(node.op_type, ())


def _check_opset(g: _Graph, profile: DeviceProfile) -> Iterable[Finding]:
    opset = next((o.version for o in g.model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if opset is None or not profile.opset_min <= opset <= profile.opset_max:
        yield Finding("error", "opset", GRAPH, "-",
                      f"opset {opset} is outside {profile.opset_min}..{profile.opset_max} supported for {profile.name}",
                      f"re-export with an opset in {profile.opset_min}..{profile.opset_max} (recipe export.opset)")


def _check_ops(g: _Graph, profile: DeviceProfile) -> Iterable[Finding]:
    runtime = f"{profile.runtime} {profile.runtime_version}"
    for node in g.model.graph.node:
        name, op = _node_name(node), node.op_type
        if node.domain not in DEFAULT_DOMAINS:
            yield Finding("error", "custom-op", name, op, f"op from custom domain {node.domain!r} is not supported by {runtime}",
                          "express it with standard ONNX ops in the model")
        elif op in profile.denied_ops:
            yield Finding("error", "op-denied", name, op, f"{op} is refused for {profile.name}: {profile.denied_ops[op]}",
                          OP_FIXES.get(op, "rewrite the producing PyTorch module with ops the profile supports"))
        elif op not in profile.supported_ops and op != "Constant":
            if op == "Erf" and "Gelu" in profile.supported_ops and gelu_chains(g).get(name) == "halved":
                yield Finding("warning", "op-fused", name, op,
                              f"{op} is not in {runtime}'s supported ops, but this one ends an exact erf GELU "
                              "(x * 0.5 * (1 + Erf(x / sqrt 2))), the form the converter and the QNN EP fuse into Gelu",
                              GELU_FIX)
            else:
                yield Finding("error", "op-unsupported", name, op,
                              f"{op} is not in {runtime}'s supported ops ({profile.ops_source_version})",
                              GELU_FIX if op == "Erf" and "Gelu" in profile.supported_ops else
                              OP_FIXES.get(op, "rewrite the producing PyTorch module with ops the profile supports"))
        elif op in profile.op_notes and not _plain_constant(node):
            yield Finding("warning", "op-caveat", name, op, f"{op}: {profile.op_notes[op]}",
                          "check this node's attributes against the caveat")


def gelu_chains(g: _Graph) -> dict[str, str]:
    """Erf node name -> "halved" (the whole ``x * 0.5 * (1 + erf(x / sqrt 2))``) or "unhalved" (``x * (1 + erf(..))``,
    the exporter having folded the 0.5 into the next op), by the host graph's GELU matcher (fastgraph)."""
    if g.gelu is None:
        from edgedeploy.host.fastgraph import _Graph as Lookups, _match_gelu

        g.gelu = {}
        if any(n.op_type == "Erf" for n in g.model.graph.node):
            lookups = Lookups(g.model.graph)
            for node in g.model.graph.node:
                match = _match_gelu(lookups, node) if node.op_type == "Div" else None
                if match is not None:
                    g.gelu[_node_name(match[1][1])] = "halved" if match[3] else "unhalved"
                    if not match[3]:
                        g.gelu_tails[_node_name(match[1][1])] = match[2]
    return g.gelu


def _check_qnn_gelu_fusion(g: _Graph, profile: DeviceProfile) -> Iterable[Finding]:
    """An unhalved erf GELU whose only reader is a Mul: the QNN EP fuses Div-Erf-Add-Mul-Mul into one Gelu
    without checking the last Mul's operand (onnxruntime-qnn, qnn_node_group/gelu_fusion.cc, "ErfAdd Pattern 2"),
    so the graph silently computes 0.5 * x * (1 + erf) in place of x * (1 + erf) * c (measured with
    onnxruntime-qnn 2.7.0: a trailing Mul by 2 came out 4x too small)."""
    if profile.runtime != "qnn" or not any(n.op_type == "Erf" for n in g.model.graph.node):
        return
    gelu_chains(g)
    for erf, tail in g.gelu_tails.items():
        readers = g.consumers.get(tail, [])
        if len(readers) == 1 and readers[0][0].op_type == "Mul":
            mul = readers[0][0]
            yield Finding("error", "qnn-gelu-fusion", _node_name(mul), "Mul",
                          f"the QNN EP fuses {erf}'s GELU chain and this Mul into one Gelu without reading the Mul's "
                          "other operand, so the device computes 0.5*x*(1+erf(x/sqrt 2)) instead of this chain's value",
                          GELU_FIX)


def _plain_constant(node: onnx.NodeProto) -> bool:
    """A Constant holding a dense tensor: the form every runtime takes (its caveats concern the others)."""
    return node.op_type == "Constant" and all(attr.name == "value" for attr in node.attribute)


def _check_dtypes(g: _Graph, profile: DeviceProfile) -> Iterable[Finding]:
    allowed = profile.allowed_dtypes
    for name, init in g.initializers.items():
        dtype = _dtype_name(init.data_type)
        uses = g.consumers.get(name, [])
        if dtype in allowed or (uses and all(_is_shape_like_use(n, i) for n, i in uses)):
            continue
        node, _ = uses[0] if uses else (None, 0)
        yield Finding("error", "dtype", _node_name(node) if node else name, node.op_type if node else "initializer",
                      f"initializer {name!r} is {dtype}, not allowed on {profile.name} ({', '.join(sorted(allowed))})",
                      _dtype_fix(dtype))
    for value in [*g.model.graph.input, *g.model.graph.output]:
        info = g.tensors.get(value.name)
        if info and _dtype_name(info[0]) not in allowed:
            yield Finding("error", "dtype", GRAPH, "io", f"graph input/output {value.name!r} is {_dtype_name(info[0])}",
                          _dtype_fix(_dtype_name(info[0])))
    for out, node in g.producers.items():
        info = g.tensors.get(out)
        if not info or out in g.initializers or node.op_type == "Constant":
            continue
        dtype = _dtype_name(info[0])
        uses = g.consumers.get(out, [])
        data_uses = [u for u in uses if not _is_shape_like_use(*u)]
        if dtype == "DOUBLE" and uses:
            yield Finding("error", "dtype", _node_name(node), node.op_type, f"computes DOUBLE tensor {out!r}", _dtype_fix(dtype))
        elif dtype not in allowed and data_uses:
            yield Finding("warning", "dtype", _node_name(node), node.op_type,
                          f"computes {dtype} tensor {out!r} used as data by {_node_name(data_uses[0][0])}",
                          _dtype_fix(dtype))


def _dtype_fix(dtype: str) -> str:
    if dtype == "INT64":
        return "use INT32 in the model (the runtime casts INT64 down and may clamp values)"
    if dtype == "DOUBLE":
        return "use float32 in the model (no FP64 on the device)"
    return "cast to a dtype the profile allows in the model"


def _check_ranks(g: _Graph, profile: DeviceProfile) -> Iterable[Finding]:
    for name, (_, dims) in g.tensors.items():
        if dims is None or len(dims) <= profile.max_rank:
            continue
        node = g.producers.get(name) or next((n for n, _ in g.consumers.get(name, [])), None)
        yield Finding("error", "rank", _node_name(node) if node else name, node.op_type if node else "-",
                      f"tensor {name!r} has rank {len(dims)}, above {profile.name}'s limit of {profile.max_rank}",
                      f"reshape to <= {profile.max_rank} dims in the PyTorch module (see edgedeploy/model/rewrites.py)")


def _check_shapes(g: _Graph, profile: DeviceProfile) -> Iterable[Finding]:
    severity = "error" if profile.static_shapes_required else "warning"
    for value in [*g.model.graph.input, *g.model.graph.output]:
        dims = g.tensors.get(value.name, (0, None))[1]
        if dims is None or any(d is None for d in dims):
            shown = [d.dim_param or d.dim_value or "?" for d in value.type.tensor_type.shape.dim]
            yield Finding(severity, "dynamic-shape", GRAPH, "io", f"graph input/output {value.name!r} has shape {shown}",
                          "export with static shapes (fixed batch and image size), or let `edgedeploy build --onnx` fix them")
    for node in g.model.graph.node:
        for out in node.output:
            if out and (out not in g.tensors or g.tensors[out][1] is None or None in g.tensors[out][1]):
                if g.consumers.get(out) or out in {o.name for o in g.model.graph.output}:
                    yield Finding("warning", "unknown-shape", _node_name(node), node.op_type,
                                  f"shape of {out!r} is not known statically", "run edgedeploy's simplify stage or fix the shapes in the model")
    if g.inference_error:
        yield Finding("warning", "shape-inference", GRAPH, "-", f"ONNX shape inference failed: {g.inference_error}",
                      "make the model pass onnx.shape_inference")


def _tensor_bytes(elem_type: int, dims: list[int | None] | None, fp16: bool) -> int:
    if dims is None or None in dims:
        return 0
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    if fp16 and elem_type == TensorProto.FLOAT:
        itemsize = 2
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def _memory(g: _Graph, profile: DeviceProfile) -> tuple[dict, list[Finding]]:
    fp16 = profile.precision == "fp16"
    weights = sum(_tensor_bytes(i.data_type, list(i.dims), fp16) for i in g.initializers.values())
    peak = 0
    for node in g.model.graph.node:
        live = sum(_tensor_bytes(*g.tensors[t], fp16) for t in [*node.input, *node.output]
                   if t and t in g.tensors and t not in g.initializers)
        peak = max(peak, live)
    estimate = weights + peak
    stats = {"weights_mib": weights / 2**20, "peak_activation_mib": peak / 2**20, "device_memory_mib": estimate / 2**20,
             "memory_budget_mib": profile.model_memory_budget_bytes / 2**20}
    findings = []
    if estimate > profile.model_memory_budget_bytes:
        findings.append(Finding("error", "memory", GRAPH, "-",
                                f"model needs ~{estimate / 2**20:.0f} MiB (weights + peak activations at {profile.precision}), "
                                f"over the {stats['memory_budget_mib']:.0f} MiB budget ({profile.model_memory_fraction:.0%} of "
                                f"{profile.memory_gb:g} GB)", "use a smaller recipe (backbone or input size)"))
    return stats, findings


def _check_fp16(g: _Graph, profile: DeviceProfile) -> Iterable[Finding]:
    if profile.precision != "fp16":
        return
    fix = "keep it in FP32 (--keep-fp32 NODE) if the fidelity check drifts; find out with edgedeploy precision"
    for node in g.model.graph.node:
        if node.op_type in profile.fp16_watch_ops:
            yield Finding("warning", "fp16-risk", _node_name(node), node.op_type,
                          FP16_REASONS.get(node.op_type, f"{node.op_type} is FP16-sensitive on {profile.name}"), fix)
        if node.op_type in REDUCE_OPS and node.input:
            source = g.producers.get(node.input[0])
            if source is not None and _is_squaring(source):
                yield Finding("warning", "fp16-risk", _node_name(node), f"{source.op_type}->{node.op_type}",
                              f"{source.op_type}->{node.op_type} chain (a hand-written variance or norm) squares "
                              "activations: values above 256 overflow FP16", fix)


def _is_squaring(node: onnx.NodeProto) -> bool:
    return node.op_type in SQUARING_OPS and (node.op_type == "Pow" or (len(node.input) == 2 and node.input[0] == node.input[1]))


def audit_model(model: onnx.ModelProto, profile: DeviceProfile, model_name: str = "model.onnx") -> AuditReport:
    g = _analyse(model)
    memory_stats, memory_findings = _memory(g, profile)
    findings = [*_check_opset(g, profile), *_check_ops(g, profile), *_check_qnn_gelu_fusion(g, profile),
                *_check_dtypes(g, profile), *_check_ranks(g, profile), *_check_shapes(g, profile), *memory_findings,
                *_check_fp16(g, profile)]
    ranks = [len(d) for _, d in g.tensors.values() if d is not None]
    stats = {"nodes": len(model.graph.node), "ops": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
             "max_rank": max(ranks, default=0), "opset": next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None),
             **memory_stats}
    return AuditReport(model=model_name, target=profile.name, findings=findings, stats=stats)


def audit_onnx(path: str | Path, profile: DeviceProfile, runtime_check: bool | None = None,
               model_sha256: str | None = None) -> AuditReport:
    """The audit of the file at ``path``. For a QNN profile, ``runtime_check=True`` also asks the QNN runtime
    (:func:`add_runtime_check`), ``False`` records that it was skipped, None (the default) leaves it out."""
    report = audit_model(load_onnx(path), profile, model_name=str(path))
    if runtime_check is not None and applies_runtime_check(profile):
        add_runtime_check(report, path, profile, enabled=runtime_check, model_sha256=model_sha256)
    return report


def applies_runtime_check(profile: DeviceProfile) -> bool:
    from edgedeploy.host.audit_runtime import applies_to

    return applies_to(profile)


def add_runtime_check(report: AuditReport, path: str | Path, profile: DeviceProfile, enabled: bool = True,
                      model_sha256: str | None = None) -> AuditReport:
    """Ask the device's runtime which nodes of ``path`` it takes (edgedeploy.host.audit_runtime) and add each refused
    node as an error (rule ``qnn-runtime``); record what was asked, or why not, in ``report.runtime_check``."""
    from edgedeploy.host import audit_runtime

    check = audit_runtime.runtime_check(path, profile, model_sha256) if enabled else audit_runtime.skipped()
    report.runtime_check = check.to_dict()
    if not check.asked:
        return report
    who = f"QNN {check.backend.upper()} ({check.runtime})"
    if check.failed:
        report.findings.append(Finding("error", audit_runtime.RULE, GRAPH, "-",
                                       f"{who} could not load the graph: {check.failed}",
                                       "run `edgedeploy score --runtime qnn-htp` on it for the full message"))
    for refused in check.refused:
        op = refused["op"] if refused["domain"] in DEFAULT_DOMAINS else f"{refused['domain']}.{refused['op']}"
        fix = (GELU_FIX if refused["op"] == "Erf" else
               "express it with ops the QNN backend takes, or accept that it leaves the device "
               "(`edgedeploy score --allow-cpu-fallback`)")
        report.findings.append(Finding("error", audit_runtime.RULE, refused["node"], op,
                                       f"refused by {who}: it would run on the CPU, off the device", fix))
    return report


def load_report(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
