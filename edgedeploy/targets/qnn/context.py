"""The ahead-of-time HTP context of a QNN bundle: ONNX Runtime's EP context model ``model_ctx.onnx``.

ONNX Runtime's QNN execution provider (onnxruntime-qnn) compiles a graph for the Hexagon HTP when a session starts.
With the session configs ``ep.context_enable=1``, ``ep.context_file_path=<file>`` and ``ep.context_embed_mode=1``
(onnxruntime-qnn docs/execution_providers/QNN-ExecutionProvider.md, "QNN context binary cache feature"; the keys of
onnxruntime_session_options_config_keys.h) it also writes the compiled QNN context binary into an ONNX model of
``EPContext`` nodes; a session on that model loads the binary without compiling. The docs say the context can be
generated on an x86_64 host for a device's HTP: here with the profile's ``soc_model`` and ``htp_arch`` (QCS8550, V73)
at the profile's precision (FP16), on the host's emulated HTP backend, and loaded on the board by
``edgedeploy score --model model_ctx.onnx --runtime qnn-htp``.

It is built only where onnxruntime-qnn is installed and the HTP takes the graph whole (CPU fallback off: a context
model with CPU islands would need ONNX Runtime's CPU EP for those nodes on the board); otherwise the manifest says why
not, in one line. Measured on a 2-core x86_64 host: 3.2 s for the small recipe (edgezsad-tinyvit5m-224), 11 s for the
full-size TinyViT-21M-512, so it is on by default; ``EDGEDEPLOY_QNN_CONTEXT=0`` leaves it out. The context binary is
the QNN SDK's format: the file records its SDK (``EPContext.ep_sdk_version``) and the runner refuses a context built
by another QNN SDK than its own. It is an HTP artifact only: the QNN GPU backend compiles at session start.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.profiles import DeviceProfile

Log = Callable[[str], None]
CONTEXT_NAME = "model_ctx.onnx"
SWITCH = "EDGEDEPLOY_QNN_CONTEXT"  # "0": do not build the context (an existing one that still fits is kept)
SOURCE_KEY = "edgedeploy.source_sha256"
PRECISION_KEY = "edgedeploy.precision"


def context_config(path: str | Path) -> dict[str, str]:
    """The session configs that make the QNN EP write the EP context model ``path`` with the binary embedded."""
    return {"ep.context_enable": "1", "ep.context_file_path": str(path), "ep.context_embed_mode": "1"}


def build_context(model_path: str | Path, out_path: str | Path, settings, precision: str | None = None) -> dict:
    """Compile ``model_path`` for the HTP (CPU fallback off) and write the EP context model ``out_path`` atomically;
    the record the manifest keeps. Raises the runtime's QnnFallbackRefused / QnnBackendError / QnnUnavailableError."""
    import onnx

    from edgedeploy.runtime.qnn import context_info, open_session, versions

    model_path, out_path = Path(model_path), Path(out_path)
    precision = precision or settings.precision
    for stale in out_path.parent.glob(f".{out_path.stem}.*.tmp.onnx"):  # left by a build killed mid-compile
        stale.unlink(missing_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.tmp.onnx")  # the EP refuses to overwrite a file
    start = time.perf_counter()
    try:
        session = open_session(model_path, settings, "htp", precision, allow_cpu_fallback=False,
                               config=context_config(tmp), name=model_path.name)
        del session
        if not tmp.is_file():
            from edgedeploy.runtime.qnn import QnnBackendError

            raise QnnBackendError(f"the QNN EP wrote no context model for {model_path.name} (ep.context_enable was set)")
        model = onnx.load(str(tmp))  # stamp what it was compiled from: the runner and a rebuild read it back
        source = sha256_file(model_path)
        for key, value in ((SOURCE_KEY, source), (PRECISION_KEY, precision)):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    info = context_info(out_path) or {}
    v = versions()
    return {"status": "built", "path": out_path.name, "sha256": sha256_file(out_path), "bytes": out_path.stat().st_size,
            "source": model_path.name, "source_sha256": source, "backend": "htp", "precision": precision,
            "soc_model": settings.soc_model, "htp_arch": settings.htp_arch, "qnn_sdk": info.get("qnn_sdk") or v["qnn_sdk"],
            "onnxruntime_qnn": v["onnxruntime_qnn"], "onnxruntime": v["onnxruntime"], "embed_mode": 1,
            "compatibility_info": info.get("compatibility_info", ""), "seconds": round(seconds, 2), "reused": False,
            "built_on": "host (x86_64, the HTP backend emulated)" if _machine() != "aarch64" else "aarch64"}


def _machine() -> str:
    from edgedeploy.runtime.qnn import machine

    return machine()


def _fits(path: Path, source_sha: str, settings, precision: str, sdk: str) -> dict | None:
    """The context info of an existing ``path`` when it was compiled from ``source_sha`` with these settings and SDK."""
    from edgedeploy.runtime.qnn import context_info

    try:
        info = context_info(path)
    except Exception:
        return None
    if not info or info.get("source_sha256") != source_sha or info.get("precision") != precision:
        return None
    if info.get("qnn_sdk") != sdk or str(info.get("soc_model")) != str(settings.soc_model) \
            or str(info.get("htp_arch")) != str(settings.htp_arch):
        return None
    return info


def prepare_context(bundle_dir: Path, profile: DeviceProfile, manifest: dict) -> tuple[dict, str]:
    """Build (or reuse) the bundle's ``model_ctx.onnx``; (the manifest's ``compile.qnn_context`` record, one line)."""
    from edgedeploy.core.errors import EdgeDeployError

    bundle_dir = Path(bundle_dir)
    out = bundle_dir / CONTEXT_NAME
    model = bundle_dir / manifest["model"]["path"]
    source_sha = manifest["model"]["sha256"]

    def not_built(reason: str) -> tuple[dict, str]:
        out.unlink(missing_ok=True)  # a context of an older graph must not sit beside this one
        return {"status": "not-built", "reason": reason}, f"QNN HTP context (model_ctx.onnx) not built: {reason}"

    if not profile.qnn or "htp" not in profile.qnn.get("backends", ()):
        return not_built(f"the {profile.name} profile names no QNN HTP backend (qnn.backends)")
    try:
        from edgedeploy.runtime.qnn import QnnSettings, import_qnn, versions

        import_qnn("building it")
    except EdgeDeployError as exc:
        return not_built(str(exc))
    settings = QnnSettings.from_profile(profile)
    sdk = versions()["qnn_sdk"]
    if out.is_file():
        info = _fits(out, source_sha, settings, settings.precision, sdk)
        if info is not None:
            v = versions()
            record = {"status": "built", "path": CONTEXT_NAME, "sha256": sha256_file(out), "bytes": out.stat().st_size,
                      "source": model.name, "source_sha256": source_sha, "backend": "htp",
                      "precision": settings.precision, "soc_model": settings.soc_model, "htp_arch": settings.htp_arch,
                      "qnn_sdk": sdk, "onnxruntime_qnn": v["onnxruntime_qnn"], "onnxruntime": v["onnxruntime"],
                      "embed_mode": 1, "compatibility_info": info.get("compatibility_info", ""), "reused": True}
            return record, _line(record)
    if os.environ.get(SWITCH, "").strip() == "0":
        return not_built(f"{SWITCH}=0 is set")
    from edgedeploy.runtime.qnn import QnnFallbackRefused, describe_nodes

    try:
        record = build_context(model, out, settings)
    except QnnFallbackRefused as exc:  # the graph would split: a context needs the whole graph on the HTP
        return not_built(f"the QNN HTP backend does not take the whole graph: {describe_nodes(exc.nodes)} would run on "
                         "the CPU; a graph with ops QNN supports (see `edgedeploy audit --target rb5-gen2`) gets one")
    except EdgeDeployError as exc:
        return not_built(str(exc))
    return record, _line(record)


def _line(record: dict) -> str:
    how = "reused" if record.get("reused") else f"built in {record['seconds']:.1f}s"
    return (f"QNN HTP context: {record['path']} ({how}; soc_model {record['soc_model']}, HTP v{record['htp_arch']}, "
            f"{record['precision'].upper()}, QNN SDK {record['qnn_sdk']}, {record['bytes'] / 2**20:.0f} MiB); on the "
            f"board: edgedeploy score --model {record['path']} --runtime qnn-htp")
