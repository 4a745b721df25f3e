"""A device score file is accepted only when it scores exactly this benchmark with this model."""

from __future__ import annotations

import pytest

from edgedeploy.evaluation.data import load_benchmark
from edgedeploy.evaluation.fidelity.device_scores import load_device_scores
from edgedeploy.runtime.scorefile import ScoreFileError, ScoreRow, ScoreTable, write_scores


class Recipe:
    name = "edgezsad-tinyvit5m-224"
    sha256 = "r" * 64


def _meta(**changes):
    meta = {"model_sha256": "a" * 64, "checkpoint_sha256": "seeded", "recipe": Recipe.name, "runner": "tensorrt",
            "bench": "mvtec"}
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def _write(path, bench, meta=None, drop=(), extra=(), dup=None, bad=None, label_swap=None):
    rows = []
    for i, s in enumerate(bench.samples):
        if s.rel_path in drop:
            continue
        label = 1 - s.label if s.rel_path == label_swap else s.label
        score = bad[1] if bad and s.rel_path == bad[0] else 0.1 * i
        rows.append(ScoreRow(s.rel_path, s.category, label, score))
    rows += [ScoreRow(p, p.split("/")[0], 0, 0.5) for p in extra]
    if dup:
        rows.append(ScoreRow(dup, dup.split("/")[0], 0, 0.3))
    text = ScoreTable(meta if meta is not None else _meta(), rows)
    write_scores(path, text)
    return path


@pytest.fixture
def bench(mvtec_root):
    return load_benchmark("mvtec", mvtec_root)


def _load(path, bench, checkpoint="seeded", model_sha="a" * 64, all_categories=True):
    return load_device_scores(path, bench, Recipe(), checkpoint, model_sha, all_categories=all_categories)


def test_good_file_is_accepted_in_benchmark_order(bench, tmp_path):
    scored, warnings = _load(_write(tmp_path / "d.csv", bench), bench)
    assert [r.path for r in scored.table.rows] == [s.rel_path for s in bench.samples]
    assert warnings == [] and "tensorrt" in scored.label


def test_missing_image_named(bench, tmp_path):
    path = _write(tmp_path / "d.csv", bench, drop={"screw/test/good/002.png"})
    with pytest.raises(ScoreFileError, match=r"1 benchmark image without a row: screw/test/good/002.png"):
        _load(path, bench)


def test_extra_image_named_with_line(bench, tmp_path):
    path = _write(tmp_path / "d.csv", bench, extra=["bottle/test/good/999.png"])
    with pytest.raises(ScoreFileError, match=r"not in the mvtec benchmark .*bottle/test/good/999.png \(line 24\)"):
        _load(path, bench)


def test_duplicate_row_named(bench, tmp_path):
    path = _write(tmp_path / "d.csv", bench, dup="bottle/test/crack/001.png")
    with pytest.raises(ScoreFileError, match=r"duplicate rows for bottle/test/crack/001.png \(line \d+\)"):
        _load(path, bench)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_score_is_read_as_it_is(bench, tmp_path, value):
    """A device that overflowed has failed the gate; its file is not malformed (the gate names the image)."""
    path = _write(tmp_path / "d.csv", bench, bad=("screw/test/crack/003.png", value))
    scored, _ = _load(path, bench)
    row = scored.table.by_path()["screw/test/crack/003.png"]
    assert (row.score != row.score) if value != value else row.score == value


@pytest.mark.parametrize("text", ["abc", "", "0.1.2"])
def test_text_in_the_score_column_is_bad_input(bench, tmp_path, text):
    path = _write(tmp_path / "d.csv", bench)
    lines = path.read_text().splitlines()
    lines[-1] = ",".join(lines[-1].split(",")[:3] + [text])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ScoreFileError, match="is not a number"):
        _load(path, bench)


def test_label_that_differs_is_named(bench, tmp_path):
    path = _write(tmp_path / "d.csv", bench, label_swap="bottle/test/good/001.png")
    with pytest.raises(ScoreFileError, match=r"category or label differs .*bottle/test/good/001.png"):
        _load(path, bench)


def test_other_checkpoint_rejected(bench, tmp_path):
    path = _write(tmp_path / "d.csv", bench, meta=_meta(checkpoint_sha256="b" * 64))
    with pytest.raises(ScoreFileError, match=r"scored with checkpoint bbbbbbbbbbbbbbbb but this run uses seeded"):
        _load(path, bench)
    with pytest.raises(ScoreFileError, match="checkpoint"):
        _load(_write(tmp_path / "e.csv", bench), bench, checkpoint="c" * 64)


def test_missing_provenance_rejected(bench, tmp_path):
    with pytest.raises(ScoreFileError, match="no '# checkpoint_sha256:' header"):
        _load(_write(tmp_path / "d.csv", bench, meta=_meta(checkpoint_sha256=None)), bench)
    with pytest.raises(ScoreFileError, match="recipe edgezsad-tinyvit21m-512 but this run uses"):
        _load(_write(tmp_path / "e.csv", bench, meta=_meta(recipe="edgezsad-tinyvit21m-512")), bench)
    with pytest.raises(ScoreFileError, match="scores benchmark visa"):
        _load(_write(tmp_path / "f.csv", bench, meta=_meta(bench="visa")), bench)


def test_unknown_checkpoint_and_other_target_rejected(bench, tmp_path):
    with pytest.raises(ScoreFileError, match="does not say which checkpoint"):
        _load(_write(tmp_path / "d.csv", bench, meta=_meta(checkpoint_sha256="unknown")), bench)
    path = _write(tmp_path / "e.csv", bench, meta=_meta(target="jetson-orin-nano"))
    with pytest.raises(ScoreFileError, match="jetson-orin-nano bundle but this run checks --target rb5-gen2"):
        load_device_scores(path, bench, Recipe(), "seeded", "a" * 64, target="rb5-gen2")
    assert load_device_scores(path, bench, Recipe(), "seeded", "a" * 64, target="jetson-orin-nano")[1] == []


def test_other_graph_is_a_warning(bench, tmp_path):
    _, warnings = _load(_write(tmp_path / "d.csv", bench), bench, model_sha="f" * 64)
    assert len(warnings) == 1 and "exported differently" in warnings[0]


def test_rows_of_unselected_categories_are_ignored(mvtec_root, tmp_path):
    full = load_benchmark("mvtec", mvtec_root)
    path = _write(tmp_path / "d.csv", full)
    only = load_benchmark("mvtec", mvtec_root, ["screw"])
    scored, warnings = _load(path, only, all_categories=False)
    assert len(scored.table.rows) == len(only) and "ignored 8 rows" in warnings[0]
    with pytest.raises(ScoreFileError, match="not in the mvtec benchmark"):
        _load(path, only, all_categories=True)


def test_not_a_score_file(bench, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("path,score\na,1\n")
    with pytest.raises(ScoreFileError, match="not an edgedeploy score file"):
        _load(path, bench)
