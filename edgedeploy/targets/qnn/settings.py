"""The QNN target's build settings, read from the profile's ``build:`` section."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgedeploy.core.errors import ProfileError
from edgedeploy.core.profiles import DeviceProfile

DEFAULT_LIB_TARGET = "aarch64-oe-linux-gcc11.2"


@dataclass(frozen=True)
class HubSettings:
    device: str
    target_runtime: str
    compute_unit: str
    qnn_options: str
    qairt_version: str
    device_note: str = ""
    lib_target: str = DEFAULT_LIB_TARGET
    rejected: dict = field(default_factory=dict)

    @classmethod
    def from_profile(cls, profile: DeviceProfile) -> "HubSettings":
        b = profile.build
        needed = ("hub_device", "target_runtime", "compute_unit", "qairt_version")  # qnn_options may be "" (HTP)
        missing = [k for k in needed if not b.get(k)]
        if missing:
            raise ProfileError(f"device profile {profile.path}: build section lacks {', '.join(missing)} "
                               "(needed for the QNN / AI Hub build)")
        return cls(str(b["hub_device"]), str(b["target_runtime"]), str(b["compute_unit"]), str(b["qnn_options"]),
                   str(b["qairt_version"]), str(b.get("hub_device_note", "")), str(b.get("qnn_lib_target", DEFAULT_LIB_TARGET)),
                   dict(b.get("rejected_hub_devices") or {}))

    @property
    def compile_options(self) -> str:
        return f"--target_runtime {self.target_runtime} --qairt_version {self.qairt_version}"

    @property
    def run_options(self) -> str:
        """Options of the profile and inference jobs: where, at which precision and on which QAIRT the DLC runs."""
        qnn = f" --qnn_options {self.qnn_options}" if self.qnn_options else ""
        return f"--compute_unit {self.compute_unit}{qnn} --qairt_version {self.qairt_version}"

    @property
    def htp(self) -> bool:
        """An HTP (NPU) build: AI Hub compiles to a QNN context binary instead of a GPU DLC."""
        return self.target_runtime == "qnn_context_binary"

    @property
    def artifact(self) -> str:
        return "model_hub_ctx.bin" if self.htp else "model.dlc"

    def check_device(self, profile_path) -> None:
        """Refuse a hub device known to be the wrong chip (e.g. ``RB5 (Proxy)``, the older QCS8250)."""
        if self.device in self.rejected:
            raise ProfileError(f"AI Hub device {self.device!r} is {self.rejected[self.device]}: set build.hub_device "
                               f"to \"QCS8550 (Proxy)\" in {profile_path}")

    def to_dict(self) -> dict:
        return {"hub_device": self.device, "hub_device_note": self.device_note, "compile_options": self.compile_options, "profile_options": self.run_options,
                "inference_options": self.run_options, "qairt_version": self.qairt_version,
                "qnn_lib_target": self.lib_target}
