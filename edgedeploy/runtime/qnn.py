"""Qualcomm's QNN through ONNX Runtime (the ``onnxruntime-qnn`` plugin execution provider): the RB5 Gen2's runtime on the
board (the Adreno GPU or the Hexagon HTP), and the HTP backend emulated on an x86_64 host (Qualcomm's FP16 arithmetic,
not the device's speed). Torch-free: numpy, onnx, onnxruntime and onnxruntime_qnn, the last two imported inside.

The API, as read for onnxruntime-qnn 2.7.0 (QNN SDK 2.51) and ONNX Runtime 1.32 (verified by running it here):

* ``ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())`` once per
  process, then ``ort.get_ep_devices()`` and ``SessionOptions.add_provider_for_devices(devices, options)``
  (onnxruntime-qnn docs/execution_providers/QNN-ExecutionProvider.md, "Usage / Python"; the package's __init__.py).
* Provider options ``backend_type`` (``htp``/``gpu``), ``soc_model``, ``htp_arch``, ``enable_htp_fp16_precision``
  (same document, "EP Provider Options"; qnn_execution_provider.cc reads them with those names, and on x86_64 Linux
  refuses FP16 without ``soc_model``: "FP16 precision mode is enabled but soc_model is not specified").
* Session configs ``session.disable_cpu_ep_fallback`` (onnxruntime_session_options_config_keys.h, quoted by the same
  document), ``session.record_ep_graph_assignment_info`` (``InferenceSession.get_provider_graph_assignment_info``'s
  docstring: which nodes each EP took) and, for ahead-of-time contexts, ``ep.context_enable``,
  ``ep.context_file_path``, ``ep.context_embed_mode`` (document section "QNN context binary cache feature").
* A context model records its QNN SDK in its ``EPContext`` node's ``ep_sdk_version`` attribute (``v2.51.0.<build>``)
  and in the model metadata ``ep_compatibility_info.QNNExecutionProvider`` (``v2:<backend>:<sdk>:...``), as written here.
* With fallback disabled, a graph the EP takes in part fails with ONNX Runtime's "fallback to CPU EP has been
  explicitly disabled", and the EP logs ``Unsupported nodes in QNN EP: { name: N, type: Op }...`` at ERROR
  (``GetCapabilityImpl``); the GPU backend without an Adreno logs ``QNN SetupBackend failed ...
  QNN_BACKEND_ERROR_CANNOT_INITIALIZE`` and takes no node. Those messages are read through
  ``ort.set_default_logger_callback`` where ONNX Runtime has it, else from a second session that may fall back.
* The QNN EP has no GPU precision option (none in the provider library's option names); the GPU backend's default
  precision is "user provided" (the graph's own types, QNN SDK docs gpu_backend.html "Precision Mode"), so FP16 on the
  GPU is a float16 graph: ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``.
"""

from __future__ import annotations

import platform
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgedeploy import __version__
from edgedeploy.core.errors import EdgeDeployError, ToolFailedError
from edgedeploy.core.extras import MissingExtraError, package_version
from edgedeploy.core.modelcard import ModelCard, card_digest
from edgedeploy.runtime.base import ModelFileError, ModelFileRunner, resolve_card

EP_NAME = "QNNExecutionProvider"
RUNTIMES = {"qnn-htp": "htp", "qnn-gpu": "gpu"}  # --runtime value -> QNN backend
BACKENDS = ("htp", "gpu")
PRECISIONS = ("fp16", "fp32")
WHEEL_MACHINES = ("x86_64", "aarch64")  # onnxruntime-qnn 2.7.0 wheels: manylinux_2_35_x86_64, manylinux_2_34_aarch64
CONTEXT_NAME = "model_ctx.onnx"
FALLBACK_REFUSED = "fallback to CPU EP has been explicitly disabled"
_UNSUPPORTED = re.compile(r"\{ name: (.*?), type: ([A-Za-z0-9_.]+) \}")
_BACKEND_FAILED = ("SetupBackend failed", "QNN_BACKEND_ERROR", "Unable to load backend")

