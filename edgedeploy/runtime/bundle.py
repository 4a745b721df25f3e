"""Reading a finished bundle (``out/<target>/``) back: its manifest, and which target it was built for."""

from __future__ import annotations

import json
from pathlib import Path

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import write_json_atomic

MANIFEST = "manifest.json"
LAYOUT = 2  # 2: manifest.target carries the profile's build settings, so the device steps need no profile lookup


class BundleError(EdgeDeployError):
    """A bundle directory is missing, unfinished, or was built for another target."""


def read_manifest(bundle_dir: str | Path) -> dict:
    """The bundle's ``manifest.json``; a folder without one is not a finished bundle."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle directory {bundle_dir} does not exist: run `edgedeploy build --target ...` first")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} has no {MANIFEST}: it is not a finished edgedeploy bundle; "
                          "run `edgedeploy build` again")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not readable JSON ({type(exc).__name__}): rebuild the bundle") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("target"), dict):
        raise BundleError(f"{path} is not an edgedeploy manifest (no target section): rebuild the bundle")
    return manifest


def require_layout(bundle_dir: str | Path, manifest: dict, what: str) -> None:
    """Refuse a bundle written by an older edgedeploy, whose manifest lacks what the device steps read."""
    layout = manifest.get("layout", 1)
    if layout != LAYOUT or not isinstance(manifest["target"].get("build"), dict):
        name = manifest["target"].get("name", "TARGET")
        raise BundleError(f"{bundle_dir} was written by an older edgedeploy (bundle layout {layout}, this one reads "
                          f"{LAYOUT}): {what} cannot read its device settings; rebuild it on the host with "
                          f"`edgedeploy build --target {name}` and copy it again")


def require_runtime(bundle_dir: str | Path, manifest: dict, runtime: str, what: str) -> None:
    """Refuse a bundle built for a target of another runtime, naming both."""
    target = manifest["target"]
    if target.get("runtime") != runtime:
        wanted = {"tensorrt": "jetson-orin-nano", "qnn": "rb5-gen2"}.get(runtime, runtime)
        raise BundleError(f"{bundle_dir} is a bundle for {target.get('name')} ({target.get('runtime')}), "
                          f"but {what} needs a {runtime} bundle: use out/{wanted}/ "
                          f"(edgedeploy build --target {wanted})")


def update_manifest(bundle_dir: str | Path, section: str, values: dict) -> None:
    """Merge ``values`` into ``manifest[section]`` and rewrite the manifest atomically (after on-device steps)."""
    path = Path(bundle_dir) / MANIFEST
    manifest = read_manifest(bundle_dir)
    manifest.setdefault(section, {}).update(values)
    write_json_atomic(path, manifest)


def bundle_of(model_path: str | Path) -> tuple[Path, dict | None]:
    """The folder holding a model file and its manifest, when it has one (a loose model has none)."""
    folder = Path(model_path).resolve().parent
    if (folder / MANIFEST).is_file():
        return folder, read_manifest(folder)
    return folder, None
