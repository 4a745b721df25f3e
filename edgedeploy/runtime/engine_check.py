"""Deciding whether a TensorRT engine can load here, before TensorRT tries (and fails obscurely)."""

from __future__ import annotations

import json
from pathlib import Path

from edgedeploy.core.errors import EdgeDeployError, ToolUnavailableError
from edgedeploy.runtime import engine_metadata
from edgedeploy.runtime.engine_metadata import plan_version, sha256_file, sidecar_path

BUILD_SCRIPT = "build_engine.sh"  # what the bundle runs on the Jetson to build the engine

REBUILD = "rebuild it on the device with `edgedeploy engine build <bundle>` or the bundle's build_engine.sh"

# Which TensorRT may load a plan (checked here on the full version, not major.minor).
#
# * By default an engine is compatible only with the TensorRT version that built it. The plan header holds that
#   version's major, minor, patch and build (bytes 24..27, ``engine_metadata.plan_version``) and the runtime refuses
#   a plan whose version is not its own, naming both (public reports show it refusing 8.6.0.12 plans in 8.6.1.2: a
#   patch release is another version). Sources: NVIDIA TensorRT 10.3.0 Developer Guide, "Version Compatibility"
#   (https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-1030/developer-guide/index.html) and the
#   current docs' "Version Compatibility" / "Engine Compatibility" pages
#   (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/version-compatibility.html).
# * A plan built with ``BuilderFlag.VERSION_COMPATIBLE`` (TensorRT 8.6 and later, builder and runtime) carries a
#   copy of the lean runtime and loads in the same or a *later* TensorRT, never an older one: within a major
#   version, and across the majors the docs name (8.6+ plans in TensorRT 9 and 10; 10 in 11). The runtime must be
#   told to trust the host code in the plan (``IRuntime.engine_host_code_allowed``). With ``EXCLUDE_LEAN_RUNTIME``
#   too, the lean runtime library of the *building* version must be loaded (``IRuntime.load_runtime``), which
#   edgedeploy does not do. Sources: the pages above, the 10.x support matrix ("Engine Portability",
#   https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/getting-started/support-matrix.html), and NVIDIA/TensorRT
#   tag v10.3.0: include/NvInfer.h (``BuilderFlag::kVERSION_COMPATIBLE``, ``kEXCLUDE_LEAN_RUNTIME``),
#   include/NvInferRuntime.h (``IRuntime::loadRuntime``, ``setEngineHostCodeAllowed``), python/src/infer/pyCore.cpp
#   (the Python names ``load_runtime``, ``engine_host_code_allowed``).
VERSION_COMPATIBLE_SINCE = (8, 6)
VERSION_COMPATIBLE_ACROSS_MAJORS = {8: (9, 10), 10: (11,)}  # built major -> later majors that load its VC plans


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


def version_parts(version: str | None) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> (10, 3, 0, 30); the leading numeric parts, () when there are none."""
    parts = []
    for part in str(version or "").strip().split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def same_version(built: str | None, runtime: str | None) -> bool:
    """Whether two TensorRT versions are the same release: major, minor and patch equal, and the build number too
    where both name one (trtexec's log gives major.minor.patch alone)."""
    a, b = version_parts(built), version_parts(runtime)
    n = min(len(a), len(b))
    return n >= 3 and a[:n] == b[:n]


def version_compatible(meta: dict) -> bool:
    """Whether the sidecar says the engine was built with ``BuilderFlag.VERSION_COMPATIBLE`` (at its top level or
    under ``settings``); absent means not."""
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    return meta.get("version_compatible", settings.get("version_compatible")) is True


def excludes_lean_runtime(meta: dict) -> bool:
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    return meta.get("exclude_lean_runtime", settings.get("exclude_lean_runtime")) is True


def loads_across_versions(built: str, runtime: str) -> bool:
    """Whether a version-compatible plan built by TensorRT ``built`` (with its lean runtime inside) loads in
    TensorRT ``runtime``: built by 8.6 or later, and the runtime the same or later, of the same major version or one
    the docs name (see the comment at the top of this module)."""
    a, b = version_parts(built), version_parts(runtime)
    if len(a) < 2 or len(b) < 2 or a[:2] < VERSION_COMPATIBLE_SINCE or b < a:
        return False
    return a[0] == b[0] or b[0] in VERSION_COMPATIBLE_ACROSS_MAJORS.get(a[0], ())


def built_version(meta: dict, written_by: str | None) -> str | None:
    """The TensorRT that built the engine: the sidecar's, made precise by the plan header's build number when the
    sidecar names major.minor.patch only (both describe the same file: the sidecar's hash was checked)."""
    header = written_by if written_by not in (None, "unknown") else None
    recorded = meta.get("tensorrt_version") or header
    if recorded and header and len(version_parts(header)) > len(version_parts(recorded)) \
            and same_version(recorded, header):
        return header
    return recorded


def check_engine(engine_path: str | Path, runtime_version: str, gpu: dict | None) -> dict:
    """Refuse an engine this GPU/TensorRT cannot load; returns its sidecar metadata ({} if none).

    Checks, in order: the plan header (a corrupt or foreign file), the sidecar's engine hash (a
    sidecar describing some other engine), the compute capability, the TensorRT version: the exact
    major.minor.patch(.build) that built it, or for a version-compatible engine the same or a later one the
    TensorRT docs allow.
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
    built_trt = built_version(meta, written_by)
    if built_trt and not same_version(built_trt, runtime_version):
        if version_compatible(meta) and not excludes_lean_runtime(meta) \
                and loads_across_versions(built_trt, runtime_version):
            return meta
        if not version_compatible(meta):
            rule = "an engine only loads with the exact TensorRT version that built it"
        elif excludes_lean_runtime(meta):
            rule = ("a version-compatible engine built without its lean runtime needs that version's lean runtime "
                    "library, which edgedeploy does not load")
        else:
            rule = "a version-compatible engine loads only in the same or a later TensorRT of its major version"
        raise EngineIncompatibleError(
            f"{engine_path.name} was built with TensorRT {built_trt} but this is TensorRT {runtime_version}: {rule}; "
            f"rebuild the engine on this device with `edgedeploy engine build <bundle>` (or the bundle's "
            f"{BUILD_SCRIPT})")
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
