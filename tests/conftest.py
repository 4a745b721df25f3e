import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SMALL_RECIPE = "edgezsad-tinyvit5m-224"
PROJECT_DIR = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep every cache the tests touch (demo benchmark, host scores) out of the user's home."""
    if "EDGEDEPLOY_CACHE" not in os.environ:
        os.environ["EDGEDEPLOY_CACHE"] = str(tmp_path_factory.mktemp("edgedeploy-cache"))
    yield


@pytest.fixture(scope="session")
def small_recipe():
    from edgedeploy.core.model_recipes import load_recipe

    return load_recipe(SMALL_RECIPE)


@pytest.fixture(scope="session")
def small_build(tmp_path_factory, small_recipe):
    """A finished rb5-gen2 build of the small recipe (seeded weights), shared by the tests that read it."""
    from edgedeploy.host.pipeline import build
    from edgedeploy.core.profiles import load_profile

    out = tmp_path_factory.mktemp("small-build")
    result = build(small_recipe, load_profile("rb5-gen2"), out, log=lambda line: None)
    assert result.audit.passed
    return result


def write_mvtec_tree(root: Path, categories=("bottle", "screw"), n_good=4, n_bad=4, size=48, seed=0,
                     good_high=160, bad_low=60, bad_step=0, mask_box: tuple[int, int] | None = (10, 20)) -> Path:
    """A tiny MVTec-AD tree of noise images; defective ones are drawn brighter (``bad_low + bad_step * i``
    up to 255 against normal ones below ``good_high``), so a brightness scorer ranks them. Masks cover
    ``mask_box`` (rows and columns from..to) or, with None, the whole image."""
    rng = np.random.default_rng(seed)
    for cat in categories:
        for i in range(n_good):
            path = root / cat / "test" / "good" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, good_high, (size, size, 3), dtype=np.uint8)).save(path)
        for i in range(n_bad):
            path = root / cat / "test" / "crack" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(bad_low + bad_step * i, 256, (size, size, 3), dtype=np.uint8)).save(path)
            mask = root / cat / "ground_truth" / "crack" / f"{i:03d}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            if mask_box is None:
                m = np.full((size, size), 255, np.uint8)
            else:
                m = np.zeros((size, size), np.uint8)
                m[mask_box[0]:mask_box[1], mask_box[0]:mask_box[1]] = 255
            Image.fromarray(m).save(mask)
    return root


@pytest.fixture
def make_mvtec_tree():
    """``write_mvtec_tree`` for tests that build their own small MVTec-layout trees."""
    return write_mvtec_tree
