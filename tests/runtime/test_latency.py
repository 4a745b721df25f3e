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
                                "images_per_s", "latency_images")}, **header_reference(reference)}
    assert from_header(meta)["reference"] == reference
    assert "reference" not in from_header({k: v for k, v in meta.items() if not k.startswith("reference")})


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
