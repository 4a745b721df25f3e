"""Fixtures for the fidelity tests: small MVTec-layout trees and a fast stand-in scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgedeploy.fidelity.scorers import Scorer


def write_mvtec_tree(root: Path, categories=("bottle", "screw"), n_good=4, n_bad=4, size=48, seed=0) -> Path:
    """A tiny MVTec-AD tree of noise images; defective images are brighter (so a mean-pixel scorer ranks them)."""
    rng = np.random.default_rng(seed)
    for cat in categories:
        for i in range(n_good):
            path = root / cat / "test" / "good" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 160, (size, size, 3), dtype=np.uint8)).save(path)
        for i in range(n_bad):
            path = root / cat / "test" / "crack" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(60, 256, (size, size, 3), dtype=np.uint8)).save(path)
            mask = root / cat / "ground_truth" / "crack" / f"{i:03d}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            m = np.zeros((size, size), np.uint8)
            m[10:20, 10:20] = 255
            Image.fromarray(m).save(mask)
    return root


@pytest.fixture
def mvtec_root(tmp_path) -> Path:
    return write_mvtec_tree(tmp_path / "mvtec")


class FakeRecipe:
    """Just what scorers read from a recipe."""

    class model:  # noqa: N801 - mimics Recipe.model
        input_size = 16

    name = "fake-recipe"
    sha256 = "f" * 64
    input_name = "image"
    output_names = ("score", "anomaly_map")


class MeanScorer(Scorer):
    """score = mean pixel value; map = 4x4 pooled image. Counts the images it scores."""

    runner = "fake"
    label = "fake scorer"

    def __init__(self, batch_size=2, fail_on_call=None, offset=0.0):
        super().__init__(FakeRecipe())
        self.batch_size = batch_size
        self.calls = 0
        self.scored = 0
        self.fail_on_call = fail_on_call
        self.offset = offset

    def identity(self):
        return {"runner": self.runner, "offset": self.offset}

    def meta(self):
        return {"model_sha256": "m" * 64, "checkpoint_sha256": "seeded", "recipe": "fake-recipe", "runner": self.runner}

    def run(self, images):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        self.scored += len(images)
        maps = images.mean(axis=1).reshape(len(images), 4, 4, 4, 4).mean(axis=(2, 4))
        return images.mean(axis=(1, 2, 3)).astype(np.float64) + self.offset, maps.astype(np.float32)


@pytest.fixture
def mean_scorer():
    return MeanScorer


@pytest.fixture(scope="session")
def fidelity_out(tmp_path_factory, small_recipe):
    """An --out folder after `edgedeploy build --target rb5-gen2` of the small recipe: the bundle in
    OUT/rb5-gen2/ and the stage cache OUT/.stages/ that fidelity reuses."""
    from edgedeploy.pipeline import build
    from edgedeploy.profiles import load_profile

    out = tmp_path_factory.mktemp("fidelity-out")
    result = build(small_recipe, load_profile("rb5-gen2"), out, log=lambda line: None)
    assert result.audit.passed
    return out


@pytest.fixture(scope="session")
def small_model(fidelity_out):
    return fidelity_out / "rb5-gen2" / "model.onnx"


@pytest.fixture
def make_mvtec_tree():
    """``write_mvtec_tree`` for tests that need other sizes than the ``mvtec_tree`` fixture."""
    return write_mvtec_tree
