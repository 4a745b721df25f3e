"""The repository's layout (issue #18): device_profiles/ and recipes/ at the top level, beside edgedeploy/,
shipped inside the package (setup.cfg's package_dir) and found by an editable checkout, an installed wheel
and the environment-variable overrides."""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import setuptools

import edgedeploy
from edgedeploy.core.model_recipes import list_recipes, recipes_dir
from edgedeploy.core.profiles import list_profiles, profiles_dir

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "edgedeploy"
DATA = {"device_profiles": ["jetson-orin-nano.yaml", "rb5-gen2-npu.yaml", "rb5-gen2.yaml"],
        "recipes": ["edgezsad-efficientnet-lite0-512.yaml", "edgezsad-litemedsam-tinyvit5m-256.yaml",
                    "edgezsad-tinyvit21m-512.yaml", "edgezsad-tinyvit5m-224.yaml"],
        "recipes/train": ["demo-default.yaml", "demo-efficientnet-lite0.yaml", "demo-litemedsam.yaml", "real-iad-dr.yaml"]}
SOURCES = ("edgedeploy", "device_profiles", "recipes", "setup.cfg", "pyproject.toml", "README.md")


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_data_folders_sit_at_the_top_level_not_in_the_package():
    for folder, files in DATA.items():
        assert sorted(p.name for p in (REPO / folder).glob("*.yaml")) == files, folder
        assert not (PACKAGE / folder).exists(), f"edgedeploy/{folder} should have moved to the top level"


def test_the_checkout_reads_the_top_level_folders(monkeypatch):
    """This checkout (an editable install or the source tree) lists what the top-level folders hold."""
    monkeypatch.delenv("EDGEDEPLOY_PROFILES", raising=False)
    monkeypatch.delenv("EDGEDEPLOY_RECIPES", raising=False)
    assert Path(edgedeploy.__file__).resolve().parent == PACKAGE
    assert profiles_dir().resolve() == REPO / "device_profiles"
    assert recipes_dir().resolve() == REPO / "recipes"
    assert list_profiles() == ["jetson-orin-nano", "rb5-gen2", "rb5-gen2-npu"]
    assert list_recipes() == [p.removesuffix(".yaml") for p in DATA["recipes"]]


def test_every_subpackage_is_listed_in_setup_cfg():
    """setup.cfg lists its packages (find: cannot see the mapped data folders): a new one must be added there."""
    listed = set(_setup_cfg()["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), "add these packages to setup.cfg's [options] packages"
    mapped = {line.split("=")[0].strip(): line.split("=")[1].strip()
              for line in _setup_cfg()["options"]["package_dir"].strip().splitlines()}
    assert mapped == {"edgedeploy.device_profiles": "device_profiles", "edgedeploy.recipes": "recipes",
                      "edgedeploy.recipes.train": "recipes/train"}
    assert listed - found == set(mapped)


def _can_build_without_isolation() -> bool:
    """setuptools >= 70.1 has bdist_wheel; older ones need the wheel package (a fresh venv has neither)."""
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the checkout gets no build/ or egg-info of this test's)."""
    tmp = tmp_path_factory.mktemp("layout")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []  # else pip fetches setuptools
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp / "dist"),
                          str(src)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    (built,) = (tmp / "dist").glob("edgedeploy-*.whl")
    return built


def test_the_wheel_holds_the_profiles_recipes_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, files in DATA.items():
        for f in files:
            assert f"edgedeploy/{folder}/{f}" in names
    assert not any(n.startswith(("device_profiles/", "recipes/")) for n in names), "data must not be top-level packages"
    for recipe in DATA["recipes"]:
        if recipe != "edgezsad-tinyvit5m-224.yaml":  # the small recipe has no shipped heads
            assert f"edgedeploy/host/checkpoints/{recipe.removesuffix('.yaml')}.safetensors" in names
    modules = {p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set()


def test_an_installed_wheel_finds_its_own_copies(wheel, tmp_path):
    """Installed elsewhere (a Jetson): the wheel's files unpacked into a site folder, run away from the checkout."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import edgedeploy; from edgedeploy.core.profiles import list_profiles, profiles_dir; "
            "from edgedeploy.core.model_recipes import list_recipes, recipes_dir; "
            "print(edgedeploy.__file__); print(profiles_dir()); print(recipes_dir()); "
            "print(','.join(list_profiles())); print(','.join(list_recipes()))")
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEDEPLOY_PROFILES", "EDGEDEPLOY_RECIPES")}
    env["PYTHONPATH"] = str(site)  # ahead of site-packages, where this checkout's editable finder sits
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    init, profiles, recipes, listed_profiles, listed_recipes = run.stdout.split("\n")[:5]
    assert Path(init).parent == site / "edgedeploy"
    assert Path(profiles) == site / "edgedeploy" / "device_profiles"
    assert Path(recipes) == site / "edgedeploy" / "recipes"
    assert listed_profiles == "jetson-orin-nano,rb5-gen2,rb5-gen2-npu"
    assert listed_recipes == ",".join(p.removesuffix(".yaml") for p in DATA["recipes"])


def test_environment_variables_point_to_a_folder_of_ones_own(tmp_path, monkeypatch):
    from edgedeploy.core.errors import ProfileError
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.host.train.recipe import list_train_recipes

    profiles, recipes = tmp_path / "profiles", tmp_path / "recipes"
    profiles.mkdir()
    (recipes / "train").mkdir(parents=True)
    shutil.copy(REPO / "device_profiles" / "rb5-gen2.yaml", profiles)
    shutil.copy(REPO / "recipes" / "edgezsad-tinyvit5m-224.yaml", recipes)
    shutil.copy(REPO / "recipes" / "train" / "demo-default.yaml", recipes / "train")
    monkeypatch.setenv("EDGEDEPLOY_PROFILES", str(profiles))
    monkeypatch.setenv("EDGEDEPLOY_RECIPES", str(recipes))
    monkeypatch.delenv("EDGEDEPLOY_TRAIN_RECIPES", raising=False)
    assert profiles_dir() == profiles and list_profiles() == ["rb5-gen2"]
    assert recipes_dir() == recipes and list_recipes() == ["edgezsad-tinyvit5m-224"]
    assert list_train_recipes() == ["demo-default"]
    assert load_profile("rb5-gen2").path == profiles / "rb5-gen2.yaml"
    with pytest.raises(ProfileError, match="known targets are rb5-gen2"):
        load_profile("jetson-orin-nano")
    assert load_recipe("edgezsad-tinyvit5m-224").name == "edgezsad-tinyvit5m-224"
