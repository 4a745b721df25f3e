"""Deciding whether a TensorRT engine can load here, before TensorRT tries (and fails obscurely)."""

from __future__ import annotations

import json
from pathlib import Path

from edgedeploy.core.errors import EdgeDeployError, ToolUnavailableError
from edgedeploy.runtime import engine_metadata
from edgedeploy.runtime.engine_metadata import major_minor, plan_version, sha256_file, sidecar_path

BUILD_SCRIPT = "build_engine.sh"  # what the bundle runs on the Jetson to build the engine

REBUILD = "rebuild it on the device with `edgedeploy engine build <bundle>` or the bundle's build_engine.sh"


class EngineIncompatibleError(EdgeDeployError):
    """An engine built for another GPU or TensorRT version, or a file that is no engine at all."""


def read_sidecar(engine_path: str | Path) -> dict | None:
    path = Path(sidecar_path(str(engine_path)))
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise EngineIncompatibleError(f"{path} is not readable JSON: {REBUILD}") from None
    return data if isinstance(data, dict) else None


def check_engine(engine_path: str | Path, runtime_version: str, gpu: dict | None) -> dict:
    """Refuse an engine this GPU/TensorRT cannot load; returns its sidecar metadata ({} if none).

    Checks, in order: the plan header (a corrupt or foreign file), the sidecar's engine hash (a
    sidecar describing some other engine), the compute capability, the TensorRT major.minor.
    """
    engine_path = Path(engine_path)
    written_by = plan_version(str(engine_path))
    if written_by is None:
        raise EngineIncompatibleError(f"{engine_path} is not a TensorRT engine (no TensorRT plan header): the file is "
                                      f"corrupt or not an engine; {REBUILD}")
    meta = read_sidecar(engine_path) or {}
    if meta.get("engine_sha256") and meta["engine_sha256"] != sha256_file(str(engine_path)):
        raise EngineIncompatibleError(f"{sidecar_path(str(engine_path))} describes a different engine than {engine_path} "
                                      f"(sha256 differs): the engine was replaced or damaged; {REBUILD}")
    built_cc = meta.get("compute_capability")
    if gpu is not None and built_cc and built_cc != gpu["compute_capability"]:
        raise EngineIncompatibleError(
            f"{engine_path.name} was built for compute capability {built_cc} ({meta.get('gpu') or 'GPU'}, TensorRT "
            f"{meta.get('tensorrt_version')}) but this GPU is {gpu['name']} (compute capability "
            f"{gpu['compute_capability']}): an engine only loads on the GPU type it was built on; run it there, or {REBUILD}")
    built_trt = meta.get("tensorrt_version") or (written_by if written_by != "unknown" else None)
    if built_trt and major_minor(built_trt) != major_minor(runtime_version):
        raise EngineIncompatibleError(
            f"{engine_path.name} was built with TensorRT {built_trt} but this is TensorRT {runtime_version}: an engine "
            f"only loads with the TensorRT major.minor that built it; {REBUILD}")
    return meta


def current_gpu() -> dict | None:
    """This machine's GPU (compute capability, name), or None when no CUDA device is visible."""
    return engine_metadata.gpu_info()


def import_tensorrt(bundle_dir: Path | str, instead: str | None = None):
    """``import tensorrt``, or one line saying where to go instead."""
    try:
        import tensorrt as trt
    except ImportError:
        instead = instead or (f"build the engine on the Jetson (see {Path(bundle_dir) / BUILD_SCRIPT}); on a Jetson, "
                              "TensorRT comes from JetPack: use a venv made with `python3 -m venv "
                              "--system-site-packages`")
        raise ToolUnavailableError(f"TensorRT is not installed here: {instead}") from None
    return trt
