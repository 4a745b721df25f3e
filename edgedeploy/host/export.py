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
    reference = dict(zip(recipe.output_names, torch_outputs(model, images)))
    dummy = torch.from_numpy(images[:1])
    with atomic_path(onnx_path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), str(tmp), input_names=[recipe.input_name],
                              output_names=list(recipe.output_names), opset_version=recipe.opset,
                              dynamo=False, do_constant_folding=True)
        onnx.checker.check_model(str(tmp))
        details = verify_against_reference(tmp, recipe, images, reference, stage="export")
    save_reference(reference_path, images, reference)
    return details


def save_reference(reference_path: Path, images: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    """The verification images ([0, 1], before the card's pre-processing) and the reference outputs by name."""
    with atomic_path(reference_path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images, **outputs)


def load_reference(reference_path: Path, names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    data = np.load(reference_path)
    return data["images"], {name: data[name] for name in names}


def verify_against_reference(onnx_path: Path, model, images: np.ndarray, reference: dict[str, np.ndarray],
                             stage: str) -> dict:
    """Run ``onnx_path`` on ``images`` through ``model.card`` and compare each output with ``reference`` (made by
    ``model.reference_source``) within ``model.tolerance_for`` (a Recipe or an imported ONNX model); over it, the
    stage fails."""
    against = model.reference_source
    card = model.card
    outputs = run_onnx(onnx_path, card.prepare(images), card.input_name)
    diffs = max_abs_diffs(reference, outputs, card.output_names)
    allowed = {name: model.tolerance_for(reference[name]) for name in card.output_names}
    worst = max(diffs, key=lambda name: diffs[name] / allowed[name])
    if diffs[worst] > allowed[worst]:
        raise BuildError(f"{stage}: ONNX output {worst!r} differs from {against} by {diffs[worst]:.3g} "
                         f"(tolerance {allowed[worst]:g}); the graph is not equivalent, do not deploy it")
    return {"verified_images": int(len(images)), "photos": list(VERIFICATION_PHOTOS),
            "max_abs_diff": diffs, "tolerance": model.tolerance if len(set(allowed.values())) == 1 else allowed,
            "against": against}
