"""Range analysis: every intermediate tensor of the FP32 graph, measured against FP16's range.

Calibration images go through the FP32 ONNX graph with its intermediate tensors added as graph
outputs, one image at a time; each tensor's statistics are folded into running totals and the
arrays are dropped before the next segment or image. The graph is cut, in node order, into
segments whose measured tensors total at most ``memory_mib`` MiB, one ONNX Runtime session each;
a segment reads the tensors it needs from the ones before it, so nothing is computed twice and
memory holds one segment's activations plus the tensors handed across segment boundaries.

Per tensor and over all images: max |x| (and the image it came from), how many values are beyond
FP16's largest finite value (65504: inf in FP16), beyond ``65504 / margin`` (near the limit), how
many nonzero values flush to zero (|x| <= 2**-25: round-to-nearest-even gives 0), how many are
subnormal in FP16 (|x| < 2**-14, 10 bits of precision or fewer), zeros, NaN/inf in FP32, and count.

Tensors that a data-movement op (Reshape, Transpose, Split, Concat, ...) produces hold values of
its inputs unchanged, so they are not measured again: their max |x| is bounded by their sources'.

Findings (:func:`findings`), each with the producing node, its op type, its pattern
(:mod:`.patterns`) and the patterns that read it:

* ``overflow`` (error): max |x| > 65504 -- the tensor is inf in FP16.
* ``near-overflow`` (warning): max |x| > 65504 / margin -- an unseen image may push it over.
* ``internal-overflow`` (warning): a LayerNorm input with max |x| > 256, or a ReduceMean whose
  sum (count x mean) exceeds 65504: fine when stored, but a kernel that squares or accumulates in
  FP16 overflows (TensorRT warns about LayerNorm after attention in FP16). The FP16 emulation
  computes inside ops in FP32, so only this analysis sees these.
* ``underflow`` (warning): at least ``flush_share`` of the tensor's nonzero values flush to zero.
* ``weights`` (warning): float weights beyond 65504 (clamped when converted) or mostly flushing.
* ``nonfinite`` (error): the FP32 graph itself produces NaN or inf.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
from onnx import TensorProto, numpy_helper

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.precision.graph_index import GraphIndex
from edgedeploy.evaluation.precision.patterns import DATA_OPS, LAYERNORM, classify, regions
from edgedeploy.evaluation.precision.segments import current_rss_mib, cut_segments, segment_model, segmentable

FP16_MAX = 65504.0
FP16_FLUSH = 2.0 ** -25  # |x| <= this rounds to 0 in FP16 (round to nearest, ties to even)
FP16_MIN_SUBNORMAL = 2.0 ** -24
FP16_MIN_NORMAL = 2.0 ** -14
SQUARE_LIMIT = math.sqrt(FP16_MAX)  # ~255.9: a larger value squared overflows FP16
DEFAULT_MARGIN = 4.0
DEFAULT_FLUSH_SHARE = 0.5
DEFAULT_MEMORY_MIB = 1024
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}

Log = Callable[[str], None]


@dataclass
class TensorStats:
    tensor: str
    node: str
    op: str
    pattern: str
    region: str
    shape: list
    consumers: list[str] = field(default_factory=list)  # patterns of the nodes reading it
    images: int = 0
    max_abs: float = 0.0
    max_image: str = ""
    count: int = 0
    zeros: int = 0
    overflow: int = 0
    near: int = 0
    flush: int = 0
    subnormal: int = 0
    nonfinite: int = 0

    @property
    def nonzero(self) -> int:
        return self.count - self.zeros

    @property
    def flush_share(self) -> float:
        return self.flush / self.nonzero if self.nonzero else 0.0

    @property
    def subnormal_share(self) -> float:
        return self.subnormal / self.nonzero if self.nonzero else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["max_abs"] = _num(self.max_abs)
        d["headroom"] = _num(FP16_MAX / self.max_abs) if self.max_abs > 0 else None
        d["flush_share"] = self.flush_share
        d["subnormal_share"] = self.subnormal_share
        return d


@dataclass(frozen=True)
class Finding:
    severity: str
    rule: str
    node: str
    op: str
    pattern: str
    region: str
    tensor: str
    value: float | None
    message: str
    fix: str


@dataclass
class RangeReport:
    model: str
    images: list[str]
    margin: float
    flush_share: float
    tensors: list[TensorStats]  # measured tensors, graph order
    bounds: dict[str, float]  # every float activation -> max |x| (measured, or bounded by its sources)
    weights: list[dict]
    findings: list[Finding]
    segments: int
    seconds: float = 0.0
    peak_rss_mib: float = 0.0  # largest resident memory sampled while the analysis ran (after each segment)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def flagged_nodes(self, rules: Iterable[str] = ("overflow", "near-overflow", "internal-overflow")) -> list[str]:
        wanted = set(rules)
        return list(dict.fromkeys(f.node for f in self.findings if f.rule in wanted))

    def largest(self, n: int = 5) -> list[TensorStats]:
        return sorted(self.tensors, key=lambda t: (-t.max_abs, t.tensor))[:n]

    def to_dict(self, timing: bool = True) -> dict:
        d = {"model": self.model, "images": self.images, "margin": self.margin, "flush_share": self.flush_share,
             "fp16": {"max": FP16_MAX, "flush_below": FP16_FLUSH, "min_subnormal": FP16_MIN_SUBNORMAL,
                      "min_normal": FP16_MIN_NORMAL, "square_limit": SQUARE_LIMIT},
             "summary": {"tensors_measured": len(self.tensors), "errors": len(self.errors),
                         "warnings": len(self.warnings), "segments": self.segments,
                         "largest": [{"tensor": t.tensor, "node": t.node, "pattern": t.pattern,
                                      "max_abs": _num(t.max_abs)} for t in self.largest()]},
             "findings": [asdict(f) for f in self.findings],
             "weights": self.weights,
             "tensors": [t.to_dict() for t in self.tensors]}
        if timing:
            d["runtime"] = {"seconds": round(self.seconds, 2), "peak_rss_mib": round(self.peak_rss_mib, 1)}
        return d


def _num(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


# ------------------------------------------------------------------------------------- analysis


def _tracked(index: GraphIndex) -> list[str]:
    """Float activations worth measuring: outputs of nodes that compute, in graph order."""
    out = []
    for name in index.order:
        op = index.op(name)
        if op == "Constant" or op in DATA_OPS:
            continue
        out.extend(t for t in index.outputs(name) if index.is_float(t))
    return out


class RangeAnalyzer:
    """Streams images through the FP32 graph and accumulates :class:`TensorStats` per tensor."""

    def __init__(self, index: GraphIndex, model_name: str, input_name: str, margin: float = DEFAULT_MARGIN,
                 flush_share: float = DEFAULT_FLUSH_SHARE, memory_mib: float = DEFAULT_MEMORY_MIB):
        if not margin >= 1.0:
            raise EdgeDeployError(f"--margin must be >= 1 (a factor below FP16's max), got {margin}")
        if input_name not in index.graph_inputs:
            raise EdgeDeployError(f"the model has no input {input_name!r} (inputs: {', '.join(index.graph_inputs)})")
        self.index = index
        self.model_name = model_name
        self.input_name = input_name
        self.margin = float(margin)
        self.flush_share = float(flush_share)
        self.patterns = classify(index)
        self.regions = regions(index)
        tracked = _tracked(index)
        budget = memory_mib if segmentable(index) else float("inf")
        self.segments = cut_segments(index, tracked, budget)
        self.stats: dict[str, TensorStats] = {}
        for t in tracked:
            node = index.producer[t]
            readers = sorted({self.patterns[c] for c in index.consumers.get(t, [])})
            self.stats[t] = TensorStats(t, node, index.op(node), self.patterns[node], self.regions[node],
                                        index.shapes.get(t) or [], readers)
        # when each handed-off tensor is last needed, so it is dropped as early as possible
        self._last_use: dict[str, int] = {}
        for k, seg in enumerate(self.segments):
            for t in seg.inputs:
                self._last_use[t] = k
        self.images: list[str] = []
        self.input_max = 0.0  # max |x| of the graph input seen (bounds what data movement makes of it)
        self.rss_mib = current_rss_mib()  # the largest resident memory seen while the analysis ran
        self._sessions: list = []
        self.seconds = 0.0

    def _session(self, k: int):
        import onnxruntime as ort

        while len(self._sessions) <= k:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.enable_cpu_mem_arena = False  # an arena per segment would keep every segment's peak
            payload = segment_model(self.index, self.segments[len(self._sessions)])
            self._sessions.append(ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"]))
        return self._sessions[k]

    def add(self, image: np.ndarray, label: str) -> None:
        """Fold one pre-processed image (float32 (3, S, S), or with its batch axis) into the totals."""
        start = time.perf_counter()
        rank = len(self.index.shapes.get(self.input_name) or [None] * (image.ndim + 1))
        batch = np.ascontiguousarray(image[None] if image.ndim == rank - 1 else image, dtype=np.float32)
        self.images.append(label)
        self.input_max = max(self.input_max, float(np.max(np.abs(batch))) if batch.size else 0.0)
        env: dict[str, np.ndarray] = {self.input_name: batch}
        for k, seg in enumerate(self.segments):
            feeds = {t: env[t] for t in seg.inputs}
            values = self._session(k).run([*seg.measured, *seg.handoff], feeds)
            self.rss_mib = max(self.rss_mib, current_rss_mib())  # the segment's activations are all alive here
            del feeds
            for t in [t for t in env if self._last_use.get(t, -1) <= k]:
                del env[t]
            for t, value in zip(seg.handoff, values[len(seg.measured):]):
                env[t] = value
            for t, value in zip(seg.measured, values[:len(seg.measured)]):
                if self._last_use.get(t, -1) > k:
                    env[t] = value.copy()  # a later segment reads it; _fold works in place
                self._fold(self.stats[t], value, label)
            del values
        self.seconds += time.perf_counter() - start

    def _fold(self, s: TensorStats, value: np.ndarray, label: str) -> None:
        flat = value.reshape(-1)
        a = np.abs(flat, out=flat) if flat.flags.writeable else np.abs(flat)  # in place: the array is ours
        s.images += 1
        s.count += a.size
        if a.size == 0:
            return
        with np.errstate(invalid="ignore"):
            peak = float(np.max(a))
        if not math.isfinite(peak):
            finite = np.isfinite(a)
            s.nonfinite += int(a.size - np.count_nonzero(finite))
            a = a[finite]
            s.max_abs = math.inf
            s.max_image = s.max_image or label
            if not a.size:
                return
            peak = float(np.max(a))
        elif peak > s.max_abs:
            s.max_abs, s.max_image = peak, label
        small = a[a < FP16_MIN_NORMAL]  # zeros, and values FP16 stores as subnormals or flushes
        if small.size:
            zeros = int(small.size - np.count_nonzero(small))
            s.zeros += zeros
            s.subnormal += int(small.size) - zeros
            s.flush += int(np.count_nonzero(small <= FP16_FLUSH)) - zeros
        near = FP16_MAX / self.margin
        if peak > near:
            s.near += int(np.count_nonzero(a > near))
            if peak > FP16_MAX:
                s.overflow += int(np.count_nonzero(a > FP16_MAX))

    def close(self) -> None:
        self._sessions.clear()

    def report(self) -> RangeReport:
        tensors = [self.stats[t] for seg in self.segments for t in seg.measured]
        bounds = _bounds(self.index, self.stats, {self.input_name: self.input_max})
        weights = _weights(self.index, self.patterns)
        found = findings(self.index, tensors, bounds, weights, self.patterns, self.regions, self.margin,
                         self.flush_share)
        return RangeReport(self.model_name, list(self.images), self.margin, self.flush_share, tensors, bounds,
                           weights, found, len(self.segments), self.seconds, self.rss_mib)


def _bounds(index: GraphIndex, stats: dict[str, TensorStats], inputs: dict[str, float]) -> dict[str, float]:
    """max |x| of every float activation: measured, or (data movement) the max of its sources."""
    bounds: dict[str, float] = dict(inputs)
    bounds.update({t: s.max_abs for t, s in stats.items()})
    for name in index.order:
        node = index.nodes[name]
        if node.op_type not in DATA_OPS:
            continue
        sources = [t for t in index.inputs(name) if index.is_float(t)]
        bound = 0.0
        for t in sources:
            if t in bounds:
                bound = max(bound, bounds[t])
            elif t in index.initializers:
                bound = max(bound, _initializer_max(index, t))
        for out in index.outputs(name):
            if index.is_float(out):
                bounds[out] = bound
    return bounds


def _initializer_max(index: GraphIndex, name: str) -> float:
    for init in index.model.graph.initializer:
        if init.name == name:
            arr = numpy_helper.to_array(init)
            return float(np.max(np.abs(arr))) if arr.size else 0.0
    return 0.0


def _weights(index: GraphIndex, patterns: dict[str, str]) -> list[dict]:
    """Float initializers out of FP16's range or mostly below its smallest subnormal."""
    out = []
    for init in index.model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = np.abs(numpy_helper.to_array(init)).reshape(-1)
        if not arr.size:
            continue
        nonzero = int(np.count_nonzero(arr))
        peak = float(np.max(arr))
        over = int(np.count_nonzero(arr > FP16_MAX))
        flush = int(np.count_nonzero((arr <= FP16_FLUSH) & (arr > 0)))
        if over or (nonzero and flush / nonzero >= DEFAULT_FLUSH_SHARE):
            readers = index.consumers.get(init.name, [])
            out.append({"initializer": init.name, "node": readers[0] if readers else "", "pattern":
                        patterns.get(readers[0], "") if readers else "", "max_abs": peak, "count": int(arr.size),
                        "beyond_fp16_max": over, "flush": flush, "nonzero": nonzero})
    return out


