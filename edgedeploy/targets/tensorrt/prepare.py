"""The compile stage for TensorRT targets: build_engine.sh always, the engine itself on a matching device."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgedeploy.core.errors import ToolUnavailableError
from edgedeploy.core.profiles import DeviceProfile
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.targets.keepfp32 import expand_keep_fp32, layer_patterns, node_names
from edgedeploy.runtime.engine_metadata import sha256_file, sidecar_path
from edgedeploy.runtime.engine_check import EngineIncompatibleError, current_gpu, read_sidecar
from edgedeploy.targets.tensorrt.trtexec import ENGINE, SCRIPT, BuildSettings, command_line, write_scripts

Log = Callable[[str], None]


def prepare(bundle_dir: Path, profile: DeviceProfile, recipe: Recipe, manifest: dict,
            keep_fp32: tuple[str, ...] = (), log: Log = print) -> dict:
    settings = BuildSettings.from_profile(profile)
    onnx_path = bundle_dir / "model.onnx"
    kept = expand_keep_fp32(onnx_path, keep_fp32)
    specs = layer_patterns(kept, node_names(onnx_path)) if kept else []
    int8 = (manifest.get("quantization") or {}).get("precision") == "int8"  # a QDQ graph: explicit quantisation
    scripts = write_scripts(bundle_dir, profile, settings, kept, specs, int8)
    record = {"runtime": "tensorrt", "status": "script-written", "scripts": scripts, "precision": "int8" if int8 else
              profile.precision, "trtexec": command_line(settings, specs, int8), "keep_fp32": list(kept), "layer_specs": specs,
              "requires": {"compute_capability": settings.compute_capability,
                           "tensorrt": settings.tensorrt_version, "jetpack": profile.build.get("jetpack")},
              "settings": settings.to_dict(), "engine": None, "notes": []}
    engine = _existing_engine(bundle_dir, manifest["model"]["sha256"], kept, log)
    if engine is None and not int8:  # the in-process builder (engine.py) sets FP16 only: INT8 engines via build_engine.sh
        engine = _build_here(bundle_dir, settings, profile, kept, specs, log)
    if engine is None:
        record["notes"].append(
            f"TensorRT engine not built here (it is built on the device: compute capability "
            f"{settings.compute_capability}, TensorRT {settings.tensorrt_version}): copy {bundle_dir} to the Jetson and "
            f"run `bash {SCRIPT}` there" + (" (trtexec --int8 --fp16 on the QDQ graph)" if int8 else
                                             f", or `edgedeploy engine build {bundle_dir.name}/`"))
    else:
        record.update(status="engine-built", engine=engine)
        record["notes"].append(f"TensorRT engine built: {bundle_dir / ENGINE} (TensorRT {engine['tensorrt_version']}, "
                               f"compute capability {engine['compute_capability']})")
    return record


def _existing_engine(bundle_dir: Path, onnx_sha: str, kept: tuple[str, ...], log: Log) -> dict | None:
    """An engine already in the bundle built from this very model.onnx and FP32 set is kept (a Jetson
    build takes minutes); any other engine there is stale and removed with its metadata."""
    engine_path = bundle_dir / ENGINE
    try:
        meta = read_sidecar(engine_path) if engine_path.is_file() else None
    except EngineIncompatibleError:
        meta = None
    if meta and meta.get("onnx_sha256") == onnx_sha and list(meta.get("keep_fp32", [])) == list(kept) \
            and meta.get("engine_sha256") == sha256_file(engine_path):
        return meta
    if engine_path.is_file():
        log(f"removed {engine_path}: it was not built from this model.onnx and FP32 set (or has no metadata)")
    engine_path.unlink(missing_ok=True)
    Path(sidecar_path(str(engine_path))).unlink(missing_ok=True)
    return None


def _build_here(bundle_dir: Path, settings: BuildSettings, profile: DeviceProfile, kept, specs, log: Log) -> dict | None:
    """Build in-process when this machine is the target kind (TensorRT and GPU match), else None."""
    from edgedeploy.runtime.engine_check import import_tensorrt
    from edgedeploy.targets.tensorrt.engine import build_engine, check_build_host

    try:
        trt = import_tensorrt(bundle_dir)
        gpu = current_gpu()
        check_build_host(trt, gpu, settings, bundle_dir)
    except ToolUnavailableError:
        return None
    return build_engine(bundle_dir, settings, kept, specs, profile.precision, gpu, log)
