"""Stage *quantize*: the audited float graph -> a calibrated QDQ graph for an integer precision of the target.

Built with ONNX Runtime's own quantisation tools (no hand-written quantisation), as read in the installed
onnxruntime 1.32 (``onnxruntime/quantization/``):

* QNN HTP (``w8a16``, ``w8a8``; rb5-gen2-npu): ``execution_providers.qnn.qnn_preprocess_model`` (fuses Erf chains into
  Gelu, ReduceL2 chains into LpNormalization), ``get_qnn_qdq_config(model, reader, calibrate_method, activation_type,
  weight_type, per_channel, nodes_to_exclude)`` with activations ``QUInt16`` (w8a16) or ``QUInt8`` (w8a8) and weights
  ``QUInt8`` (the helper's default; it sets the QNN-specific overrides: 16-bit Sigmoid/Tanh output scales, 8-bit
  MatMul/LayerNorm weights beside 16-bit activations, per-tensor MatMul), then ``quantize(model, out, config)``.
  ``per_channel=True``: per-channel Conv/ConvTranspose weights (the helper's documented option; measured on the small
  recipe: score error 0.024 against 0.067 per-tensor, w8a16, seeded weights).
* TensorRT (``int8``; jetson-orin-nano): ``quantize_static(..., quant_format=QuantFormat.QDQ, activation_type=QInt8,
  weight_type=QInt8, per_channel=True, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
  "QuantizeBias": False})``: symmetric signed INT8 (zero points 0), per-channel weights, biases left float (an INT32
  bias DequantizeLinear is not an INT8/FP8/INT4 one, which onnx-tensorrt's DequantizeLinear requires: see the
  jetson-orin-nano profile's note). The graph is TensorRT's explicit quantisation: trtexec ``--int8 --fp16``, no cache.

Calibration: normal images only (a benchmark's train split, ``train/good`` for MVTec-style layouts, or a folder),
fed exactly as every runner feeds the graph (``load_image`` + the model card's ``prepare``). The record keeps each
image's sha256, the method (MinMax default; Entropy, Percentile) and its settings, and the overlap with the evaluation
images (the test split), which is refused unless allowed.

ViT-sensitive ops stay float by default (``nodes_to_exclude``; huggingface/optimum #151, onnxruntime #16219):
LayerNormalization, Softmax, Gelu/Erf and residual Adds (an Add of two computed tensors); FP16 on the HTP
(enable_htp_fp16_precision), FP16/FP32 in TensorRT. An initializer shared between a kept-float node and a quantised
one is given its own copy first, so the float node never reads a dequantised weight (the QNN EP refuses a
DequantizeLinear outside a Q/DQ group: measured with onnxruntime-qnn 2.7.0).

Two workarounds for onnxruntime 1.32, each measured here: ``qnn_preprocess_model`` fails (TypeError in
``save_and_reload_optimize_model``, ``dict.update`` of protobuf entries) on a model with ``metadata_props``, so they are
removed from the copy that is quantised; the quantiser is given file paths, never a ModelProto (it rewrites a
ModelProto's weights as external data in place).
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgedeploy.core.errors import EdgeDeployError, ToolFailedError
from edgedeploy.core.profiles import QUANTIZED_PRECISIONS, DeviceProfile

Log = Callable[[str], None]
QUANTIZE_VERSION = "1"
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# fewest calibration images per method (project policy: a histogram method needs more samples than a range)
MIN_IMAGES = {"minmax": 4, "entropy": 8, "percentile": 8}
DEFAULT_LIMIT = 32
DEFAULT_PERCENTILE = 99.999  # onnxruntime's own default (calibrate.create_calibrator)
SENSITIVE_OPS = {"LayerNormalization": "LayerNorm", "Softmax": "Softmax", "Gelu": "GELU", "Erf": "GELU (Erf)"}
CHECK_IMAGES = 4  # calibration images the QDQ graph is run on against the float graph (ONNX Runtime CPU)
PRECISION_RUNTIME = {"int8": "tensorrt", "w8a16": "qnn", "w8a8": "qnn"}


@dataclass(frozen=True)
class QuantizeRequest:
    """What ``edgedeploy build --precision ... --calibration ...`` asked for."""

    precision: str
    calibration: str                       # a benchmark name (its train split) or a folder of normal images
    method: str = "minmax"
    percentile: float = DEFAULT_PERCENTILE
    data_root: Path | None = None          # the calibration benchmark's root (default: its env var; demo: the cache)
    eval_bench: str | None = None          # the benchmark whose test split must not overlap (default: the calibration one)
    allow_overlap: bool = False
    default_exclusions: bool = True
    keep_float: tuple[str, ...] = ()
    limit: int = DEFAULT_LIMIT


@dataclass
class Calibration:
    images: list[Path]
    sha256: list[str]
    source: dict
    found: int
    overlap: dict = field(default_factory=dict)


def is_quantized(precision: str | None) -> bool:
    return precision in QUANTIZED_PRECISIONS


def check_precision(profile: DeviceProfile, precision: str) -> None:
    """``--precision`` must be one the profile lists (runtime.precisions)."""
    listed = tuple(profile.precisions or (profile.precision,))
    if precision not in listed:
        raise EdgeDeployError(f"--precision {precision} is not a precision of {profile.name}: it lists "
                              f"{', '.join(listed)}; pass one of those (or another --target)")
    if is_quantized(precision) and PRECISION_RUNTIME[precision] != profile.runtime:
        raise EdgeDeployError(f"--precision {precision} is for {PRECISION_RUNTIME[precision]} targets, but {profile.name} "
                              f"runs {profile.runtime}: fix runtime.precisions in {profile.path}")


def check_request(request: QuantizeRequest) -> None:
    if request.method not in METHODS:
        raise EdgeDeployError(f"--calibration-method {request.method} is not one of {', '.join(METHODS)}")
    if request.limit < MIN_IMAGES[request.method]:
        raise EdgeDeployError(f"--calibration-limit {request.limit} is below the {MIN_IMAGES[request.method]} images "
                              f"{request.method} calibration needs; raise it")
    if not 0 < request.percentile <= 100:
        raise EdgeDeployError(f"--calibration-percentile {request.percentile:g} must be in (0, 100]")


def graph_is_qdq(path: str | Path) -> bool:
    """Whether an ONNX graph already holds QuantizeLinear/DequantizeLinear nodes (a quantised graph)."""
    from edgedeploy.core.onnxfile import load_onnx

    model = load_onnx(path, load_weights=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def refuse_qdq_for(profile: DeviceProfile, path: str | Path) -> None:
    """A QDQ graph given to a target that lists no integer precision: one line, exit 2."""
    if not any(is_quantized(p) for p in (profile.precisions or (profile.precision,))) and graph_is_qdq(path):
        raise EdgeDeployError(f"{Path(path).name} is a quantised (QDQ) graph, but {profile.name} lists no integer "
                              f"precision ({', '.join(profile.precisions or (profile.precision,))}): give it the float "
                              "graph, or a target whose profile lists int8/w8a16/w8a8 in runtime.precisions")


# ----------------------------------------------------------------------------------------------- calibration set


def _sha256(path: Path) -> str:
    from edgedeploy.core.hashing import sha256_file

    return sha256_file(path)


def _spread(items: list, limit: int) -> list:
    """At most ``limit`` items, evenly spaced over the sorted list (so every category of a benchmark is drawn)."""
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def resolve_calibration(request: QuantizeRequest) -> Calibration:
    """The calibration images (normal only), their hashes, and where they came from; one-line errors otherwise."""
    from edgedeploy.core.errors import DataError
    from edgedeploy.evaluation.data.benchmarks import BENCHMARK_NAMES, _images_in, load_benchmark, normalise_name

    spec = request.calibration
    need = MIN_IMAGES[request.method]
    if normalise_name(spec) in BENCHMARK_NAMES and not Path(spec).exists():
        bench = normalise_name(spec)
        try:
            train = load_benchmark(bench, request.data_root, split="train")
        except DataError as exc:
            raise EdgeDeployError(f"--calibration {spec}: found 0 normal training images ({exc}); pass a folder of "
                                  "normal images instead") from None
        paths = [s.path for s in train.samples if s.label == 0]
        source = {"kind": "benchmark", "name": bench, "split": "train", "root": str(train.root)}
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise EdgeDeployError(f"--calibration {spec} is neither a benchmark name nor a folder: pass a benchmark "
                                  "with a train split (e.g. demo) or a folder of normal images")
        paths = sorted(_images_in(folder))
        if not paths:  # an MVTec-style category folder: its train/good
            paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.parent.name == "good"
                           and "train" in p.parts and p in set(_images_in(p.parent)))
        source = {"kind": "folder", "path": str(folder.resolve())}
    if len(paths) < need:
        raise EdgeDeployError(f"--calibration {spec}: found {len(paths)} normal image{'s' if len(paths) != 1 else ''}, "
                              f"{request.method} calibration needs at least {need}; add normal images")
    chosen = _spread(sorted(paths), request.limit)
    calib = Calibration(chosen, [_sha256(p) for p in chosen], source, len(paths))
    eval_bench = request.eval_bench or (source["name"] if source["kind"] == "benchmark" else None)
    calib.overlap = _overlap(calib, eval_bench, request)
    return calib


def _overlap(calib: Calibration, eval_bench: str | None, request: QuantizeRequest) -> dict:
    """Calibration images whose content (sha256) is also an evaluation (test split) image."""
    from edgedeploy.evaluation.data.benchmarks import load_benchmark

    if eval_bench is None:
        return {"checked": False, "reason": "no evaluation benchmark given (--eval-bench)", "images": 0}
    data_root = request.data_root if request.eval_bench in (None, request.calibration) else None
    test = load_benchmark(eval_bench, data_root, split="test")
    wanted = {h: p for h, p in zip(calib.sha256, calib.images)}
    by_size = {p.stat().st_size for p in calib.images}
    same = sorted(s.rel_path for s in test.samples if s.path.stat().st_size in by_size and _sha256(s.path) in wanted)
    record = {"checked": True, "eval_bench": eval_bench, "eval_split": "test", "eval_images": len(test.samples),
              "images": len(same), "examples": same[:5], "allowed": bool(same and request.allow_overlap)}
    if same and not request.allow_overlap:
        raise EdgeDeployError(f"--calibration {request.calibration}: {len(same)} calibration image(s) are also "
                              f"{eval_bench} test images (e.g. {same[0]}): calibrate on normal images apart from the "
                              "evaluation set, or pass --allow-calibration-overlap (the manifest then says so)")
    return record


# ----------------------------------------------------------------------------------------------- exclusions


def default_exclusions(model) -> dict[str, str]:
    """ViT-sensitive nodes kept float by default: node name -> why."""
    produced = {o for n in model.graph.node if n.op_type != "Constant" for o in n.output}
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in SENSITIVE_OPS:
            out[node.name] = SENSITIVE_OPS[node.op_type]
        elif node.op_type == "Add" and len(node.input) == 2 and all(i in produced for i in node.input):
            out[node.name] = "residual Add"
    return out


def expand_keep_float(model, patterns: tuple[str, ...]) -> list[str]:
    names = [n.name for n in model.graph.node if n.name]
    chosen: list[str] = []
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            close = difflib.get_close_matches(pattern, names, n=3)
            raise EdgeDeployError(f"--keep-float {pattern} matches no node of the graph"
                                  + (f" (closest: {', '.join(close)})" if close else "")
                                  + "; use node names as `edgedeploy audit` prints them, or a glob")
        chosen += [n for n in matched if n not in chosen]
    return chosen


# the ops a score head's walk stops at: a weighted layer ends it (what comes before is features, not the head)
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# ops that only move or reshape data: keeping one float raises nothing, so they are not named
DATA_MOVEMENT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Split", "Concat", "Slice",
                               "Gather", "Shape", "Identity", "Constant", "Expand", "Tile", "Cast", "Pad",
                               "DepthToSpace", "SpaceToDepth"})


def score_head(model, score_output: str) -> list[str]:
    """The nodes that turn the model's features into its image score, in graph order: walking back from the score
    output, the nodes no other graph output depends on, up to the last weighted layer (Conv, MatMul, Gemm), plus the
    node producing another output that they read (the anomaly map a top-k score is taken from).

    Why it matters: calibration sees normal images only, so the quantiser gives each of these tensors the normal
    images' range, and a defect scoring above every calibration image is clipped to the top of it. The confident
    defects then tie with one another and with the most anomalous-looking normal images (measured on
    EfficientNet-Lite0-512: 49 reorderings at w8a8, docs/quantization.md)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    others = [o.name for o in model.graph.output if o.name != score_output]

    def ancestors(outputs) -> set[str]:  # nodes by their first output (names may be empty or repeated)
        seen: set[str] = set()
        stack = list(outputs)
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.output[0] not in seen:
                seen.add(node.output[0])
                stack += [i for i in node.input if i and i not in inits]
        return seen

    shared = ancestors(others)
    head: set[str] = set()
    stack = [score_output]
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or node.output[0] in head or node.op_type in WEIGHTED_OPS or node.op_type == "Constant":
            continue
        head.add(node.output[0])
        if node.output[0] in shared:  # another output's node the score reads: the head starts after it
            continue
        stack += [i for i in node.input if i and i not in inits]
    return [n.name for n in model.graph.node if n.output[0] in head and n.name]


