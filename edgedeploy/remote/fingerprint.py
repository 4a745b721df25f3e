"""The board's state, recorded with every score it makes (score header ``board_*`` lines and the report).

Collected on the board by the agent (``collect``), from files and tools that exist there, each read with a short
timeout and left out where absent or unreadable:

* ``model``: ``/proc/device-tree/model`` (Jetson and Qualcomm boards both publish it);
* ``l4t``: the first line of ``/etc/nv_tegra_release``; ``jetpack``: the ``nvidia-jetpack`` package's version;
* ``os``: ``/etc/os-release`` PRETTY_NAME (a Qualcomm Linux image names its version there); ``kernel``, ``arch``;
* ``tensorrt``, ``cuda``, ``onnxruntime``, ``onnxruntime_qnn``/``qnn_sdk``: the runtime versions;
* ``power_mode``: ``nvpmodel -q``; ``clocks_locked``: ``jetson_clocks --show`` where it answers, else whether the
  GPU's devfreq minimum equals its maximum; ``gpu_freq_hz``/``emc_freq_hz`` where readable.

Versions and modes only: never environment variables, user names, tokens or paths under the home folder.
Standard library only (the runtime versions are asked from the packages when they import), no PyTorch.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

TOOL_TIMEOUT = 5
MAX_VALUE = 160
# the order of the score header's board_* lines and of the report's board table
FIELDS = ("model", "kind", "os", "l4t", "jetpack", "kernel", "arch", "tensorrt", "cuda", "onnxruntime",
          "onnxruntime_qnn", "qnn_sdk", "power_mode", "clocks_locked", "gpu_freq_hz", "emc_freq_hz", "python",
          "edgedeploy")
GPU_DEVFREQ = ("/sys/class/devfreq/17000000.gpu", "/sys/class/devfreq/17000000.ga10b", "/sys/devices/gpu.0/devfreq/17000000.gpu",
               "/sys/class/kgsl/kgsl-3d0/devfreq")
EMC_RATE = ("/sys/kernel/debug/bpmp/debug/clk/emc/rate", "/sys/kernel/debug/clk/emc/clk_rate")


def clean(value: object) -> str:
    """One line, printable, bounded: safe for a ``# key: value`` header line and a table cell."""
    text = " ".join(str(value).replace("\x00", " ").split())
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:MAX_VALUE]


def _read(path: str) -> str | None:
    try:
        return clean(Path(path).read_bytes().decode("utf-8", "replace"))
    except OSError:
        return None


