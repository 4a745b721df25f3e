"""`edgedeploy score --images`: unlabeled images on the device, decided with the bundle's threshold, with overlays."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgedeploy.cli import main
from edgedeploy.core.errors import DataError
from edgedeploy.runtime import decision
from edgedeploy.runtime.images import bundle_model_file, find_images, overlay_paths, read_image_scores, score_images


def _invoke(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)], catch_exceptions=False)


def _images(root: Path) -> Path:
    """A layout of the line's own: nested folders, four formats, a truncated PNG, a text file, a hidden file."""
    rng = np.random.default_rng(0)
    for rel, size in (("line3/cam1/0001.png", (40, 60)), ("line3/cam1/0002.JPG", (48, 48)),
                      ("line3/cam2/0003.bmp", (32, 32)), ("other/0004.tiff", (50, 30)), ("0005.png", (48, 48))):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    data = (root / "0005.png").read_bytes()
    (root / "line3" / "cam2" / "broken.png").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")
    return root


@pytest.fixture
def bundle(small_build, tmp_path) -> Path:
    """A copy of the small rb5-gen2 bundle, without a decision record."""
    dst = tmp_path / "rb5-gen2"
    shutil.copytree(small_build.bundle_dir, dst, ignore=shutil.ignore_patterns("model_ctx.onnx"))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.pop("decision", None)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _with_decision(bundle: Path, host: float, device: float | None = None, model_sha: str | None = None,
                   categories: dict | None = None, map_range=(0.0, 0.5)) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = {"host": {"threshold": host}, "device": {"threshold": host if device is None else device}}
    manifest["decision"] = {"version": decision.DECISION_VERSION,
                            "model_sha256": model_sha or manifest["model"]["sha256"], "polarity": "higher",
                            "rule": "f1-max", "max_fpr": None, "overall": entry,
                            "categories": categories or {}, "map_range": list(map_range)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_find_images_walks_any_layout(tmp_path):
    root = _images(tmp_path / "in")
    (root / "overlays").mkdir()
    Image.new("RGB", (4, 4)).save(root / "overlays" / "old.png")
    found = find_images(root, exclude=(root / "overlays",))
    assert [s.rel_path for s in found.samples] == ["0005.png", "line3/cam1/0001.png", "line3/cam1/0002.JPG",
                                                   "line3/cam2/0003.bmp", "line3/cam2/broken.png", "other/0004.tiff"]
    assert found.ignored == 1 and not found.single and all(s.label == -1 for s in found.samples)
    one = find_images(root / "other" / "0004.tiff", category="brick")
    assert one.single and one.samples[0].rel_path == "0004.tiff" and one.samples[0].category == "brick"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"no PNG, JPEG, BMP or TIFF images in .*empty \(searched recursively\) \(1 "):
        find_images(tmp_path / "empty")
    with pytest.raises(DataError, match="is not a PNG, JPEG, BMP or TIFF file"):
        find_images(root / "notes.txt")
    with pytest.raises(DataError, match="does not exist"):
        find_images(tmp_path / "nowhere")


