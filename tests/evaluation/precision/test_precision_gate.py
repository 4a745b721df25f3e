"""`precision --max-drift` means what `fidelity --max-drift` means: a keep set is judged by fidelity's own gate
(the reordering drift, near-ties never fail), and the default sample is fine enough to resolve the budget -- or the
run says, in one line before the long work, that it is not."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgedeploy.evaluation.data import Benchmark
from edgedeploy.evaluation.data.benchmarks import Sample
from edgedeploy.evaluation.fidelity.compare import compare
from edgedeploy.evaluation.data.subset import select
from edgedeploy.evaluation.precision.evaluate import BenchEvaluator
from edgedeploy.evaluation.precision.search import DEFAULT_MAX_DRIFT, Budget
from edgedeploy.runtime.batch import ScoredBenchmark
from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable


def _bench(sizes: dict[str, tuple[int, int]], name: str = "synthetic") -> Benchmark:
    """A benchmark of sample records only (nothing is read from disk): category -> (normal, anomalous)."""
    samples = []
    for category, (n_good, n_bad) in sizes.items():
        for i in range(n_good):
            samples.append(Sample(Path(f"/nowhere/{category}/good/{i:03d}.png"), f"{category}/test/good/{i:03d}.png",
                                  category, 0, "good", None))
        for i in range(n_bad):
            samples.append(Sample(Path(f"/nowhere/{category}/bad/{i:03d}.png"), f"{category}/test/bad/{i:03d}.png",
                                  category, 1, "bad", None))
    samples.sort(key=lambda s: (s.category, s.rel_path))
    return Benchmark(name, Path("/nowhere"), tuple(samples))


def _scored(bench: Benchmark, scores: dict[str, float], label: str) -> ScoredBenchmark:
    rows = [ScoreRow(s.rel_path, s.category, s.label, float(scores[s.rel_path])) for s in bench.samples]
    return ScoredBenchmark(label, ScoreTable({"runner": label}, rows))


def _host(bench: Benchmark) -> dict[str, float]:
    """Normal images 0.1..0.4, anomalous 0.6..0.9: every pair ordered, far apart."""
    out = {}
    for items in bench.by_category().values():
        good = [s for s in items if s.label == 0]
        bad = [s for s in items if s.label == 1]
        out.update({s.rel_path: 0.1 + 0.1 * i for i, s in enumerate(good)})
        out.update({s.rel_path: 0.6 + 0.1 * i for i, s in enumerate(bad)})
    return out


def _budget(max_drift: float, max_score_error: float, gate: str) -> Budget:
    return Budget(max_drift, max_score_error) if gate == "benchmark" else Budget(max_drift, max_score_error, gate)


def _precision_verdict(bench, host, device, budget: Budget):
    """What `edgedeploy precision` concludes for a keep set whose FP16 emulation scores ``device``."""
    evaluator = BenchEvaluator(Path("unused.onnx"), "0" * 64, None, "seeded", bench, host, budget, progress=False,
                               float_tensors=set())
    evaluator._score = lambda keep, subset: device  # the emulation's scores, without running a graph
    return evaluator(("some/node",))


def _near_tie_case():
    """Category a: one normal/anomalous pair 2e-4 apart on the host (under half an FP16 step at 0.5), swapped by
    device noise of 3e-4 (a near-tie for fidelity); 4 x 4 images, so that this one pair is 6.25 points of raw
    drift. Category b: unchanged but for noise."""
    bench = _bench({"a": (4, 4), "b": (4, 4)})
    host = _host(bench)
    good_a, bad_a = "a/test/good/003.png", "a/test/bad/000.png"
    host[good_a], host[bad_a] = 0.5000, 0.5002
    device = dict(host)
    device[good_a], device[bad_a] = 0.5003, 0.4999  # swapped: each moved by 3e-4
    for path in ("a/test/good/000.png", "b/test/good/001.png", "b/test/bad/002.png"):
        device[path] += 1e-3  # FP16-sized noise elsewhere too
    return bench, _scored(bench, host, "host"), _scored(bench, device, "device")


def _real_reordering_case():
    """Category a: two pairs reordered far beyond FP16's reach, one each way, so the raw drift is 0.000 while the
    reordering drift is 2 pairs = 12.5 points (6.25 as the mean over the two categories). Category b: unchanged."""
    bench = _bench({"a": (4, 4), "b": (4, 4)})
    host = _host(bench)
    host["a/test/good/003.png"] = 0.75  # above two anomalous images on the host already (0.6, 0.7)
    device = dict(host)
    device["a/test/good/003.png"] = 0.65  # now below the 0.7 anomaly: one pair right, gap 0.05 on the host
    device["a/test/bad/000.png"] = 0.25  # below the 0.3 normal: one pair wrong, gap 0.3 on the host
    return bench, _scored(bench, host, "host"), _scored(bench, device, "device")


@pytest.mark.parametrize("gate", ["benchmark", "category"])
def test_near_ties_over_the_raw_budget_are_within_budget_as_in_fidelity(gate):
    bench, host, device = _near_tie_case()
    budget = _budget(0.2, 0.01, gate)  # the benchmark gate is the default
    report = compare(host, device, bench, budget.max_drift, top=0, gate=gate)
    assert report.passed and abs(report.mean["drift"]) > 0.2  # the raw drift alone would fail
    assert report.mean["near_ties"] == 1 and report.mean["reorderings"] == 0
    evaluation = _precision_verdict(bench, host, device, budget)
    assert evaluation.within(budget) is True
    assert evaluation.passed is True and evaluation.gate_value == 0.0
    assert evaluation.near_ties == 1 and evaluation.reorderings == 0
    assert evaluation.mean_drift == pytest.approx(report.mean["drift"])


@pytest.mark.parametrize("gate", ["benchmark", "category"])
def test_real_reorderings_with_a_small_raw_drift_are_over_budget_as_in_fidelity(gate):
    bench, host, device = _real_reordering_case()
    budget = _budget(0.2, 1.0, gate)  # a score budget that cannot decide: the drift gate alone does
    report = compare(host, device, bench, budget.max_drift, top=0, gate=gate)
    assert not report.passed and abs(report.mean["drift"]) <= 0.2  # the raw drift alone would pass
    assert report.mean["reorderings"] == 2
    evaluation = _precision_verdict(bench, host, device, budget)
    assert evaluation.within(budget) is False
    assert evaluation.passed is False and evaluation.reorderings == 2
    expected = report.gate_value if gate == "benchmark" else max(c.reordering_gross for c in report.categories)
    assert evaluation.gate_value == pytest.approx(expected)
    assert evaluation.verdict == report.verdict()


def test_score_error_still_fails_a_keep_set_the_drift_gate_passes():
    bench, host, device = _near_tie_case()
    tight = Budget(0.2, 1e-4)
    evaluation = _precision_verdict(bench, host, device, tight)
    assert evaluation.passed is True and not evaluation.within(tight)


def test_nan_scores_fail_as_in_fidelity():
    bench, host, _ = _near_tie_case()
    rows = {s.rel_path: r.score for s, r in zip(bench.samples, host.table.rows)}
    rows["b/test/bad/001.png"] = float("inf")
    device = _scored(bench, rows, "device")
    assert not compare(host, device, bench, 0.2, top=0).passed
    evaluation = _precision_verdict(bench, host, device, Budget())
    assert evaluation.nonfinite == 1 and evaluation.gate_value is None and not evaluation.within(Budget())


# ------------------------------------------------------------------------------------- resolution


def _demo_shaped() -> Benchmark:
    """The built-in demo's shape: its categories, each with its normal and defective test images."""
    from edgedeploy.evaluation.data.demo import DEFECT_PLAN, DEMO_CATEGORIES, N_TEST_GOOD

    return _bench({c: (N_TEST_GOOD, len(DEFECT_PLAN)) for c in DEMO_CATEGORIES}, "demo")


