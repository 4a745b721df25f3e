"""Keep-list search: the fewest FP32 nodes that bring the FP16 emulation's drift under budget.

Verdict on a keep set (made by an :class:`Evaluator`, normally :class:`~edgedeploy.evaluation.precision.
evaluate.BenchEvaluator`: the FP16-emulated bundle scored on a benchmark against the FP32 reference):
*within budget* when ``edgedeploy fidelity``'s own gate passes on those scores (the ``passed`` of
:func:`edgedeploy.evaluation.fidelity.compare.compare` with ``max_drift`` and ``gate``: the reordering
drift, the AUROC points carried by pairs reordered beyond FP16 near-ties, must be <= ``max_drift``, as
the mean over categories or in each; NaN/inf scores fail) and max |score difference| <=
``max_score_error``. ``--max-drift`` therefore means exactly what it means in ``edgedeploy fidelity``.
Objective (to rank keep sets that are not within budget): the gate first (passing before failing),
then the gate value (the gate drift the fidelity gate checks), then the largest |score difference|,
then the number of FP32 nodes.

Candidates (:func:`candidates`) are node groups: what the range analysis flags (all of it, and the
worst nodes one by one), the output head (the light ops computing the graph outputs), op classes
(every Softmax, every LayerNorm, the attention MatMuls, the Pow/ReduceSum norm chains, the whole
attention core, ...) and graph regions (``patch_embed``, each ``stages.N``, ``readout``).
Every keep set is first closed over FP16 overflow (:func:`closure`): when a kept node's output is
beyond 65504 (per the range analysis), the nodes reading it are kept too -- on the device an FP16
layer converts its input to FP16, so keeping only the producer would still overflow there, while
the emulation (which rounds outputs, not inputs) would miss it.

The search (:func:`search`):

1. baseline: pure FP16 (nothing kept). Within budget: done (unless ``force``), the keep-list is empty.
2. greedy rounds: try every candidate on top of the current set, smallest first; take the one that
   lowers the objective most (a round stops early at the first candidate within budget: the
   smallest fix this round offers). With a ``screen`` (a cheap evaluator: score error on a few
   images), every candidate of a round is screened first and only the ``top`` best screened are
   evaluated in full. Stop when within budget, nothing improves, or the evaluation budget is spent.
3. prune: drop each chosen group whose removal stays within budget; then bisect the remaining
   groups (keep one half if it alone stays within budget, recursively), so a region or op class
   shrinks to the nodes that matter.

Every evaluation is recorded as a :class:`Trial` (step, candidate, FP32 node count, the gate's verdict
and value, raw drift, near-ties and reorderings, score error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from edgedeploy.evaluation.precision.graph_index import GraphIndex
from edgedeploy.evaluation.precision.patterns import ATTENTION_CORE, RISK_PATTERNS, region_sort_key
from edgedeploy.evaluation.precision.ranges import FP16_MAX, RangeReport

DEFAULT_MAX_DRIFT = 0.2
DEFAULT_MAX_SCORE_ERROR = 0.01
DEFAULT_MAX_EVALS = 12
DEFAULT_TOP = 3
_EPS = 1e-9
_SINGLE_FLAGGED = 5
GATES = ("benchmark", "category")  # as `edgedeploy fidelity --gate` (compare() checks the name again)


@dataclass(frozen=True)
class Budget:
    """``max_drift`` and ``gate`` are handed to ``edgedeploy fidelity``'s gate unchanged (the gate drift, in
    points, as the mean over categories or in each category); ``max_score_error`` is precision's own check."""

    max_drift: float = DEFAULT_MAX_DRIFT
    max_score_error: float = DEFAULT_MAX_SCORE_ERROR
    gate: str = "benchmark"


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: str  # "range" | "op-class" | "region" | "bisect"
    nodes: tuple[str, ...]
    why: str = ""