Log = Callable[[str], None]


class QnnUnavailableError(MissingExtraError):
    """onnxruntime-qnn is not installed, or cannot be on this Python / platform (exit 2)."""


class QnnBackendError(ToolFailedError):
    """The QNN backend did not initialise (the GPU backend without an Adreno GPU) or the EP failed (exit 3)."""


class QnnFallbackRefused(ToolFailedError):
    """The QNN EP takes the graph only in part and CPU fallback is off (exit 3)."""

    def __init__(self, message: str, nodes: list[tuple[str, str]]):
        super().__init__(message)
        self.nodes = nodes


class QnnContextError(EdgeDeployError):
    """A QNN context model that this runtime cannot load: built with another QNN SDK, or not a context model (exit 2)."""


def machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _python() -> tuple[int, int]:
    return sys.version_info[:2]


def import_qnn(what: str = "the QNN runtime"):
    """(onnxruntime, onnxruntime_qnn), or one line saying what to install (Python 3.11+, Linux x86_64/aarch64)."""
    try:
        import onnxruntime as ort
        import onnxruntime_qnn
    except ImportError:
        if _python() < (3, 11):
            raise QnnUnavailableError(
                f"{what} needs onnxruntime-qnn, which needs Python 3.11 or later (this is Python "
                f"{'.'.join(map(str, _python()))}): run it from a Python 3.11+ venv, or score model.onnx with ONNX "
                "Runtime (drop --runtime)") from None
        if sys.platform != "linux" or machine() not in WHEEL_MACHINES:
            raise QnnUnavailableError(
                f"{what} needs onnxruntime-qnn, whose Linux wheels are for x86_64 and aarch64 only (this is "
                f"{sys.platform} {machine()}): run it on the RB5 Gen2 or an x86_64 Linux host") from None
        raise QnnUnavailableError(f"{what} needs onnxruntime-qnn, which the core install leaves out: "
                                  "pip install 'edgedeploy[qnn]'") from None
    return ort, onnxruntime_qnn


_registered = False
_register_lock = threading.Lock()


def register(ort, qnn) -> None:
    """Register the plugin EP library with ONNX Runtime, once per process."""
    global _registered
    with _register_lock:
        if _registered:
            return
        try:
            ort.register_execution_provider_library(EP_NAME, qnn.get_library_path())
        except Exception as exc:  # registered by someone else in this process: fine; anything else is a broken install
            if "already" not in str(exc).lower():
                raise QnnBackendError(f"ONNX Runtime cannot load the QNN EP library {qnn.get_library_path()} "
                                      f"({_first_line(exc)}): reinstall onnxruntime-qnn") from None
        _registered = True


def versions() -> dict[str, str]:
    """The QNN SDK the installed onnxruntime-qnn was built with, and the package versions."""
    try:
        from onnxruntime_qnn import build_and_package_info as info

        sdk = str(getattr(info, "qnn_version", "unknown"))
    except ImportError:
        sdk = "not installed"
    return {"qnn_sdk": sdk, "onnxruntime_qnn": package_version("onnxruntime-qnn"),
            "onnxruntime": package_version("onnxruntime")}


def where(backend: str) -> str:
    """What this run was: the host's emulated HTP backend, or a board (aarch64)."""
    m = machine()
    if m == "aarch64":
        soc = ""
        try:
            soc = Path("/sys/devices/soc0/machine").read_text().strip()
        except OSError:
            pass
        return f"device: aarch64{f' ({soc})' if soc else ''}, QNN {backend.upper()} backend on the board"
    return (f"host: the QNN {backend.upper()} backend emulated on this {m} CPU (Qualcomm's arithmetic, not the "
            "device's speed)")


