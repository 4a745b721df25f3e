"""Scoring a benchmark: one score file format, cached by image content, resumable, corrupt images named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgedeploy.evaluation.data import load_benchmark
from edgedeploy.core.errors import DataError
from edgedeploy.runtime.cache import NoCache, ScoreCache
from edgedeploy.runtime.batch import score_benchmark
from edgedeploy.runtime.scorefile import read_maps, read_scores, write_scores


def test_scores_in_benchmark_order_with_maps(mvtec_root, mean_scorer, tmp_path):
    bench = load_benchmark("mvtec", mvtec_root)
    scorer = mean_scorer()
    scored = score_benchmark(scorer, bench, ScoreCache(scorer.identity(), tmp_path / "c"), progress=False,
                             meta={"data_root": str(bench.root)})
    assert [r.path for r in scored.table.rows] == [s.rel_path for s in bench.samples]
    assert [r.label for r in scored.table.rows] == [s.label for s in bench.samples]
    assert scored.computed == len(bench) == 16 and scored.cached == 0
    assert set(scored.maps) == {s.rel_path for s in bench.samples}
    assert scored.table.meta["bench"] == "mvtec" and scored.table.meta["runner"] == "fake"
    out = tmp_path / "host.csv"
    write_scores(out, scored.table, scored.maps)
    back = read_scores(out)
    assert [(r.path, r.category, r.label, r.score) for r in back.rows] == \
        [(r.path, r.category, r.label, r.score) for r in scored.table.rows]
    assert back.meta["data_root"] == str(bench.root)
    np.testing.assert_array_equal(read_maps(out)["bottle/test/good/000.png"], scored.maps["bottle/test/good/000.png"])


def test_rerun_costs_nothing(mvtec_root, mean_scorer, tmp_path):
    bench = load_benchmark("mvtec", mvtec_root)
    first = mean_scorer()
    a = score_benchmark(first, bench, ScoreCache(first.identity(), tmp_path / "c"), progress=False)
    again = mean_scorer()
    b = score_benchmark(again, bench, ScoreCache(again.identity(), tmp_path / "c"), progress=False)
    assert again.scored == 0 and b.cached == len(bench) and b.computed == 0
    assert [r.score for r in a.table.rows] == [r.score for r in b.table.rows]
    # another identity (e.g. another checkpoint) is another cache
    other = mean_scorer(offset=1.0)
    c = score_benchmark(other, bench, ScoreCache(other.identity(), tmp_path / "c"), progress=False)
    assert other.scored == len(bench) and c.table.rows[0].score == pytest.approx(a.table.rows[0].score + 1.0)


def test_cache_follows_content_not_path(mvtec_root, mean_scorer, tmp_path):
    bench = load_benchmark("mvtec", mvtec_root)
    scorer = mean_scorer()
    score_benchmark(scorer, bench, ScoreCache(scorer.identity(), tmp_path / "c"), progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(mvtec_root, moved)
    changed = moved / "bottle" / "test" / "good" / "000.png"
    shutil.copyfile(moved / "screw" / "test" / "crack" / "000.png", changed)  # now another image's content
    again = mean_scorer()
    scored = score_benchmark(again, load_benchmark("mvtec", moved), ScoreCache(again.identity(), tmp_path / "c"),
                             progress=False)
    assert again.scored == 0  # the new content is the screw image's, already cached
    rows = scored.table.by_path()
    assert rows["bottle/test/good/000.png"].score == rows["screw/test/crack/000.png"].score


def test_interrupted_run_resumes(mvtec_root, mean_scorer, tmp_path):
    bench = load_benchmark("mvtec", mvtec_root)
    broken = mean_scorer(batch_size=3, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        score_benchmark(broken, bench, ScoreCache(broken.identity(), tmp_path / "c"), progress=False)
    assert broken.scored == 6  # two batches finished and cached before the interrupt
    resumed = mean_scorer(batch_size=3)
    scored = score_benchmark(resumed, bench, ScoreCache(resumed.identity(), tmp_path / "c"), progress=False)
    assert resumed.scored == len(bench) - 6 and scored.cached == 6
    fresh = mean_scorer()
    reference = score_benchmark(fresh, bench, NoCache({}), progress=False)
    assert [r.score for r in scored.table.rows] == [r.score for r in reference.table.rows]


def test_many_chunks_are_merged(mvtec_root, mean_scorer, tmp_path, monkeypatch):
    from edgedeploy.runtime import cache as cache_module

    monkeypatch.setattr(cache_module, "_MERGE_ABOVE", 3)
    bench = load_benchmark("mvtec", mvtec_root)
    scorer = mean_scorer(batch_size=1)
    cache = ScoreCache(scorer.identity(), tmp_path / "c")
    score_benchmark(scorer, bench, cache, progress=False)
    assert len(list(cache.folder.glob("chunk-*.npz"))) == 1
    assert len(cache.load()) == len(bench)


def test_corrupt_and_missing_images_are_named_not_skipped(mvtec_root, mean_scorer, tmp_path):
    bench = load_benchmark("mvtec", mvtec_root)
    corrupt = mvtec_root / "bottle" / "test" / "good" / "001.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    truncated = mvtec_root / "screw" / "test" / "crack" / "002.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    scorer = mean_scorer()
    with pytest.raises(DataError) as err:
        score_benchmark(scorer, bench, ScoreCache(scorer.identity(), tmp_path / "c"), progress=False)
    message = str(err.value)
    assert "2 images of mvtec could not be read" in message
    assert str(corrupt) in message and str(truncated) in message
    assert scorer.scored == len(bench) - 2  # the others were scored and cached
    (mvtec_root / "bottle" / "test" / "good" / "002.png").unlink()
    with pytest.raises(DataError, match="002.png"):
        score_benchmark(mean_scorer(), bench, NoCache({}), progress=False)


def test_torch_fp16_runner_computes_in_half_precision(small_recipe):
    """The --device torch-fp16 runner (CUDA in use; its arithmetic checked here on the CPU, which has FP16 kernels)."""
    from edgedeploy.host.runners import TorchRunner

    images = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    fp32 = TorchRunner(small_recipe, None, "seeded", "w", device="cpu")
    fp16 = TorchRunner(small_recipe, None, "seeded", "w", device="cpu", half=True)
    (s32, m32), (s16, m16) = fp32.infer(images), fp16.infer(images)
    assert fp16.runner == "torch-fp16" and fp16.label == "device stand-in PyTorch FP16" and fp32.label == "host PyTorch FP32"
    assert fp16.identity()["runner"] != fp32.identity()["runner"]
    assert m16.dtype == np.float32 and m16.shape == m32.shape
    assert 0 < np.abs(s16 - s32).max() < 2e-2  # rounded, not identical, and close
