import os
from pathlib import Path

import pytest

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
    from edgedeploy.recipes import load_recipe

    return load_recipe(SMALL_RECIPE)


@pytest.fixture(scope="session")
def small_build(tmp_path_factory, small_recipe):
    """A finished rb5-gen2 build of the small recipe (seeded weights), shared by the tests that read it."""
    from edgedeploy.pipeline import build
    from edgedeploy.profiles import load_profile

    out = tmp_path_factory.mktemp("small-build")
    result = build(small_recipe, load_profile("rb5-gen2"), out, log=lambda line: None)
    assert result.audit.passed
    return result
