"""Fixtures for the fidelity tests: small MVTec-layout trees and a fast stand-in scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgedeploy.runtime.base import Runner


@pytest.fixture
def mvtec_root(tmp_path, make_mvtec_tree) -> Path:
    return make_mvtec_tree(tmp_path / "mvtec")


class MeanScorer(Runner):
    """score = mean pixel value; map = 4x4 pooled image of 16x16 inputs. Counts the images it scores."""

    runner = "fake"
    label = "fake scorer"
    input_size = 16

    def __init__(self, batch_size=2, fail_on_call=None, offset=0.0):
        super().__init__()
        self.batch_size = batch_size
        self.calls = 0
        self.scored = 0
        self.fail_on_call = fail_on_call
        self.offset = offset

    def identity(self):
        return {"runner": self.runner, "offset": self.offset}

    def meta(self):
        return {"model_sha256": "m" * 64, "checkpoint_sha256": "seeded", "recipe": "fake-recipe", "runner": self.runner}

    def _infer(self, images):
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
    from edgedeploy.host.pipeline import build
    from edgedeploy.core.profiles import load_profile

    out = tmp_path_factory.mktemp("fidelity-out")
    result = build(small_recipe, load_profile("rb5-gen2"), out, log=lambda line: None)
    assert result.audit.passed
    return out


@pytest.fixture(scope="session")
def small_model(fidelity_out):
    return fidelity_out / "rb5-gen2" / "model.onnx"
