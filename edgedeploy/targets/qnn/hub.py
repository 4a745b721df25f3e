"""Qualcomm AI Hub: compile the audited ONNX to a QNN DLC, profile it, and run it as a device scorer.

Written against the ``qai-hub`` client's public API (checked in qai-hub 0.56): ``upload_model``,
``submit_compile_job(model, device, name, input_specs, options)``, ``submit_profile_job(model,
device, name, options)``, ``submit_inference_job(model, device, inputs, name, options)``,
``get_job(job_id)``, ``Device(name)``; jobs have ``job_id``, ``url``, ``wait()`` (returns the final
``JobStatus`` with ``success``/``failure``/``message``), ``get_status()``, ``get_target_model()``,
``download_target_model(filename)``, ``download_profile()`` and ``download_output_data()``.

Every job is recorded in ``hub_jobs.json`` in the bundle, keyed by the ONNX sha256, the device and
the options, before it is waited on; a rerun with the same key reuses the finished job (and the
downloaded DLC and profile) instead of paying for a new one. The client finds its API token in
``$QAIHUB_CLIENT_INI`` or ``~/.qai_hub/client.ini`` (section ``[api]``, key ``api_token``), which
is what ``qai-hub configure --api_token TOKEN`` writes; the same check decides here whether the hub
can be used at all.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgedeploy.core.errors import EdgeDeployError, ToolUnavailableError
from edgedeploy.core.files import write_json_atomic
from edgedeploy.core.hashing import sha256_file, sha256_json
from edgedeploy.targets.qnn.settings import HubSettings

CONFIG_ENV = "QAIHUB_CLIENT_INI"
DEFAULT_CONFIG = "~/.qai_hub/client.ini"
OFFLINE_ENV = "EDGEDEPLOY_OFFLINE"
LEDGER = "hub_jobs.json"
DLC = "model.dlc"

Log = Callable[[str], None]


class HubJobError(EdgeDeployError):
    """An AI Hub job finished FAILED; the message carries the hub's reason and the job id."""


class HubUnavailable(Exception):
    """AI Hub cannot be used here (no package, no token, no network, refused); ``str()`` says why."""


def config_path() -> Path:
    return Path(os.path.expanduser(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG))


def token_configured() -> bool:
    path = config_path()
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except (configparser.Error, OSError, UnicodeDecodeError):
        return False
    return bool(parser.has_section("api") and parser.get("api", "api_token", fallback="").strip())


def unavailable_reason() -> str | None:
    """Why the hub cannot be used here, or None when package and token are in place."""
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        return f"{OFFLINE_ENV} is set"
    if importlib.util.find_spec("qai_hub") is None:
        return "the qai-hub package is not installed (pip install qai-hub)"
    if not token_configured():
        return f"no AI Hub API token in {config_path()} (run `qai-hub configure --api_token TOKEN`)"
    return None


def import_hub():
    reason = unavailable_reason()
    if reason:
        raise HubUnavailable(reason)
    import qai_hub

    return qai_hub


def one_line(text) -> str:
    """Hub messages come boxed over several lines; the CLI shows one."""
    parts = [p.strip(" |-─│┌┐└┘") for p in str(text or "").splitlines()]
    return " ".join(p for p in parts if p) or "no message"


class Ledger:
    """``hub_jobs.json``: every job this bundle submitted, keyed by what decides its result."""

    def __init__(self, bundle_dir: Path):
        self.path = Path(bundle_dir) / LEDGER
        try:
            data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, ValueError):
            data = {}
        self.jobs: dict = data.get("jobs", {}) if isinstance(data, dict) else {}

    def get(self, key: str) -> dict | None:
        return self.jobs.get(key)

    def put(self, key: str, record: dict) -> None:
        self.jobs[key] = record
        try:
            write_json_atomic(self.path, {"format": 1, "jobs": self.jobs})
        except OSError:  # a read-only bundle still scores; it just cannot remember jobs
            pass


def job_key(kind: str, **facts) -> str:
    return sha256_json({"kind": kind, **facts})[:24]


