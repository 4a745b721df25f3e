"""``edgedeploy fidelity --remote HOST[,HOST...]``: the board (or a fleet) is the device.

1. The graph is made and audited as ``fidelity`` always does it (``bundle_graph.prepare_graph``); the bundle
   ``OUT/<target>/`` must hold that graph: it is built when missing, and one holding another graph is refused
   (never overwritten).
2. The benchmark is pre-processed once on the host at the bundle's card size (``inputs.prepare_inputs``).
3. Each board, in parallel (``session.remote_score``): check (version, runtime, disk, work folder), fingerprint,
   refuse a misfit before any copy, copy the bundle and the tensors, ``engine build`` on a Jetson, score, stream the
   score file back.
4. Each board's file goes through the same gate as ``--device-scores`` (``run.run_fidelity``); with several boards,
   each pair of boards through it too, and ``fleet.md`` / ``fleet.json`` hold them side by side. The board's
   fingerprint goes into the report (``fidelity.json`` ``board``, a section of ``fidelity.md``).

Exit code: 0 every gate passed, 1 a gate failed (or two boards disagree), 2 bad input or a board that needs a fix
(its key, its edgedeploy, its runtime), 3 a board that could not be reached or dropped out (the others finish).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

from edgedeploy.core.errors import CHECK_FAILED, EdgeDeployError
from edgedeploy.core.files import write_json_atomic, write_text_atomic
from edgedeploy.remote.fingerprint import FIELDS, clock_warning
from edgedeploy.remote.fleet import (Agreement, BoardOutcome, FleetSummary, agreement_rows, assign_shards, board_rows,
                                     md_table, merge_scores, run_boards, text_table)
from edgedeploy.remote.inventory import release_all, resolve_boards, safe_name
from edgedeploy.remote.options import RemoteOptions

Log = Callable[[str], None]
Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_remote_options(opts, remote: RemoteOptions) -> None:
    """What contradicts --remote, refused before anything runs."""
    if opts.device_scores is not None or opts.host_scores is not None:
        which = "--device-scores" if opts.device_scores is not None else "--host-scores"
        raise EdgeDeployError(f"--remote and {which} contradict each other: --remote scores on the board and brings the "
                              f"score file back; drop one of them")
    if opts.device != "fp16-emulation":
        raise EdgeDeployError(f"--device {opts.device} and --remote contradict each other: the board is the device "
                              "(pick its runner with --runtime); drop --device")
    if opts.keep_fp32:
        raise EdgeDeployError("--keep-fp32 applies to the FP16 emulation, not to a board: build the engine with it "
                              "(`edgedeploy build --keep-fp32`) and the board's engine keeps those nodes")
    if opts.limit:
        raise EdgeDeployError("--limit is not taken with --remote: pick categories with --categories, or score the "
                              "subset on the board yourself")
    if remote.shard and remote.remote and "," not in remote.remote and not remote.inventory:
        raise EdgeDeployError("--shard splits the categories across several boards: give --remote a,b,... or an "
                              "--inventory")
    from edgedeploy.evaluation.fidelity.run import check_options

    check_options(dataclasses.replace(opts, allow_cpu_fallback=False))  # every other option, before any work


def ensure_bundle(opts, profile, recipe, graph, log: Log) -> Path:
    """``OUT/<target>/`` holding this run's graph: built when missing; one holding another graph is refused."""
    from edgedeploy.runtime.bundle import BundleError, read_manifest

    bundle_dir = Path(opts.out) / profile.name
    if (bundle_dir / "manifest.json").is_file():
        manifest = read_manifest(bundle_dir)
        shipped = (manifest.get("model") or {}).get("sha256")
        if shipped == graph.model_sha256:
            log(f"bundle: {bundle_dir} (the graph checked here, {shipped[:16]})")
            return bundle_dir
        raise BundleError(f"{bundle_dir} holds another graph ({str(shipped)[:16]}) than this run's "
                          f"({graph.model_sha256[:16]}): the board must run the graph checked here; rebuild the bundle "
                          f"(`edgedeploy build --target {profile.name}` with this run's model options) or pass another "
                          "--out")
    from edgedeploy.host.pipeline import build

    log(f"building the bundle for the board: {bundle_dir}")
    result = build(recipe, profile, Path(opts.out), checkpoint=opts.checkpoint,
                   allow_audit_errors=opts.allow_audit_errors, log=lambda line: log(f"  {line}"))
    if not (bundle_dir / "manifest.json").is_file():
        raise EdgeDeployError(f"the audit found {len(result.audit.errors)} errors for {profile.name}: no bundle was "
                              "written; fix them, or pass --allow-audit-errors")
    return bundle_dir


