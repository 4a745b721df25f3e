"""Stage *compile*: turn a bundle's audited ONNX into the device's artifact, or the exact steps to do so.

``prepare_target`` dispatches on the profile's runtime: ``tensorrt`` (Jetson: ``build_engine.sh``
with the trtexec command, the engine itself when run on a matching device) or ``qnn`` (RB5 Gen2:
QAIRT script and AI Hub job script, and the AI Hub compile/profile jobs when the hub is usable).
It returns the manifest's ``compile`` record. Heavy packages (tensorrt, qai_hub) are imported only
inside, where needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgedeploy.core.profiles import DeviceProfile
from edgedeploy.core.model_recipes import Recipe

Log = Callable[[str], None]


def prepare_target(bundle_dir: Path, profile: DeviceProfile, recipe: Recipe, manifest: dict,
                   keep_fp32: tuple[str, ...] = (), log: Log = print) -> dict:
    """Write the target's compile artifacts into ``bundle_dir``; returns the record for ``manifest["compile"]``.

    An old ``manifest.json`` is removed first: until the build writes a new one, the bundle is not finished
    (a failure here, e.g. a bad --keep-fp32 or a failed hub job, must not leave a manifest describing older files).
    """
    (Path(bundle_dir) / "manifest.json").unlink(missing_ok=True)
    if profile.runtime == "tensorrt":
        from edgedeploy.targets.tensorrt.prepare import prepare
    else:
        from edgedeploy.targets.qnn.prepare import prepare
    return prepare(Path(bundle_dir), profile, recipe, manifest, tuple(keep_fp32), log)


def next_steps(profile: DeviceProfile, manifest: dict) -> str:
    """The bundle README's "What runs next" text for this runtime and compile outcome."""
    from edgedeploy.targets.readme import next_steps as text

    return text(profile, manifest)


def file_rows(manifest: dict) -> str:
    """README table rows (markdown) for the files the compile stage added to the bundle."""
    from edgedeploy.targets.readme import file_rows as rows

    return rows(manifest)
