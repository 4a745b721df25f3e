"""Building the FP16 engine in-process with the TensorRT Python API (on the Jetson; no PyTorch).

The same build as ``build_engine.sh``'s trtexec command: FP16 on, workspace pool limit, timing
cache loaded from and saved to ``timing.cache`` beside the engine, builder optimisation level,
and optional FP32 layers with ``OBEY_PRECISION_CONSTRAINTS``. API names as in TensorRT 10.3's
Python bindings (python/src/infer/pyCore.cpp, pyGraph.cpp, parsers/pyOnnx.cpp at tag v10.3.0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgedeploy.core.errors import EngineBuildError, ToolUnavailableError
from edgedeploy.runtime.engine_check import import_tensorrt
from edgedeploy.core.files import atomic_path
from edgedeploy.targets.keepfp32 import match_layer
from edgedeploy.runtime.engine_metadata import describe_engine, major_minor, sidecar_path, write_json_atomic
from edgedeploy.targets.tensorrt.trtexec import ENGINE, SCRIPT, TIMING_CACHE, BuildSettings

Log = Callable[[str], None]


def check_build_host(trt, gpu: dict | None, settings: BuildSettings, bundle_dir: Path) -> None:
    """Refuse to build where the engine would not load on the target device."""
    if gpu is None:
        raise ToolUnavailableError(f"no CUDA GPU is visible here: build the engine on the Jetson "
                                   f"(see {bundle_dir / SCRIPT})")
    if settings.compute_capability and gpu["compute_capability"] != settings.compute_capability:
        raise ToolUnavailableError(
            f"this GPU ({gpu['name']}) has compute capability {gpu['compute_capability']}, the target needs "
            f"{settings.compute_capability}: an engine built here would not load on the device; build it on the Jetson "
            f"(see {bundle_dir / SCRIPT})")
    if settings.tensorrt_version and major_minor(trt.__version__) != major_minor(settings.tensorrt_version):
        raise ToolUnavailableError(
            f"this is TensorRT {trt.__version__}, the target runs TensorRT {settings.tensorrt_version}: an engine built "
            f"here would not load on the device; build it on the Jetson (see {bundle_dir / SCRIPT})")


def _parse(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors or 'no detail'}; run `edgedeploy audit`")
    return network, parser


NON_ACTIVATION = ("int32", "int64", "bool", "uint8")  # trtexec's isNonActivationType (sampleEngines.cpp)


def _non_activation(trt, dtype) -> bool:
    return any(dtype == getattr(trt, name) for name in NON_ACTIVATION)


def _first(layer, kind: str):
    count = layer.num_inputs if kind == "input" else layer.num_outputs
    if not count:
        return None
    return layer.get_input(0) if kind == "input" else layer.get_output(0)


def _is_int_constant(trt, layer, out, non_activation: bool) -> bool:
    """A constant layer holding integer weights (a constant's output has its weights' type)."""
    if layer.type != trt.LayerType.CONSTANT or out is None:
        return False
    return _non_activation(trt, out.dtype) if non_activation else out.dtype == trt.int32


def sets_precision(trt, layer, match: str) -> bool:
    """Whether trtexec 10.3's --layerPrecisions sets this matched layer's precision: always for an exact name;
    for a wildcard match not when the layer's precision, its integer constant weights, a shape-tensor first
    input, or integer first input and output say it computes no floats (sampleEngines.cpp setLayerPrecisions)."""
    if match == "exact":
        return True
    first_in, first_out = _first(layer, "input"), _first(layer, "output")
    return not (_non_activation(trt, layer.precision) or _is_int_constant(trt, layer, first_out, True)
                or (first_in is not None and first_in.is_shape_tensor)
                or (first_in is not None and first_out is not None and _non_activation(trt, first_in.dtype)
                    and _non_activation(trt, first_out.dtype)))


def sets_output_types(trt, layer, match: str) -> bool:
    """Whether trtexec 10.3's --layerOutputTypes sets this matched layer's output types: always for an exact
    name; for a wildcard not when the layer's precision is INT32 or BOOL or it is an INT32 constant
    (sampleEngines.cpp setLayerOutputTypes, which runs after setLayerPrecisions)."""
    if match == "exact":
        return True
    return not (layer.precision in (trt.int32, trt.bool) or _is_int_constant(trt, layer, _first(layer, "output"), False))


def apply_keep_fp32(trt, network, specs: list[str], log: Log) -> list[str]:
    """Constrain the layers the specs reach to FP32 compute and FP32 outputs, exactly as trtexec does with
    ``--layerPrecisions=<spec>:fp32 --layerOutputTypes=<spec>:fp32`` (the flags build_engine.sh passes);
    returns the names of the layers whose precision was set."""
    kept = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        match = match_layer(layer.name, specs)
        if match is None:
            continue
        if sets_precision(trt, layer, match):
            layer.precision = trt.float32
            kept.append(layer.name)
        if sets_output_types(trt, layer, match):
            for i in range(layer.num_outputs):
                layer.set_output_type(i, trt.float32)
    if specs and not kept:
        log("warning: no TensorRT layer matched the --keep-fp32 nodes; the engine is all FP16")
    return kept


def _config(trt, builder, settings: BuildSettings, timing_cache: Path, obey: bool, log: Log = print):
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib * 1024 * 1024)
    config.builder_optimization_level = settings.builder_optimization_level
    if obey:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    attach_timing_cache(config, timing_cache, log)
    return config


def _new_cache(config, data: bytes):
    """``create_timing_cache`` as TensorRT 10.3 behaves: it may return None, and raises TypeError on corrupt bytes."""
    try:
        return config.create_timing_cache(data)
    except TypeError:
        return None


def attach_timing_cache(config, path: Path, log: Log = print) -> bool:
    """Build with the saved ``timing.cache`` when TensorRT accepts it; otherwise warn and start a fresh one
    (written after the build). False when TensorRT gives no cache at all: the build then runs without one."""
    saved = path.read_bytes() if path.is_file() else b""
    if saved:
        cache = _new_cache(config, saved)
        if cache is not None and config.set_timing_cache(cache, False):
            return True
        why = "is unreadable (corrupt, or not a TensorRT timing cache)" if cache is None else \
            "does not match this GPU or TensorRT (set_timing_cache refused it)"
        log(f"warning: {path.name} {why}: building without it, and writing a fresh one after the build")
    fresh = _new_cache(config, b"")
    if fresh is not None and config.set_timing_cache(fresh, False):
        return True
    log("warning: TensorRT could not create a timing cache: building without one (kernels are timed afresh)")
    return False


def build_engine(bundle_dir: Path, settings: BuildSettings, keep_fp32: tuple[str, ...], keep_specs: list[str],
                 precision: str, gpu: dict, log: Log = print) -> dict:
    """Build ``model.engine`` + ``timing.cache`` + ``model.engine.json`` in ``bundle_dir``; returns the metadata."""
    trt = import_tensorrt(bundle_dir)
    check_build_host(trt, gpu, settings, bundle_dir)
    onnx_path, engine_path, cache_path = bundle_dir / "model.onnx", bundle_dir / ENGINE, bundle_dir / TIMING_CACHE
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    layers = apply_keep_fp32(trt, network, keep_specs, log)
    config = _config(trt, builder, settings, cache_path, obey=bool(keep_specs), log=log)
    log(f"building {engine_path.name}: FP16, workspace {settings.workspace_mib} MiB, optimisation level "
        f"{settings.builder_optimization_level}, {len(layers)} layers kept in FP32 (minutes on a Jetson)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine (its log above says why); with --keep-fp32, "
                         "a layer that cannot run in FP32 makes the build fail under obeyed precision constraints")
    Path(sidecar_path(str(engine_path))).unlink(missing_ok=True)
    _write_bytes_atomic(engine_path, bytes(serialized))
    timing = config.get_timing_cache()
    if timing is not None:
        _write_bytes_atomic(cache_path, bytes(timing.serialize()))
    meta = describe_engine(str(engine_path), str(onnx_path), precision, "edgedeploy engine build", keep_fp32, gpu,
                           str(trt.__version__), {**settings.to_dict(), "fp32_layers": layers})
    write_json_atomic(sidecar_path(str(engine_path)), meta)
    return meta


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