def fidelity_remote(opts, remote: RemoteOptions, echo: Echo = print, log: Log = _stderr) -> int:
    """Everything ``fidelity --remote`` does; the exit code."""
    check_remote_options(opts, remote)
    boards = resolve_boards(remote, log)
    if not boards:
        raise EdgeDeployError("--remote names no board")
    try:
        return _run(opts, remote, boards, echo, log)
    finally:
        release_all(boards)


def _run(opts, remote: RemoteOptions, boards, echo: Echo, log: Log) -> int:
    from edgedeploy.evaluation.benchrun import resolve_inputs
    from edgedeploy.evaluation.fidelity.bundle_graph import prepare_graph
    from edgedeploy.remote.inputs import card_size, prepare_inputs
    from edgedeploy.remote.session import remote_score
    from edgedeploy.runtime.bundle import read_manifest

    inputs = resolve_inputs(opts, "fidelity")
    profile, bench, report_dir = inputs.profile, inputs.bench, inputs.report_dir
    graph = prepare_graph(inputs.recipe, profile, Path(opts.out), opts.checkpoint, log)
    if not graph.audit.passed and not opts.allow_audit_errors:
        raise EdgeDeployError(f"the audit found {len(graph.audit.errors)} errors for {profile.name}: the model cannot "
                              "run there as exported; fix them, or pass --allow-audit-errors")
    bundle_dir = ensure_bundle(opts, profile, inputs.recipe, graph, log)
    manifest = read_manifest(bundle_dir)
    size = card_size(manifest, f"{bundle_dir}/manifest.json")
    fleet = len(boards) > 1
    if remote.shard:
        plan = assign_shards(bench, boards)
        for board, part in plan:
            log(f"shard: {board.name} scores {', '.join(part.categories) if part else 'nothing (more boards than categories)'}")
    else:
        plan = [(board, bench) for board in boards]
    prepared: dict[tuple[str, ...], object] = {}
    for _, part in plan:
        if part is not None and tuple(part.categories) not in prepared:
            prepared[tuple(part.categories)] = prepare_inputs(part, size, log)
    fetched = report_dir / "remote"

    def work(board, part):
        prep = prepared[tuple(part.categories)]
        dest = fetched / f"{safe_name(board.name)}.csv"
        return remote_score(board, bundle_dir, manifest, prep, dest, runtime=remote.runtime, clean=remote.remote_clean,
                            allow_cpu_fallback=opts.allow_cpu_fallback, log=log, progress=not fleet and opts.progress)

    if not fleet:  # one board: its error is the command's
        board, part = plan[0]
        return _single(opts, BoardOutcome(board, part, work(board, part)), report_dir, echo, log)
    outcomes = run_boards(plan, work, log)
    failed = [o for o in outcomes if o.bench is not None and not o.ok]
    summary = FleetSummary(outcomes, shard=remote.shard)
    if remote.shard:
        _gate_shards(opts, summary, report_dir, log)
    else:
        _gate_each(opts, summary, report_dir, log)
        _agreement(opts, summary, report_dir, profile.name, log)
    _write_fleet(summary, report_dir, opts)
    echo(_fleet_text(summary))
    echo(f"report: {report_dir} (fleet.md, fleet.json; one folder per board"
         f"{', agreement/' if summary.agreements else ''})")
    if failed:
        return max(o.exit_code for o in failed)
    reports = [o.report for o in outcomes if o.report is not None] + [a.report for a in summary.agreements if a.report]
    if summary.merged_report is not None:
        reports.append(summary.merged_report)
    disagree = any(a.report is None for a in summary.agreements)
    return 0 if reports and all(r.passed for r in reports) and not disagree else CHECK_FAILED


