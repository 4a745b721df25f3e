"""Which optional extra (setup.cfg) provides what, and the one line a command says when one is missing.

The core install is the device side; ``[host]`` adds export, simplify, fidelity's PyTorch reference,
precision and train; ``[jetson]`` Polygraphy's CUDA wrapper (TensorRT itself comes from JetPack);
``[qnn]`` Qualcomm's runtime (onnxruntime-qnn, Python 3.11+ on Linux x86_64/aarch64) and the AI Hub client.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata

from edgedeploy.core.errors import EdgeDeployError

MODULE_EXTRA = {"torch": "host", "torchvision": "host", "timm": "host", "onnxsim": "host", "scipy": "host",
                "safetensors": "host", "skimage": "host", "matplotlib": "host", "polygraphy": "jetson",
                "qai_hub": "qnn"}
HOST_MODULES = ("torch", "timm", "onnxsim", "scipy", "skimage")


class MissingExtraError(EdgeDeployError):
    """A command needs an optional extra this install lacks (exit 2)."""


def missing_extra_line(module: str, what: str = "this command") -> str | None:
    """The one line for ``module`` missing, or None when no extra provides it."""
    extra = MODULE_EXTRA.get(module.split(".")[0])
    if extra is None:
        return None
    hint = (" (on x86 first `pip install torch==2.14.1 torchvision==0.29.1`, or your platform's PyTorch)"
            if extra == "host" else "")
    return f"{what} needs {module.split('.')[0]}, which the core install leaves out: pip install 'edgedeploy[{extra}]'{hint}"


def require_host(what: str) -> None:
    """Refuse, before any work, a host-side command where the [host] extra is not installed."""
    for module in HOST_MODULES:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(missing_extra_line(module, what))


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or "not installed" (recorded in caches and checkpoints)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
