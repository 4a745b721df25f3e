"""Where the project's data folders (device profiles, recipes) live.

They sit beside the package in the source tree (an editable install reads them in place); an
environment variable points elsewhere when a user keeps their own set.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent


def resource_dir(name: str, env_var: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    for base in (PROJECT_DIR, PACKAGE_DIR):
        if (base / name).is_dir():
            return base / name
    return PROJECT_DIR / name
