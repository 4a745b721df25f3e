"""Latency statistics (standard library only), the paper's reference figure, and where they are shown."""

from __future__ import annotations

import numpy as np
import pytest

from edgedeploy.core.profiles import load_profile
from edgedeploy.runtime.latency import from_header, header_reference, latency_summary, reference_line


@pytest.mark.parametrize("n", [1, 2, 5, 64])
def test_summary_matches_numpys_percentiles(n):
    seconds = list(np.random.default_rng(n).uniform(0.01, 0.05, n + 1))
    summary = latency_summary(seconds)
    ms = 1000 * np.asarray(seconds[1:])
    for key, q in (("latency_ms_p50", 50), ("latency_ms_p90", 90), ("latency_ms_p99", 99)):
        assert summary[key] == pytest.approx(round(float(np.percentile(ms, q)), 3), abs=1e-9)
    assert summary["latency_ms_mean"] == pytest.approx(ms.mean(), abs=1e-3) and summary["latency_images"] == n
    assert summary["latency_ms_p50"] <= summary["latency_ms_p90"] <= summary["latency_ms_p99"]


def test_profiles_carry_the_papers_latency():
    assert load_profile("jetson-orin-nano").reference_latency["ms"] == pytest.approx(32.8)
    assert load_profile("rb5-gen2").reference_latency["ms"] == pytest.approx(140)
    assert load_profile("rb5-gen2").summary()["reference_latency"]["source"].startswith("EdgeZSAD paper")


def test_reference_is_labelled_as_the_papers_and_survives_the_header():
    reference = {"ms": 32.8, "source": "EdgeZSAD paper"}
    line = reference_line(reference, "Jetson")
    assert line == "reference, the paper's figure, not measured here: 32.8 ms per image on Jetson (EdgeZSAD paper)"
    assert reference_line(None, "Jetson") == "" and header_reference(None) == {}
    meta = {**{k: "1" for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
                                "images_per_s", "latency_images")}, **header_reference(reference),
            "recipe": "edgezsad-tinyvit21m-512", "image_size": "512"}
    assert from_header(meta)["reference"] == reference
    assert "reference" not in from_header({k: v for k, v in meta.items() if not k.startswith("reference")})
    # an older score file of another model (the 224 recipe) may carry the figure: it is not shown beside it
    assert "reference" not in from_header({**meta, "recipe": "edgezsad-tinyvit5m-224", "image_size": "224"})


def test_fidelity_shows_the_papers_figure_beside_the_device_latency():
    from edgedeploy.evaluation.fidelity.render import device_latency_line
    from edgedeploy.evaluation.fidelity.report import FidelityReport

    latency = {"latency_ms_p50": 30.0, "latency_ms_p90": 31.0, "latency_ms_p99": 33.0, "latency_ms_mean": 30.5,
               "images_per_s": 32.8, "latency_images": 9, "timed": "TensorRT execute_async_v3 + stream synchronize",
               "reference": {"ms": 32.8, "source": "EdgeZSAD paper"}}
    report = FidelityReport("mvtec", "jetson-orin-nano", 0.2, "host", "device", [], {},
                            info={"device_latency": latency, "target_display_name": "Jetson Orin Nano Super"})
    line = device_latency_line(report)
    assert line.startswith("device latency (TensorRT execute_async_v3") and "median 30.00 ms" in line
    assert line.endswith("; reference, the paper's figure, not measured here: 32.8 ms per image on Jetson Orin Nano "
                         "Super (EdgeZSAD paper)")
    del latency["reference"]
    assert "paper" not in device_latency_line(report)


# The paper's figure is for the paper's model only: EdgeZSAD TinyViT-21M-512 at 512x512 (issue #18).

def _manifest(recipe: dict, input_size: int) -> dict:
    profile = load_profile("jetson-orin-nano").summary()
    return {"target": profile, "recipe": recipe, "model": {"card": {"input_size": input_size}}}


