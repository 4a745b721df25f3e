"""`edgedeploy score --model BUNDLE --images DIR` on a Jetson bundle (TensorRT faked): the folder's engine runs, and
the decision uses the device's recalibrated threshold, refused when written for another graph."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

import fakes
from edgedeploy.cli import main
from edgedeploy.runtime.images import read_image_scores


def test_a_jetson_bundle_folder_scores_its_engine_against_the_device_threshold(fake_trt, jetson_bundle, mvtec_root,
                                                                              tmp_path):
    from edgedeploy.evaluation.data import load_batch

    assert CliRunner().invoke(main, ["engine", "build", str(jetson_bundle)]).exit_code == 0
    images = sorted((mvtec_root / "widget" / "test").rglob("*.png"))
    scores, _ = fakes.expected_outputs(load_batch(images, 224))
    cut = float(np.sort(scores)[1:3].mean())  # two NG on the device's threshold; the host's calls none NG
    manifest = json.loads((jetson_bundle / "manifest.json").read_text())
    manifest["decision"] = {"version": 1, "model_sha256": manifest["model"]["sha256"], "polarity": "higher",
                            "rule": "f1-max", "max_fpr": None, "categories": {}, "map_range": [0.0, 1.0],
                            "overall": {"host": {"threshold": 10.0}, "device": {"threshold": cut}}}
    (jetson_bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "line.csv"
    folder = mvtec_root / "widget" / "test"
    result = CliRunner().invoke(main, ["score", "--model", str(jetson_bundle), "--images", str(folder), "--out", str(out),
                                       "--maps", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    assert f"model: {jetson_bundle / 'model.engine'} (TensorRT)" in result.output
    assert "the device's, recalibrated (host 10)" in result.output
    meta, rows = read_image_scores(out)
    assert meta["runner"] == "tensorrt" and meta["threshold_side"] == "device" and float(meta["threshold"]) == cut
    assert [r["decision"] for r in rows] == ["NG" if float(r["score"]) >= cut else "OK" for r in rows]
    assert sum(r["decision"] == "NG" for r in rows) == 2 and len(list((tmp_path / "maps").rglob("*.png"))) == 4

    manifest["decision"]["model_sha256"] = "e" * 64
    (jetson_bundle / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["score", "--model", str(jetson_bundle), "--images", str(mvtec_root)])
    assert result.exit_code == 2 and "written for model eeeeeeeeeeeeeeee" in result.output