@dataclass(frozen=True)
class QnnSettings:
    """What the EP needs to know about the chip: from the bundle's manifest (``target.qnn``) or a device profile."""

    soc_model: int
    htp_arch: int
    backends: tuple[str, ...]
    precision: str
    source: str

    @classmethod
    def from_block(cls, block: dict, precision: str, source: str) -> "QnnSettings":
        return cls(int(block["soc_model"]), int(block["htp_arch"]), tuple(block.get("backends") or BACKENDS),
                   precision, source)

    @classmethod
    def from_profile(cls, profile) -> "QnnSettings":
        if not getattr(profile, "qnn", None):
            raise QnnBackendError(f"device profile {profile.path} has no qnn: block (soc_model, htp_arch, backends)")
        return cls.from_block(dict(profile.qnn), profile.precision, f"device profile {profile.name}")

    @classmethod
    def resolve(cls, manifest: dict | None, log: Log | None = None) -> "QnnSettings":
        """The bundle's own settings when its manifest has them, else the packaged rb5-gen2 profile's."""
        target = (manifest or {}).get("target") or {}
        if isinstance(target.get("qnn"), dict):
            return cls.from_block(target["qnn"], str(target.get("precision", "fp16")),
                                  f"bundle manifest ({target.get('name', '?')})")
        from edgedeploy.core.profiles import load_profile

        settings = cls.from_profile(load_profile("rb5-gen2"))
        if log and manifest is not None:
            log(f"note: the bundle's manifest has no target.qnn settings ({target.get('name', '?')}); using the "
                f"rb5-gen2 profile's (soc_model {settings.soc_model}, htp_arch {settings.htp_arch})")
        return settings

    def provider_options(self, backend: str, precision: str) -> dict[str, str]:
        options = {"backend_type": backend}
        if backend == "htp":  # soc_model and htp_arch select the HTP's arithmetic; FP16 needs soc_model on x86_64
            options.update(soc_model=str(self.soc_model), htp_arch=str(self.htp_arch),
                           enable_htp_fp16_precision="1" if precision == "fp16" else "0")
        return options


@dataclass
class QnnSession:
    """A session with the QNN EP, and which nodes it left to ONNX Runtime's CPU EP (empty: the graph ran whole)."""

    session: object
    cpu_nodes: list[tuple[str, str]] = field(default_factory=list)
    qnn_nodes: int = 0
    seconds: float = 0.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:240]


@contextmanager
def _ort_errors(ort) -> Iterator[list[str] | None]:
    """ONNX Runtime's ERROR log lines while the block runs (None where this ONNX Runtime has no logger callback).
    The callback is ONNX Runtime's default logger for the process: it is set for the block and reset after it."""
    setter = getattr(ort, "set_default_logger_callback", None)
    if setter is None:
        yield None
        return
    lines: list[str] = []

    def collect(severity, category, logid, location, message) -> None:
        if int(severity) >= 3:
            lines.append(str(message))

    try:
        setter(collect, 3)
    except Exception:  # an ONNX Runtime whose environment is not the Python module's
        yield None
        return
    try:
        yield lines
    finally:
        setter(None, 3)


def _devices(ort, backend: str) -> list:
    """One QNN EP device: the NPU for htp, the GPU for gpu, where the board reports them; on an x86_64 host the EP
    shows one CPU-typed device and the backend comes from ``backend_type`` alone."""
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise QnnBackendError("ONNX Runtime lists no QNNExecutionProvider device after registering onnxruntime-qnn: "
                              "reinstall onnxruntime-qnn (it needs onnxruntime>=1.24.2)")
    wanted = {"htp": "NPU", "gpu": "GPU"}[backend]
    typed = [d for d in devices if getattr(d.device.type, "name", str(d.device.type)).upper().endswith(wanted)]
    return [(typed or devices)[0]]


def _options(ort, settings: QnnSettings, backend: str, precision: str, allow_cpu_fallback: bool,
             config: dict[str, str] | None):
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only; read through the callback, not printed over the progress bar
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if allow_cpu_fallback else "1")
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    so.add_provider_for_devices(_devices(ort, backend), settings.provider_options(backend, precision))
    return so


