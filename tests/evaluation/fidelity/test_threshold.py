"""`fidelity --write-threshold`: the decision threshold chosen on the host, recalibrated for the device, carried by
the bundle, and the same decisions again from `score --images` on a plain folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from edgedeploy.cli import main
from edgedeploy.core.modelcard import ModelCard
from edgedeploy.evaluation.data import load_benchmark
from edgedeploy.evaluation.fidelity import threshold as th
from edgedeploy.evaluation.fidelity.compare import compare
from edgedeploy.evaluation.metrics import f1_max
from edgedeploy.runtime.batch import score_benchmark

SMALL = "edgezsad-tinyvit5m-224"
MODEL_SHA = "m" * 64  # MeanScorer's


def test_f1_threshold_sits_midway_in_the_f1_max_gap():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 20)
    scores = np.concatenate([rng.normal(0.3, 0.1, 30), rng.normal(0.6, 0.1, 20)])
    _, lowest_ng = f1_max(labels, scores)
    t = th.f1_threshold(labels, scores)
    assert ((scores >= t) == (scores >= lowest_ng)).all()  # the same decisions as f1_max's own threshold
    below = scores[scores < lowest_ng].max()
    assert t == pytest.approx((below + lowest_ng) / 2) and below < t < lowest_ng


@pytest.mark.parametrize("max_fpr, expected_fp", [(0.0, 0), (0.05, 5), (0.01, 1), (0.099, 9)])
def test_fpr_threshold_is_the_lowest_within_the_rate(max_fpr, expected_fp):
    normal = np.linspace(0.0, 1.0, 100)
    labels = np.array([0] * 100 + [1] * 3)
    scores = np.concatenate([normal, [0.5, 0.95, 2.0]])
    t = th.fpr_threshold(labels, scores, max_fpr)
    assert int(np.count_nonzero(normal >= t)) == expected_fp
    assert normal[99 - expected_fp] < t  # one more normal image would be called NG below it


def test_fpr_threshold_never_splits_a_tie_past_the_rate():
    labels = np.zeros(10, dtype=int)
    scores = np.array([0.1] * 8 + [0.9, 0.9])
    t = th.fpr_threshold(labels, scores, 0.1)  # one may be NG, but two are tied at the top
    assert int(np.count_nonzero(scores >= t)) == 0 and t > 0.9


def test_the_device_threshold_follows_an_offset_and_stays_where_the_scores_agree():
    rng = np.random.default_rng(3)
    labels = np.array([0] * 40 + [1] * 40)
    host = np.concatenate([rng.random(40) * 0.5, 0.45 + rng.random(40) * 0.5])
    t_h = th.f1_threshold(labels, host)
    same = th.scope_thresholds(labels, host, host.copy(), "f1-max", None, "higher")
    assert same["device"]["threshold"] == same["host"]["threshold"] == t_h and not same["device"]["recalibrated"]
    shifted = th.scope_thresholds(labels, host, host + 0.05, "f1-max", None, "higher")  # a one-sided offset
    assert shifted["device"]["threshold"] == pytest.approx(t_h + 0.05) and shifted["device"]["flips"] == 0
    assert shifted["device"]["offset"] == pytest.approx(0.05) and shifted["device"]["recalibrated"]
    assert shifted["device"]["flips_at_host_threshold"] >= 0
    far = th.scope_thresholds(labels, host, host + 0.3, "f1-max", None, "higher")
    assert far["device"]["flips_at_host_threshold"] > 0 and far["device"]["flips"] == 0  # the host's would flip
    swapped = host.copy()
    order = np.argsort(host)
    k = int(np.searchsorted(host[order], t_h))
    swapped[order[k - 1]], swapped[order[k]] = host[order[k]], host[order[k - 1]]  # one pair across the threshold
    swap = th.scope_thresholds(labels, host, swapped, "f1-max", None, "higher")["device"]
    assert swap["flips_at_host_threshold"] == 2 and swap["flips"] == 1  # the recalibrated cut keeps one of the two


def test_every_image_ng_keeps_the_fp16_margin_below_the_lowest_score():
    labels = np.array([1, 0, 1, 0, 1, 1])
    scores = np.array([0.10, 0.20, 0.30, 0.40, 0.50, 0.60])  # ranks backwards: F1-max calls every image NG
    t = th.f1_threshold(labels, scores)
    assert t == pytest.approx(0.10 - 2 ** -5 * 0.35)  # eps of the scale, max(|0.1|, median 0.35)
    entry = th.scope_thresholds(labels, scores, scores - 1e-6, "f1-max", None, "higher")
    assert entry["device"]["flips"] == 0 and entry["device"]["flips_at_host_threshold"] == 0
    assert th.fpr_threshold(np.zeros(3, int), np.array([1.0, 2.0, 3.0]), 0.0) == pytest.approx(3.0 + 2 ** -5 * 3.0)


def test_polarity_lower_keeps_the_raw_threshold():
    labels = np.array([0, 0, 1, 1])
    oriented = np.array([-3.0, -2.5, -1.0, -0.5])  # the card flipped raw scores 3, 2.5, 1, 0.5 (lower = anomalous)
    entry = th.scope_thresholds(labels, oriented, oriented, "f1-max", None, "lower")
    assert entry["host"]["threshold"] == -1.75 and entry["host"]["raw"] == 1.75 and entry["host"]["f1"] == 1.0


def _scored(mvtec_root, mean_scorer, offset=0.0):
    bench = load_benchmark("mvtec", mvtec_root)
    return bench, score_benchmark(mean_scorer(offset=offset), bench, progress=False)


def _fake_bundle(folder: Path) -> dict:
    folder.mkdir(parents=True)
    manifest = {"layout": 2, "target": {"name": "rb5-gen2", "runtime": "qnn"}, "recipe": {"name": "fake-recipe"},
                "checkpoint": {"source": "seeded"}, "compile": {"keep_fp32": ["/a"]},
                "model": {"path": "model.onnx", "sha256": MODEL_SHA, "card": {"outputs": {"polarity": "higher"}}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_write_threshold_into_the_manifest_keeps_everything_else(mvtec_root, mean_scorer, tmp_path):
    bench, host = _scored(mvtec_root, mean_scorer)
    _, device = _scored(mvtec_root, mean_scorer, offset=0.01)
    report = compare(host, device, bench, max_drift=0.2)
    before = _fake_bundle(tmp_path / "rb5-gen2")
    card = ModelCard("image", 16, "score", "anomaly_map", smooth_sigma=0.0)
    lines = []
    th.write_threshold(SimpleNamespace(max_fpr=None), report, bench, host, device, tmp_path / "rb5-gen2", MODEL_SHA,
                       card, lines.append)
    manifest = json.loads((tmp_path / "rb5-gen2" / "manifest.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "decision"} == before
    record = manifest["decision"]
    assert record["model_sha256"] == MODEL_SHA and record["rule"] == "f1-max" and set(record["categories"]) == {
        "bottle", "screw"}
    overall = record["overall"]
    assert overall["device"]["threshold"] == pytest.approx(overall["host"]["threshold"] + 0.01)
    assert overall["device"]["flips"] == 0 and overall["host"]["f1"] == 1.0
    assert record["calibration"]["images"] == 16 and record["calibration"]["file"] == "decision_calibration.csv"
    assert len(record["map_range"]) == 2 and record["map_range"][0] < record["map_range"][1]
    calibration = (tmp_path / "rb5-gen2" / "decision_calibration.csv").read_text().splitlines()
    assert len(calibration) == 17 and calibration[0].startswith("path,category,label,sha256,host_score")
    from edgedeploy.core.hashing import sha256_file

    assert record["calibration"]["file_sha256"] == sha256_file(tmp_path / "rb5-gen2" / "decision_calibration.csv")
    assert report.info["decision"]["written"] and any(line.startswith("decision threshold (F1-max") for line in lines)
    md = "\n".join(th.markdown_lines(report.info))
    assert "## Decision threshold" in md and "| overall | 16 |" in md


def test_no_threshold_is_written_when_the_gate_fails(mvtec_root, mean_scorer, tmp_path):
    bench, host = _scored(mvtec_root, mean_scorer)
    device = score_benchmark(mean_scorer(), bench, progress=False)
    rows = device.table.rows
    device.table.rows = [type(r)(r.path, r.category, r.label, -r.score) for r in rows]  # ranks backwards
    report = compare(host, device, bench, max_drift=0.2)
    assert not report.passed
    _fake_bundle(tmp_path / "b")
    lines = []
    th.write_threshold(SimpleNamespace(max_fpr=None), report, bench, host, device, tmp_path / "b", MODEL_SHA,
                       ModelCard("image", 16, "score", "anomaly_map"), lines.append)
    assert "decision" not in json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert not (tmp_path / "b" / "decision_calibration.csv").exists()
    assert any("NOT written" in line for line in lines) and not report.info["decision"]["written"]


# ------------------------------------------------------------------------------------------- end to end


def _fidelity(*args):
    return CliRunner().invoke(main, ["fidelity", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from edgedeploy.evaluation.data.demo import DEMO_VERSION, ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo") / DEMO_VERSION)


@pytest.fixture
def own_out(fidelity_out, tmp_path) -> Path:
    """A copy of the small recipe's build folder (stage cache and bundle): this test writes into its manifest."""
    shutil.copytree(fidelity_out, tmp_path / "out")
    return tmp_path / "out"