def findings(index: GraphIndex, tensors: list[TensorStats], bounds: dict[str, float], weights: list[dict],
             patterns: dict[str, str], regions_: dict[str, str], margin: float,
             flush_share: float) -> list[Finding]:
    near = FP16_MAX / margin
    found: list[Finding] = []
    for s in tensors:
        base = dict(node=s.node, op=s.op, pattern=s.pattern, region=s.region, tensor=s.tensor)
        feeds = f" (feeds {', '.join(s.consumers)})" if s.consumers else ""
        if s.nonfinite:
            found.append(Finding("error", "nonfinite", value=None, message=(
                f"{s.nonfinite} NaN/inf values already in FP32 (first on {s.max_image})"),
                fix="fix the model or its inputs: FP32 itself is broken here", **base))
            continue
        if s.max_abs > FP16_MAX:
            found.append(Finding("error", "overflow", value=s.max_abs, message=(
                f"max |x| {s.max_abs:.4g} > FP16 max 65504 on {s.max_image}; {s.overflow} values "
                f"({s.overflow / s.count:.2%}) become inf in FP16{feeds}"),
                fix=f"keep {s.node} and what reads it in FP32 (see the keep-list), or scale the producing "
                    "weights down in the model", **base))
        elif s.max_abs > near:
            found.append(Finding("warning", "near-overflow", value=s.max_abs, message=(
                f"max |x| {s.max_abs:.4g} is within {margin:g}x of FP16 max 65504 (on {s.max_image}){feeds}"),
                fix="another image may overflow it: keep it in FP32 if the device check drifts", **base))
        if s.nonzero and s.flush_share >= flush_share:
            found.append(Finding("warning", "underflow", value=s.flush_share, message=(
                f"{s.flush_share:.0%} of its nonzero values are below 2^-25 and flush to zero in FP16 "
                f"(max |x| {s.max_abs:.3g}){feeds}"),
                fix="scale the tensor up in the model (and back down after), or keep its producer in FP32", **base))
    # Inside a kernel: a LayerNorm computed in FP16 squares its (centred) input; a ReduceMean sums first.
    for name in index.order:
        op = index.op(name)
        if op == "LayerNormalization" or patterns.get(name) == LAYERNORM:
            data = index.data_inputs(name)
            bound = bounds.get(data[0], 0.0) if data else 0.0
            if SQUARE_LIMIT < bound <= FP16_MAX:
                found.append(Finding("warning", "internal-overflow", name, op, patterns[name], regions_[name],
                                     data[0], bound, (
                    f"LayerNorm input max |x| {bound:.4g} > 256: its variance overflows if the device computes it "
                    "in FP16 (the emulation computes inside ops in FP32 and cannot show this)"),
                    "TensorRT: keep this LayerNorm in FP32 if the device check drifts; QNN GPU: HYBRID precision"))
        elif op == "ReduceMean":
            out = index.outputs(name)[0]
            data = index.data_inputs(name)
            n_in, n_out = (index.numel(data[0]) if data else None), index.numel(out)
            bound = bounds.get(out, 0.0)
            if n_in and n_out and bound <= FP16_MAX and bound * (n_in // max(n_out, 1)) > FP16_MAX:
                count = n_in // max(n_out, 1)
                found.append(Finding("warning", "internal-overflow", name, op, patterns[name], regions_[name], out,
                                     bound * count, (
                    f"sum of {count} values before the mean reaches ~{bound * count:.4g} > 65504 if accumulated in "
                    "FP16"), "keep it in FP32 on TensorRT if the device check drifts; QNN GPU: HYBRID precision"))
    for w in weights:
        if w["beyond_fp16_max"]:
            found.append(Finding("warning", "weights", w["node"], index.op(w["node"]) if w["node"] else "-",
                                 w["pattern"], regions_.get(w["node"], ""), w["initializer"], w["max_abs"], (
                f"{w['beyond_fp16_max']} weights beyond 65504 (max {w['max_abs']:.4g}) are clamped in FP16"),
                "keep the node reading them in FP32, or rescale the weights in the model"))
        else:
            found.append(Finding("warning", "weights", w["node"], index.op(w["node"]) if w["node"] else "-",
                                 w["pattern"], regions_.get(w["node"], ""), w["initializer"],
                                 w["flush"] / max(w["nonzero"], 1), (
                f"{w['flush']} of {w['nonzero']} nonzero weights flush to zero in FP16"),
                "keep the node reading them in FP32, or rescale the weights in the model"))
    position = index.position
    found.sort(key=lambda f: (SEVERITY_ORDER[f.severity], _rule_rank(f.rule),
                              -(f.value if f.value is not None and math.isfinite(f.value) else math.inf),
                              position.get(f.node, 1 << 30), f.tensor))
    return found


def _rule_rank(rule: str) -> int:
    order = ("nonfinite", "overflow", "near-overflow", "internal-overflow", "weights", "underflow")
    return order.index(rule) if rule in order else len(order)


def analyse(index: GraphIndex, model_name: str, input_name: str, images: Iterable[tuple[str, np.ndarray]],
            margin: float = DEFAULT_MARGIN, flush_share: float = DEFAULT_FLUSH_SHARE,
            memory_mib: float = DEFAULT_MEMORY_MIB, log: Log | None = None) -> RangeReport:
    """Run the analysis over ``(label, image)`` pairs (images pre-processed, float32 (3, S, S))."""
    analyzer = RangeAnalyzer(index, model_name, input_name, margin, flush_share, memory_mib)
    try:
        for i, (label, image) in enumerate(images):
            analyzer.add(image, label)
            if log is not None:
                log(f"  range analysis: image {i + 1} {label} ({analyzer.seconds:.1f}s so far)")
        if not analyzer.images:
            raise EdgeDeployError("the range analysis got no calibration images")
        return analyzer.report()
    finally:
        analyzer.close()