def _assignment(session) -> tuple[list[tuple[str, str]], int] | None:
    """(nodes ONNX Runtime's CPU EP runs, number of nodes the QNN EP took), or None where not recorded."""
    get = getattr(session, "get_provider_graph_assignment_info", None)
    if get is None:
        return None
    try:
        subgraphs = get()
    except Exception:
        return None
    cpu, qnn = [], 0
    for subgraph in subgraphs:
        nodes = list(subgraph.get_nodes())
        if subgraph.ep_name == EP_NAME:
            qnn += len(nodes)
        else:
            cpu += [(n.name, n.op_type) for n in nodes]
    return cpu, qnn


def _backend_failure(lines: list[str] | None) -> str | None:
    for line in lines or []:
        if any(marker in line for marker in _BACKEND_FAILED):
            return line
    return None


def backend_error(backend: str, detail: str | None) -> QnnBackendError:
    code = re.search(r"QNN_[A-Z_]+ERROR[A-Z_]*", detail or "")
    why = f" ({code.group(0)})" if code else (f" ({detail[:160]})" if detail else "")
    if backend == "gpu":
        here = "no Adreno GPU here" if machine() != "aarch64" else "is the Adreno driver in the board image?"
        return QnnBackendError(f"the QNN GPU backend did not initialise{why}: {here}; use --runtime qnn-htp (on an "
                               "x86_64 host the HTP backend runs emulated on the CPU)")
    here = ("does the board image provide libcdsprpc.so and the DSP firmware?" if machine() == "aarch64"
            else "reinstall onnxruntime-qnn")
    return QnnBackendError(f"the QNN HTP backend did not initialise{why}: {here}")


def op_counts(nodes: list[tuple[str, str]]) -> str:
    from collections import Counter

    return ", ".join(f"{op} x{n}" for op, n in Counter(op for _, op in nodes).most_common())


def describe_nodes(nodes: list[tuple[str, str]], shown: int = 6) -> str:
    """``12 nodes (Erf x12): /a/Erf (Erf), ... +6 more``: the nodes a QNN backend does not take, for one line."""
    names = ", ".join(f"{name} ({op})" for name, op in nodes[:shown])
    more = f", +{len(nodes) - shown} more" if len(nodes) > shown else ""
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''} ({op_counts(nodes)}): {names}{more}"


def _refusal(model_name: str, backend: str, nodes: list[tuple[str, str]]) -> QnnFallbackRefused:
    if not nodes:  # an ONNX Runtime without the logger callback or the graph assignment record cannot say which
        return QnnFallbackRefused(
            f"the QNN {backend.upper()} backend does not take the whole graph of {model_name} (ONNX Runtime "
            f"{package_version('onnxruntime')} does not say which nodes; `edgedeploy audit --target rb5-gen2` lists "
            "them); rebuild with ops QNN supports or pass --allow-cpu-fallback", [])
    return QnnFallbackRefused(
        f"the QNN {backend.upper()} backend does not take the whole graph of {model_name}: {describe_nodes(nodes)} "
        "would run on the CPU; rebuild with ops QNN supports (see `edgedeploy audit --target rb5-gen2`) or pass "
        "--allow-cpu-fallback", nodes)