def test_write_threshold_then_score_the_brick_images_as_a_plain_folder(own_out, demo_root, tmp_path):
    bundle = own_out / "rb5-gen2"
    before = json.loads((bundle / "manifest.json").read_text())
    report = tmp_path / "report"
    result = _fidelity("--bench", "demo", "--data-root", demo_root, "--categories", "brick", "--target", "rb5-gen2",
                       "--recipe", SMALL, "--out", own_out, "--report", report, "--limit", 12, "--host", "onnx",
                       "--max-drift", 100, "--write-threshold")
    assert result.exit_code == 0, result.output
    assert "decision threshold written to" in result.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    for key in ("model", "target", "compile", "checkpoint", "recipe", "audit", "stages"):
        assert manifest[key] == before[key], key
    record = manifest["decision"]
    assert record["model_sha256"] == before["model"]["sha256"] and set(record["categories"]) == {"brick"}
    md = (report / "fidelity.md").read_text()
    assert "## Decision threshold" in md and "## Anomaly maps of the " in md and "host | device" in md
    pngs = sorted(p.name for p in (report / "overlays").glob("*.png"))
    assert pngs and all(p.endswith(("-host.png", "-device.png")) for p in pngs) and len(pngs) % 2 == 0
    assert json.loads((report / "fidelity.json").read_text())["decision"]["written"]

    # a rebuild of the same graph (warm, from the stage cache) keeps the record
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.host.pipeline import build

    build(load_recipe(SMALL), load_profile("rb5-gen2"), own_out, log=lambda line: None)
    assert json.loads((bundle / "manifest.json").read_text())["decision"] == record

    # the same 12 brick images, flattened into a folder of the line's own, scored on the "device" (ONNX Runtime)
    import csv

    calibration = list(csv.DictReader((bundle / "decision_calibration.csv").open()))
    flat = tmp_path / "camera"
    flat.mkdir()
    for row in calibration:
        shutil.copy(demo_root / row["path"], flat / row["path"].replace("/", "_"))
    out = tmp_path / "line.csv"
    scored = CliRunner().invoke(main, ["score", "--model", str(bundle), "--images", str(flat), "--category", "brick",
                                       "--out", str(out), "--maps", str(tmp_path / "maps")], catch_exceptions=False)
    assert scored.exit_code == 0, scored.output
    from edgedeploy.runtime.images import read_image_scores

    meta, rows = read_image_scores(out)
    assert meta["threshold_scope"] == "brick" and meta["threshold_side"] == "host"
    assert meta["map_range"] == ",".join(repr(v) for v in record["map_range"])
    benchmark = {r["path"].replace("/", "_"): r["host_category"] for r in calibration}
    assert {r["path"]: r["decision"] for r in rows} == benchmark
    assert len({r["decision"] for r in rows}) >= 1 and len(list((tmp_path / "maps").glob("*.png"))) == 12