def _gate(opts, scores: Path, report_dir: Path, log: Log, categories=None):
    from edgedeploy.evaluation.fidelity.run import run_fidelity

    run_opts = dataclasses.replace(opts, device="scores", device_scores=scores, report_dir=report_dir,
                                   allow_cpu_fallback=False, categories=categories or opts.categories)
    return run_fidelity(run_opts, log)


def board_section(result, warning: str | None) -> list[str]:
    fp = result.fingerprint
    lines = ["## The board", "", "| | |", "|---|---|", f"| board | `{result.board}` |",
             f"| runtime on the board | {result.runtime} |",
             f"| images | {result.computed} scored in the last run, {result.cached} from the board's cache |"]
    lines += [f"| {key.replace('_', ' ')} | `{fp[key]}` |" for key in FIELDS if fp.get(key)]
    lines.append("")
    for note in ([warning] if warning else []) + result.notes:
        lines += [f"> {note}", ""]
    return lines


def annotate_report(run, result, log: Log) -> None:
    """The board's fingerprint and notes into fidelity.json and fidelity.md (written by the gate just before)."""
    warning = clock_warning(result.fingerprint, result.board)
    run.report.notes.extend(result.notes)
    run.report.info["board"] = {"name": result.board, "runtime": result.runtime, "fingerprint": result.fingerprint,
                                "scored": result.computed, "from_cache": result.cached, "workdir": result.workdir,
                                "clock_warning": warning or ""}
    write_json_atomic(run.report_dir / "fidelity.json", run.report.to_json())
    md_path = run.report_dir / "fidelity.md"
    text = md_path.read_text()
    section = "\n".join(board_section(result, warning)) + "\n"
    marker = "## The rule"
    text = text.replace(marker, section + marker, 1) if marker in text else text + "\n" + section
    write_text_atomic(md_path, text)


def _single(opts, outcome: BoardOutcome, report_dir: Path, echo: Echo, log: Log) -> int:
    run = _gate(opts, outcome.result.scores, report_dir, log)
    annotate_report(run, outcome.result, log)
    echo(run.report.table(top=opts.top))
    echo(f"board: {outcome.name} ({outcome.result.runtime}); fingerprint in fidelity.md and fidelity.json")
    echo(f"report: {run.report_dir} (fidelity.md, fidelity.json{', roc.png, scatter.png, difference.png' if opts.plots else ''}, scores/)")
    return 0 if run.report.passed else CHECK_FAILED


def _gate_each(opts, summary: FleetSummary, report_dir: Path, log: Log) -> None:
    for o in summary.outcomes:
        if not o.ok:
            continue
        o.report_dir = report_dir / "boards" / safe_name(o.name)
        run = _gate(opts, o.result.scores, o.report_dir, log)
        annotate_report(run, o.result, log)
        o.report = run.report
        log(f"[{o.name}] {run.report.verdict()}")


def _agreement(opts, summary: FleetSummary, report_dir: Path, target: str, log: Log) -> None:
    """Every pair of boards through the same gate, the first as the reference."""
    from edgedeploy.evaluation.fidelity.run import FidelityOptions, run_fidelity

    done = [o for o in summary.outcomes if o.ok]
    for i, a in enumerate(done):
        for b in done[i + 1:]:
            folder = report_dir / "agreement" / f"{safe_name(a.name)}-vs-{safe_name(b.name)}"
            ag = Agreement(a.name, b.name, report_dir=folder)
            try:
                run = run_fidelity(FidelityOptions(bench=None, target=target, host_scores=a.result.scores,
                                                   device_scores=b.result.scores, report_dir=folder,
                                                   max_drift=opts.max_drift, gate=opts.gate, top=opts.top,
                                                   plots=False, progress=False), log)
                ag.report = run.report
                log(f"agreement {a.name} vs {b.name}: {run.report.verdict()}")
            except EdgeDeployError as exc:
                ag.error = str(exc)
                log(f"error: agreement {a.name} vs {b.name}: {exc}")
            summary.agreements.append(ag)