@dataclass
class Evaluation:
    """What one keep set gives on the benchmark: the fidelity gate's verdict and figures, and the score error."""

    keep: tuple[str, ...]
    gate_value: float | None  # the gate drift the fidelity gate checks, points (benchmark: the mean over categories;
    #                           category: the worst category's); None when undefined (NaN/inf) or not measured
    max_score_error: float  # max |device - host| score; inf when a device score is NaN/inf
    passed: bool | None = None  # the fidelity gate's verdict (compare(...).passed); None for a screening
    nonfinite: int = 0
    drift: dict[str, float | None] = field(default_factory=dict)  # raw drift per category, points
    mean_drift: float | None = None  # raw drift, mean over categories (the paper's figure)
    reordering: dict[str, float | None] = field(default_factory=dict)  # reordering drift per category, points
    near_ties: int = 0  # pairs whose swap FP16 rounding explains (never fail)
    reorderings: int = 0  # pairs whose order moved beyond it
    verdict: str = ""  # the fidelity report's verdict line
    seconds: float = 0.0
    scored: int = 0  # images actually scored (the rest came from the cache)
    rank: tuple | None = None  # a screening's own ranking key (lower first); None: ranked by max_score_error

    def objective(self) -> tuple[bool, float, float, int]:
        value = math.inf if self.nonfinite or self.gate_value is None else self.gate_value
        error = self.max_score_error if math.isfinite(self.max_score_error) else math.inf
        return (self.passed is not True, round(value, 9), error, len(self.keep))

    def within(self, budget: Budget) -> bool:
        """The fidelity gate passed (judged with ``budget.max_drift`` and ``budget.gate`` by the evaluator) and the
        score error is within ``budget.max_score_error``."""
        return (self.passed is True and not self.nonfinite
                and self.max_score_error <= budget.max_score_error + _EPS)


Evaluator = Callable[[tuple[str, ...]], Evaluation]
Log = Callable[[str], None]


@dataclass
class Trial:
    step: str
    candidate: str | None
    kind: str | None
    evaluation: Evaluation
    within_budget: bool
    accepted: bool = False
    screen: bool = False  # a screening (score error on a few images), not a full evaluation

    @property
    def n_fp32(self) -> int:
        return len(self.evaluation.keep)

    def to_dict(self) -> dict:
        e = self.evaluation
        return {"step": self.step, "candidate": self.candidate, "kind": self.kind, "fp32_nodes": self.n_fp32,
                "gate_passed": e.passed, "gate_value": e.gate_value, "mean_drift": e.mean_drift,
                "near_ties": e.near_ties, "reorderings": e.reorderings, "max_score_error": _num(e.max_score_error),
                "nonfinite": e.nonfinite, "drift": e.drift, "reordering_drift": e.reordering,
                "within_budget": self.within_budget,
                "accepted": self.accepted, "screen": self.screen, "seconds": round(e.seconds, 2), "scored": e.scored,
                "keep": list(e.keep)}


def _num(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


@dataclass
class SearchResult:
    baseline: Evaluation
    best: Evaluation
    keep: tuple[str, ...]
    within_budget: bool
    trials: list[Trial]
    groups: list[Candidate]  # the candidates the recommendation is made of
    stopped: str  # why the search ended
    budget: Budget = field(default_factory=Budget)

    def to_dict(self) -> dict:
        return {"budget": asdict(self.budget), "keep_fp32": list(self.keep), "fp32_nodes": len(self.keep),
                "within_budget": self.within_budget,
                "stopped": self.stopped, "groups": [asdict(g) for g in self.groups],
                "trials": [t.to_dict() for t in self.trials]}


# ---------------------------------------------------------------------------------- candidates


def closure(nodes: Iterable[str], index: GraphIndex, bounds: dict[str, float], keepable: set[str]) -> tuple[str, ...]:
    """``nodes`` plus, transitively, the readers of any kept node's output beyond FP16's range; graph order."""
    keep = {n for n in nodes if n in keepable}
    queue = list(keep)
    while queue:
        name = queue.pop()
        for out in index.outputs(name):
            if bounds.get(out, 0.0) > FP16_MAX:
                for reader in index.consumers.get(out, []):
                    if reader in keepable and reader not in keep:
                        keep.add(reader)
                        queue.append(reader)
    position = index.position
    return tuple(sorted(keep, key=position.__getitem__))


def candidates(index: GraphIndex, patterns: dict[str, str], regions: dict[str, str], ranges: RangeReport | None,
               keepable: set[str]) -> list[Candidate]:
    """Range-flagged nodes, op classes and regions, as keepable node groups (each distinct set once)."""
    out: list[Candidate] = []
    seen: set[tuple[str, ...]] = set()
    position = index.position

    def add(name: str, kind: str, nodes: Iterable[str], why: str) -> None:
        group = tuple(sorted({n for n in nodes if n in keepable}, key=position.__getitem__))
        if group and group not in seen:
            seen.add(group)
            out.append(Candidate(name, kind, group, why))

    if ranges is not None:
        flagged = ranges.flagged_nodes()
        if flagged:
            add("range: all flagged nodes", "range", flagged,
                "every node the range analysis flags (overflow, near-overflow, internal overflow)")
            for node in flagged[:_SINGLE_FLAGGED]:
                add(f"range: {node}", "range", [node], f"flagged by the range analysis ({patterns.get(node, '')})")
    head = output_head(index)
    if head:
        add("output head", "head", head, "the elementwise ops computing the graph outputs: their FP16 rounding is "
            "the resolution of the score itself")
    for label in RISK_PATTERNS:
        members = [n for n in index.order if patterns.get(n) == label]
        if members:
            add(f"op class: {label}", "op-class", members, f"every {label} node ({len(members)})")
    core = [n for n in index.order if patterns.get(n) in ATTENTION_CORE]
    if core:
        add("op class: attention (QK^T, scale, Softmax, AV)", "op-class", core,
            f"every attention core: logits, scale/bias, Softmax and the AV MatMul ({len(core)})")
    for region in sorted({regions[n] for n in index.order}, key=region_sort_key):
        members = [n for n in index.order if regions.get(n) == region]
        if region != "(graph)":
            add(f"region: {region}", "region", members, f"every node of /{region}/ ({len(members)})")
    return out


HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LayerNormalization", "Softmax", "AveragePool",
                       "GlobalAveragePool"})


