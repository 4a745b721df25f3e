"""The keep-list search: greedy over candidates, pruning and bisection, overflow closure, and the real thing
on a model built to overflow in FP16."""

from __future__ import annotations

import math

import pytest

from edgedeploy.core.hashing import sha256_file
from edgedeploy.evaluation.precision import emit
from edgedeploy.evaluation.precision.graph_index import load_index
from edgedeploy.evaluation.precision.patterns import classify, regions
from edgedeploy.evaluation.precision.ranges import analyse
from edgedeploy.evaluation.precision.search import Budget, Candidate, Evaluation, candidates, closure, search


class FakeEvaluator:
    """Reordering drift is 5 points per 'bad' node left in FP16 (the gate passes at <= 0.2); score error 0.001 per
    such node; NaN when 'nan' is in FP16."""

    def __init__(self, bad, nan=()):
        self.bad, self.nan = set(bad), set(nan)
        self.calls = []

    def __call__(self, keep):
        self.calls.append(keep)
        missing = self.bad - set(keep)
        if self.nan - set(keep):
            return Evaluation(keep, None, math.inf, passed=False, nonfinite=3)
        value = 5.0 * len(missing)
        return Evaluation(keep, value, 0.001 * len(missing), passed=value <= 0.2)


def _identity(nodes):
    return tuple(sorted(set(nodes)))


GROUPS = [Candidate("op class: Softmax", "op-class", ("s1", "s2", "s3", "s4")),
          Candidate("region: readout", "region", ("r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8")),
          Candidate("range: n9", "range", ("n9",))]


def test_pure_fp16_within_budget_keeps_nothing():
    fake = FakeEvaluator(bad=())
    result = search(fake, GROUPS, _identity)
    assert result.keep == () and result.within_budget and fake.calls == [()]
    assert result.stopped == "pure FP16 is within budget"
    informed = search(FakeEvaluator(bad=()), GROUPS, _identity, force=True)
    assert informed.keep == () and len(informed.trials) == 1 + len(GROUPS)


def test_greedy_then_bisection_finds_the_one_node():
    fake = FakeEvaluator(bad={"r6"})
    result = search(fake, GROUPS, _identity, Budget(0.2, 0.01), max_evals=20)
    assert result.within_budget and result.keep == ("r6",)
    assert result.baseline.gate_value == 5.0 and result.best.gate_value == 0.0
    steps = [t.step for t in result.trials]
    assert steps[0] == "baseline" and "greedy 1" in steps and "bisect" in steps
    accepted = [t for t in result.trials if t.accepted]
    assert accepted and all(t.evaluation.keep == ("r6",) for t in accepted)


def test_two_groups_needed_and_a_useless_one_is_pruned():
    fake = FakeEvaluator(bad={"s2", "r1"})
    result = search(fake, GROUPS, _identity, Budget(0.2, 0.01), max_evals=40)
    assert result.within_budget and set(result.keep) == {"s2", "r1"}


def test_nan_is_worse_than_any_drift_and_gets_fixed():
    fake = FakeEvaluator(bad=(), nan={"n9"})
    result = search(fake, GROUPS, _identity, Budget(0.2, 0.01))
    assert result.baseline.nonfinite == 3 and result.keep == ("n9",) and result.within_budget


def test_evaluation_budget_and_no_improvement():
    fake = FakeEvaluator(bad={"x"})  # no candidate holds the culprit
    result = search(fake, GROUPS, _identity, Budget(0.2, 0.01), max_evals=2)
    assert not result.within_budget and result.keep == ()
    assert len(fake.calls) == 3  # baseline + 2
    result = search(FakeEvaluator(bad={"x"}), GROUPS, _identity, Budget(0.2, 0.01), max_evals=20)
    assert result.stopped == "no candidate lowers the objective"


def test_screening_shortlists_by_score_error():
    fake = FakeEvaluator(bad={"r6"})
    screened = []

    def screen(keep):
        screened.append(keep)
        return Evaluation(keep, None, 0.0 if "r6" in keep else 0.5)  # a screening: no gate

    result = search(fake, GROUPS, _identity, Budget(0.2, 0.01), max_evals=20, screen=screen, top=1)
    assert result.keep == ("r6",)
    greedy = [t for t in result.trials if t.step == "greedy 1"]
    assert [t.candidate for t in greedy] == ["region: readout"]  # only the best screened was evaluated in full
    assert sum(t.screen for t in result.trials) == len(GROUPS)