def _gate_shards(opts, summary: FleetSummary, report_dir: Path, log: Log) -> None:
    done = [o for o in summary.outcomes if o.ok]
    if not done:
        return
    runtimes = {o.result.runtime for o in done}
    merged = merge_scores([(o.name, o.result.scores) for o in done],
                          report_dir / "remote" / f"merged-{'-'.join(sorted(runtimes))}.csv")
    categories = sorted({c for o in done for c in o.bench.categories})
    missing = sorted({c for o in summary.outcomes if o.bench is not None and not o.ok for c in o.bench.categories})
    if missing:
        log(f"warning: categories {', '.join(missing)} were not scored (their board failed): the gate covers "
            f"{', '.join(categories)} only")
    run = _gate(opts, merged, report_dir, log, categories=categories)
    run.report.info["shards"] = {o.name: (o.bench.categories if o.bench is not None else []) for o in summary.outcomes}
    run.report.info["boards"] = {o.name: o.result.fingerprint for o in done}
    if missing:
        run.report.notes.append(f"not scored (board failed): {', '.join(missing)}")
    write_json_atomic(run.report_dir / "fidelity.json", run.report.to_json())
    summary.merged_report, summary.merged_dir = run.report, run.report_dir


def _fleet_text(summary: FleetSummary) -> str:
    lines = ["boards" + (" (--shard: categories split across them, gated as one device)" if summary.shard else "") + ":",
             text_table(*board_rows(summary))]
    for o in summary.outcomes:
        if o.error:
            lines.append(f"{o.name}: FAILED: {o.error}")
        elif o.ok:
            warning = clock_warning(o.result.fingerprint, o.name)
            if warning:
                lines.append(warning)
            lines += [f"note: {n}" for n in o.result.notes]
    if summary.agreements:
        lines += ["board against board (the same gate, the first board as the reference):",
                  text_table(*agreement_rows(summary))]
    if summary.merged_report is not None:
        lines += ["all shards together against the host:", summary.merged_report.verdict()]
    return "\n".join(lines)


def _write_fleet(summary: FleetSummary, report_dir: Path, opts) -> None:
    header, rows = board_rows(summary)
    md = ["# Fleet: " + ", ".join(o.name for o in summary.outcomes), "",
          "Each board scored " + ("its share of the categories (`--shard`)" if summary.shard else
                                  "the whole benchmark with the same bundle") + "; each board's file went through the "
          "fidelity gate against the host" + ("" if summary.shard else ", and each pair of boards through the same gate "
                                              "against each other") + ".", "", "## Boards side by side", ""]
    md += md_table(header, rows) + [""]
    for o in summary.outcomes:
        if o.error:
            md += [f"> **{o.name} failed**: {o.error}", ""]
    if summary.agreements:
        md += ["## Board against board", ""] + md_table(*agreement_rows(summary)) + [""]
    if summary.merged_report is not None:
        md += ["## All shards against the host", "", summary.merged_report.verdict(), "",
               f"Report: `{summary.merged_dir.name}/fidelity.md`" if summary.merged_dir else "", ""]
    write_text_atomic(report_dir / "fleet.md", "\n".join(md).rstrip() + "\n")
    data = {"shard": summary.shard, "boards": [], "agreement": []}
    for o in summary.outcomes:
        entry = {"name": o.name, "ok": o.ok, "error": o.error, "exit_code": o.exit_code,
                 "categories": o.bench.categories if o.bench is not None else []}
        if o.ok:
            entry.update({"runtime": o.result.runtime, "fingerprint": o.result.fingerprint, "latency": o.result.latency,
                          "scored": o.result.computed, "from_cache": o.result.cached, "notes": o.result.notes,
                          "scores": str(o.result.scores)})
        if o.report is not None:
            entry.update({"passed": o.report.passed, "verdict": o.report.verdict(), "mean": _jsonable(o.report.mean),
                          "report": str(o.report_dir)})
        data["boards"].append(entry)
    for ag in summary.agreements:
        data["agreement"].append({"a": ag.a, "b": ag.b, "error": ag.error,
                                  **({"passed": ag.report.passed, "verdict": ag.report.verdict(),
                                      "mean": _jsonable(ag.report.mean), "report": str(ag.report_dir)}
                                     if ag.report is not None else {})})
    if summary.merged_report is not None:
        data["merged"] = {"passed": summary.merged_report.passed, "verdict": summary.merged_report.verdict()}
    write_json_atomic(report_dir / "fleet.json", data)


def _jsonable(obj):
    from edgedeploy.core.files import json_safe

    return json.loads(json.dumps(json_safe(obj), default=str))
