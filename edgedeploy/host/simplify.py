"""Stage *simplify*: onnxsim (constant folding, shape inference), verified against PyTorch again.

A model onnxsim cannot handle (it fails, or it breaks equivalence) is kept unsimplified with a
warning: the build goes on with the exported graph.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgedeploy.core.errors import BuildError
from edgedeploy.host.export import load_reference, verify_against_reference
from edgedeploy.core.files import atomic_path
from edgedeploy.core.model_recipes import Recipe

ONNXSIM_LIMIT_BYTES = 2 * 1024**3


def simplify_onnx(onnx_path: Path, simplified_path: Path, reference_path: Path, recipe: Recipe) -> tuple[dict, list[str]]:
    """Write the simplified model (or a copy of the input, with a warning) to ``simplified_path``; ``recipe`` is
    a Recipe or an imported ONNX model (``edgedeploy.host.intake``)."""
    import onnx
    import onnxsim

    images, reference = load_reference(reference_path, recipe.card.output_names)
    warnings_: list[str] = []
    with atomic_path(simplified_path) as tmp:
        reason = None
        if onnx_path.stat().st_size >= ONNXSIM_LIMIT_BYTES:
            reason = "the model is over 2 GB, which onnxsim cannot handle"
        else:
            try:
                simplified, ok = onnxsim.simplify(onnx.load(str(onnx_path)))
                if not ok:
                    reason = "onnxsim's own check failed"
                else:
                    onnx.save(simplified, str(tmp))
                    details = verify_against_reference(tmp, recipe, images, reference, stage="simplify")
            except BuildError as exc:
                reason = str(exc)
            except Exception as exc:  # onnxsim raises RuntimeError/ValueError/... from C++
                reason = f"onnxsim failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if reason:
            warnings_.append(f"model kept unsimplified: {reason}")
            shutil.copyfile(onnx_path, tmp)
            details = verify_against_reference(tmp, recipe, images, reference, stage="simplify")
            details["simplified"] = False
        else:
            details["simplified"] = True
    return details, warnings_
