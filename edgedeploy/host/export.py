"""Stage *export*: PyTorch EdgeZSAD → ONNX with static shapes at the recipe's opset, verified.

Verification runs real photographs (textures and a portrait shipped with scikit-image) through
PyTorch and ONNX Runtime and records the max abs difference of both outputs; above the recipe's
tolerance the export fails and no file is left behind.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgedeploy.core.errors import BuildError
from edgedeploy.core.files import atomic_path
from edgedeploy.core.onnxfile import max_abs_diffs, run_onnx
from edgedeploy.core.model_recipes import Recipe

VERIFICATION_PHOTOS = ("brick", "grass", "gravel", "astronaut")


def verification_images(size: int) -> np.ndarray:
    """(N, 3, size, size) float32 in [0, 1] from photographs that ship with scikit-image."""
    import skimage.data
    from PIL import Image

    images = []
    for name in VERIFICATION_PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        resized = photo.resize((size, size), Image.BILINEAR)
        images.append(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(images)


def torch_outputs(model, images: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        outs = [model(torch.from_numpy(images[i:i + 1])) for i in range(len(images))]
    return [np.concatenate([o[k].numpy() for o in outs]) for k in range(2)]


def export_onnx(model, recipe: Recipe, onnx_path: Path, reference_path: Path) -> dict:
    """Export ``model`` to ``onnx_path``; save the verification inputs and PyTorch outputs to
    ``reference_path`` (an .npz later stages verify against). Returns the recorded details."""
    import onnx
    import torch

    images = verification_images(recipe.model.input_size)
    reference = torch_outputs(model, images)
    dummy = torch.from_numpy(images[:1])
    with atomic_path(onnx_path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), str(tmp), input_names=[recipe.input_name],
                              output_names=list(recipe.output_names), opset_version=recipe.opset,
                              dynamo=False, do_constant_folding=True)
        onnx.checker.check_model(str(tmp))
        details = verify_against_reference(tmp, recipe, images, reference, stage="export")
    with atomic_path(reference_path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images, **dict(zip(recipe.output_names, reference)))
    return details


def load_reference(reference_path: Path, recipe: Recipe) -> tuple[np.ndarray, list[np.ndarray]]:
    data = np.load(reference_path)
    return data["images"], [data[name] for name in recipe.output_names]


def verify_against_reference(onnx_path: Path, recipe: Recipe, images: np.ndarray,
                             reference: list[np.ndarray], stage: str) -> dict:
    outputs = run_onnx(onnx_path, images, recipe.input_name)
    diffs = max_abs_diffs(reference, outputs, recipe.output_names)
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > recipe.tolerance:
        raise BuildError(f"{stage}: ONNX output {worst!r} differs from PyTorch by {diffs[worst]:.3g} "
                         f"(tolerance {recipe.tolerance:g}); the graph is not equivalent, do not deploy it")
    return {"verified_images": int(len(images)), "photos": list(VERIFICATION_PHOTOS),
            "max_abs_diff": diffs, "tolerance": recipe.tolerance}
