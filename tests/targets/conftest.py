"""Fixtures for the device-target tests: small bundles, and fake TensorRT / AI Hub / CUDA / GPU."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakes.py lives beside this file

import fakes  # noqa: E402

SMALL = "edgezsad-tinyvit5m-224"


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """Small bundles for both targets (seeded weights), built once, offline; copy before changing them."""
    from edgedeploy.host.pipeline import build
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.core.model_recipes import load_recipe

    out = tmp_path_factory.mktemp("target-bundles")
    previous = os.environ.get("EDGEDEPLOY_OFFLINE")
    os.environ["EDGEDEPLOY_OFFLINE"] = "1"
    try:
        recipe = load_recipe(SMALL)
        for target in ("jetson-orin-nano", "rb5-gen2"):
            assert build(recipe, load_profile(target), out, log=lambda line: None).audit.passed
    finally:
        if previous is None:
            os.environ.pop("EDGEDEPLOY_OFFLINE", None)
        else:
            os.environ["EDGEDEPLOY_OFFLINE"] = previous
    return SimpleNamespace(out=out, jetson=out / "jetson-orin-nano", rb5=out / "rb5-gen2")


def _copy_out(bundles, tmp_path: Path) -> Path:
    """A private out/ folder: both bundles plus the stage cache (so rebuilding there takes seconds)."""
    out = tmp_path / "out"
    shutil.copytree(bundles.out, out)
    return out


@pytest.fixture
def out_dir(bundles, tmp_path):
    return _copy_out(bundles, tmp_path)


@pytest.fixture
def jetson_bundle(bundles, tmp_path):
    return Path(shutil.copytree(bundles.jetson, tmp_path / "out" / "jetson-orin-nano"))


@pytest.fixture
def rb5_bundle(bundles, tmp_path):
    return Path(shutil.copytree(bundles.rb5, tmp_path / "out" / "rb5-gen2"))


@pytest.fixture
def gpu(monkeypatch):
    """Control the GPU edgedeploy sees: ``gpu.set("8.7", "Orin")`` or ``gpu.set(None)`` for none."""
    from edgedeploy.runtime import engine_metadata

    state = SimpleNamespace(info={"compute_capability": "8.7", "name": "Orin (nvgpu)"})

    def set_gpu(cc, name="GPU"):
        state.info = None if cc is None else {"compute_capability": cc, "name": name}

    state.set = set_gpu
    monkeypatch.setattr(engine_metadata, "gpu_info", lambda device=0: state.info)
    return state


@pytest.fixture
def fake_trt(monkeypatch, gpu):
    """The fake ``tensorrt`` module in sys.modules, fake CUDA memory for the runner, an SM 8.7 GPU."""
    from edgedeploy.runtime import tensorrt as runner

    trt = fakes.load_fake("tensorrt")
    trt.reset()
    trt.Builder.fail_build = False
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    memories = []

    def memory():
        memories.append(fakes.FakeCudaMemory(trt))
        return memories[-1]

    monkeypatch.setattr(runner, "_cuda_memory", memory)
    trt.memories = memories
    trt.gpu = gpu
    return trt


@pytest.fixture
def no_trt(monkeypatch):
    """Make ``import tensorrt`` fail, whatever is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.fixture
def hub_token(tmp_path, monkeypatch):
    ini = tmp_path / "qai_hub" / "client.ini"
    ini.parent.mkdir()
    ini.write_text("[api]\napi_token = fake-token\napi_url = https://app.aihub.qualcomm.com\n"
                   "web_url = https://app.aihub.qualcomm.com\n")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    monkeypatch.delenv("EDGEDEPLOY_OFFLINE", raising=False)
    return ini


@pytest.fixture
def fake_hub(monkeypatch, hub_token):
    """The fake ``qai_hub`` module in sys.modules and a configured API token."""
    hub = fakes.load_fake("qai_hub")
    hub.reset()
    monkeypatch.setitem(sys.modules, "qai_hub", hub)
    return hub


@pytest.fixture
def no_hub_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "qai_hub", None)
    monkeypatch.delenv("EDGEDEPLOY_OFFLINE", raising=False)


@pytest.fixture
def mvtec_root(tmp_path):
    """A tiny benchmark in MVTec-AD layout: one category, two normal and two defective images."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "mvtec"
    rng = np.random.default_rng(0)
    for defect, count in (("good", 2), ("crack", 2)):
        folder = root / "widget" / "test" / defect
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
            if defect != "good":
                masks = root / "widget" / "ground_truth" / defect
                masks.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((40, 40), 255, dtype=np.uint8)).save(masks / f"{i:03d}_mask.png")
    return root
