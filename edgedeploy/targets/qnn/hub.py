"""Qualcomm AI Hub, the compile side: the audited ONNX to a QNN DLC, then a profile job on the hub device.

Written against the ``qai-hub`` client's public API (checked in qai-hub 0.56): ``upload_model``,
``submit_compile_job(model, device, name, input_specs, options)``, the profile job as
``submit_inference_job(model, device, inputs=None, name, options, profile=True)`` (``submit_profile_job`` is
deprecated in 0.56; older clients use it); jobs have ``get_target_model()``, ``download_target_model(filename)`` and
``download_profile()``. The session, token check and job ledger are the device side's
(``edgedeploy.runtime.aihub``), shared with scoring.

Every job is recorded in ``hub_jobs.json`` in the bundle, keyed by the ONNX sha256, the device, the
options and the pinned QAIRT version, before it is waited on; a rerun with the same key reuses the finished job (and the
downloaded DLC and profile) instead of paying for a new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgedeploy.core.hashing import sha256_file
from edgedeploy.runtime.aihub import (HubJobError, HubSession, HubUnavailable, Ledger, Log, config_path,  # noqa: F401
                                      import_hub, job_key, submit_profile, token_configured, unavailable_reason)
from edgedeploy.targets.qnn.settings import HubSettings

DLC = "model.dlc"


def _job_record(job, reused: bool) -> dict:
    return {"job_id": job.job_id, "url": getattr(job, "url", None), "status": "SUCCESS", "reused": reused}


def _download_dlc(session: HubSession, job, bundle_dir: Path) -> dict:
    """Download the compiled DLC into the bundle under its final name, atomically."""
    folder = Path(tempfile.mkdtemp(prefix=".dlc-", dir=bundle_dir))
    try:
        written = session.call(job.download_target_model, str(folder / DLC))
        if not written or not Path(written).is_file():
            raise HubJobError(f"AI Hub compile job {job.job_id} produced no target model to download")
        os.replace(written, bundle_dir / DLC)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"path": DLC, "sha256": sha256_file(bundle_dir / DLC), "bytes": (bundle_dir / DLC).stat().st_size}


def summarise_profile(profile: dict) -> dict:
    """Latency (ms) and peak memory (MiB) from ``download_profile()``'s ``execution_summary``
    (microseconds and bytes, as the client reports them)."""
    summary = (profile or {}).get("execution_summary", {})
    latency, peak = summary.get("estimated_inference_time"), summary.get("estimated_inference_peak_memory")
    return {"latency_ms": None if latency is None else latency / 1000.0,
            "peak_memory_mib": None if peak is None else peak / 2**20,
            "first_load_ms": None if summary.get("first_load_time") is None else summary["first_load_time"] / 1000.0}


def _compile_facts(settings: HubSettings, onnx_sha: str, input_spec: dict) -> dict:
    return {"onnx_sha256": onnx_sha, "device": settings.device, "options": settings.compile_options,
            "qairt_version": settings.qairt_version, "input_specs": {k: [list(v[0]), v[1]] for k, v in input_spec.items()}}


def _profile_facts(settings: HubSettings, compile_job_id: str) -> dict:
    return {"compile_job": compile_job_id, "device": settings.device, "options": settings.run_options,
            "qairt_version": settings.qairt_version}


def cached_result(bundle_dir: Path, settings: HubSettings, onnx_sha: str, input_spec: dict) -> dict | None:
    """The hub record from ``hub_jobs.json`` alone, when compile (with its DLC still in the bundle) and
    profile already succeeded for this ONNX, device and options: nothing to submit, nothing to ask."""
    ledger = Ledger(bundle_dir)
    compiled = ledger.get(job_key("compile", **_compile_facts(settings, onnx_sha, input_spec)))
    if not compiled or compiled.get("status") != "SUCCESS":
        return None
    dlc = _cached_dlc(compiled, bundle_dir)
    profiled = ledger.get(job_key("profile", **_profile_facts(settings, compiled["job_id"])))
    if dlc is None or not profiled or profiled.get("status") != "SUCCESS" or not profiled.get("summary"):
        return None
    jobs = {kind: {"job_id": rec["job_id"], "url": rec.get("url"), "status": "SUCCESS", "reused": True}
            for kind, rec in (("compile", compiled), ("profile", profiled))}
    return {"jobs": jobs, "dlc": dlc, "profile": profiled["summary"], "client": "not contacted (all jobs reused)"}


def compile_and_profile(bundle_dir: Path, settings: HubSettings, onnx_sha: str, input_spec: dict, name: str,
                        log: Log = print) -> dict:
    """Compile (upload + compile job + DLC download) and profile; returns the manifest's hub record."""
    hub = import_hub()
    session = HubSession(hub, settings.device, Ledger(bundle_dir), log)
    compile_facts = _compile_facts(settings, onnx_sha, input_spec)
    compile_key = job_key("compile", **compile_facts)

    def submit_compile():
        model = session.call(hub.upload_model, str(bundle_dir / "model.onnx"))
        return hub.submit_compile_job(model=model, device=session.device, name=f"{name}-compile",
                                      input_specs=input_spec, options=settings.compile_options)

    compile_job, compile_reused = session.job("compile", compile_key, submit_compile, compile_facts)
    dlc = _cached_dlc(session.ledger.get(compile_key), bundle_dir) or _download_dlc(session, compile_job, bundle_dir)
    session.ledger.put(compile_key, {**session.ledger.get(compile_key), "dlc_sha256": dlc["sha256"]})

    profile_facts = _profile_facts(settings, compile_job.job_id)
    profile_key = job_key("profile", **profile_facts)

    def submit():
        target = session.call(compile_job.get_target_model)
        return submit_profile(hub, target, session.device, f"{name}-profile", settings.run_options)

    profile_job, profile_reused = session.job("profile", profile_key, submit, profile_facts)
    summary = session.ledger.get(profile_key).get("summary") or summarise_profile(session.call(profile_job.download_profile))
    session.ledger.put(profile_key, {**session.ledger.get(profile_key), "summary": summary})
    return {"jobs": {"compile": _job_record(compile_job, compile_reused), "profile": _job_record(profile_job, profile_reused)},
            "dlc": dlc, "profile": summary, "client": getattr(hub, "__version__", "unknown")}


def _cached_dlc(record: dict | None, bundle_dir: Path) -> dict | None:
    path = bundle_dir / DLC
    if record and record.get("dlc_sha256") and path.is_file() and sha256_file(path) == record["dlc_sha256"]:
        return {"path": DLC, "sha256": record["dlc_sha256"], "bytes": path.stat().st_size}
    return None