def _tool(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _os_release() -> str | None:
    text = _read_raw("/etc/os-release")
    if not text:
        return None
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return clean(match.group(1)) if match else None


def _read_raw(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a broken install is "not there" for the fingerprint
        return None
    return clean(getattr(mod, "__version__", "unknown"))


def _cuda() -> str | None:
    text = _read_raw("/usr/local/cuda/version.json")
    if text:
        match = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([^"]+)"', text)
        if match:
            return clean(match.group(1))
    out = _tool(["nvcc", "--version"])
    match = re.search(r"release ([0-9.]+)", out or "")
    return match.group(1) if match else None


def _power_mode() -> str | None:
    out = _tool(["nvpmodel", "-q"])
    if not out:
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("NVPM WARN")]
    return clean(" ".join(lines[:2])) if lines else None


def _devfreq() -> dict[str, str]:
    for folder in GPU_DEVFREQ:
        cur, low, high = (_read(f"{folder}/{name}") for name in ("cur_freq", "min_freq", "max_freq"))
        if cur:
            return {"cur": cur, "min": low or "", "max": high or ""}
    return {}


def _clocks_locked(devfreq: dict[str, str]) -> str:
    out = _tool(["jetson_clocks", "--show"])
    if out:
        # jetson_clocks --show prints "GPU MinFreq=... MaxFreq=... CurrentFreq=..." lines; locked = min == max
        match = re.search(r"GPU MinFreq=(\d+) MaxFreq=(\d+)", out)
        if match:
            return "yes" if match.group(1) == match.group(2) else "no"
    if devfreq.get("min") and devfreq.get("max"):
        return "yes" if devfreq["min"] == devfreq["max"] else "no"
    return "unknown"


def board_kind(model: str | None, l4t: str | None, os_name: str | None) -> str:
    """``jetson``, ``qualcomm`` or ``other``: which bundles the board runs with its own runtime."""
    text = " ".join(filter(None, (model, os_name))).lower()
    if l4t or "jetson" in text or "nvidia" in text:
        return "jetson"
    if any(word in text for word in ("qualcomm", "qcs8550", "qcs", "rb5", "snapdragon")):
        return "qualcomm"
    return "other"


def collect() -> dict[str, str]:
    """The board's fingerprint, run on the board (the agent's ``hello``)."""
    from edgedeploy import __version__

    model = _read("/proc/device-tree/model")
    l4t_text = _read_raw("/etc/nv_tegra_release")
    l4t = clean(l4t_text.splitlines()[0]) if l4t_text and l4t_text.strip() else None
    os_name = _os_release()
    jetpack = None
    if l4t:
        out = _tool(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
        jetpack = clean(out) if out else None
    devfreq = _devfreq()
    emc = next((value for value in (_read(p) for p in EMC_RATE) if value), None)
    qnn = _version("onnxruntime_qnn")
    qnn_sdk = None
    if qnn:
        try:
            from edgedeploy.runtime.qnn import versions

            qnn_sdk = clean(versions().get("qnn_sdk") or "")
        except Exception:  # noqa: BLE001
            qnn_sdk = None
    found = {"model": model, "kind": board_kind(model, l4t, os_name), "os": os_name, "l4t": l4t, "jetpack": jetpack,
             "kernel": clean(platform.release()), "arch": clean(platform.machine()), "tensorrt": _version("tensorrt"),
             "cuda": _cuda(), "onnxruntime": _version("onnxruntime"), "onnxruntime_qnn": qnn, "qnn_sdk": qnn_sdk,
             "power_mode": _power_mode(), "clocks_locked": _clocks_locked(devfreq),
             "gpu_freq_hz": devfreq.get("cur"), "emc_freq_hz": emc, "python": clean(platform.python_version()),
             "edgedeploy": __version__}
    return {k: clean(v) for k, v in found.items() if v not in (None, "")}


def header_fields(fingerprint: dict[str, str], name: str) -> dict[str, str]:
    """The score header's ``board_*`` lines: the board's name as given to ``--remote`` and its fingerprint."""
    fields = {"board": clean(name)}
    for key in FIELDS:
        if key in fingerprint:
            fields[f"board_{key}"] = clean(fingerprint[key])
    return fields


def from_header(meta: dict[str, str]) -> dict[str, str]:
    """The fingerprint back from a score header's ``board_*`` lines."""
    return {k[len("board_"):]: v for k, v in meta.items() if k.startswith("board_")}


def describe(fingerprint: dict[str, str]) -> str:
    """One line for the terminal."""
    parts = [fingerprint.get("model") or f"{fingerprint.get('arch', '?')} machine (no device-tree model)"]
    for key, label in (("l4t", "L4T"), ("jetpack", "JetPack"), ("os", ""), ("tensorrt", "TensorRT"), ("cuda", "CUDA"),
                       ("onnxruntime", "ONNX Runtime"), ("qnn_sdk", "QNN SDK"), ("power_mode", "power mode")):
        if fingerprint.get(key) and not (key == "os" and fingerprint.get("l4t")):
            parts.append(f"{label} {fingerprint[key]}".strip())
    parts.append(f"clocks locked: {fingerprint.get('clocks_locked', 'unknown')}")
    return "; ".join(parts)


def clock_warning(fingerprint: dict[str, str], name: str) -> str | None:
    """One line when the clocks are not known to be locked: latency then varies from run to run."""
    locked = fingerprint.get("clocks_locked", "unknown")
    if locked == "yes":
        return None
    how = " (run `sudo jetson_clocks` to lock them)" if fingerprint.get("kind") == "jetson" else ""
    state = "not locked" if locked == "no" else "not known to be locked"
    return f"warning: {name}: clocks {state}{how}: its latency figures vary from run to run"