def test_closure_adds_the_readers_of_an_overflowing_output(overflow_onnx, tiny_bench):
    from edgedeploy.evaluation.data import load_image

    index = load_index(overflow_onnx)
    ranges = analyse(index, "m", "image", [(s.rel_path, load_image(s.path, 16)) for s in tiny_bench.samples[:2]])
    keepable = emit.keepable_nodes(index, overflow_onnx)
    assert closure(["/encoder/proj/MatMul"], index, ranges.bounds, keepable) == (
        "/encoder/proj/MatMul", "/encoder/norm/LayerNormalization")
    assert closure(["/encoder/norm/LayerNormalization"], index, ranges.bounds, keepable) == (
        "/encoder/norm/LayerNormalization",)
    groups = candidates(index, classify(index), regions(index), ranges, keepable)
    names = [g.name for g in groups]
    assert names[0] == "range: all flagged nodes" and "op class: LayerNorm" in names and "region: head" in names
    assert len({g.nodes for g in groups}) == len(groups)  # each distinct node set once


def test_search_fixes_the_overflow_model(overflow_onnx, tiny_bench, tiny_recipe, isolated_cache):
    """End to end on the hand-built model: pure FP16 gives NaN scores, the search keeps the MatMul (and, by
    closure, the LayerNorm reading its overflowing output), and that is within budget."""
    from edgedeploy.evaluation.data import load_image
    from edgedeploy.host.runners import graph_runner
    from edgedeploy.runtime.batch import score_benchmark
    from edgedeploy.evaluation.precision.evaluate import BenchEvaluator

    index = load_index(overflow_onnx)
    ranges = analyse(index, "m", "image", [(s.rel_path, load_image(s.path, 16)) for s in tiny_bench.samples])
    keepable = emit.keepable_nodes(index, overflow_onnx)
    groups = candidates(index, classify(index), regions(index), ranges, keepable)
    sha = sha256_file(overflow_onnx)
    reference = score_benchmark(graph_runner(overflow_onnx, tiny_recipe, "seeded", model_sha256=sha), tiny_bench,
                                progress=False)
    budget = Budget(0.2, 0.01)
    evaluator = BenchEvaluator(overflow_onnx, sha, tiny_recipe, "seeded", tiny_bench, reference, budget, progress=False)
    result = search(evaluator, groups, lambda nodes: closure(nodes, index, ranges.bounds, keepable), budget)
    assert result.baseline.nonfinite > 0 and result.baseline.gate_value is None  # the brighter images overflow
    assert result.baseline.passed is False
    assert "/encoder/proj/MatMul" in result.keep and result.within_budget
    assert result.keep == ("/encoder/proj/MatMul", "/encoder/norm/LayerNormalization")
    assert result.best.passed and result.best.gate_value == 0.0 and result.best.max_score_error < 0.01
    # every form the targets take
    args = emit.verified_arguments(result.keep, index, keepable, overflow_onnx)
    assert args == ["/encoder/*"]
    from edgedeploy.targets.keepfp32 import expand_keep_fp32

    assert expand_keep_fp32(overflow_onnx, tuple(args)) == result.keep
    evaluator.cleanup({(), result.keep})
    left = sorted(p.name for p in (isolated_cache / "fp16").glob("*.onnx"))
    assert len(left) == 1  # pure FP16 stays cached ...
    assert len(list((isolated_cache / "precision").glob("*.onnx"))) == 1  # ... and the recommendation's strict graph


def test_strict_boundary_rounds_what_a_non_kept_reader_reads(overflow_onnx, tiny_bench, tiny_recipe, isolated_cache):
    """Keeping only the overflowing MatMul: its reader (the LayerNorm, in FP16) still reads inf on a device,
    which the strict emulation shows and the lenient one (``edgedeploy fidelity --keep-fp32``) does not."""
    from edgedeploy.host.runners import graph_runner
    from edgedeploy.runtime.batch import score_benchmark
    from edgedeploy.evaluation.precision.evaluate import BenchEvaluator

    sha = sha256_file(overflow_onnx)
    reference = score_benchmark(graph_runner(overflow_onnx, tiny_recipe, "seeded", model_sha256=sha), tiny_bench,
                                progress=False)
    keep = ("/encoder/proj/MatMul",)
    results = {}
    for strict in (True, False):
        evaluator = BenchEvaluator(overflow_onnx, sha, tiny_recipe, "seeded", tiny_bench, reference, Budget(),
                                   progress=False, strict=strict)
        results[strict] = evaluator(keep)
    assert results[True].nonfinite > 0 and results[False].nonfinite == 0
    assert results[False].within(Budget())


@pytest.mark.parametrize("keep, expected", [
    (("/encoder/proj/MatMul",), ["/encoder/proj/MatMul"]),
    (("/head/MatMul", "/head/Reshape", "/head/ReduceMean", "/head/ReduceMean_1", "/head/Mul", "/head/Add",
      "/head/Reshape_1"), ["/head/*"]),
    ((), []),
])
def test_compact_arguments(overflow_onnx, keep, expected):
    index = load_index(overflow_onnx)
    keepable = emit.keepable_nodes(index, overflow_onnx)
    assert emit.verified_arguments(keep, index, keepable, overflow_onnx) == expected
