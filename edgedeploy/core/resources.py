"""Where the package's data folders (device profiles, recipes) live.

In the repository they sit at the top level, beside the package (``device_profiles/``, ``recipes/``
with ``recipes/train/``); setup.cfg's ``package_dir`` maps them into the package, so a wheel or a
non-editable install has them at ``edgedeploy/device_profiles/`` and ``edgedeploy/recipes/`` in
site-packages. An editable install runs the checkout's ``edgedeploy/``, whose data folders are its
neighbours (setuptools' editable finder cannot import a mapped folder without an ``__init__.py``, so
``importlib.resources`` is not asked for them). An environment variable points elsewhere when a user
keeps their own set.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

CHECKOUT_MARKER = "setup.cfg"  # beside edgedeploy/ in a source checkout, never in site-packages


def resource_dir(name: str, env_var: str) -> Path:
    """``$env_var`` when set; else ``name`` inside the installed package (a real folder: the package is not
    zip-safe), or beside it in a source checkout (an editable install)."""
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    package = Path(str(resources.files("edgedeploy")))
    installed = package / name
    checkout = package.parent / name
    if not installed.is_dir() and checkout.is_dir() and (package.parent / CHECKOUT_MARKER).is_file():
        return checkout
    return installed


def cache_root() -> Path:
    """``$EDGEDEPLOY_CACHE`` or ``~/.cache/edgedeploy``: the demo benchmark, score caches, FP16 graphs, features."""
    base = os.environ.get("EDGEDEPLOY_CACHE", "").strip()
    return Path(os.path.abspath(Path(base).expanduser() if base else Path.home() / ".cache" / "edgedeploy"))
