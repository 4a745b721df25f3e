"""Qualcomm AI Hub from the device side: the client session every hub call goes through, the bundle's job
ledger, and the runner that scores images with inference jobs on the bundle's hub device.

Written against the ``qai-hub`` client's public API (checked in qai-hub 0.56): ``get_job(job_id)``,
``Device(name)``, ``submit_inference_job(model, device, inputs, name, options)``; jobs have ``job_id``,
``url``, ``wait()`` (the final ``JobStatus`` with ``success``/``failure``/``message``),
``get_target_model()`` and ``download_output_data()``. The client finds its API token in
``$QAIHUB_CLIENT_INI`` or ``~/.qai_hub/client.ini`` (section ``[api]``, key ``api_token``), which is what
``qai-hub configure --api_token TOKEN`` writes; the same check decides here whether the hub can be used.
Compiling and profiling (``edgedeploy.targets.qnn.hub``) use the same session and ledger.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.util
import inspect
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgedeploy.core.errors import ToolFailedError, ToolUnavailableError
from edgedeploy.core.files import write_json_atomic
from edgedeploy.core.hashing import sha256_json
from edgedeploy.core.modelcard import card_from_manifest
from edgedeploy.runtime.base import Runner

CONFIG_ENV = "QAIHUB_CLIENT_INI"
DEFAULT_CONFIG = "~/.qai_hub/client.ini"
OFFLINE_ENV = "EDGEDEPLOY_OFFLINE"
LEDGER = "hub_jobs.json"

Log = Callable[[str], None]


class HubJobError(ToolFailedError):
    """An AI Hub job finished FAILED; the message carries the hub's reason and the job id."""


class HubApiError(ToolFailedError):
    """The client rejected a call edgedeploy made (TypeError/AttributeError): an API change, i.e. a bug here,
    surfaced with the client's version instead of passing for an unreachable hub."""


CLIENT_WRITTEN_FOR = "0.56"


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
        except (TypeError, AttributeError) as exc:  # the client's API is not what this code calls
            version = getattr(self.hub, "__version__", "unknown")
            name = getattr(fn, "__name__", "")
            raise HubApiError(f"qai-hub {version} rejected {name if name.isidentifier() else 'a call'} ({type(exc).__name__}: "
                              f"{one_line(exc)}): edgedeploy was written against qai-hub {CLIENT_WRITTEN_FOR}; install "
                              f"qai-hub=={CLIENT_WRITTEN_FOR}.0 or report it (a bug, not an unreachable hub)") from None
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


def submit_profile(hub, model, device, name: str, options: str):
    """A profile job the way this client supports it: qai-hub 0.56 deprecates ``submit_profile_job`` for
    ``submit_inference_job(..., inputs=None, profile=True)``; an older client has only the former."""
    if "profile" in inspect.signature(hub.submit_inference_job).parameters:
        return hub.submit_inference_job(model=model, device=device, inputs=None, name=name, options=options,
                                        profile=True)
    return hub.submit_profile_job(model=model, device=device, name=name, options=options)


class HubRunner(Runner):
    """Scores images with ``submit_inference_job`` on the AI Hub device the bundle's DLC was compiled for.

    Its wall time is upload, queue and download, not the device's: it records no per-image inference
    times of its own.
    """

    runner = "qai-hub"
    label = "AI Hub inference jobs"
    timed = "AI Hub jobs: upload and queue included, not the device's latency (see the bundle's profile job)"
    wall_time_is_inference = False
    on_target = True
    batch_size = 64  # images per inference job

    def __init__(self, dlc_path: Path, manifest: dict, bundle_dir: Path, log: Log = print):
        super().__init__()
        record = manifest.get("compile") or {}
        compile_job = (record.get("jobs") or {}).get("compile", {}).get("job_id")
        if not compile_job:
            raise ToolUnavailableError(f"{bundle_dir / 'manifest.json'} records no AI Hub compile job for {dlc_path.name}: "
                                       "configure AI Hub and run `edgedeploy build --target rb5-gen2` again")
        self.device_name = record["hub_device"]
        self.run_options = record.get("inference_options") or record.get("profile_options")
        self.qairt_version = record.get("qairt_version")
        self.compile_job_id = compile_job
        self.card = card_from_manifest(manifest, str(bundle_dir / "manifest.json"))
        self.input_name, self._input_size = self.card.input_name, self.card.input_size
        self.model_sha256 = manifest["model"]["sha256"]
        try:
            hub = import_hub()
        except HubUnavailable as exc:
            raise ToolUnavailableError(f"cannot score on AI Hub: {exc}") from None
        self.session = HubSession(hub, self.device_name, Ledger(bundle_dir), log)
        self._target = None
        self.extra_meta = {"hub_device": self.device_name, "hub_options": self.run_options,
                           "compile_job": compile_job}

    @property
    def input_size(self) -> int:
        return self._input_size

    def meta(self) -> dict[str, str]:
        return {"model_sha256": self.model_sha256, "runner": self.runner,
                **{k: str(v) for k, v in self.extra_meta.items()}}

    def _target_model(self):
        if self._target is None:
            job = self.session.call(self.session.hub.get_job, self.compile_job_id)
            self._target = self.session.call(job.get_target_model)
        return self._target

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs = {self.input_name: [self.card.prepare(img[None]) for img in images]}
        facts = {"compile_job": self.compile_job_id, "device": self.device_name, "options": self.run_options,
                 "qairt_version": self.qairt_version, "inputs_sha256": _array_digest(inputs[self.input_name])}
        hub = self.session.hub
        try:
            job, _ = self.session.job(
                "inference", job_key("inference", **facts),
                lambda: hub.submit_inference_job(model=self._target_model(), device=self.session.device,
                                                 inputs=inputs, name="edgedeploy-score", options=self.run_options,
                                                 profile=False),  # 0.56 defaults to a paid profiling pass
                facts)
            outputs = self.session.call(job.download_output_data)
        except HubUnavailable as exc:
            raise ToolUnavailableError(f"AI Hub inference failed to run: {exc}") from None
        if not outputs:
            raise HubJobError(f"AI Hub inference job {job.job_id} returned no output data")
        named = {name: np.concatenate([np.asarray(a) for a in arrays]) for name, arrays in outputs.items()}
        return self.card.read_outputs(_card_names(named, self.card.output_names), len(images))


def _card_names(named: dict[str, np.ndarray], wanted: tuple[str, str]) -> dict[str, np.ndarray]:
    """The job's outputs under the card's names. A compiled model may rename its outputs (``output_0``, ...);
    with exactly two, the image score is the one holding one value per image, the map the other."""
    if all(name in named for name in wanted) or len(named) != 2:
        return named
    score, amap = sorted(named.values(), key=lambda a: a.size)
    return {wanted[0]: score, wanted[1]: amap}


def _array_digest(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