PAPER = _manifest({"name": "edgezsad-tinyvit21m-512", "backbone": "tiny_vit_21m_512", "input_size": 512}, 512)
SMALL = _manifest({"name": "edgezsad-tinyvit5m-224", "backbone": "tiny_vit_5m_224", "input_size": 224}, 224)
ONNX = _manifest({"name": "onnx-edgezsad-tinyvit21m-512", "kind": "onnx", "input_size": 512}, 512)  # --onnx
RESIZED = _manifest({"name": "edgezsad-tinyvit21m-512", "input_size": 512}, 384)  # the card feeds another size


@pytest.mark.parametrize("recipe, size, expected", [
    ("edgezsad-tinyvit21m-512", 512, True), ("edgezsad-tinyvit21m-512", "512", True),
    ("edgezsad-tinyvit21m-512", 224, False), ("edgezsad-tinyvit5m-224", 224, False),
    ("edgezsad-tinyvit5m-224", 512, False), ("onnx-model", 512, False), (None, 512, False),
    ("edgezsad-tinyvit21m-512", None, False), ("edgezsad-tinyvit21m-512", "unknown", False)])
def test_only_the_papers_model_at_512_is_the_papers(recipe, size, expected):
    from edgedeploy.runtime.latency import is_paper_model

    assert is_paper_model(recipe, size) is expected


def test_manifests_of_the_papers_model():
    from edgedeploy.runtime.latency import manifest_is_paper_model

    assert manifest_is_paper_model(PAPER)
    assert not any(manifest_is_paper_model(m) for m in (SMALL, ONNX, RESIZED, {}, None))


class _Runner:
    def __init__(self, manifest: dict, on_target: bool = True):
        self.manifest, self.on_target = manifest, on_target
        self.input_size = manifest["model"]["card"]["input_size"]


@pytest.mark.parametrize("manifest, on_target, shown", [
    (PAPER, True, True), (PAPER, False, False), (SMALL, True, False), (ONNX, True, False), (RESIZED, True, False)],
    ids=["paper-512-on-target", "paper-512-on-cpu", "224-recipe", "onnx-model", "card-at-384"])
def test_score_prints_the_papers_figure_for_its_model_only(manifest, on_target, shown):
    from edgedeploy.runtime.score import _paper_reference

    lines: list[str] = []
    header = _paper_reference(_Runner(manifest, on_target), lines.append)
    if shown:
        assert lines == ["reference, the paper's figure, not measured here: 32.8 ms per image on NVIDIA Jetson Orin Nano "
                         f"Super (JetPack 6.2) ({PAPER['target']['reference_latency']['source']})"]
        assert header == {"reference_latency_ms": "32.8",
                          "reference_latency_source": PAPER["target"]["reference_latency"]["source"]}
    else:
        assert lines == [] and header == {}


def test_bench_engine_and_the_bundle_readme_name_the_papers_figure_for_its_model_only():
    from edgedeploy.runtime.engine_metadata import bench_lines
    from edgedeploy.targets.readme import _reference

    bench = {"latency_ms_p50": 30.0, "latency_ms_p90": 31.0, "latency_ms_p99": 33.0, "latency_ms_mean": 30.5,
             "images_per_s": 32.8, "latency_images": 9, "timed": "trtexec", "warmup_ms": 2000}
    assert bench_lines(bench, PAPER)[-1].startswith("reference, the paper's figure, not measured here: 32.8 ms")
    for other in (SMALL, ONNX, RESIZED, {}):
        assert len(bench_lines(bench, other)) == 1 and "paper" not in bench_lines(bench, other)[0]
    profile = load_profile("jetson-orin-nano")
    assert _reference(profile, PAPER) == " beside the paper's figure for this device (32.8 ms, a reference, not ours)"
    assert _reference(profile, SMALL) == _reference(profile, ONNX) == ""
