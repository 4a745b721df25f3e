"""Where the package's data folders (device profiles, recipes) live.

They ship inside the package (``edgedeploy/device_profiles/``, ``edgedeploy/recipes/``) and are
found through ``importlib.resources``, so an installed wheel has them as an editable checkout
does; an environment variable points elsewhere when a user keeps their own set.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def resource_dir(name: str, env_var: str) -> Path:
    """``$env_var`` when set, else the package's own ``name`` folder (a real folder: the package is not zip-safe)."""
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    return Path(str(resources.files("edgedeploy").joinpath(name)))


def cache_root() -> Path:
    """``$EDGEDEPLOY_CACHE`` or ``~/.cache/edgedeploy``: the demo benchmark, score caches, FP16 graphs, features."""
    base = os.environ.get("EDGEDEPLOY_CACHE", "").strip()
    return Path(os.path.abspath(Path(base).expanduser() if base else Path.home() / ".cache" / "edgedeploy"))