def open_session(model: str | Path | bytes, settings: QnnSettings, backend: str, precision: str,
                 allow_cpu_fallback: bool = False, config: dict[str, str] | None = None,
                 name: str = "the model") -> QnnSession:
    """An ONNX Runtime session on the QNN ``backend``. Without ``allow_cpu_fallback`` a graph the EP takes in part is
    refused (:class:`QnnFallbackRefused`, naming the nodes); a backend that does not initialise, or takes no node, is
    :class:`QnnBackendError`. ``config``: extra session config entries (the EP context ones)."""
    ort, qnn = import_qnn()
    register(ort, qnn)
    model_arg = model if isinstance(model, bytes) else str(model)
    start = time.perf_counter()
    failure: Exception | None = None
    with _ort_errors(ort) as lines:
        try:
            session = ort.InferenceSession(model_arg, sess_options=_options(ort, settings, backend, precision,
                                                                            allow_cpu_fallback, config))
        except EdgeDeployError:
            raise
        except Exception as exc:  # onnxruntime's Fail/InvalidGraph/EPFail
            failure = exc
    seconds = time.perf_counter() - start
    if failure is not None:
        if _backend_failure(lines):
            raise backend_error(backend, _backend_failure(lines))
        if FALLBACK_REFUSED not in str(failure):
            raise QnnBackendError(f"ONNX Runtime with the QNN {backend.upper()} EP cannot load {name} "
                                  f"({type(failure).__name__}: {_first_line(failure)})")
        nodes = list(dict.fromkeys((n, op) for n, op in _UNSUPPORTED.findall("\n".join(lines or []))))
        if not nodes:  # no logger callback here: ask a session that may fall back which nodes it left to the CPU
            probe = open_session(model, settings, backend, precision, allow_cpu_fallback=True, name=name)
            nodes = probe.cpu_nodes
            del probe
        raise _refusal(name, backend, nodes)
    assigned = _assignment(session)
    if assigned is None:
        return QnnSession(session, [], -1, seconds)
    cpu, took = assigned
    if took == 0:
        raise backend_error(backend, _backend_failure(lines) or "it took no node of the graph")
    return QnnSession(session, cpu, took, seconds)


# ---------------------------------------------------------------------------------------------------------------
# EP context models (AOT-compiled HTP context binaries)


def context_info(path: str | Path) -> dict | None:
    """What a QNN EP context model says about itself (QNN SDK, HTP arch, SoC), or None for an ordinary graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "EPContext"]
    if not nodes:
        return None
    attrs = {a.name: a for a in nodes[0].attribute}
    sdk = ""
    if "ep_sdk_version" in attrs:
        sdk = attrs["ep_sdk_version"].s.decode(errors="replace").lstrip("v")
        sdk = ".".join(sdk.split(".")[:3])
    meta = {p.key: p.value for p in model.metadata_props}
    info = {"qnn_sdk": sdk, "source": attrs["source"].s.decode(errors="replace") if "source" in attrs else "",
            "embed_mode": int(attrs["embed_mode"].i) if "embed_mode" in attrs else None,
            "contexts": len(nodes), "other_nodes": len(model.graph.node) - len(nodes),
            # stamped by edgedeploy.targets.qnn.context: the model.onnx it was compiled from, and at which precision
            "source_sha256": meta.get("edgedeploy.source_sha256", ""), "precision": meta.get("edgedeploy.precision", "")}
    compat = meta.get(f"ep_compatibility_info.{EP_NAME}", "")
    if compat:  # v2:<backend id>:<sdk>:<backend api>:<htp arch>:<soc model>:...
        parts = compat.split(":")
        info["compatibility_info"] = compat
        if len(parts) >= 6 and parts[0] == "v2":
            info["qnn_sdk"] = info["qnn_sdk"] or parts[2]
            info["htp_arch"], info["soc_model"] = parts[4], parts[5]
    return info


def check_context(path: str | Path, info: dict, runtime_sdk: str) -> None:
    """Refuse a context built with another QNN SDK than this runtime's (the binary format is the SDK's)."""
    built = info.get("qnn_sdk") or "unknown"
    if built != runtime_sdk:
        raise QnnContextError(f"{Path(path).name} holds a QNN context built with QNN SDK {built}, but this "
                              f"onnxruntime-qnn {package_version('onnxruntime-qnn')} runs QNN SDK {runtime_sdk}: "
                              f"rebuild it on the host with the onnxruntime-qnn this runtime has (pip install "
                              f"onnxruntime-qnn=={package_version('onnxruntime-qnn')}, then `edgedeploy build --target "
                              "rb5-gen2`), or score model.onnx, compiled at session start")


def float16_graph(path: str | Path) -> bytes:
    """The graph with float16 weights and activations, float32 inputs and outputs (for the GPU backend in FP16)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    return model.SerializeToString()


# ---------------------------------------------------------------------------------------------------------------
# the runner