def quantised_score_head(model, score_output: str, excluded) -> list[str]:
    """The score head's computing nodes the quantiser would quantise (not kept float)."""
    ops = {n.name: n.op_type for n in model.graph.node}
    return [n for n in score_head(model, score_output) if n not in excluded and ops[n] not in DATA_MOVEMENT_OPS]


def _unshare(model, keep: set[str]) -> int:
    """Give every initializer a kept-float node shares with another node its own copy; returns how many."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            users[i] = users.get(i, 0) + 1
    copies = 0
    for node in model.graph.node:
        if node.name not in keep:
            continue
        for k, name in enumerate(node.input):
            if name in inits and users.get(name, 0) > 1:
                copy = TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__float_{copies}"
                model.graph.initializer.append(copy)
                node.input[k] = copy.name
                users[name] -= 1
                copies += 1
    return copies


# ----------------------------------------------------------------------------------------------- the graph


def quantize_onnx(src: Path, dst: Path, profile: DeviceProfile, request: QuantizeRequest, calib: Calibration,
                  card, log: Log = print) -> tuple[dict, list[str]]:
    """Write the QDQ graph of ``src`` to ``dst`` (atomically); the manifest's ``quantization`` record, warnings."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType

    from edgedeploy.evaluation.data.preprocess import load_image

    model = onnx.load(str(src))
    excluded = default_exclusions(model) if request.default_exclusions else {}
    for name in expand_keep_float(model, request.keep_float):
        excluded.setdefault(name, "--keep-float")
    head = quantised_score_head(model, card.score_output, excluded)
    copies = _unshare(model, set(excluded))
    del model.metadata_props[:]  # onnxruntime 1.32's qnn_preprocess_model fails on metadata_props (module doc)
    size = card.input_size
    arrays = [card.prepare(load_image(p, size)[None]) for p in calib.images]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{card.input_name: a} for a in arrays])

        def get_next(self):
            return next(self._it, None)

    method = getattr(CalibrationMethod, METHODS[request.method])
    calib_extra = {"CalibPercentile": request.percentile} if request.method == "percentile" else {}
    settings: dict = {"method": METHODS[request.method], "per_channel": True}
    if request.method == "percentile":
        settings.update(percentile=request.percentile, num_bins=2048)
    elif request.method == "entropy":
        settings.update(num_bins=128, num_quantized_bins=128)  # create_calibrator's defaults (quantize_static passes none)
    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=dst.parent))
    start = time.perf_counter()
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's "consider pre-processing" warnings, once per call
    try:
        clean = work / "float.onnx"
        onnx.save(model, str(clean))
        out = work / "qdq.onnx"
        if profile.runtime == "qnn":
            from onnxruntime.quantization import quantize
            from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

            pre = work / "pre.onnx"
            source = pre if qnn_preprocess_model(str(clean), str(pre)) else clean
            act = QuantType.QUInt16 if request.precision == "w8a16" else QuantType.QUInt8
            config = get_qnn_qdq_config(str(source), Reader(), calibrate_method=method, activation_type=act,
                                        weight_type=QuantType.QUInt8, per_channel=True,
                                        nodes_to_exclude=sorted(excluded) or None)
            config.extra_options.update(calib_extra)
            quantize(str(source), str(out), config)
            settings.update(tool="onnxruntime.quantization.execution_providers.qnn get_qnn_qdq_config + quantize",
                            activation_type=act.name, weight_type="QUInt8", activation_symmetric=False,
                            weight_symmetric=False, preprocessed=source == pre,
                            qdq_contrib_ops=bool(config.extra_options.get("UseQDQContribOps")))
        else:
            from onnxruntime.quantization import quantize_static

            extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, **calib_extra}
            quantize_static(str(clean), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=sorted(excluded), calibrate_method=method, extra_options=extra)
            settings.update(tool="onnxruntime.quantization.quantize_static (QuantFormat.QDQ)", activation_type="QInt8",
                            weight_type="QInt8", activation_symmetric=True, weight_symmetric=True, quantize_bias=False)
        seconds = time.perf_counter() - start
        check = _cpu_check(clean, out, card, arrays[:CHECK_IMAGES])
        os.replace(out, dst)
    except EdgeDeployError:
        raise
    except Exception as exc:
        raise ToolFailedError(f"ONNX Runtime's quantiser failed on {src.name} for {request.precision} "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    finally:
        logging.getLogger().setLevel(previous)
        shutil.rmtree(work, ignore_errors=True)
    qdq = onnx.load(str(dst), load_external_data=False)
    counts = {op: sum(n.op_type == op for n in qdq.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    by_reason: dict[str, int] = {}
    for why in excluded.values():
        by_reason[why] = by_reason.get(why, 0) + 1
    record = {
        "precision": request.precision,
        "settings": settings,
        "calibration": {**calib.source, "images": len(calib.images), "found": calib.found, "limit": request.limit,
                        "files": [{"path": str(p), "sha256": h} for p, h in zip(calib.images, calib.sha256)],
                        "overlap": calib.overlap},
        "kept_float": {"default_exclusions": request.default_exclusions, "keep_float": list(request.keep_float),
                       "nodes": sorted(excluded), "by_reason": by_reason, "initializers_copied": copies},
        "graph": {"opset": next((o.version for o in qdq.opset_import if o.domain in ("", "ai.onnx")), None),
                  "qdq_domains": sorted({n.domain or "ai.onnx" for n in qdq.graph.node if n.op_type in counts}),
                  **{op: c for op, c in counts.items()}, "bytes": dst.stat().st_size,
                  "float_bytes": src.stat().st_size},
        "cpu_check": check,
        "seconds": round(seconds, 2),
        "score_head_quantised": head,
    }
    warnings = []
    if head:
        warnings.append(f"the score head is quantised ({len(head)} nodes): calibrated on normal images only, its range "
                        "ends at theirs, so defects scoring above every calibration image are clipped to one value and "
                        "tie (EfficientNet-Lite0-512: 49 reorderings at w8a8, docs/quantization.md); keep it float, at "
                        "no cost in size: " + " ".join(f"--keep-float {name}" for name in head))
    if calib.overlap.get("images"):
        warnings.append(f"{calib.overlap['images']} calibration image(s) are also {calib.overlap['eval_bench']} test "
                        "images (--allow-calibration-overlap): the evaluation is not independent of the calibration")
    return record, warnings


def _cpu_check(float_path: Path, qdq_path: Path, card, arrays: list) -> dict:
    """Run the QDQ graph in ONNX Runtime (CPUExecutionProvider) beside the float graph on a few calibration images."""
    import numpy as np
    import onnxruntime as ort

    def run(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = [dict(zip([o.name for o in session.get_outputs()], session.run(None, {card.input_name: a})))
                for a in arrays]
        return [card.read_outputs(o, 1) for o in outs]

    try:
        ref, got = run(float_path), run(qdq_path)
    except Exception as exc:
        raise ToolFailedError(f"the QDQ graph does not run in ONNX Runtime's CPUExecutionProvider "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    score = np.array([abs(float(a[0][0]) - float(b[0][0])) for a, b in zip(ref, got)])
    amap = max(float(np.abs(a[1] - b[1]).max()) for a, b in zip(ref, got))
    finite = all(np.isfinite(b[0]).all() and np.isfinite(b[1]).all() for b in got)
    return {"runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider", "images": len(arrays),
            "on": "calibration images (not an evaluation)", "finite": bool(finite),
            "max_abs_score_diff": float(score.max()), "median_abs_score_diff": float(np.median(score)),
            "max_abs_map_diff": amap}


def stage_inputs(model_sha256: str, profile: DeviceProfile, request: QuantizeRequest, calib: Calibration,
                 card_digest: str) -> dict:
    from edgedeploy.core.hashing import sha256_file, sha256_json
    from edgedeploy.host.pipeline import tool_versions

    return {"model.onnx": model_sha256, "precision": request.precision, "runtime": profile.runtime,
            "request": sha256_json({"method": request.method, "percentile": request.percentile,
                                    "default_exclusions": request.default_exclusions,
                                    "keep_float": list(request.keep_float), "limit": request.limit}),
            "calibration": sha256_json(calib.sha256), "overlap": sha256_json(calib.overlap), "card": card_digest,
            "code": sha256_file(__file__), "version": QUANTIZE_VERSION,
            "onnxruntime": tool_versions(("onnxruntime",))["onnxruntime"]}
