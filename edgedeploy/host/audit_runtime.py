"""The audit's runtime check: ask Qualcomm's own runtime which nodes of a graph it takes.

For a profile whose runtime is QNN, where ``onnxruntime-qnn`` is installed (Qualcomm's plugin execution
provider for ONNX Runtime, Python >= 3.11), the audit opens an ONNX Runtime session with the QNN execution
provider, CPU fallback allowed and ``session.record_ep_graph_assignment_info=1``, and reads which execution
provider each node went to (``InferenceSession.get_provider_graph_assignment_info()``, ONNX Runtime >= 1.24;
microsoft/onnxruntime#26781). Every node the QNN EP left to the CPU is a refused node, reported as an
audit finding (rule ``qnn-runtime``). ``session.disable_cpu_ep_fallback=1`` would only say *that* the graph
splits (the exception names no node; the nodes appear only in the log), so it is not used here.

Backend: the profile's (``gpu`` for rb5-gen2) when it works here. The GPU backend needs an Adreno GPU; where
there is none (this x86 host) the QNN EP does not fail, it silently takes no node, so a one-node probe graph
tells a working backend from a missing one before the real graph is asked, and the HTP backend (which
``onnxruntime-qnn`` runs on the host CPU) answers instead. The report says which backend answered and where.

Speed: which nodes the EP takes is decided before it compiles anything (ONNX Runtime partitions with the
EP's GetCapability, then compiles the partitions), so the session is prepared with
``htp_graph_finalization_optimization_mode=1`` ("faster preparation time, less optimal graph"; ONNX
Runtime's QNN EP configuration options): the full-size TinyViT-21M-512 graph answers in ~2-4 s instead of
7-23 s. The answer is cached by the graph's sha256 and everything it depends on (:func:`check_identity`),
so an unchanged graph is asked once. Native output of the QNN libraries (a ``LIBNATIVE`` line on stdout)
is kept off the command's output.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator

from edgedeploy.core.files import write_json_atomic
from edgedeploy.core.hashing import sha256_file, sha256_json
from edgedeploy.core.profiles import DeviceProfile
from edgedeploy.core.resources import cache_root

CHECK_VERSION = "qnn-runtime-check-1"  # bump with any change to how the runtime is asked: it keys the cache
EP_NAME = "QNNExecutionProvider"
RULE = "qnn-runtime"
# QnnTypes.h (QNN SDK headers, e.g. github.com/chuzcjoe/qnnx include/QNN/QnnTypes.h): QNN_SOC_MODEL_QCS8550 = 66;
# the QCS8550's Hexagon is v73. Used only where the profile has no `qnn:` block with its own values.
DEFAULT_SOC_MODEL = "66"
DEFAULT_HTP_ARCH = "73"
ADRENO_DEVICE = "/dev/kgsl-3d0"  # the Adreno kernel driver's node (msm kgsl)
FAST_PREPARE = {"htp_graph_finalization_optimization_mode": "1"}


@dataclass
class RuntimeCheck:
    """What the runtime said about one graph (or why it was not asked)."""

    asked: bool
    reason: str = ""                  # why not asked, or what went wrong
    runtime: str = ""                 # "onnxruntime-qnn 2.7.0, QNN SDK 2.51.0"
    onnxruntime: str = ""
    backend: str = ""                 # the backend that answered: "htp" | "gpu"
    where: str = ""                   # "emulated on this x86_64 host's CPU" | "on this device"
    note: str = ""                    # e.g. why the profile's backend did not answer
    nodes: int = 0                    # nodes in the file
    taken: int = 0                    # nodes in the QNN EP's partitions (after ONNX Runtime's own graph rewrites)
    refused: list[dict] = field(default_factory=list)  # {"node", "op", "domain"}
    seconds: float = 0.0
    cached: bool = False
    failed: str = ""                  # the runtime could not load the graph at all (with fallback allowed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RuntimeCheck":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def line(self) -> str:
        """One line for the audit table."""
        if not self.asked:
            return f"runtime check: {self.reason}; checked against the profile's op list only"
        who = f"QNN {self.backend.upper()} backend of {self.runtime}, {self.where}"
        if self.note:
            who += f"; {self.note}"
        if self.failed:
            return f"runtime check: could not load the graph ({self.failed}) - {who}"
        took = (f"took the whole graph ({self.taken} nodes as ONNX Runtime partitioned it)" if not self.refused else
                f"refused {len(self.refused)} node{'s' if len(self.refused) != 1 else ''} (the qnn-runtime errors above), "
                f"took {self.taken}")
        when = "answer reused for this graph" if self.cached else f"{self.seconds:.1f}s"
        return f"runtime check: {took} - {who}; {when}"


def applies_to(profile: DeviceProfile) -> bool:
    return profile.runtime == "qnn"


def qnn_versions() -> dict[str, str] | None:
    """onnxruntime-qnn, its QNN SDK and onnxruntime versions, or None where onnxruntime-qnn is not installed."""
    try:
        version = metadata.version("onnxruntime-qnn")
    except metadata.PackageNotFoundError:
        return None
    try:
        from onnxruntime_qnn import build_and_package_info as info

        sdk = str(getattr(info, "qnn_version", "unknown"))
    except Exception:  # an install that cannot be imported is reported when the check runs
        sdk = "unknown"
    try:
        ort_version = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ort_version = "not installed"
    return {"onnxruntime_qnn": version, "qnn_sdk": sdk, "onnxruntime": ort_version}


def not_installed_reason() -> str:
    if sys.version_info < (3, 11):
        return (f"onnxruntime-qnn is not installed (it needs Python >= 3.11; this is "
                f"{platform.python_version()}), so no QNN runtime was asked")
    return "onnxruntime-qnn is not installed (pip install 'edgedeploy[qnn]'), so no QNN runtime was asked"


def qnn_settings(profile: DeviceProfile) -> dict[str, str]:
    """backend (the first of the profile's ``qnn.backends``, else its ``build.compute_unit``), soc_model and htp_arch
    (the profile's ``qnn:`` block, else the QCS8550's values)."""
    block = dict(getattr(profile, "qnn", None) or {})
    backends = [str(b).lower() for b in block.get("backends") or [] if str(b).lower() in ("gpu", "htp")]
    backend = backends[0] if backends else str(profile.build.get("compute_unit") or "gpu").lower()
    return {"backend": backend if backend in ("gpu", "htp") else "gpu",
            "soc_model": str(block.get("soc_model", DEFAULT_SOC_MODEL)),
            "htp_arch": str(block.get("htp_arch", DEFAULT_HTP_ARCH)).lower().lstrip("v")}


def provider_options(backend: str, settings: dict[str, str], fp16: bool) -> dict[str, str]:
    if backend == "gpu":
        return {"backend_type": "gpu"}
    options = {"backend_type": "htp", "soc_model": settings["soc_model"], "htp_arch": settings["htp_arch"],
               **FAST_PREPARE}
    if fp16:
        options["enable_htp_fp16_precision"] = "1"  # refuses to start without soc_model
    return options


def check_identity(profile: DeviceProfile) -> dict:
    """Everything the runtime's answer depends on besides the graph: joins the cache key and the audit stage's key."""
    versions = qnn_versions()
    if not applies_to(profile):
        return {"check": "none"}
    if versions is None:
        return {"check": CHECK_VERSION, "onnxruntime_qnn": "not installed"}
    settings = qnn_settings(profile)
    return {"check": CHECK_VERSION, **versions, **settings, "fp16": profile.precision == "fp16",
            "machine": platform.machine(), "adreno": os.path.exists(ADRENO_DEVICE), "fast_prepare": FAST_PREPARE}


# ------------------------------------------------------------------------------------ the session


@contextlib.contextmanager
def _native_output_kept_off() -> Iterator[None]:
    """Send what native code writes to file descriptors 1 and 2 (QNN's ``LIBNATIVE`` line) to a scratch file."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        scratch = tempfile.TemporaryFile()
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(scratch.fileno(), fd)
    except OSError:  # no real descriptors (an embedding host): leave the output alone
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        yield
        return
    try:
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        scratch.close()


def register_qnn_ep() -> list:
    """Register onnxruntime-qnn's EP library once per process (another registration, e.g. the QNN runner's, is
    reused: ONNX Runtime refuses a second one under the same name) and return its EP devices."""
    import onnxruntime as ort
    import onnxruntime_qnn

    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
        devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise RuntimeError("onnxruntime-qnn's library registered but offers no QNN EP device")
    return devices


def _device_for(devices: list, backend: str) -> list:
    """One QNN EP device, the board's NPU for htp or GPU for gpu where it lists them by type; on an x86_64 host the EP
    shows one CPU-typed device and ``backend_type`` alone picks the backend."""
    wanted = {"htp": "NPU", "gpu": "GPU"}[backend]
    typed = [d for d in devices if getattr(d.device.type, "name", str(d.device.type)).upper().endswith(wanted)]
    return [(typed or devices)[0]]


def _assignment(model_bytes: bytes, devices: list, options: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(ep, node name, op, domain) of every node, as the session assigned them."""
    import onnxruntime as ort

    devices = _device_for(devices, options["backend_type"])
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 4  # the EP logs every unsupported node as an error line: we report them
    session_options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    session_options.add_provider_for_devices(devices, options)
    with _native_output_kept_off():
        session = ort.InferenceSession(model_bytes, session_options)
    return [(sub.ep_name, node.name, node.op_type, node.domain)
            for sub in session.get_provider_graph_assignment_info() for node in sub.get_nodes()]


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"], name="probe")], "probe",
                              [value("x", TensorProto.FLOAT, [1, 8])], [value("y", TensorProto.FLOAT, [1, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


_BACKEND_WORKS: dict[str, bool] = {}


def _backend_works(devices: list, options: dict[str, str]) -> bool:
    key = json.dumps(options, sort_keys=True)
    if key not in _BACKEND_WORKS:
        try:
            _BACKEND_WORKS[key] = any(ep == EP_NAME for ep, *_ in _assignment(_probe_model(), devices, options))
        except Exception:
            _BACKEND_WORKS[key] = False
    return _BACKEND_WORKS[key]


def _named_model_bytes(path: Path, float16: bool) -> tuple[bytes, int]:
    """The graph with every unnamed node named as the audit names it (``Op(outputs)``), so the runtime's answer
    maps onto the audit's node names; and its node count. ``float16``: as a float16 graph with float32 inputs
    and outputs, the form the QNN runner gives the GPU backend for FP16 (edgedeploy.runtime.qnn)."""
    from edgedeploy.core.onnxfile import load_onnx
    from edgedeploy.host.audit import _node_name

    model = load_onnx(path)
    for node in model.graph.node:
        if not node.name:
            node.name = _node_name(node)
    nodes = len(model.graph.node)
    if float16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True)
    return model.SerializeToString(), nodes


def _where(backend: str) -> str:
    machine = platform.machine().lower()
    if backend == "htp" and machine in ("x86_64", "amd64"):
        return f"emulated on this {machine} host's CPU"
    return f"on this {machine} device"


def ask_runtime(path: str | os.PathLike[str], profile: DeviceProfile) -> RuntimeCheck:
    """Ask the QNN EP which nodes of ``path`` it takes (no cache; see :func:`runtime_check`)."""
    versions = qnn_versions()
    if versions is None:
        return RuntimeCheck(asked=False, reason=not_installed_reason())
    runtime = f"onnxruntime-qnn {versions['onnxruntime_qnn']}, QNN SDK {versions['qnn_sdk']}"
    start = time.perf_counter()
    try:
        devices = register_qnn_ep()
    except Exception as exc:
        return RuntimeCheck(asked=False, reason=f"onnxruntime-qnn is installed but its QNN EP did not load "
                                                f"({type(exc).__name__}: {_first_line(exc)})")
    settings = qnn_settings(profile)
    fp16 = profile.precision == "fp16"
    backend, note = settings["backend"], ""
    if backend == "gpu" and not _backend_works(devices, provider_options("gpu", settings, fp16)):
        backend = "htp"
        note = ("the profile's GPU backend took nothing here (it needs an Adreno GPU"
                f"{'' if os.path.exists(ADRENO_DEVICE) else f'; no {ADRENO_DEVICE}'}), so HTP answered")
    options = provider_options(backend, settings, fp16)
    if not _backend_works(devices, options):
        return RuntimeCheck(asked=False, reason=f"{runtime} is installed but neither its GPU nor its HTP backend "
                                                "takes a one-node probe graph here")
    try:
        model_bytes, nodes = _named_model_bytes(Path(path), float16=backend == "gpu" and fp16)
    except Exception as exc:  # e.g. a graph over protobuf's 2 GB that cannot be passed as bytes
        return RuntimeCheck(asked=False, reason=f"the graph could not be handed to the runtime "
                                                f"({type(exc).__name__}: {_first_line(exc)})")
    check = RuntimeCheck(asked=True, runtime=runtime, onnxruntime=versions["onnxruntime"], backend=backend,
                         where=_where(backend), note=note, nodes=nodes)
    try:
        assigned = _assignment(model_bytes, devices, options)
    except Exception as exc:
        check.failed = f"{type(exc).__name__}: {_first_line(exc)}"
    else:
        check.taken = sum(ep == EP_NAME for ep, *_ in assigned)
        check.refused = [{"node": name, "op": op, "domain": domain} for ep, name, op, domain in assigned if ep != EP_NAME]
    check.seconds = round(time.perf_counter() - start, 2)
    return check


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]


def runtime_check(path: str | os.PathLike[str], profile: DeviceProfile, model_sha256: str | None = None,
                  cache_dir: str | os.PathLike[str] | None = None) -> RuntimeCheck:
    """The runtime's answer for ``path``, from the cache (``$EDGEDEPLOY_CACHE/qnn-check/``) when this graph was
    asked with the same runtime, versions and settings before."""
    identity = check_identity(profile)
    if qnn_versions() is None:
        return RuntimeCheck(asked=False, reason=not_installed_reason())
    model_sha256 = model_sha256 or sha256_file(path)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "qnn-check"
    record_path = folder / f"{model_sha256[:24]}-{sha256_json(identity)[:12]}.json"
    try:
        record = json.loads(record_path.read_text())
        if record.get("identity") == identity and record.get("model_sha256") == model_sha256:
            cached = RuntimeCheck.from_dict(record["check"])
            cached.cached = True
            return cached
    except (OSError, ValueError, KeyError, TypeError):
        pass
    check = ask_runtime(path, profile)
    if check.asked and not check.failed:  # a runtime that could not answer is asked again next time
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record_path, {"model_sha256": model_sha256, "identity": identity, "check": check.to_dict()})
    return check


def skipped(reason: str = "skipped (--no-runtime-check)") -> RuntimeCheck:
    return RuntimeCheck(asked=False, reason=reason)
