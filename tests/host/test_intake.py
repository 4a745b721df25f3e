"""Any anomaly model as ONNX: build --onnx, fidelity --onnx, precision --onnx and score, through the model card.

The models are small torch modules exported here: one with anomalib's I/O names (``input`` -> ``pred_score``,
``pred_label``, ``anomaly_map``, ``pred_mask``), ImageNet normalisation inside the graph and dynamic batch and
spatial dims, as anomalib's export leaves them; one with names of its own, a [0, 255] input normalised outside
the graph and "lower = more anomalous" outputs, which only a card can describe. Weights come from numpy's
generator, not torch's, so the graphs are the same bits on every CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner

from edgedeploy.cli import main
from edgedeploy.core.modelcard import IMAGENET_MEAN, IMAGENET_STD

torch = pytest.importorskip("torch")


class _Detector(torch.nn.Module):
    """conv 4x4/4 -> ReLU -> channel mean of squares = map at 1/4; score = the map's max (or their negatives)."""

    def __init__(self, seed: int, normalise_inside: bool, negate: bool, anomalib_outputs: bool):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, (8, 3, 4, 4)).astype(np.float32)))
            self.conv.bias.copy_(torch.from_numpy(rng.uniform(-0.1, 0.1, 8).astype(np.float32)))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))
        self.normalise_inside, self.negate, self.anomalib_outputs = normalise_inside, negate, anomalib_outputs

    def forward(self, x):
        if self.normalise_inside:
            x = (x - self.mean) / self.std
        amap = torch.relu(self.conv(x)).pow(2).mean(1, keepdim=True)
        score = amap.flatten(1).amax(1, keepdim=True)
        if self.negate:
            amap, score = -amap, -score
        if self.anomalib_outputs:
            return score, score > 0.5, amap, amap > 0.5
        return amap, score


def _export(module, path: Path, input_name: str, outputs: list[str], dynamic: bool, size: int) -> Path:
    dummy = torch.zeros(1, 3, size, size)
    axes = {input_name: {0: "batch_size", 2: "height", 3: "width"}, **{o: {0: "batch_size"} for o in outputs}}
    torch.onnx.export(module, (dummy,), str(path), input_names=[input_name], output_names=outputs, opset_version=17,
                      dynamo=False, dynamic_axes=axes if dynamic else None)
    return path


