"""The built-in demo benchmark: deterministic, cached atomically, loadable as MVTec layout."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from edgedeploy.evaluation.data import demo, load_benchmark, load_mask
from edgedeploy.core.errors import DataError


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Generate the demo twice, into two separate cache dirs (via EDGEDEPLOY_CACHE)."""
    roots = []
    mp = pytest.MonkeyPatch()
    try:
        for name in ("cache_a", "cache_b"):
            cache = tmp_path_factory.mktemp(name)
            mp.setenv("EDGEDEPLOY_CACHE", str(cache))
            b = load_benchmark("demo")
            assert b.root == cache / demo.DEMO_VERSION
            roots.append(b.root)
    finally:
        mp.undo()
    return roots


def test_byte_identical(generated):
    a, b = generated
    ta, tb = _tree(a), _tree(b)
    assert set(ta) == set(tb) and len(ta) == 3 * (8 + 24 + 24 + 24) + 1
    assert ta == tb
    assert not [p for p in a.parent.iterdir() if p.name != demo.DEMO_VERSION]  # no temp leftovers


def test_layout(generated, monkeypatch):
    root = generated[0]
    monkeypatch.setenv("EDGEDEPLOY_CACHE", str(root.parent))
    b = load_benchmark("demo")
    assert b.name == "demo" and b.categories == ["brick", "grass", "gravel"]
    assert len(b.samples) == 144 and sum(s.label for s in b.samples) == 72
    for cat, samples in b.by_category().items():
        assert sum(1 - s.label for s in samples) == 24
        assert sorted(s.defect for s in samples if s.label) == sorted(["crack", "hole", "scratch", "stain"] * 6)
        assert {s.defect for s in samples} == {"good", "crack", "hole", "scratch", "stain"}
    assert (root / "brick" / "test" / "good" / "000.png").is_file()
    assert (root / "brick" / "ground_truth" / "scratch" / "000_mask.png").is_file()
    for s in b.samples:
        if s.label:
            m = load_mask(s.mask_path, 512)
            assert 50 < m.sum() < 20000, s.rel_path
    train = load_benchmark("demo", split="train")
    assert len(train.samples) == 24 and all(s.label == 0 for s in train.samples)
    assert load_benchmark("demo", categories=["grass"]).categories == ["grass"]


def test_mask_is_exactly_modified_pixels():
    parts = demo.render_category("gravel")
    assert len(parts["train"]) == 8 and len(parts["good"]) == 24 and len(parts["defects"]) == 24
    for defect, clean, img, mask in parts["defects"]:
        assert img.shape == (512, 512, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(mask, np.any(img != clean, axis=-1), err_msg=defect)
        assert mask.any()


def test_reuse_and_regenerate(generated, tmp_path):
    target = tmp_path / demo.DEMO_VERSION
    shutil.copytree(generated[0], target)
    manifest = target / "VERSION"
    mtime = manifest.stat().st_mtime_ns
    assert demo.ensure_demo(target) == target and manifest.stat().st_mtime_ns == mtime  # reused
    victim = target / "grass" / "test" / "good" / "003.png"
    victim.write_bytes(b"broken")
    assert not demo.verify_demo(target)
    manifest.unlink()  # as if a copy was cut short
    assert demo.ensure_demo(target) == target  # regenerated
    assert demo.verify_demo(target)
    assert _tree(target) == _tree(generated[0])
    assert [p.name for p in tmp_path.iterdir()] == [demo.DEMO_VERSION]  # no temp or stale leftovers


def test_refuses_foreign_folder(tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "important.txt").write_text("keep me")
    with pytest.raises(DataError) as e:
        load_benchmark("demo", other)
    assert str(other) in str(e.value)
    assert (other / "important.txt").read_text() == "keep me"


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEDEPLOY_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert demo.demo_cache_dir() == tmp_path / ".cache" / "edgedeploy" / demo.DEMO_VERSION
    monkeypatch.setenv("EDGEDEPLOY_CACHE", str(tmp_path / "c"))
    assert demo.demo_cache_dir() == tmp_path / "c" / demo.DEMO_VERSION
    assert os.path.isabs(demo.demo_cache_dir())