@pytest.mark.parametrize("args, message", [
    (["--max-fpr", "0.01"], "add --write-threshold"),
    (["--write-threshold", "--max-fpr", "1.5"], "0 <= R < 1"),
])
def test_threshold_option_mistakes_exit_2(own_out, demo_root, tmp_path, args, message):
    result = _fidelity("--bench", "demo", "--data-root", demo_root, "--categories", "brick", "--target", "rb5-gen2",
                       "--recipe", SMALL, "--out", own_out, "--report", tmp_path / "r", *args)
    assert result.exit_code == 2 and message in result.output


def test_write_threshold_with_two_score_files_exits_2(tmp_path):
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("# edgedeploy-scores: 1\npath,category,label,score\n")
    result = _fidelity("--host-scores", tmp_path / "a.csv", "--device-scores", tmp_path / "b.csv", "--write-threshold",
                       "--report", tmp_path / "r")
    assert result.exit_code == 2 and "drop --host-scores" in result.output


def test_write_threshold_refuses_a_missing_or_foreign_bundle_before_scoring(own_out, demo_root, tmp_path, monkeypatch):
    from edgedeploy.evaluation.fidelity import run

    monkeypatch.setattr(run, "score_benchmark", lambda *a, **k: pytest.fail("scored before checking the bundle"))
    base = ["--bench", "demo", "--data-root", demo_root, "--categories", "brick", "--target", "rb5-gen2", "--recipe",
            SMALL, "--out", own_out, "--report", tmp_path / "r", "--write-threshold"]
    manifest_path = own_out / "rb5-gen2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["sha256"] = "f" * 64
    manifest_path.write_text(json.dumps(manifest))
    result = _fidelity(*base)
    assert result.exit_code == 2 and "is not the graph checked here" in result.output
    manifest_path.unlink()
    result = _fidelity(*base)
    assert result.exit_code == 2 and "which does not exist" in result.output