class HubSession:
    """One command's conversation with AI Hub; network and auth failures become ``HubUnavailable``."""

    def __init__(self, hub, device_name: str, ledger: Ledger, log: Log = print):
        self.hub, self.device_name, self.ledger, self.log = hub, device_name, ledger, log
        self._device = None

    def call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (HubJobError, HubUnavailable, KeyboardInterrupt):
            raise
        except Exception as exc:  # the client raises UserError/InternalError/requests errors
            raise HubUnavailable(f"{type(exc).__name__}: {one_line(exc)}") from None

    @property
    def device(self):
        if self._device is None:
            self._device = self.call(self.hub.Device, self.device_name)
        return self._device

    def job(self, kind: str, key: str, submit: Callable[[], object], facts: dict) -> tuple[object, bool]:
        """The finished, successful job for ``key``: reused from the ledger, else submitted and waited on."""
        previous = self.ledger.get(key)
        if previous:
            try:
                job = self.call(self.hub.get_job, previous["job_id"])
                status = self.call(job.wait)
            except HubUnavailable as exc:  # e.g. another account's job; a dead network fails the submit below
                self.log(f"AI Hub {kind} job {previous['job_id']} cannot be fetched ({exc}); submitting a new one")
            else:
                if status.success:
                    self.ledger.put(key, {**previous, "status": "SUCCESS"})
                    self.log(f"AI Hub {kind} job {previous['job_id']}: reused (same model, device and options)")
                    return job, True
                self.log(f"AI Hub {kind} job {previous['job_id']} ended {status.code} "
                         f"({one_line(status.message)}); submitting a new one")
        job = self.call(submit)
        record = {"kind": kind, "job_id": job.job_id, "url": getattr(job, "url", None), "status": "SUBMITTED", **facts}
        self.ledger.put(key, record)
        self.log(f"AI Hub {kind} job {job.job_id} submitted; waiting for it ({record['url']})")
        status = self.call(job.wait)
        self.ledger.put(key, {**record, "status": status.code, "message": status.message})
        if not status.success:
            raise HubJobError(f"AI Hub {kind} job {job.job_id} failed: {one_line(status.message)} "
                              f"(see {record['url'] or 'the AI Hub jobs page'}); fix the cause and run again")
        return job, False


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
            "input_specs": {k: [list(v[0]), v[1]] for k, v in input_spec.items()}}


def _profile_facts(settings: HubSettings, compile_job_id: str) -> dict:
    return {"compile_job": compile_job_id, "device": settings.device, "options": settings.run_options}


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

    def submit_profile():
        target = session.call(compile_job.get_target_model)
        return hub.submit_profile_job(model=target, device=session.device, name=f"{name}-profile",
                                      options=settings.run_options)

    profile_job, profile_reused = session.job("profile", profile_key, submit_profile, profile_facts)
    summary = session.ledger.get(profile_key).get("summary") or summarise_profile(session.call(profile_job.download_profile))
    session.ledger.put(profile_key, {**session.ledger.get(profile_key), "summary": summary})
    return {"jobs": {"compile": _job_record(compile_job, compile_reused), "profile": _job_record(profile_job, profile_reused)},
            "dlc": dlc, "profile": summary, "client": getattr(hub, "__version__", "unknown")}


def _cached_dlc(record: dict | None, bundle_dir: Path) -> dict | None:
    path = bundle_dir / DLC
    if record and record.get("dlc_sha256") and path.is_file() and sha256_file(path) == record["dlc_sha256"]:
        return {"path": DLC, "sha256": record["dlc_sha256"], "bytes": path.stat().st_size}
    return None


class HubScorer:
    """Scores images with ``submit_inference_job`` on the AI Hub device the bundle's DLC was compiled for."""

    runner = "qai-hub"
    batch_size = 64  # images per inference job

    def __init__(self, dlc_path: Path, manifest: dict, bundle_dir: Path, log: Log = print):
        record = manifest.get("compile") or {}
        compile_job = (record.get("jobs") or {}).get("compile", {}).get("job_id")
        if not compile_job:
            raise ToolUnavailableError(f"{bundle_dir / 'manifest.json'} records no AI Hub compile job for {dlc_path.name}: "
                                       "configure AI Hub and run `edgedeploy build --target rb5-gen2` again")
        self.device_name = record["hub_device"]
        self.run_options = record.get("inference_options") or record.get("profile_options")
        self.compile_job_id = compile_job
        self.input_name = manifest["model"]["input"]["name"]
        self.input_size = int(manifest["model"]["input"]["shape"][-1])
        try:
            hub = import_hub()
        except HubUnavailable as exc:
            raise ToolUnavailableError(f"cannot score on AI Hub: {exc}") from None
        self.session = HubSession(hub, self.device_name, Ledger(bundle_dir), log)
        self._target = None
        self.extra_meta = {"hub_device": self.device_name, "hub_options": self.run_options,
                           "compile_job": compile_job}

    def _target_model(self):
        if self._target is None:
            job = self.session.call(self.session.hub.get_job, self.compile_job_id)
            self._target = self.session.call(job.get_target_model)
        return self._target

    def predict_named(self, images: np.ndarray) -> dict[str, np.ndarray]:
        inputs = {self.input_name: [np.ascontiguousarray(img[None], dtype=np.float32) for img in images]}
        facts = {"compile_job": self.compile_job_id, "device": self.device_name, "options": self.run_options,
                 "inputs_sha256": _array_digest(inputs[self.input_name])}
        hub = self.session.hub
        try:
            job, _ = self.session.job(
                "inference", job_key("inference", **facts),
                lambda: hub.submit_inference_job(model=self._target_model(), device=self.session.device,
                                                 inputs=inputs, name="edgedeploy-score", options=self.run_options),
                facts)
            outputs = self.session.call(job.download_output_data)
        except HubUnavailable as exc:
            raise ToolUnavailableError(f"AI Hub inference failed to run: {exc}") from None
        if not outputs:
            raise HubJobError(f"AI Hub inference job {job.job_id} returned no output data")
        return {name: np.concatenate([np.asarray(a) for a in arrays]) for name, arrays in outputs.items()}

    def close(self) -> None:
        pass


def _array_digest(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
