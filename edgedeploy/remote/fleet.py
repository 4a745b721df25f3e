"""Several boards at once: in parallel, side by side, board against board, or sharded by category.

* **Consistency** (the default with several boards): every board scores the whole benchmark with the same bundle; each
  board's file goes through the fidelity gate against the host, and every pair of boards through the same gate against
  each other (board A as the reference): the same build on two boards of one kind must agree.
* **Speed** (``--shard``): the categories are split across the boards (largest first, to the least loaded board), the
  boards' files are merged into one device file and gated once.

A board that fails or drops out is reported by name with its one-line error; the others finish.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.data import Benchmark
from edgedeploy.remote.session import Board, RemoteScore

Log = Callable[[str], None]


@dataclass
class BoardOutcome:
    board: Board
    bench: Benchmark | None                 # what it was asked to score (None: no shard left for it)
    result: RemoteScore | None = None
    error: str | None = None
    exit_code: int = 0
    report: object | None = None            # its FidelityReport against the host (fleet mode)
    report_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.board.name

    @property
    def ok(self) -> bool:
        return self.result is not None


def assign_shards(bench: Benchmark, boards: list[Board]) -> list[tuple[Board, Benchmark | None]]:
    """Categories across boards, largest first to the least loaded board (ties: the board listed first)."""
    counts = {c: sum(1 for s in bench.samples if s.category == c) for c in bench.categories}
    load = {b.name: 0 for b in boards}
    picked: dict[str, list[str]] = {b.name: [] for b in boards}
    for category in sorted(counts, key=lambda c: (-counts[c], c)):
        board = min(boards, key=lambda b: (load[b.name], boards.index(b)))
        picked[board.name].append(category)
        load[board.name] += counts[category]
    plan = []
    for board in boards:
        cats = set(picked[board.name])
        plan.append((board, subset(bench, cats) if cats else None))
    return plan


def subset(bench: Benchmark, categories: set[str]) -> Benchmark:
    return dataclasses.replace(bench, samples=tuple(s for s in bench.samples if s.category in categories))


def run_boards(plan: list[tuple[Board, Benchmark | None]], work: Callable[[Board, Benchmark], RemoteScore],
               log: Log) -> list[BoardOutcome]:
    """``work`` on every board in parallel; a failure is kept with its message and exit code, the others go on."""
    outcomes = [BoardOutcome(board, bench) for board, bench in plan]
    lock = threading.Lock()

    def one(outcome: BoardOutcome) -> None:
        if outcome.bench is None:
            return
        try:
            outcome.result = work(outcome.board, outcome.bench)
        except EdgeDeployError as exc:
            outcome.error, outcome.exit_code = str(exc), exc.exit_code
            with lock:
                log(f"error: board {outcome.name} failed: {exc}")
        except OSError as exc:
            outcome.error, outcome.exit_code = f"{type(exc).__name__}: {exc}", 3
            with lock:
                log(f"error: board {outcome.name} failed: {outcome.error}")

    if len(outcomes) == 1:
        one(outcomes[0])
        return outcomes
    with ThreadPoolExecutor(max_workers=len(outcomes)) as pool:
        list(pool.map(one, outcomes))
    return outcomes


def merge_scores(files: list[tuple[str, Path]], dest: Path) -> Path:
    """The shards' score files as one device file: rows concatenated, the header keys they share, ``shards`` naming
    which board scored which categories (each board's fingerprint stays in its own file and in fleet.json)."""
    from edgedeploy.runtime.scorefile import ScoreTable, read_maps, read_scores, write_scores

    tables = [(name, read_scores(path), read_maps(path)) for name, path in files]
    common: dict[str, str] = {}
    first = tables[0][1].meta
    for key, value in first.items():
        if key == "edgedeploy-scores" or key.startswith(("board", "latency_", "images_per_s")):
            continue
        if all(t.meta.get(key) == value for _, t, _ in tables):
            common[key] = value
    common["shards"] = "; ".join(f"{name}={','.join(sorted({r.category for r in t.rows}))}" for name, t, _ in tables)
    common["board"] = ", ".join(name for name, _, _ in tables)
    rows = [row for _, t, _ in tables for row in t.rows]
    maps: dict = {}
    for _, _, m in tables:
        maps.update(m)
    write_scores(dest, ScoreTable(common, rows), maps or None)
    return dest


@dataclass
class Agreement:
    a: str
    b: str
    report: object | None = None
    report_dir: Path | None = None
    error: str | None = None


@dataclass
class FleetSummary:
    outcomes: list[BoardOutcome]
    agreements: list[Agreement] = field(default_factory=list)
    shard: bool = False
    merged_report: object | None = None
    merged_dir: Path | None = None


def _fmt(value, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    try:
        return f"{float(value):+.{digits}f}" if sign else f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def board_rows(summary: FleetSummary) -> tuple[list[str], list[list[str]]]:
    header = ["board", "status", "runtime", "categories", "scored / cached", "gate drift", "raw drift",
              "near-ties", "reorderings", "max|Δs|", "latency p50 ms", "images/s", "board model", "clocks locked"]
    rows = []
    for o in summary.outcomes:
        fp = o.result.fingerprint if o.result else {}
        lat = (o.result.latency or {}) if o.result else {}
        cats = ",".join(o.bench.categories) if o.bench is not None else "none"
        if not o.ok:
            status = "no shard" if o.bench is None else "FAILED"
            rows.append([o.name, status, "", cats, "", "", "", "", "", "", "", "", "", ""])
            continue
        report = o.report
        if report is not None:
            m = report.mean
            status = "PASS" if report.passed else "FAIL"
            gate = [_fmt(report.gate_value), _fmt(m.get("drift"), sign=True), str(m.get("near_ties", 0)),
                    str(m.get("reorderings", 0)), f"{m.get('max_abs_diff', 0.0):.2e}"]
        else:
            status, gate = "scored", ["", "", "", "", ""]
        rows.append([o.name, status, o.result.runtime, cats, f"{o.result.computed} / {o.result.cached}", *gate,
                     _fmt(lat.get("latency_ms_p50"), 2), _fmt(lat.get("images_per_s"), 1),
                     fp.get("model") or fp.get("arch", "?"), fp.get("clocks_locked", "unknown")])
    return header, rows


def agreement_rows(summary: FleetSummary) -> tuple[list[str], list[list[str]]]:
    header = ["boards", "verdict", "gate drift", "raw drift", "near-ties", "reorderings", "spearman", "max|Δs|"]
    rows = []
    for ag in summary.agreements:
        if ag.report is None:
            rows.append([f"{ag.a} vs {ag.b}", "not compared", "", "", "", "", "", ag.error or ""])
            continue
        r, m = ag.report, ag.report.mean
        rows.append([f"{ag.a} vs {ag.b}", "AGREE" if r.passed else "DISAGREE", _fmt(r.gate_value),
                     _fmt(m.get("drift"), sign=True), str(m.get("near_ties", 0)), str(m.get("reorderings", 0)),
                     _fmt(m.get("spearman"), 4), f"{m.get('max_abs_diff', 0.0):.2e}"])
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out