def output_head(index: GraphIndex, depth: int = 6) -> list[str]:
    """Nodes within ``depth`` steps of a graph output, walking back through light (elementwise) ops."""
    found: dict[str, None] = {}
    frontier = [index.producer[o] for o in index.graph_outputs if o in index.producer]
    for _ in range(depth):
        following = []
        for name in frontier:
            if name in found or index.op(name) in HEAVY_OPS or index.op(name) == "Constant":
                continue
            found[name] = None
            following += [index.producer[t] for t in index.data_inputs(name) if t in index.producer]
        frontier = following
    return list(found)


# -------------------------------------------------------------------------------------- search


class _Runner:
    """Evaluates keep sets once each, counts evaluations, records trials."""

    def __init__(self, evaluate: Evaluator, budget: Budget, max_evals: int, log: Log | None):
        self.evaluate = evaluate
        self.budget = budget
        self.max_evals = max_evals
        self.log = log
        self.cache: dict[tuple[str, ...], Evaluation] = {}
        self.trials: list[Trial] = []
        self.evals = 0

    @property
    def exhausted(self) -> bool:
        return self.evals >= self.max_evals

    def __call__(self, keep: tuple[str, ...], step: str, candidate: Candidate | None) -> Evaluation:
        if keep in self.cache:
            return self.cache[keep]
        evaluation = self.evaluate(keep)
        self.cache[keep] = evaluation
        if step != "baseline":
            self.evals += 1
        trial = Trial(step, candidate.name if candidate else None, candidate.kind if candidate else None, evaluation,
                      evaluation.within(self.budget))
        self.trials.append(trial)
        if self.log is not None:
            self.log(describe_trial(trial, self.evals, self.max_evals))
        return evaluation

    def accept(self, keep: tuple[str, ...]) -> None:
        for trial in self.trials:
            trial.accepted = not trial.screen and trial.evaluation.keep == keep


class _Screener:
    """Ranks a round's candidates by a cheap evaluation (NaN/inf first out, then score error, then size)."""

    def __init__(self, screen: Evaluator, log: Log | None, trials: list[Trial]):
        self.screen = screen
        self.log = log
        self.cache: dict[tuple[str, ...], Evaluation] = {}
        self.trials = trials  # shared with the full evaluations, so the record stays in time order

    def shortlist(self, options: list, step: str, top: int) -> list:
        ranked = []
        for size, cand, keep in options:
            if keep not in self.cache:
                self.cache[keep] = self.screen(keep)
                trial = Trial(step, cand.name, cand.kind, self.cache[keep], False, screen=True)
                self.trials.append(trial)
                if self.log is not None:
                    self.log(describe_trial(trial, screen=True))
            e = self.cache[keep]
            rank = e.rank if e.rank is not None else (e.max_score_error,)
            ranked.append(((e.nonfinite > 0, *rank, size), (size, cand, keep)))
        ranked.sort(key=lambda r: r[0])
        chosen = [option for _, option in ranked[:max(1, top)]]
        return sorted(chosen, key=lambda o: o[0])


def describe_trial(trial: Trial, evals: int | None = None, max_evals: int | None = None, screen: bool = False) -> str:
    e = trial.evaluation
    counter = "" if trial.step == "baseline" or evals is None else f"[{evals}/{max_evals}] "
    nonfinite = f", {e.nonfinite} NaN/inf scores" if e.nonfinite else ""
    what = "pure FP16" if trial.step == "baseline" else trial.candidate
    if screen:
        return (f"  {trial.step}: {what} -> {trial.n_fp32} FP32 nodes: max |score diff| {e.max_score_error:.3g}"
                f"{nonfinite} ({e.seconds:.1f}s)")
    verdict = "within budget" if trial.within_budget else "over budget"
    return (f"  {counter}{trial.step}: {what} -> {trial.n_fp32} FP32 nodes: {describe_drift(e)}, "
            f"max |score diff| {e.max_score_error:.3g}{nonfinite} ({verdict}, {e.seconds:.1f}s)")


