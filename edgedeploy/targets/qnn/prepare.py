"""The compile stage for QNN targets (RB5 Gen2): offline scripts always, AI Hub jobs when reachable, and the HTP context
compiled ahead of time (``model_ctx.onnx``, ``edgedeploy.targets.qnn.context``) where onnxruntime-qnn is installed and
the HTP takes the graph whole."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgedeploy.core.profiles import DeviceProfile
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.targets.keepfp32 import KeepFp32Error
from edgedeploy.targets.qnn import context, hub, offline
from edgedeploy.targets.qnn.settings import HubSettings

Log = Callable[[str], None]


def prepare(bundle_dir: Path, profile: DeviceProfile, recipe: Recipe, manifest: dict,
            keep_fp32: tuple[str, ...] = (), log: Log = print) -> dict:
    if keep_fp32:
        raise KeepFp32Error(f"--keep-fp32 applies to TensorRT targets: {profile.name}'s QNN GPU backend runs the whole "
                            "graph at one precision (default_graph_gpu_precision); drop --keep-fp32")
    settings = HubSettings.from_profile(profile)
    settings.check_device(profile.path)
    scripts = offline.write_offline(bundle_dir, profile, recipe, settings)
    record = {"runtime": "qnn", "status": "offline", **settings.to_dict(), "scripts": scripts,
              "jobs": {}, "dlc": None, "profile": None, "notes": []}
    record["qnn_context"], line = context.prepare_context(bundle_dir, profile, manifest)
    quantized = (manifest.get("quantization") or {}).get("precision")
    if quantized:  # a QDQ graph: the HTP runs its Q/DQ groups in integers, its float parts at the profile's precision
        record["qnn_context"]["quantization"] = quantized
        line += f" [the {quantized.upper()} QDQ graph; its float parts at {profile.precision.upper()}]"
    record["notes"].append(line)
    size = recipe.card.input_size
    input_spec = {recipe.card.input_name: ((1, 3, size, size), "float32")}
    onnx_sha = manifest["model"]["sha256"]

    if settings.htp:  # the in-build hub path downloads a GPU DLC; the HTP context binary comes from the script
        record["notes"].append(f"AI Hub not used in the build for the HTP: `python {offline.HUB_SCRIPT}` submits the "
                               f"compile ({settings.compile_options}) and profile ({settings.run_options}) jobs; "
                               f"without AI Hub: `bash {offline.BUILD_SCRIPT}` (QAIRT, HTP context binary)")
        return record
    result = hub.cached_result(bundle_dir, settings, onnx_sha, input_spec)
    if result is None:
        reason = hub.unavailable_reason()
        if reason is None:
            try:
                result = hub.compile_and_profile(bundle_dir, settings, onnx_sha, input_spec,
                                                 f"edgedeploy-{recipe.name}-{profile.name}", log)
            except hub.HubUnavailable as exc:
                reason = f"the hub did not answer or refused ({exc})"
        if result is None:
            record["notes"].append(f"AI Hub not used: {reason}. The bundle holds {offline.BUILD_SCRIPT} (QAIRT steps) "
                                   f"and {offline.HUB_SCRIPT} (AI Hub jobs) to finish the build")
            return record
    record.update(result, status="compiled")
    record["notes"].append(_summary_line(record, settings))
    return record


def _summary_line(record: dict, settings: HubSettings) -> str:
    jobs = record["jobs"]
    reused = all(job.get("reused") for job in jobs.values())
    prof = record["profile"] or {}
    latency = "?" if prof.get("latency_ms") is None else f"{prof['latency_ms']:.1f} ms"
    memory = "?" if prof.get("peak_memory_mib") is None else f"{prof['peak_memory_mib']:.0f} MiB"
    return (f"AI Hub: {record['dlc']['path']} from compile job {jobs['compile']['job_id']}, profile job "
            f"{jobs['profile']['job_id']}{' (both reused)' if reused else ''}: {settings.device} GPU FP16 {latency}, "
            f"peak memory {memory}")
