"""A stand-in for the ``qai-hub`` client (checked against qai-hub 0.56), answering without a network.

Module-level functions with the real names and signatures: ``upload_model(model, name=None,
project=None)``, ``submit_compile_job(model, device, name=None, input_specs=None, options="",
single_compile=True, calibration_data=None, retry=True, project=None)``,
``submit_profile_job(model, device, name=None, options="", retry=True, project=None)``,
``submit_inference_job(model, device, inputs=None, name=None, options="", retry=True, profile=True,
project=None)``, ``get_job(job_id, job_type=None)``, ``get_model(model_id)``; ``Device(name, os,
attributes)``; jobs with ``job_id``, ``url``, ``wait(timeout=None)``, ``get_status()``,
``get_target_model()``, ``download_target_model(filename)``, ``download_profile(filename=None)``,
``download_output_data(filename=None)``; ``JobStatus`` with ``code``, ``message``, ``success``,
``failure``, ``finished``; errors ``Error``/``UserError``/``InternalError``.

``STATE`` drives it: ``calls`` records every call (also appended as JSON lines to
``$FAKE_QAI_HUB_LOG`` when set, for scripts run in a subprocess), ``fail`` maps a job kind to a
failure message, ``unreachable`` makes every call raise like a client without network, and
``output_names`` renames the inference outputs. Inference computes ``score`` = mean of the image and
``anomaly_map`` = 16x16 mean pooling of the channel mean.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__version__ = "0.56.0+fake"

KNOWN_DEVICES = ("QCS8550 (Proxy)", "RB5 (Proxy)", "Samsung Galaxy S23")
STATE: dict = {}


def reset() -> None:
    STATE.clear()
    STATE.update({"calls": [], "jobs": {}, "models": {}, "fail": {}, "unreachable": False,
                  "output_names": ("score", "anomaly_map"), "counter": 0})


class Error(Exception):
    pass


class UserError(Error):
    pass


class InternalError(Error):
    pass


def _record(call: str, **kwargs) -> None:
    if STATE["unreachable"]:
        raise InternalError("Could not connect to Qualcomm AI Hub.\n| Check your network connection |")
    entry = {"call": call, **{k: _jsonable(v) for k, v in kwargs.items()}}
    STATE["calls"].append(entry)
    log = os.environ.get("FAKE_QAI_HUB_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps(entry) + "\n")


def _jsonable(value):
    if isinstance(value, (Device,)):
        return {"device": value.name}
    if isinstance(value, (Model,)):
        return {"model": value.model_id}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"array": list(value.shape), "dtype": str(value.dtype)}
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _next_id(prefix: str) -> str:
    STATE["counter"] += 1
    return f"{prefix}{STATE['counter']:07d}"


@dataclass
class Device:
    name: str = ""
    os: str = ""
    attributes: str | list[str] = field(default_factory=list)


class JobStatus:
    class State(enum.Enum):
        SUCCESS = 3
        FAILED = 4
        CREATED = 1
        OPTIMIZING_MODEL = 2

    def __init__(self, state, message=None):
        self.state, self.message = state, message

    @property
    def code(self):
        return self.state.name

    @property
    def success(self):
        return self.state == JobStatus.State.SUCCESS

    @property
    def failure(self):
        return self.state == JobStatus.State.FAILED

    @property
    def finished(self):
        return self.success or self.failure

    @property
    def running(self):
        return not self.finished

    @property
    def pending(self):
        return self.state == JobStatus.State.CREATED


class Model:
    def __init__(self, model_id: str, content: bytes, name: str = ""):
        self.model_id, self.content, self.name = model_id, content, name

    def download(self, filename: str, timeout=None) -> str:
        _record("Model.download", model_id=self.model_id, filename=filename)
        path = filename if filename.endswith(".dlc") else filename + ".dlc"
        Path(path).write_bytes(self.content)
        return path


class Job:
    kind = "job"

    def __init__(self, device, name, options):
        self.job_id = _next_id("j")
        self.device, self.name, self.options = device, name, options
        message = STATE["fail"].get(self.kind)
        self._status = JobStatus(JobStatus.State.FAILED, message) if message else JobStatus(JobStatus.State.SUCCESS)
        STATE["jobs"][self.job_id] = self

    @property
    def url(self):
        return f"https://app.aihub.qualcomm.com/jobs/{self.job_id}/"

    def wait(self, timeout=None):
        _record(f"{type(self).__name__}.wait", job_id=self.job_id)
        return self._status

    def get_status(self):
        return self._status


class CompileJob(Job):
    kind = "compile"

    def __init__(self, model, device, name, input_specs, options):
        super().__init__(device, name, options)
        self.model, self.shapes = model, input_specs
        self._target = None if self._status.failure else Model(_next_id("m"), b"FAKEDLC:" + model.content[:64], name)

    def get_target_model(self):
        _record("CompileJob.get_target_model", job_id=self.job_id)
        return self._target

    def download_target_model(self, filename):
        _record("CompileJob.download_target_model", job_id=self.job_id, filename=filename)
        return None if self._target is None else self._target.download(filename)


class InferenceJob(Job):
    kind = "inference"

    def __init__(self, model, device, name, options, inputs, profiling):
        if profiling and inputs is None:
            self.kind = "profile"
        super().__init__(device, name, options)
        self.model, self.inputs = model, inputs

    def download_profile(self, filename=None):
        _record("InferenceJob.download_profile", job_id=self.job_id)
        profile = {"execution_summary": {"estimated_inference_time": 140_250, "estimated_inference_peak_memory": 50 * 2**20,
                                         "first_load_time": 2_000_000}, "execution_detail": []}
        if os.environ.get("FAKE_QAI_HUB_EMPTY_PROFILE"):  # qai-hub 0.56's download_profile() can return {}
            profile = {}
        if filename:
            Path(filename).write_text(json.dumps(profile))
            return filename
        return profile

    def download_output_data(self, filename=None):
        _record("InferenceJob.download_output_data", job_id=self.job_id)
        if self._status.failure or self.inputs is None:
            return None
        (images,) = self.inputs.values()
        scores, maps = [], []
        for image in images:
            gray = image[0].mean(axis=0)
            s = gray.shape[-1] // 16
            scores.append(np.array([image.mean()], dtype=np.float32))
            maps.append(gray.reshape(s, 16, s, 16).mean(axis=(1, 3)).reshape(1, 1, s, s).astype(np.float32))
        score_name, map_name = STATE["output_names"]
        return {map_name: maps, score_name: scores}


def _check_device(device):
    if not isinstance(device, Device) or device.name not in KNOWN_DEVICES:
        raise UserError(f"Device {getattr(device, 'name', device)!r} is not available.")


def upload_model(model, name=None, project=None):
    _record("upload_model", model=str(model), name=name)
    return Model(_next_id("m"), Path(model).read_bytes(), name or Path(model).name)


def get_model(model_id):
    _record("get_model", model_id=model_id)
    return STATE["models"][model_id]


def submit_compile_job(model, device, name=None, input_specs=None, options="", single_compile=True,
                       calibration_data=None, retry=True, project=None):
    _record("submit_compile_job", model=model, device=device, name=name, input_specs=input_specs, options=options)
    _check_device(device)
    if isinstance(model, (str, Path)):
        model = upload_model(model)
    return CompileJob(model, device, name, input_specs, options)


def submit_profile_job(model, device, name=None, options="", retry=True, project=None):
    """Deprecated in qai-hub 0.56, which forwards it to submit_inference_job(inputs=None, profile=True)."""
    _record("submit_profile_job (deprecated)", model=model, device=device, name=name, options=options)
    return submit_inference_job(model, device, inputs=None, name=name, options=options, retry=retry, profile=True,
                                project=project)


def submit_inference_job(model, device, inputs=None, name=None, options="", retry=True, profile=True, project=None):
    _record("submit_inference_job", model=model, device=device, inputs=inputs, name=name, options=options,
            profile=profile)
    _check_device(device)
    if inputs is None and not profile:
        raise UserError("inputs are required when profile=False")
    return InferenceJob(model, device, name, options, inputs, profile)


def get_job(job_id, job_type=None):
    _record("get_job", job_id=job_id)
    if job_id not in STATE["jobs"]:
        raise UserError(f"Job ID '{job_id}' could not be found. It may not exist or you may not have permission to view it.")
    return STATE["jobs"][job_id]


reset()
