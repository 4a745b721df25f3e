"""Training recipes (strict schema) and the seeded per-category sampling, incl. a fake Real-IAD tree."""

from __future__ import annotations

import dataclasses

import pytest
from train_helpers import make_realiad, write_tiny_recipe

from edgedeploy.core.model_recipes import load_recipe
from edgedeploy.host.train import TrainError
from edgedeploy.host.train.recipe import BenchSpec, list_train_recipes, load_train_recipe, parse_bench_spec
from edgedeploy.host.train.sampling import camera_view, pick, sample_source


def test_shipped_recipes_load_and_fit_their_model():
    assert {"demo-default", "real-iad-dr"} <= set(list_train_recipes())
    for name in ("demo-default", "real-iad-dr"):
        r = load_train_recipe(name)
        assert r.sampling.resolution == load_recipe(r.model_recipe).model.input_size
    demo = load_train_recipe("demo-default")
    assert demo.source == BenchSpec("demo", ("brick", "grass")) and demo.evaluate == BenchSpec("demo", ("gravel",))
    assert not demo.evaluate.overlaps(demo.source) and demo.mode == "heads" and demo.backbone_init == "seeded"
    riad = load_train_recipe("real-iad-dr")
    assert riad.source.bench == "real-iad" and riad.sampling.views == ("C1", "C2", "C3", "C4", "C5")


@pytest.mark.parametrize("edit, message", [
    (("mode: heads", "mode: half"), "mode must be one of heads, full"),
    (("threads: 1", "threads: 1\nepochs: 3"), "unknown field epochs"),
    (("  batch_size: 4\n", ""), "missing field schedule.batch_size"),
    (("  resolution: 224", "  resolution: big"), "sampling.resolution must be int"),
    (("splits: [train, test]", "splits: [val]"), "sampling.splits must list some of train, test"),
    (("name: tiny", "name: other"), "field name is 'other'"),
    (("evaluate: {bench: demo, categories: [gravel], split: test}", "evaluate: {bench: demo, split: test}"),
     "missing field evaluate.categories"),
])
def test_recipe_is_strict(tmp_path, edit, message):
    path = write_tiny_recipe(tmp_path)
    path.write_text(path.read_text().replace(*edit, 1))
    with pytest.raises(TrainError, match=message) as exc:
        load_train_recipe(str(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(TrainError, match="known training recipes are demo-default, demo-efficientnet-lite0, demo-litemedsam, real-iad-dr"):
        load_train_recipe("nope")


def test_bench_spec():
    assert parse_bench_spec("demo:brick,grass") == BenchSpec("demo", ("brick", "grass"))
    assert parse_bench_spec("MVTec-AD") == BenchSpec("mvtec", None)
    assert parse_bench_spec("realiad:pcb").label == "real-iad:pcb"
    for bad in ("imagenet:cat", "demo:", "demo:,"):
        with pytest.raises(TrainError):
            parse_bench_spec(bad)
    assert BenchSpec("demo", ("brick",)).overlaps(BenchSpec("demo", None))
    assert not BenchSpec("demo", ("brick",)).overlaps(BenchSpec("mvtec", ("brick",)))


# ------------------------------------------------------------------------------------ Real-IAD


def _riad_sampling(**changes):
    return dataclasses.replace(load_train_recipe("real-iad-dr").sampling, **changes)


def test_realiad_sampling_counts_views_and_determinism(tmp_path):
    root = make_realiad(tmp_path / "riad")
    sampling = _riad_sampling(normal_per_category=4, anomalous_per_category=2, views=("C1", "C3"))
    a = sample_source(BenchSpec("real-iad"), sampling, seed=0, data_root=root)
    assert a.spec.categories == ("audiojack", "pcb")
    assert a.counts["pcb"] == {"normal": 4, "anomalous": 2, "available_normal": 6, "available_anomalous": 6}
    assert {camera_view(i.sample) for i in a.items} <= {"C1", "C3"}
    assert all(i.mask_sha256 for i in a.items if i.label == 1) and not any(i.mask_sha256 for i in a.items if i.label == 0)
    keys = [(i.sample.category, i.label, i.sample.rel_path) for i in a.items]
    assert keys == sorted(keys)
    # same inputs -> same selection and hash; another seed -> another selection
    b = sample_source(BenchSpec("real-iad"), sampling, seed=0, data_root=root)
    assert [i.sample.rel_path for i in b.items] == [i.sample.rel_path for i in a.items] and b.sha256 == a.sha256
    c = sample_source(BenchSpec("real-iad"), sampling, seed=1, data_root=root)
    assert c.sha256 != a.sha256
    # the hash covers the image bytes, not just the names
    victim = next(i.sample.path for i in a.items)
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert sample_source(BenchSpec("real-iad"), sampling, seed=0, data_root=root).sha256 != a.sha256


def test_realiad_all_views_and_fewer_than_asked(tmp_path):
    root = make_realiad(tmp_path / "riad", categories=("pcb",), samples=2)
    s = sample_source(BenchSpec("real-iad"), _riad_sampling(), seed=0, data_root=root)
    assert (s.n_normal, s.n_anomalous) == (5, 5)  # one OK and one NG sample, five views each
    assert len(s.notes) == 2 and "fewer than the 160" in s.notes[0]


def test_pick_is_order_independent_and_stable():
    from edgedeploy.evaluation.data import Sample

    samples = [Sample(None, f"c/{i:03d}.png", "c", 0, "good", None) for i in range(40)]
    first = pick(samples, 10, seed=0)
    assert first == pick(list(reversed(samples)), 10, seed=0)
    grown = pick(samples + [Sample(None, f"c/new{i}.png", "c", 0, "good", None) for i in range(3)], 10, seed=0)
    assert len(set(first) & set(grown)) >= 7


def test_realiad_view_filter_that_empties_the_set(tmp_path):
    root = make_realiad(tmp_path / "riad", categories=("pcb",), samples=2)
    with pytest.raises(TrainError, match="source set is empty.*views C9"):
        sample_source(BenchSpec("real-iad"), _riad_sampling(views=("C9",)), seed=0, data_root=root)


def test_realiad_file_without_view(tmp_path):
    root = make_realiad(tmp_path / "riad", categories=("pcb",), samples=2, views=("X",))
    with pytest.raises(TrainError, match="cannot tell the camera view"):
        sample_source(BenchSpec("real-iad"), _riad_sampling(), seed=0, data_root=root)


def test_mislabelled_anomalous_image_with_empty_mask(tmp_path):
    root = make_realiad(tmp_path / "riad", categories=("pcb",), samples=2, empty_mask="pcb_0001_NG_C2_20231021120000")
    with pytest.raises(TrainError, match=r"empty mask .*mislabelled"):
        sample_source(BenchSpec("real-iad"), _riad_sampling(), seed=0, data_root=root)


def test_category_without_anomalous_images(tmp_path):
    root = make_realiad(tmp_path / "riad", categories=("pcb",))
    with pytest.raises(TrainError, match="category 'pcb' has no anomalous images in real-iad \\(train split"):
        sample_source(BenchSpec("real-iad"), _riad_sampling(splits=("train",)), seed=0, data_root=root)


def test_demo_train_split_has_no_defects():
    sampling = dataclasses.replace(load_train_recipe("demo-default").sampling, splits=("train",))
    with pytest.raises(TrainError, match="'brick' has no anomalous images"):
        sample_source(BenchSpec("demo", ("brick",)), sampling, seed=0)