def _gate_pair_points(subset: Benchmark) -> float:
    """Points one swapped pair moves the benchmark gate's value (the mean over categories) by, at most."""
    pairs = []
    for items in subset.by_category().values():
        n_bad = sum(s.label for s in items)
        pairs.append(100.0 / ((len(items) - n_bad) * n_bad))
    return max(pairs) / len(pairs)


def test_default_limit_resolves_the_default_budget_on_the_demo():
    from edgedeploy.evaluation.precision.cli import precision
    from edgedeploy.evaluation.precision.run import DEFAULT_LIMIT, PrecisionOptions

    demo = _demo_shaped()
    assert _gate_pair_points(select(demo, DEFAULT_LIMIT)) <= DEFAULT_MAX_DRIFT
    assert _gate_pair_points(select(demo, DEFAULT_LIMIT - 1)) > DEFAULT_MAX_DRIFT  # and it is the smallest that does
    assert PrecisionOptions(bench="demo", target="x").limit == DEFAULT_LIMIT
    assert {p.name: p.default for p in precision.params}["limit"] == DEFAULT_LIMIT
    assert {p.name: p.default for p in precision.params}["gate"] == "benchmark"


def test_resolution_warning_names_the_pair_worth_and_the_limit_that_resolves():
    from edgedeploy.evaluation.precision.evaluate import resolution_warning, resolving_limit
    from edgedeploy.evaluation.precision.run import DEFAULT_LIMIT

    demo = _demo_shaped()
    assert resolution_warning(demo, DEFAULT_LIMIT, 0.2) is None
    assert resolving_limit(demo, 0.2) == DEFAULT_LIMIT
    line = resolution_warning(demo, 8, 0.2)
    assert "\n" not in line and "cannot resolve --max-drift 0.2" in line
    assert "brick (4 x 4) 6.250, grass (4 x 4) 6.250" in line and "2.083 of the benchmark gate's mean over 3 " \
        "categories" in line
    assert f"--limit {DEFAULT_LIMIT} or more" in line
    # one category: the mean is that category, so 13 x 13 (0.592) no longer resolves 0.2 points; 23 x 22 (0.198) does
    brick = _bench({"brick": (24, 24)}, "demo")
    assert "--limit 45 or more" in resolution_warning(brick, DEFAULT_LIMIT, 0.2)
    assert resolution_warning(demo, DEFAULT_LIMIT, 0.2, gate="category") is not None
    # too small whatever the limit: says so
    tiny = _bench({"a": (4, 4)})
    assert "not even all 8 images resolve it" in resolution_warning(tiny, 0, 0.2)
    assert resolution_warning(tiny, 0, 10.0) is None