@pytest.fixture(scope="module")
def anomalib_style(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("anomalib-style")
    return _export(_Detector(1, True, False, True), folder / "padim_like.onnx", "input",
                   ["pred_score", "pred_label", "anomaly_map", "pred_mask"], dynamic=True, size=64)


@pytest.fixture(scope="module")
def carded(tmp_path_factory) -> tuple[Path, Path]:
    """Other names and size, [0, 255] input normalised outside, lower = more anomalous: with its card."""
    folder = tmp_path_factory.mktemp("carded")
    model = _export(_Detector(2, False, True, False), folder / "detector.onnx", "pixels", ["heat", "verdict"],
                    dynamic=False, size=96)
    card = folder / "card.yaml"
    card.write_text(yaml.safe_dump({"input": {"name": "pixels", "range": "0-255",
                                              "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}},
                                    "outputs": {"score": "verdict", "anomaly_map": "heat", "polarity": "lower",
                                                "smooth_sigma": 2.0}}))
    return model, card


def _run(args: list[str]):
    return CliRunner().invoke(main, args)


def _manifest(out: Path, target: str) -> dict:
    return json.loads((out / target / "manifest.json").read_text())


@pytest.mark.parametrize("target", ["jetson-orin-nano", "rb5-gen2"])
def test_build_onnx_detects_anomalib_and_makes_the_graph_static(anomalib_style, tmp_path, target):
    result = _run(["build", "--onnx", str(anomalib_style), "--target", target, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "anomalib export (detected)" in result.output and "input size 256" in result.output
    assert "dynamic batch 'batch_size' of input 'input' fixed to 1" in result.output
    assert "pred_label, pred_mask are not read" in result.output
    card = _manifest(tmp_path, target)["model"]["card"]
    assert card["input"] == {"name": "input", "size": 256, "layout": "NCHW", "range": "0-1",
                             "normalisation": "inside", "resize": "bilinear"}
    assert card["outputs"]["score"] == "pred_score" and card["outputs"]["map_size"] == [64, 64]
    assert card["outputs"]["ignored"] == ["pred_label", "pred_mask"] and card["assumptions"]
    graph = onnx.load(str(tmp_path / target / "model.onnx"))
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 256, 256]
    assert [o.name for o in graph.graph.output] == ["pred_score", "anomaly_map"]
    assert "batch_size" not in str(graph.graph)


def test_card_fields_reach_the_manifest_and_the_bundle_readme(carded, tmp_path):
    model, card = carded
    result = _run(["build", "--onnx", str(model), "--card", str(card), "--target", "rb5-gen2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    manifest = _manifest(tmp_path, "rb5-gen2")
    saved = manifest["model"]["card"]
    assert saved["input"]["size"] == 96 and saved["input"]["range"] == "0-255"
    assert saved["outputs"] == {"score": "verdict", "anomaly_map": "heat", "polarity": "lower", "map_size": [24, 24],
                                "smooth_sigma": 2.0, "ignored": []}
    assert manifest["model"]["input"]["range"] == [0.0, 255.0] and manifest["checkpoint"]["kind"] == "onnx"
    readme = (tmp_path / "rb5-gen2" / "README.md").read_text()
    assert "scaled to [0, 255], then normalised with the card's mean/std" in readme and "24x24" in readme


def test_score_on_the_bundle_uses_the_card_without_torch(carded, tmp_path):
    """`edgedeploy score` on the bundle's model.onnx, torch refused: the scores are the graph's on the card's input
    (x255, mean/std outside) with the sign flipped (polarity lower)."""
    model, card = carded
    assert _run(["build", "--onnx", str(model), "--card", str(card), "--target", "rb5-gen2",
                 "--out", str(tmp_path)]).exit_code == 0
    bundle_model, out = tmp_path / "rb5-gen2" / "model.onnx", tmp_path / "s.csv"
    code = textwrap.dedent(f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not available on the device")

        sys.meta_path.insert(0, NoTorch())
        from edgedeploy.cli import main
        try:
            main(["score", "--model", {str(bundle_model)!r}, "--bench", "demo", "--categories", "brick",
                  "--out", {str(out)!r}])
        except SystemExit as exit:
            assert not exit.code, exit.code
        assert "torch" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    from edgedeploy.core.onnxfile import ort_session
    from edgedeploy.evaluation.data import load_benchmark, load_image
    from edgedeploy.runtime.scorefile import read_scores

    rows = read_scores(out).rows[:4]
    bench = load_benchmark("demo", None, ["brick"])
    session = ort_session(bundle_model)
    mean, std = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) * 255 for v in (IMAGENET_MEAN, IMAGENET_STD))
    paths = {s.rel_path: s.path for s in bench.samples}
    for row in rows:
        image = load_image(paths[row.path], 96)[None] * np.float32(255)
        fed = session.run(["verdict"], {"pixels": (image - mean) / std})[0]
        raw = session.run(["verdict"], {"pixels": load_image(paths[row.path], 96)[None]})[0]
        assert row.score == pytest.approx(-float(fed.reshape(-1)[0]), rel=1e-5)
        assert row.score != pytest.approx(-float(raw.reshape(-1)[0]), rel=1e-3)


def test_fidelity_onnx_on_the_demo(anomalib_style, tmp_path):
    result = _run(["fidelity", "--onnx", str(anomalib_style), "--bench", "demo", "--categories", "brick",
                   "--target", "jetson-orin-nano", "--out", str(tmp_path), "--no-plots"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "fidelity" / "demo-jetson-orin-nano" / "fidelity.json").read_text())
    text = json.dumps(report)
    assert "host ONNX Runtime FP32 (your graph)" in text and "fp16-emulation" in text
    assert "pixel" in text  # the demo has masks: the maps went through the card into the pixel metrics


def test_precision_onnx_runs_on_the_card(carded, tmp_path):
    model, card = carded
    result = _run(["precision", "--onnx", str(model), "--card", str(card), "--bench", "demo", "--categories", "brick",
                   "--target", "jetson-orin-nano", "--out", str(tmp_path), "--limit", "4", "--max-evals", "2"])
    assert result.exit_code == 0, result.output
    assert "range analysis: 7 tensors" in result.output  # the calibration images went through the card
    report = json.loads((tmp_path / "precision" / "demo-jetson-orin-nano" / "precision.json").read_text())
    rebuild = report["recommendation"]["build_command"]
    assert f"--onnx {model}" in rebuild and f"--card {card}" in rebuild and "--checkpoint" not in rebuild


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "x.pt"], "--onnx and --checkpoint contradict each other"),
    (["--recipe", "edgezsad-tinyvit5m-224"], "--onnx and --recipe contradict each other"),
])
def test_onnx_contradicts_checkpoint_and_recipe(anomalib_style, tmp_path, args, message):
    result = _run(["build", "--onnx", str(anomalib_style), "--target", "rb5-gen2", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1


def test_card_without_onnx_is_refused(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text("input: {size: 64}\n")
    result = _run(["build", "--card", str(card), "--target", "rb5-gen2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--card describes an ONNX model given with --onnx" in result.output


def test_bad_card_field_names_file_and_field(anomalib_style, tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text("input:\n  size: large\n")
    result = _run(["build", "--onnx", str(anomalib_style), "--card", str(card), "--target", "rb5-gen2",
                   "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert f"card {card}: field input.size must be int, got 'large'" in result.output


def test_unidentifiable_outputs_are_listed(tmp_path):
    model = _export(_Detector(3, True, False, False), tmp_path / "m.onnx", "image", ["out_a", "out_b"],
                    dynamic=False, size=32)
    result = _run(["build", "--onnx", str(model), "--target", "rb5-gen2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "outputs: out_a, out_b" in result.output and "outputs.score: NAME" in result.output


def test_several_image_inputs_are_refused(tmp_path):
    class Two(torch.nn.Module):
        def forward(self, a, b):
            return (a - b).abs().mean(1, keepdim=True), (a - b).abs().flatten(1).amax(1)

    path = tmp_path / "two.onnx"
    torch.onnx.export(Two(), (torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)), str(path),
                      input_names=["a", "b"], output_names=["anomaly_map", "score"], opset_version=17, dynamo=False)
    result = _run(["build", "--onnx", str(path), "--target", "rb5-gen2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "has 2 float inputs" in result.output and "single 1x3xHxW input" in result.output


def test_map_with_another_aspect_is_refused(tmp_path):
    class Wide(torch.nn.Module):
        def forward(self, x):
            amap = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), (8, 4))
            return amap, amap.flatten(1).amax(1)

    path = tmp_path / "wide.onnx"
    torch.onnx.export(Wide(), (torch.zeros(1, 3, 32, 32),), str(path), input_names=["image"],
                      output_names=["anomaly_map", "score"], opset_version=17, dynamo=False)
    result = _run(["build", "--onnx", str(path), "--target", "rb5-gen2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "is 4x8 for a 32x32 input: its aspect differs" in result.output


def test_score_a_loose_model_with_its_card(carded, tmp_path):
    """Outside a bundle, --card gives score what a bundle's manifest would: the same scores as the bundle's."""
    model, card = carded
    assert _run(["build", "--onnx", str(model), "--card", str(card), "--target", "rb5-gen2",
                 "--out", str(tmp_path)]).exit_code == 0
    common = ["--bench", "demo", "--categories", "brick"]
    loose = _run(["score", "--model", str(model), "--card", str(card), *common, "--out", str(tmp_path / "loose.csv")])
    assert loose.exit_code == 0, loose.output
    bundled = _run(["score", "--model", str(tmp_path / "rb5-gen2" / "model.onnx"), *common,
                    "--out", str(tmp_path / "bundle.csv")])
    assert bundled.exit_code == 0, bundled.output
    from edgedeploy.runtime.scorefile import read_scores

    a, b = read_scores(tmp_path / "loose.csv").rows, read_scores(tmp_path / "bundle.csv").rows
    assert [r.path for r in a] == [r.path for r in b]
    np.testing.assert_allclose([r.score for r in a], [r.score for r in b], rtol=1e-5, atol=1e-6)
    refused = _run(["score", "--model", str(tmp_path / "rb5-gen2" / "model.onnx"), "--card", str(card), *common,
                    "--out", str(tmp_path / "x.csv")])
    assert refused.exit_code == 2 and "drop --card" in refused.output and refused.output.count("\n") == 1
