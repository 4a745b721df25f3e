"""Device profiles: one YAML file per device, the single source of truth for what a target supports.

A profile is validated strictly on load so that a typo in a hand-edited file is an error naming the
file and the field, not a silently ignored setting. Adding a device means adding a file to
``device_profiles/`` at the repository's top level (or passing a path to one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edgedeploy.core import yamlfiles
from edgedeploy.core.errors import ProfileError
from edgedeploy.core.resources import resource_dir

RUNTIMES = ("tensorrt", "qnn")
PRECISIONS = ("fp16", "fp32")
# integer precisions a profile may list in runtime.precisions (edgedeploy build --precision; edgedeploy.targets.quantize):
# int8 = TensorRT's explicit quantisation (symmetric signed INT8 QDQ), w8a16/w8a8 = QNN HTP (8-bit weights, 16/8-bit
# activations)
QUANTIZED_PRECISIONS = ("int8", "w8a16", "w8a8")
ARTIFACTS = ("engine", "dlc")

_SCHEMA: dict[str, Any] = {
    "schema_version": int,
    "name": str,
    "display_name": str,
    "device": {
        "chip": str,
        "accelerator": str,
        "memory_gb": (int, float),
        "memory_shared_with_cpu": bool,
    },
    "runtime": {"name": str, "version": str, "precision": str, "artifact": str,
                # every precision `edgedeploy build --precision` may ask for (default: runtime.precision alone)
                "precisions": yamlfiles.OptionalField(list)},
    "graph": {
        "opset_min": int,
        "opset_max": int,
        "max_rank": int,
        "static_shapes_required": bool,
        "allowed_dtypes": list,
        "model_memory_fraction": (int, float),
        "fp16_watch_ops": list,
        "denied_ops": dict,
    },
    "supported_ops": {"source": str, "source_version": str, "ops": list, "notes": dict},
    "build": dict,
    # a published latency for this device, shown beside measured ones as a reference (never as ours)
    "reference_latency": yamlfiles.OptionalField({"ms": (int, float), "source": str}),
    # QNN targets: the chip as ONNX Runtime's QNN execution provider names it (onnxruntime-qnn's soc_model and htp_arch
    # provider options) and the QNN backends the board has (edgedeploy score --runtime qnn-htp|qnn-gpu)
    "qnn": yamlfiles.OptionalField({"soc_model": int, "htp_arch": int, "backends": list}),
}
QNN_BACKENDS = ("gpu", "htp")
QNN_HTP_ARCHS = (68, 69, 73, 75, 79, 81)  # QnnHtpDevice_Arch_t values (V68 ... V81)


@dataclass(frozen=True)
class DeviceProfile:
    """What one device's runtime accepts, as read from its profile file."""

    name: str
    path: Path
    sha256: str
    display_name: str
    chip: str
    accelerator: str
    memory_gb: float
    memory_shared_with_cpu: bool
    runtime: str
    runtime_version: str
    precision: str
    artifact: str
    opset_min: int
    opset_max: int
    max_rank: int
    static_shapes_required: bool
    allowed_dtypes: frozenset[str]
    model_memory_fraction: float
    fp16_watch_ops: frozenset[str]
    denied_ops: Mapping[str, str]
    supported_ops: frozenset[str]
    ops_source: str
    ops_source_version: str
    op_notes: Mapping[str, str]
    build: Mapping[str, Any]
    reference_latency: Mapping[str, Any] | None = None
    qnn: Mapping[str, Any] | None = None
    precisions: tuple[str, ...] = ()  # runtime.precisions, or (runtime.precision,) when the profile lists none

    @property
    def model_memory_budget_bytes(self) -> int:
        return int(self.memory_gb * self.model_memory_fraction * 1024**3)

    def summary(self) -> dict[str, Any]:
        """The facts a manifest records about the profile it was built for."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "sha256": self.sha256,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "precision": self.precision,
            "precisions": list(self.precisions or (self.precision,)),
            "artifact": self.artifact,
            "opset": [self.opset_min, self.opset_max],
            "max_rank": self.max_rank,
            "ops_source": f"{self.ops_source} ({self.ops_source_version})",
            "build": dict(self.build),  # what the device steps read from the bundle alone
            "reference_latency": dict(self.reference_latency) if self.reference_latency else None,
            "qnn": dict(self.qnn) if self.qnn else None,  # what `edgedeploy score --runtime qnn-*` reads on the board
        }


def profiles_dir() -> Path:
    return resource_dir("device_profiles", "EDGEDEPLOY_PROFILES")


def list_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name_or_path: str | os.PathLike[str]) -> DeviceProfile:
    """Load a profile by device name (``rb5-gen2``) or by path to a YAML file."""
    path = yamlfiles.resolve(str(name_or_path), profiles_dir(), "device profile", ProfileError)
    data, sha256 = yamlfiles.load(path, "device profile", ProfileError, _SCHEMA)
    return _build(data, path, sha256)


def _choice(value: str, allowed: tuple[str, ...], path: Path, field: str) -> str:
    if value not in allowed:
        raise ProfileError(f"device profile {path}: field {field} is {value!r}, expected one of {', '.join(allowed)}")
    return value


def _string_set(values: list, path: Path, field: str) -> frozenset[str]:
    if not all(isinstance(v, str) for v in values):
        raise ProfileError(f"device profile {path}: field {field} must be a list of strings")
    return frozenset(values)


def _build(data: dict, path: Path, sha256: str) -> DeviceProfile:
    if data["schema_version"] != 1:
        raise ProfileError(f"device profile {path}: schema_version {data['schema_version']} is not supported (expected 1)")
    graph, runtime, ops = data["graph"], data["runtime"], data["supported_ops"]
    if not 0 < graph["model_memory_fraction"] <= 1:
        raise ProfileError(f"device profile {path}: field graph.model_memory_fraction must be in (0, 1]")
    if graph["opset_min"] > graph["opset_max"]:
        raise ProfileError(f"device profile {path}: graph.opset_min is above graph.opset_max")
    return DeviceProfile(
        name=data["name"],
        path=path,
        sha256=sha256,
        display_name=data["display_name"],
        chip=data["device"]["chip"],
        accelerator=data["device"]["accelerator"],
        memory_gb=float(data["device"]["memory_gb"]),
        memory_shared_with_cpu=data["device"]["memory_shared_with_cpu"],
        runtime=_choice(runtime["name"], RUNTIMES, path, "runtime.name"),
        runtime_version=runtime["version"],
        precision=_choice(runtime["precision"], PRECISIONS, path, "runtime.precision"),
        artifact=_choice(runtime["artifact"], ARTIFACTS, path, "runtime.artifact"),
        opset_min=graph["opset_min"],
        opset_max=graph["opset_max"],
        max_rank=graph["max_rank"],
        static_shapes_required=graph["static_shapes_required"],
        allowed_dtypes=_string_set(graph["allowed_dtypes"], path, "graph.allowed_dtypes"),
        model_memory_fraction=float(graph["model_memory_fraction"]),
        fp16_watch_ops=_string_set(graph["fp16_watch_ops"], path, "graph.fp16_watch_ops"),
        denied_ops=dict(graph["denied_ops"]),
        supported_ops=_string_set(ops["ops"], path, "supported_ops.ops"),
        ops_source=ops["source"],
        ops_source_version=ops["source_version"],
        op_notes=dict(ops["notes"]),
        build=dict(data["build"]),
        reference_latency=data.get("reference_latency"),
        qnn=_qnn_block(data.get("qnn"), runtime["name"], path),
        precisions=_precisions(runtime, path),
    )


def _precisions(runtime: dict, path: Path) -> tuple[str, ...]:
    listed = runtime.get("precisions")
    if listed is None:
        return (runtime["precision"],)
    allowed = (*PRECISIONS, *QUANTIZED_PRECISIONS)
    if not listed or any(p not in allowed for p in listed) or len(set(listed)) != len(listed):
        raise ProfileError(f"device profile {path}: field runtime.precisions must list some of {', '.join(allowed)} "
                           f"once each, got {listed!r}")
    if runtime["precision"] not in listed:
        raise ProfileError(f"device profile {path}: runtime.precisions must include runtime.precision "
                           f"({runtime['precision']})")
    return tuple(listed)


def _qnn_block(block: dict | None, runtime: str, path: Path) -> dict | None:
    if block is None:
        return None
    if runtime != "qnn":
        raise ProfileError(f"device profile {path}: a qnn: block needs runtime.name qnn (this one is {runtime})")
    if block["soc_model"] <= 0:
        raise ProfileError(f"device profile {path}: field qnn.soc_model must be a QNN SoC model number above 0")
    if block["htp_arch"] not in QNN_HTP_ARCHS:
        raise ProfileError(f"device profile {path}: field qnn.htp_arch is {block['htp_arch']}, expected one of "
                           f"{', '.join(map(str, QNN_HTP_ARCHS))}")
    backends = list(block["backends"])
    if not backends or any(b not in QNN_BACKENDS for b in backends) or len(set(backends)) != len(backends):
        raise ProfileError(f"device profile {path}: field qnn.backends must list some of {', '.join(QNN_BACKENDS)} "
                           f"once each, got {backends!r}")
    return {"soc_model": block["soc_model"], "htp_arch": block["htp_arch"], "backends": backends}