def test_run_warns_before_the_build(monkeypatch, tmp_path):
    """The warning is logged before anything slow starts (the build here fails on purpose if it is reached)."""
    import edgedeploy.evaluation.precision.run as run_module
    import edgedeploy.host.pipeline as pipeline

    demo = _demo_shaped()
    monkeypatch.setattr(run_module, "resolve_inputs", lambda opts, command: SimpleNamespace(
        profile=SimpleNamespace(name="t", display_name="T"), recipe=SimpleNamespace(name="r"), bench=demo,
        report_dir=tmp_path))

    class Reached(Exception):
        pass

    def build(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(pipeline, "build", build)
    for limit, warned in ((8, True), (run_module.DEFAULT_LIMIT, False)):
        lines: list[str] = []
        with pytest.raises(Reached):
            run_module.run_precision(run_module.PrecisionOptions(bench="demo", target="t", out=tmp_path, limit=limit),
                                     log=lines.append)
        warnings = [line for line in lines if "cannot resolve --max-drift" in line]
        assert len(warnings) == int(warned), lines


def test_unknown_gate_is_refused():
    from edgedeploy.core.errors import EdgeDeployError
    from edgedeploy.evaluation.precision.run import PrecisionOptions, check_options

    with pytest.raises(EdgeDeployError, match="--gate"):
        check_options(PrecisionOptions(bench="demo", target="x", gate="median"))


def test_host_scores_are_untouched_by_the_cases():
    """The cases above differ from the host only where they say."""
    for case in (_near_tie_case, _real_reordering_case):
        bench, host, device = case()
        h = np.array([r.score for r in host.table.rows])
        d = np.array([r.score for r in device.table.rows])
        assert 1 <= np.count_nonzero(h != d) <= 5
