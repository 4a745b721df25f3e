"""Benchmark loaders on small fixture trees, and on the real files in ../shared/data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgedeploy.evaluation.data import BENCHMARK_NAMES, Benchmark, Sample, load_benchmark, read_visa_split
from edgedeploy.core.errors import DataError, EdgeDeployError

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared test data not present at {SHARED_DATA} (fresh clone)"
)


def _img(path: Path, value: int = 128, size=(8, 8), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        Image.new("RGB", size, (value, value, value)).save(path)
    else:
        Image.new(mode, size, value).save(path)
    return path


def _mask(path: Path, on: bool = True, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros(size[::-1], np.uint8)
    if on:
        a[2:4, 2:4] = 255
    Image.fromarray(a).save(path)
    return path


def make_mvtec(root: Path) -> Path:
    for cat in ("bottle", "grid"):
        for i in range(3):
            _img(root / cat / "test" / "good" / f"{i:03d}.png")
        for i in range(2):
            _img(root / cat / "test" / "broken" / f"{i:03d}.png")
            _mask(root / cat / "ground_truth" / "broken" / f"{i:03d}_mask.png")
        _img(root / cat / "train" / "good" / "000.png")
    # a jpg-coded defect and junk the loader must ignore
    _img(root / "grid" / "test" / "thread" / "000.JPG")
    _mask(root / "grid" / "ground_truth" / "thread" / "000_mask.png")
    (root / "grid" / "test" / "good" / ".DS_Store").write_bytes(b"x")
    (root / "grid" / "readme.txt").write_text("x")
    (root / "license.txt").write_text("x")
    (root / "not_a_category").mkdir()
    return root


# ----------------------------------------------------------------------------- basic API / MVTec


def test_names():
    assert BENCHMARK_NAMES == ("mvtec", "visa", "btad", "mpdd", "ksdd2", "dtd-synthetic", "real-iad", "demo")


def test_mvtec_layout(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    b = load_benchmark("mvtec", root)
    assert isinstance(b, Benchmark) and b.name == "mvtec" and b.root == root.resolve()
    assert b.categories == ["bottle", "grid"]
    assert len(b.samples) == 11
    assert all(isinstance(s, Sample) and s.path.is_absolute() and s.path.is_file() for s in b.samples)
    keys = [(s.category, s.rel_path) for s in b.samples]
    assert keys == sorted(keys)
    s = next(x for x in b.samples if x.rel_path == "grid/test/thread/000.JPG")
    assert (s.label, s.defect, s.category) == (1, "thread", "grid")
    assert s.mask_path == root / "grid" / "ground_truth" / "thread" / "000_mask.png"
    goods = [x for x in b.samples if x.label == 0]
    assert len(goods) == 6 and all(x.defect == "good" and x.mask_path is None for x in goods)
    bad = [x for x in b.samples if x.label == 1]
    assert all(x.mask_path is not None and x.mask_path.is_file() for x in bad)
    groups = b.by_category()
    assert list(groups) == ["bottle", "grid"] and len(groups["bottle"]) == 5 and len(groups["grid"]) == 6


def test_mvtec_categories_filter_and_train(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    b = load_benchmark("mpdd", root, categories=["grid"])
    assert b.categories == ["grid"] and b.name == "mpdd"
    t = load_benchmark("dtd-synthetic", root, split="train")
    assert [s.rel_path for s in t.samples] == ["bottle/train/good/000.png", "grid/train/good/000.png"]
    assert all(s.label == 0 for s in t.samples)


def test_env_var_root(tmp_path, monkeypatch):
    root = make_mvtec(tmp_path / "m")
    monkeypatch.setenv("EDGEDEPLOY_DATA_DTD_SYNTHETIC", str(root))
    assert len(load_benchmark("dtd-synthetic").samples) == 11


def test_no_root_message(monkeypatch):
    monkeypatch.delenv("EDGEDEPLOY_DATA_MVTEC", raising=False)
    with pytest.raises(DataError) as e:
        load_benchmark("mvtec")
    msg = str(e.value)
    assert "EDGEDEPLOY_DATA_MVTEC" in msg and "--data-root" in msg and "--bench demo" in msg
    assert "\n" not in msg
    assert isinstance(e.value, EdgeDeployError)


def test_unknown_bench_and_split(tmp_path):
    with pytest.raises(DataError, match="known: mvtec, visa"):
        load_benchmark("imagenet", tmp_path)
    with pytest.raises(DataError, match="split"):
        load_benchmark("mvtec", tmp_path, split="val")


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as e:
        load_benchmark("mvtec", missing)
    assert str(missing) in str(e.value)


def test_unknown_category_lists_available(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    with pytest.raises(DataError) as e:
        load_benchmark("mvtec", root, categories=["carpet"])
    assert "carpet" in str(e.value) and "bottle, grid" in str(e.value) and str(root) in str(e.value)


def test_no_categories(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no categories") as e:
        load_benchmark("mvtec", tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)


def test_single_category_folder_hint(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    with pytest.raises(DataError, match="single mvtec category") as e:
        load_benchmark("mvtec", root / "bottle")
    assert str(root) in str(e.value)


def test_empty_category(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    (root / "carpet" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no images") as e:
        load_benchmark("mvtec", root)
    assert str(root / "carpet") in str(e.value)


def test_missing_mask(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    (root / "bottle" / "ground_truth" / "broken" / "001_mask.png").unlink()
    with pytest.raises(DataError, match="no mask") as e:
        load_benchmark("mvtec", root)
    assert str(root / "bottle" / "test" / "broken" / "001.png") in str(e.value)
    assert "\n" not in str(e.value)


# -------------------------------------------------------------------------------------------- BTAD


def test_btad(tmp_path):
    root = tmp_path / "btad"
    for cat, ext in (("01", ".bmp"), ("02", ".png")):
        _img(root / cat / "test" / "ok" / f"0000{ext}")
        _img(root / cat / "test" / "ko" / f"0001{ext}")
        _mask(root / cat / "ground_truth" / "ko" / f"0001{'.png' if cat == '01' else ext}")
        _img(root / cat / "train" / "ok" / f"0002{ext}")
    b = load_benchmark("btad", root)
    assert b.categories == ["01", "02"] and len(b.samples) == 4
    ko = [s for s in b.samples if s.label == 1]
    assert [s.rel_path for s in ko] == ["01/test/ko/0001.bmp", "02/test/ko/0001.png"]
    assert all(s.defect == "ko" and s.mask_path.is_file() for s in ko)
    assert len(load_benchmark("btad", root, split="train").samples) == 2
    (root / "02" / "ground_truth" / "ko" / "0001.png").unlink()
    with pytest.raises(DataError) as e:
        load_benchmark("btad", root)
    assert str(root / "02" / "test" / "ko" / "0001.png") in str(e.value)


# ------------------------------------------------------------------------------------------- KSDD2


def test_ksdd2(tmp_path):
    root = tmp_path / "ksdd2"
    for n, bad in ((10000, False), (10001, True), (10002, False)):
        _img(root / "test" / f"{n}.png", mode="L")
        _mask(root / "test" / f"{n}_GT.png", on=bad)
    b = load_benchmark("ksdd2", root)
    assert b.categories == ["ksdd2"]
    assert [(s.rel_path, s.label) for s in b.samples] == [
        ("test/10000.png", 0),
        ("test/10001.png", 1),
        ("test/10002.png", 0),
    ]
    assert b.samples[1].mask_path == root / "test" / "10001_GT.png" and b.samples[0].mask_path is None
    with pytest.raises(DataError, match="available: ksdd2"):
        load_benchmark("ksdd2", root, categories=["x"])
    (root / "test" / "10002_GT.png").unlink()
    with pytest.raises(DataError) as e:
        load_benchmark("ksdd2", root)
    assert str(root / "test" / "10002.png") in str(e.value)


# ---------------------------------------------------------------------------------------- Real-IAD


def make_realiad(root: Path) -> Path:
    cat = root / "audiojack"
    ok = _img(cat / "OK" / "S0001" / "audiojack_0001_OK_C1_20231021.jpg")
    ng = _img(cat / "NG" / "AK" / "S0002" / "audiojack_0002_NG_C1_20231021.jpg")
    _mask(cat / "NG" / "AK" / "S0002" / "audiojack_0002_NG_C1_20231021_mask.png")
    tr = _img(cat / "OK" / "S0003" / "audiojack_0003_OK_C1_20231021.jpg")
    rel = lambda p: p.relative_to(cat).as_posix()  # noqa: E731
    doc = {
        "meta": {"prefix": "", "normal_class": "OK", "pre_transform": False},
        "train": [{"category": "audiojack", "anomaly_class": "OK", "image_path": rel(tr), "mask_path": None}],
        "test": [
            {"category": "audiojack", "anomaly_class": "OK", "image_path": rel(ok), "mask_path": None},
            {
                "category": "audiojack",
                "anomaly_class": "AK",
                "image_path": rel(ng),
                "mask_path": rel(ng.with_name(ng.stem + "_mask.png")),
            },
        ],
    }
    (root / "realiad_jsons").mkdir(parents=True)
    (root / "realiad_jsons" / "audiojack.json").write_text(json.dumps(doc))
    return root


def test_realiad(tmp_path):
    root = make_realiad(tmp_path / "realiad")
    b = load_benchmark("real-iad", root)
    assert b.categories == ["audiojack"] and len(b.samples) == 2
    ok, ng = sorted(b.samples, key=lambda s: s.label)
    assert ok.rel_path == "audiojack/OK/S0001/audiojack_0001_OK_C1_20231021.jpg" and ok.mask_path is None
    assert (ng.label, ng.defect) == (1, "AK") and ng.mask_path.name.endswith("_mask.png")
    t = load_benchmark("real-iad", root, split="train")
    assert [s.label for s in t.samples] == [0]


def test_realiad_official_nesting(tmp_path):
    # Real-IAD/realiad_512/<cat>/... with Real-IAD/realiad_jsons/realiad_jsons/<cat>.json
    base = tmp_path / "Real-IAD"
    staged = make_realiad(tmp_path / "staged")
    (base / "realiad_512").mkdir(parents=True)
    (base / "realiad_jsons").mkdir()
    (staged / "audiojack").rename(base / "realiad_512" / "audiojack")
    (staged / "realiad_jsons").rename(base / "realiad_jsons" / "realiad_jsons")
    b = load_benchmark("real-iad", base / "realiad_512")
    assert len(b.samples) == 2


def test_realiad_missing_mask(tmp_path):
    root = make_realiad(tmp_path / "realiad")
    mask = next((root / "audiojack" / "NG").rglob("*_mask.png"))
    mask.unlink()
    with pytest.raises(DataError, match="no mask") as e:
        load_benchmark("real-iad", root)
    assert str(mask) in str(e.value)


def test_realiad_bad_json(tmp_path):
    root = make_realiad(tmp_path / "realiad")
    j = root / "realiad_jsons" / "audiojack.json"
    j.write_text("{not json")
    with pytest.raises(DataError) as e:
        load_benchmark("real-iad", root)
    assert str(j) in str(e.value)


# -------------------------------------------------------------------------------------------- VisA


def make_visa(root: Path) -> Path:
    rows = [("object", "split", "label", "image", "mask")]
    for obj in ("candle", "pcb1"):
        for i in range(2):
            n = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _img(root / n)
            rows.append((obj, "test", "normal", n, ""))
        a = f"{obj}/Data/Images/Anomaly/000.JPG"
        m = f"{obj}/Data/Masks/Anomaly/000.png"
        _img(root / a)
        _mask(root / m)
        rows.append((obj, "test", "anomaly", a, m))
        t = f"{obj}/Data/Images/Normal/0100.JPG"
        _img(root / t)
        rows.append((obj, "train", "normal", t, ""))
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def test_visa(tmp_path):
    root = make_visa(tmp_path / "visa")
    b = load_benchmark("visa", root)
    assert b.categories == ["candle", "pcb1"] and len(b.samples) == 6
    a = [s for s in b.samples if s.label]
    assert [s.rel_path for s in a] == ["candle/Data/Images/Anomaly/000.JPG", "pcb1/Data/Images/Anomaly/000.JPG"]
    assert all(s.mask_path.is_file() and s.defect == "anomaly" for s in a)
    assert len(load_benchmark("visa", root, split="train").samples) == 2
    assert load_benchmark("visa", root, categories=["pcb1"]).categories == ["pcb1"]
    with pytest.raises(DataError, match="available: candle, pcb1"):
        load_benchmark("visa", root, categories=["capsules"])
    (root / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    with pytest.raises(DataError) as e:
        load_benchmark("visa", root)
    assert str(root / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png") in str(e.value)


def test_visa_missing_csv_and_bad_header(tmp_path):
    root = tmp_path / "visa"
    root.mkdir()
    with pytest.raises(DataError) as e:
        load_benchmark("visa", root)
    assert str(root / "split_csv" / "1cls.csv") in str(e.value)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="lacks column") as e:
        read_visa_split(bad, root)
    assert str(bad) in str(e.value)


@needs_shared
def test_real_visa_csv():
    csv_path = SHARED_DATA / "visa_split_csv" / "1cls.csv"
    if not csv_path.is_file():
        pytest.skip(f"{csv_path} not present")
    test = read_visa_split(csv_path, "/nonexistent/visa", split="test", check_files=False)
    assert len(test) == 2162  # DESIGN.md: VisA test split is 2,162 images
    assert sum(s.label for s in test) == 1200 and sum(1 - s.label for s in test) == 962
    cats = sorted({s.category for s in test})
    assert cats == sorted(
        ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
         "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"]
    )
    assert all(s.rel_path.endswith(".JPG") and s.rel_path.startswith(s.category + "/Data/Images/") for s in test)
    assert all((s.mask_path is None) == (s.label == 0) for s in test)
    assert all(s.mask_path.suffix == ".png" for s in test if s.label)
    train = read_visa_split(csv_path, "/nonexistent/visa", split="train", check_files=False)
    assert len(train) == 8659 and all(s.label == 0 for s in train)
    assert len(test) + len(train) == 10821
    candle = read_visa_split(csv_path, "/x", categories=["candle"], check_files=False)
    assert len(candle) == 200
    with pytest.raises(DataError, match="not found"):
        read_visa_split(csv_path, "/nonexistent/visa", split="test", check_files=True)


@needs_shared
def test_real_mpdd():
    root = SHARED_DATA / "mpdd_metal_plate"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    b = load_benchmark("mpdd", root)
    assert b.categories == ["metal_plate"]
    assert len(b.samples) == 47
    bad = [s for s in b.samples if s.label == 1]
    assert len(bad) == 21 and all(s.defect == "defect" and s.mask_path.is_file() for s in bad)
    assert all(s.mask_path is None for s in b.samples if s.label == 0)