class QnnRunner(ModelFileRunner):
    """A bundle's ``model.onnx`` (compiled when the session starts) or ``model_ctx.onnx`` (an HTP context compiled
    ahead of time, loaded as is) on a QNN backend, one image at a time, each timed around its ``session.run``.

    ``backend``: ``htp`` or ``gpu``; ``precision``: ``fp16``/``fp32`` (default the bundle's target precision);
    ``settings``: the chip (``soc_model``, ``htp_arch``), default from the bundle's manifest or the rb5-gen2 profile.
    CPU fallback is off unless ``allow_cpu_fallback``; when on, ``cpu_nodes`` lists what left the device.
    """

    def __init__(self, path: str | Path, backend: str = "htp", precision: str | None = None,
                 allow_cpu_fallback: bool = False, manifest: dict | None = None, card: ModelCard | None = None,
                 card_fields: dict | None = None, settings: QnnSettings | None = None, log: Log | None = None,
                 model_sha256: str | None = None, runner: str | None = None, label: str | None = None,
                 identity_extra: dict | None = None, meta_extra: dict | None = None, batch_size: int | None = None):
        super().__init__()
        if backend not in BACKENDS:
            raise ModelFileError(f"QNN backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if precision is not None and precision not in PRECISIONS:
            raise ModelFileError(f"QNN precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file {self.path} does not exist: pass a bundle's model.onnx or model_ctx.onnx")
        self.backend, self.allow_cpu_fallback = backend, allow_cpu_fallback
        self.manifest, self.card, self.card_fields = manifest, card, card_fields
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.settings = settings or QnnSettings.resolve(manifest, self.log)
        self._context: dict | None | bool = False  # False: not read yet
        compiled = (self.context or {}).get("precision")  # a context model was compiled at one precision
        if compiled and precision and precision != compiled:
            raise QnnContextError(f"{self.path.name} was compiled for the HTP at {compiled}: drop --qnn-precision "
                                  f"{precision}, or score model.onnx at {precision}")
        self.precision = compiled or precision or self.settings.precision
        if self.context and str(self.context.get("soc_model", "")).isdigit():  # the chip it was compiled for
            from dataclasses import replace

            self.settings = replace(self.settings, soc_model=int(self.context["soc_model"]),
                                    htp_arch=int(self.context.get("htp_arch") or self.settings.htp_arch),
                                    source=f"compiled into {self.path.name}")
        self.runner = runner or f"qnn-{backend}"
        self.on_target = machine() == "aarch64"
        self.where = where(backend)
        self.label = label or (f"QNN {backend.upper()} {self.precision.upper()} "
                               f"({'device' if self.on_target else 'host emulation'})")
        self.timed = (f"ONNX Runtime session.run on the QNN {backend.upper()} backend"
                      + ("" if self.on_target else f" (emulated on this {machine()} CPU: not the device's speed)"))
        self.batch_size = batch_size or (16 if self.on_target else 1)  # host HTP: ~20 s per image, cache each one
        self._model_sha256 = model_sha256
        self.identity_extra, self.meta_extra = dict(identity_extra or {}), dict(meta_extra or {})
        self.session = None
        self.cpu_nodes: list[tuple[str, str]] = []
        self.session_seconds: float | None = None

    # -- what the file is -------------------------------------------------------------------------------------
    @property
    def context(self) -> dict | None:
        """The EP context model's own record (QNN SDK, arch), or None for an ordinary graph."""
        if self._context is False:
            try:
                self._context = context_info(self.path)
            except Exception as exc:  # not protobuf at all
                raise ModelFileError(f"{self.path} is not an ONNX model ({type(exc).__name__}): pass a bundle's "
                                     "model.onnx or model_ctx.onnx") from None
        return self._context  # type: ignore[return-value]

    def source_sha256(self) -> str:
        """The model.onnx a context model was compiled from (the context says), else this file's hash."""
        if self.context is not None and self.context.get("source_sha256"):
            return str(self.context["source_sha256"])
        return self.model_sha256

    @property
    def input_size(self) -> int:
        self.activate()
        return self._input_size

    def identity(self) -> dict:
        if self.card is None:
            self.activate()
        return {"runner": self.runner, "model": self.model_sha256, "card": card_digest(self.card),
                "backend": self.backend, "precision": self.precision, "soc_model": self.settings.soc_model,
                "htp_arch": self.settings.htp_arch, "cpu_fallback": self.allow_cpu_fallback,
                "host_emulation": not self.on_target, "edgedeploy": __version__, **versions(), **self.identity_extra}

    def meta(self) -> dict[str, str]:
        v = versions()
        meta = {"model_sha256": self.source_sha256(), "runner": self.runner, "backend": self.backend,
                "precision": self.precision, "qnn_sdk": v["qnn_sdk"], "onnxruntime_qnn": v["onnxruntime_qnn"],
                "onnxruntime": v["onnxruntime"], "qnn_where": self.where,
                "qnn_chip": f"soc_model {self.settings.soc_model}, htp_arch {self.settings.htp_arch} "
                            f"({self.settings.source})",
                "cpu_fallback": self._fallback_text()}
        if self.context is not None:
            meta["qnn_context"] = (f"{self.path.name} (AOT, QNN SDK {self.context.get('qnn_sdk') or '?'}, "
                                   f"sha256 {self.model_sha256[:16]})")
        if self.backend == "gpu" and self.precision == "fp16":
            meta["qnn_gpu_graph"] = "float16 graph (float32 I/O), converted for the GPU backend's user-provided precision"
        return {**meta, **{k: str(v) for k, v in self.meta_extra.items()}}

    def _fallback_text(self) -> str:
        if not self.allow_cpu_fallback:
            return "off (the graph ran whole on QNN)"
        if not self.cpu_nodes:
            return "allowed, none used"
        return f"allowed: {len(self.cpu_nodes)} nodes ran on the CPU ({op_counts(self.cpu_nodes)})"

    # -- load / run / free ------------------------------------------------------------------------------------
    def _activate(self) -> None:
        info = self.context
        model: str | Path | bytes = self.path
        if info is not None:
            if self.backend != "htp":
                raise QnnContextError(f"{self.path.name} is a QNN HTP context model: score it with --runtime qnn-htp, "
                                      "or score model.onnx with --runtime qnn-gpu")
            check_context(self.path, info, versions()["qnn_sdk"])
        elif self.backend == "gpu" and self.precision == "fp16":
            model = float16_graph(self.path)
        qs = open_session(model, self.settings, self.backend, self.precision, self.allow_cpu_fallback,
                          name=self.path.name)
        self.session, self.cpu_nodes, self.session_seconds = qs.session, qs.cpu_nodes, qs.seconds
        inputs = [(i.name, list(i.shape)) for i in self.session.get_inputs()]
        outputs = [(o.name, list(o.shape)) for o in self.session.get_outputs()]
        self.card = resolve_card(self.card, self.manifest, inputs, outputs, str(self.path), self.card_fields)
        self.output_names = [name for name, _ in outputs]
        self._input_size = self.card.input_size
        if self.cpu_nodes:
            ops = op_counts(self.cpu_nodes)
            self.log(f"warning: --allow-cpu-fallback: {len(self.cpu_nodes)} node{'s' if len(self.cpu_nodes) != 1 else ''}"
                     f" left the QNN {self.backend.upper()} backend for ONNX Runtime's CPU ({ops}); {qs.qnn_nodes} "
                     "ran on QNN")

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        per_image = []
        try:
            for img in images:
                feed = {self.card.input_name: self.card.prepare(img[None])}
                start = time.perf_counter()
                per_image.append(self.session.run(None, feed))
                self.record_inference(time.perf_counter() - start)
        except Exception as exc:  # onnxruntime's Fail/RuntimeException/EPFail
            raise ToolFailedError(f"the QNN {self.backend.upper()} backend failed running {self.path.name} "
                                  f"({type(exc).__name__}: {_first_line(exc)})") from None
        named = {name: np.concatenate([outs[k] for outs in per_image]) for k, name in enumerate(self.output_names)}
        return self.card.read_outputs(named, len(images))

    def _deactivate(self) -> None:
        self.session = None