def describe_drift(e: Evaluation) -> str:
    """The fidelity gate's figures: gate drift (what the gate checks), raw drift, near-ties, reorderings."""
    value = "undefined" if e.gate_value is None else f"{e.gate_value:.3f}"
    raw = "n/a" if e.mean_drift is None else f"{e.mean_drift:+.3f}"
    return (f"gate drift {value} points, raw drift {raw}, {e.near_ties} near-ties, "
            f"{e.reorderings} reorderings")


def search(evaluate: Evaluator, groups: list[Candidate], close: Callable[[Iterable[str]], tuple[str, ...]],
           budget: Budget = Budget(), max_evals: int = DEFAULT_MAX_EVALS, force: bool = False,
           log: Log | None = None, screen: Evaluator | None = None, top: int = DEFAULT_TOP) -> SearchResult:
    run = _Runner(evaluate, budget, max_evals, log)
    screener = _Screener(screen, log, run.trials) if screen is not None else None
    baseline = run((), "baseline", None)
    if baseline.within(budget):
        if force:  # for information: what each candidate alone would give
            for cand in sorted(groups, key=lambda g: len(close(g.nodes))):
                if run.exhausted:
                    break
                run(close(cand.nodes), "information", cand)
        run.accept(())
        stopped = "pure FP16 is within budget" + (" (candidates tried for information)" if force else "")
        return SearchResult(baseline, baseline, (), True, run.trials, [], stopped, budget)

    chosen: list[Candidate] = []
    current, best = (), baseline
    stopped = "evaluation budget spent"
    round_no = 0
    while not run.exhausted:
        round_no += 1
        step = f"greedy {round_no}"
        base_nodes = {n for g in chosen for n in g.nodes}
        options = []
        for cand in groups:
            keep = close(base_nodes | set(cand.nodes))
            if set(keep) <= set(current):
                continue
            options.append((len(keep), cand, keep))
        options.sort(key=lambda o: o[0])  # smallest first: the first one within budget is the smallest fix
        if screener is not None and len(options) > top:
            options = screener.shortlist(options, f"screen {round_no}", top)
        round_best: tuple[Evaluation, Candidate] | None = None
        for _, cand, keep in options:
            if run.exhausted:
                break
            evaluation = run(keep, step, cand)
            if round_best is None or evaluation.objective() < round_best[0].objective():
                round_best = (evaluation, cand)
            if evaluation.within(budget):
                break
        if round_best is None:
            stopped = "no candidate left to add" if not options else "evaluation budget spent"
            break
        if not round_best[0].objective() < best.objective():
            stopped = "no candidate lowers the objective"
            break
        best, current = round_best[0], round_best[0].keep
        chosen.append(round_best[1])
        if best.within(budget):
            stopped = "within budget"
            break

    if best.within(budget):
        best, chosen = _prune(run, chosen, close, budget, best)
        stopped = "within budget" + (" (evaluation budget spent while pruning)" if run.exhausted else "")
    run.accept(best.keep)
    return SearchResult(baseline, best, best.keep, best.within(budget), run.trials, chosen, stopped, budget)


def _prune(run: _Runner, chosen: list[Candidate], close, budget: Budget,
           best: Evaluation) -> tuple[Evaluation, list[Candidate]]:
    groups = list(chosen)
    # 1. drop whole groups (latest first) that are not needed
    for group in list(reversed(groups)):
        if run.exhausted or len(groups) == 1:
            break
        rest = [g for g in groups if g is not group]
        keep = close(n for g in rest for n in g.nodes)
        if keep == best.keep:
            groups = rest
            continue
        evaluation = run(keep, "prune", Candidate(f"without {group.name}", "prune", keep))
        if evaluation.within(budget):
            groups, best = rest, evaluation
    # 2. bisect each remaining group: keep a half when it alone (with the other groups) stays within budget
    k = 0
    while k < len(groups) and not run.exhausted:
        group = groups[k]
        if len(group.nodes) < 2:
            k += 1
            continue
        half = len(group.nodes) // 2
        shrunk = False
        for part, label in ((group.nodes[:half], "first half"), (group.nodes[half:], "second half")):
            if run.exhausted:
                break
            others = [n for g in groups if g is not group for n in g.nodes]
            keep = close([*others, *part])
            if len(keep) >= len(best.keep):
                continue
            evaluation = run(keep, "bisect", Candidate(f"{group.name} / {label} ({len(part)} nodes)", "bisect", part))
            if evaluation.within(budget):
                groups[k] = Candidate(f"{group.name} / {label}", "bisect", tuple(part), group.why)
                best, shrunk = evaluation, True
                break
        if not shrunk:
            k += 1
    return best, groups