def test_overlay_paths_mirror_the_images_and_keep_same_stems_apart(tmp_path):
    root = tmp_path / "in"
    for rel in ("a/x.png", "a/x.jpg", "b/y.bmp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / rel)
    paths = overlay_paths(find_images(root), tmp_path / "maps")
    assert {k: v.relative_to(tmp_path / "maps").as_posix() for k, v in paths.items()} == {
        "a/x.jpg": "a/x.jpg.png", "a/x.png": "a/x.png.png", "b/y.bmp": "b/y.png"}


def test_a_folder_with_a_corrupt_image_goes_on_and_exits_1(bundle, tmp_path):
    root = _images(tmp_path / "in")
    result = _invoke("--model", bundle, "--images", root, "--out", tmp_path / "s.csv", "--maps", tmp_path / "maps")
    assert result.exit_code == 1, result.output
    assert f"warning: {root / 'line3/cam2/broken.png'}: " in result.stderr and "truncated" in result.stderr
    assert "no decision threshold: scores only" in result.stderr and "--write-threshold" in result.stderr
    assert "scored 5 of 6 images; 1 failed" in result.stderr and "1 non-image file ignored" in result.stderr
    assert "latency (ONNX Runtime session.run on the CPU; 4 images after 1 warm-up)" in result.stderr
    meta, rows = read_image_scores(tmp_path / "s.csv")
    assert meta["threshold"] == "none" and meta["runner"] == "onnxruntime-cpu" and "latency_ms_p50" in meta
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == 6 and by_path["line3/cam2/broken.png"]["score"] == ""
    assert "truncated" in by_path["line3/cam2/broken.png"]["error"]
    assert all(float(r["score"]) >= 0 and not r["error"] and not r["decision"] for p, r in by_path.items()
               if p != "line3/cam2/broken.png")
    for rel, size in (("line3/cam1/0001.png", (60, 40)), ("other/0004.png", (30, 50)), ("line3/cam1/0002.png", (48, 48))):
        with Image.open(tmp_path / "maps" / rel) as im:
            assert im.size == size and im.text["edgedeploy:map_range"] == "0.0,1.0"
    assert not (tmp_path / "maps" / "line3" / "cam2" / "broken.png").exists()


def test_decisions_follow_the_bundles_threshold(bundle, tmp_path):
    root = _images(tmp_path / "in")
    (root / "line3" / "cam2" / "broken.png").unlink()
    first = score_images(bundle, root, log=lambda line: None, progress=False)
    scores = sorted(r.score for r in first.results)
    overall, brick = (scores[1] + scores[2]) / 2, (scores[2] + scores[3]) / 2  # 3 NG overall, 2 NG for brick
    _with_decision(bundle, overall, device=0.0, categories={"brick": {"host": {"threshold": brick},
                                                                      "device": {"threshold": 0.0}}})
    result = _invoke("--model", bundle, "--images", root, "--out", tmp_path / "s.csv", "--maps", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert f"decision: NG when score >= threshold {overall:.6g} (overall, F1-max" in result.stderr
    assert "the host's (the FP32 graph)" in result.stderr and "colour scale [0, 0.5] (the bundle's" in result.stderr
    meta, rows = read_image_scores(tmp_path / "s.csv")
    assert float(meta["threshold"]) == overall and meta["threshold_side"] == "host"
    assert [r["decision"] for r in rows] == ["NG" if float(r["score"]) >= overall else "OK" for r in rows]
    assert sum(r["decision"] == "NG" for r in rows) == 3
    with Image.open(tmp_path / "m" / "0005.png") as im:
        assert im.text["edgedeploy:decision"] == {r["path"]: r for r in rows}["0005.png"]["decision"]
    result = _invoke("--model", bundle, "--images", root, "--category", "brick")  # no --out: the rows on stdout
    lines = result.stdout.strip().splitlines()
    assert result.exit_code == 0 and lines[0] == "path,score,decision,error" and len(lines) == 6
    assert sum(line.split(",")[2] == "NG" for line in lines[1:]) == 2
    one = _invoke("--model", bundle / "model.onnx", "--images", root / "0005.png")
    score = {r["path"]: float(r["score"]) for r in rows}["0005.png"]
    assert one.exit_code == 0 and one.stdout.startswith(f"0005.png: score {score:.6g}  {'NG' if score >= overall else 'OK'} (threshold")


def test_a_threshold_for_another_model_or_category_is_refused(bundle, tmp_path):
    root = _images(tmp_path / "in")
    _with_decision(bundle, 0.5, model_sha="0" * 64)
    result = _invoke("--model", bundle, "--images", root)
    assert result.exit_code == 2 and "written for model 0000000000000000" in result.output and "refused" in result.output
    _with_decision(bundle, 0.5, categories={"brick": {"host": {"threshold": 0.4}, "device": {"threshold": 0.4}}})
    result = _invoke("--model", bundle, "--images", root, "--category", "grass")
    assert result.exit_code == 2 and "no threshold for it (categories: brick)" in result.output


@pytest.mark.parametrize("args, message", [
    (["--images", "IN", "--bench", "demo"], "--images and --bench contradict"),
    ([], "give --bench NAME"),
    (["--bench", "demo"], "--out is needed with --bench"),
    (["--bench", "demo", "--out", "s.csv", "--maps", "m"], "--maps applies to --images"),
    (["--images", "IN", "--save-maps"], "--save-maps applies to --bench"),
    (["--images", "IN", "--map-range", "0,1"], "add --maps DIR"),
    (["--images", "IN", "--maps", "m", "--map-range", "1,0"], "HI must be above LO"),
])
def test_option_mistakes_exit_2(bundle, tmp_path, args, message):
    root = _images(tmp_path / "in")
    result = _invoke("--model", bundle, *[str(root) if a == "IN" else a for a in args])
    assert result.exit_code == 2 and message in result.output


def test_empty_folder_exits_2_before_the_model_loads(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _invoke("--model", tmp_path / "nope.onnx", "--images", tmp_path / "empty")
    assert result.exit_code == 2 and "no PNG, JPEG, BMP or TIFF images" in result.output


def test_threshold_side_polarity_and_the_record_a_rebuild_keeps():
    record = {"version": 1, "model_sha256": "a" * 64, "polarity": "lower", "rule": "max-fpr", "max_fpr": 0.01,
              "overall": {"host": {"threshold": -2.0}, "device": {"threshold": -1.5}}, "categories": {}}
    host = decision.choose(record, None, "onnxruntime-cpu")
    device = decision.choose(record, None, "tensorrt")
    assert (host.side, host.value, device.side, device.value) == ("host", -2.0, "device", -1.5)
    assert device.raw == 1.5 and device.decide(-1.0) == "NG" and device.decide(-1.6) == "OK"  # raw 1.0 <= 1.5: NG
    assert device.decide(float("nan")) == "" and "recalibrated (host -2)" in device.describe()
    assert "raw output is <= 1.5" in device.header()["decision_rule"]
    assert decision.carried_decision({"decision": record}, "a" * 64) == {"decision": record}
    assert decision.carried_decision({"decision": record}, "b" * 64) == {}
    with pytest.raises(decision.DecisionError, match="version 2"):
        decision.record_of({"decision": {**record, "version": 2}})


def test_a_bundle_folder_names_the_model_its_target_runs(tmp_path):
    lines = []
    for runtime, files, expected in (("tensorrt", ("model.onnx", "model.engine"), "model.engine"),
                                     ("tensorrt", ("model.onnx",), "model.onnx"),
                                     ("qnn", ("model.onnx", "model_ctx.onnx"), "model.onnx")):
        folder = tmp_path / f"{runtime}-{len(files)}"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"target": {"name": "t", "runtime": runtime},
                                                          "model": {"path": "model.onnx"}}))
        for name in files:
            (folder / name).write_bytes(b"x")
        assert bundle_model_file(folder, None, lines.append).name == expected
    assert bundle_model_file(tmp_path / "qnn-2", "qnn-htp", lines.append).name == "model_ctx.onnx"
    assert "no model.engine in it yet" in lines[1]


def test_score_images_with_maps_imports_no_torch_scipy_or_matplotlib(bundle, tmp_path):
    root = _images(tmp_path / "in")
    _with_decision(bundle, 0.3)
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    code = textwrap.dedent(f"""
        import sys
        attempts = []

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "scipy", "matplotlib", "timm", "skimage"):
                    attempts.append(name)
                    raise ImportError(name + " is not available on the device")
                return None

        sys.meta_path.insert(0, Refuse())
        from edgedeploy.cli import main
        try:
            main(["score", "--model", {str(bundle)!r}, "--images", {str(root)!r}, "--out", {str(out)!r},
                  "--maps", {str(maps)!r}])
        except SystemExit as exit:
            assert exit.code == 1, exit.code  # the truncated image
        assert not attempts, attempts
        print("device-clean")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "device-clean" in result.stdout and len(list(maps.rglob("*.png"))) == 5
