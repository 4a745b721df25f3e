"""The device-side scorer: ONNX Runtime path, score-file provenance, and no PyTorch anywhere on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from edgedeploy.core.modelcard import CardError
from edgedeploy.runtime.base import ModelFileError
from edgedeploy.runtime.score import open_runner, score_to_file
from edgedeploy.runtime.scorefile import read_maps, read_scores


@pytest.fixture
def tiny_onnx(tmp_path):
    """A stand-in EdgeZSAD graph: image 1x3x32x32 -> score (1,) = mean, anomaly_map 1x1x2x2 = 16x16 mean pooling."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, 2, 2])
    nodes = [  # opset 17: ReduceMean takes its axes as an attribute
        helper.make_node("ReduceMean", ["image"], ["score"], name="/score/ReduceMean", axes=[1, 2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["image"], ["gray"], name="/map/ReduceMean", axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["anomaly_map"], name="/map/Pool", kernel_shape=[16, 16], strides=[16, 16]),
    ]
    graph = helper.make_graph(nodes, "tiny", [image], [score, amap])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def mvtec_root(tmp_path):
    root = tmp_path / "mvtec"
    rng = np.random.default_rng(1)
    for category in ("bottle", "grid"):
        for defect, count in (("good", 2), ("broken", 1)):
            folder = root / category / "test" / defect
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
                if defect != "good":
                    (root / category / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.full((48, 48), 255, np.uint8)).save(
                        root / category / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def _expected(root, paths):
    from edgedeploy.evaluation.data import load_batch

    images = load_batch([root / p for p in paths], 32)
    return images.reshape(len(images), -1).mean(axis=1), images.mean(axis=1).reshape(len(images), 2, 16, 2, 16).mean(axis=(2, 4))


def test_onnx_scores_every_image_with_provenance(tiny_onnx, mvtec_root, tmp_path):
    from edgedeploy.core.hashing import sha256_file

    out = tmp_path / "scores.csv"
    table = score_to_file(tiny_onnx, "mvtec", out, data_root=mvtec_root, save_maps=True, log=lambda line: None)
    written = read_scores(out)
    assert written.rows == table.rows
    paths = [r.path for r in written.rows]
    assert paths == ["bottle/test/broken/000.png", "bottle/test/good/000.png", "bottle/test/good/001.png",
                     "grid/test/broken/000.png", "grid/test/good/000.png", "grid/test/good/001.png"]
    assert [r.label for r in written.rows] == [1, 0, 0, 1, 0, 0]
    scores, maps = _expected(mvtec_root, paths)
    np.testing.assert_allclose([r.score for r in written.rows], scores, rtol=1e-5)
    saved = read_maps(out)
    np.testing.assert_allclose(np.stack([saved[p] for p in paths]), maps, rtol=1e-5)
    assert written.meta["model_sha256"] == sha256_file(tiny_onnx)
    assert written.meta["runner"] == "onnxruntime-cpu" and written.meta["bench"] == "mvtec"
    assert written.meta["recipe"] == "unknown" and written.meta["checkpoint_sha256"] == "unknown"  # no bundle around it
    assert written.meta["image_size"] == "32"


def test_categories_select(tiny_onnx, mvtec_root, tmp_path):
    table = score_to_file(tiny_onnx, "mvtec", tmp_path / "s.csv", data_root=mvtec_root, categories=["grid"],
                            log=lambda line: None)
    assert {r.category for r in table.rows} == {"grid"}


def test_bundle_model_records_recipe_and_checkpoint(small_build, tmp_path):
    lines = []
    table = score_to_file(small_build.bundle_dir / "model.onnx", "demo", tmp_path / "s.csv", categories=["brick"],
                          log=lines.append)
    manifest = small_build.manifest
    assert table.meta["model_sha256"] == manifest["model"]["sha256"] and table.meta["target"] == "rb5-gen2"
    assert table.meta["recipe"] == "edgezsad-tinyvit5m-224" and table.meta["checkpoint_sha256"] == "seeded"
    assert len(table.rows) == 48
    # ONNX Runtime on this CPU is not the RB5 Gen2: the paper's device figure is not put beside it
    assert manifest["target"]["reference_latency"] and "reference_latency_ms" not in table.meta
    assert not any("paper" in line for line in lines)


def test_score_on_onnx_never_imports_torch(small_build, tmp_path):
    """`edgedeploy score --model out/rb5-gen2/model.onnx --bench demo`, in a fresh process where any attempt
    to import torch is recorded and refused."""
    out = tmp_path / "s.csv"
    code = textwrap.dedent(f"""
        import sys
        attempts = []

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    attempts.append(name)
                    raise ImportError("torch is not available on the device")
                return None

        sys.meta_path.insert(0, NoTorch())
        from edgedeploy.cli import main
        try:
            main(["score", "--model", {str(small_build.bundle_dir / 'model.onnx')!r}, "--bench", "demo",
                  "--categories", "brick", "--out", {str(out)!r}])
        except SystemExit as exit:
            assert not exit.code, exit.code
        assert "torch" not in sys.modules, "torch was imported"
        assert not attempts, attempts
        print("torch-free")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "torch-free" in result.stdout
    assert len(read_scores(out).rows) == 48


def test_runner_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import edgedeploy.runtime.score, edgedeploy.targets.cli, edgedeploy.runtime.cli, edgedeploy.runtime.aihub, "
            "edgedeploy.runtime.tensorrt, edgedeploy.targets.qnn.hub; print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "ok"


def test_missing_and_unknown_models(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        open_runner(tmp_path / "model.onnx")
    other = tmp_path / "model.tflite"
    other.write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"expected a \.onnx \(ONNX Runtime\), \.engine \(TensorRT\) or \.dlc"):
        open_runner(other)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match="ONNX Runtime cannot load"):
        open_runner(broken)


def test_onnx_with_other_inputs_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(CardError, match="expected N x 3 x H x W"):
        open_runner(path)


def test_cli_score_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from edgedeploy.cli import main

    result = CliRunner().invoke(main, ["score", "--model", str(tmp_path / "nope.onnx"), "--bench", "demo",
                                       "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "does not exist" in result.output


def test_manifest_of_scores_is_json_safe(tiny_onnx, mvtec_root, tmp_path):
    table = score_to_file(tiny_onnx, "mvtec", tmp_path / "s.csv", data_root=mvtec_root, log=lambda line: None)
    json.dumps(table.meta)


def test_score_records_latency_in_the_header(tiny_onnx, mvtec_root, tmp_path):
    lines = []
    table = score_to_file(tiny_onnx, "mvtec", tmp_path / "s.csv", data_root=mvtec_root, log=lines.append)
    meta = read_scores(tmp_path / "s.csv").meta
    p50, p90, p99 = (float(meta[k]) for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99"))
    assert 0 < p50 <= p90 <= p99 and float(meta["images_per_s"]) > 0
    assert meta["latency_images"] == "5" and "session.run" in meta["latency_timed"]  # 6 images, 1 warm-up
    assert any(line.startswith("latency (ONNX Runtime session.run on the CPU") for line in lines)
    assert table.meta["latency_ms_p50"] == meta["latency_ms_p50"]


def test_unwritable_score_file_is_refused_before_scoring(tiny_onnx, mvtec_root, monkeypatch):
    import time

    from click.testing import CliRunner

    from edgedeploy.cli import main
    from edgedeploy.runtime import batch

    monkeypatch.setattr(batch, "score_benchmark", lambda *a, **k: pytest.fail("scored before checking --out"))
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["score", "--model", str(tiny_onnx), "--bench", "mvtec", "--data-root",
                                       str(mvtec_root), "--out", "/proc/x/s.csv"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "not writable" in result.output and "--out" in result.output and time.perf_counter() - start < 1
