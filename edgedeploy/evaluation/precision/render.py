"""The terminal summary of a ``precision.json`` report (rendered from the dict, so a saved report re-renders)."""

from __future__ import annotations

import math

_TOP_FINDINGS = 12
_TOP_TRIALS = 40
_LONG = 400


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(rows: list[tuple], caps: tuple[int, ...]) -> list[str]:
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate(caps)]
    lines = ["  ".join(_clip(c, w).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _drift(value) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, str):
        return value
    return f"{value:.3f}"


def _err(value) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def _long(text: str, where: str, limit: int = _LONG) -> str:
    """``text``, or its start and where precision.json holds all of it."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters; precision.json: {where})"


def _signed(value) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _moves(t: dict) -> str:
    return f"{t.get('near_ties', 0)} / {t.get('reorderings', 0)}"


def _figures(e: dict) -> str:
    """The fidelity gate's figures for one evaluation (``before``/``after`` of ``precision.json``)."""
    gate = "passes" if e.get("gate_passed") else "fails"
    return (f"gate drift {_drift(e.get('gate_value'))} points (fidelity gate {gate}), raw drift "
            f"{_signed(e.get('mean_drift'))}, {e.get('near_ties', 0)} near-ties, {e.get('reorderings', 0)} "
            f"reorderings, max |score diff| {_err(e['max_score_error'])}")


def _nan(evaluation: dict) -> str:
    return f", {evaluation['nonfinite']} NaN/inf scores" if evaluation["nonfinite"] else ""


def render(report: dict) -> str:
    a = report["analysis"]
    lines = [f"model: {report['model']['source']} | recipe {report['model']['recipe']} | target {report['target']}",
             f"reference: {report['reference']}",
             f"device:    {report['device']}",
             "",
             f"FP16 range analysis: {a['summary']['tensors_measured']} tensors of the FP32 graph over "
             f"{len(a['images'])} calibration image(s): {a['summary']['errors']} errors, "
             f"{a['summary']['warnings']} warnings (near = within {a['margin']:g}x of 65504)"]
    findings = a["findings"]
    if findings:
        rows = [("severity", "rule", "node", "pattern", "what")]
        for f in findings[:_TOP_FINDINGS]:
            rows.append((f["severity"], f["rule"], f["node"], f["pattern"], f["message"]))
        lines += _table(rows, (8, 17, 56, 26, 110))
        if len(findings) > _TOP_FINDINGS:
            lines.append(f"... and {len(findings) - _TOP_FINDINGS} more (precision.json: analysis.findings)")
    else:
        lines.append("  no tensor overflows, comes near FP16's range, or mostly flushes to zero on these images")
    largest = a["summary"]["largest"]
    if largest:
        lines.append("largest activations: " + "; ".join(
            f"{t['node']} ({t['pattern']}) {_err(t['max_abs'])}" for t in largest[:3]))

    search, before, after = report["search"], report["before"], report["after"]
    budget = report["budget"]
    scope = "mean over categories" if budget.get("gate", "benchmark") == "benchmark" else "each category's"
    lines += ["", f"keep-list search on {report['images']['search']} of {report['images']['of']} images "
                  f"(budget: gate drift ({scope}) <= {budget['max_drift_points']:g} points, the "
                  f"`edgedeploy fidelity` gate with --gate {budget.get('gate', 'benchmark')}; max |score diff| <= "
                  f"{budget['max_score_error']:g}): {search['stopped']}"]
    res = report["images"].get("resolution") or {}
    if res.get("gate_pair_points") is not None:
        coarse = ("; the sample CANNOT resolve the budget: one swapped pair fails it (precision.json: "
                  "images.resolution.warning)" if not res.get("resolves_max_drift", True) else "")
        lines.append(f"resolution: one swapped normal/anomalous pair is worth {res['gate_pair_points']:.3f} points "
                     f"of the gate value{coarse}")
    rows = [("step", "candidate", "FP32 nodes", "gate drift", "raw drift", "near-ties / reord.",
             "max |score diff|", "budget")]
    for t in search["trials"][:_TOP_TRIALS]:
        what = "pure FP16" if t["step"] == "baseline" else t["candidate"]
        verdict = "screened" if t.get("screen") else ("within" if t["within_budget"] else "over")
        if t["nonfinite"]:
            verdict += f" ({t['nonfinite']} NaN/inf)"
        screened = t.get("screen")
        gate = ("-", "-", "-") if screened else (_drift(t.get("gate_value")), _signed(t.get("mean_drift")), _moves(t))
        rows.append((t["step"], ("* " if t["accepted"] else "") + str(what), t["fp32_nodes"], *gate,
                     _err(t["max_score_error"]), verdict))
    lines += _table(rows, (12, 60, 10, 16, 9, 18, 16, 22))
    if len(search["trials"]) > _TOP_TRIALS:
        lines.append(f"... and {len(search['trials']) - _TOP_TRIALS} more (precision.json: search.trials)")
    if any(t.get("screen") for t in search["trials"]):
        lines.append("(screened: score error on the screening images only; the best per round were evaluated in full)")
    lines += ["",
              f"drift before (pure FP16):        {_figures(before)}" + _nan(before),
              f"drift after  ({after['fp32_nodes']:3d} nodes in FP32):  {_figures(after)}" + _nan(after)]
    rec = report["recommendation"]
    if not rec["keep_fp32"]:
        verdict = ("pure FP16 is within budget: keep nothing in FP32" if rec["within_budget"]
                   else "no keep-list found within budget")
        lines.append(f"recommendation: {verdict}")
    else:
        state = "within budget" if rec["within_budget"] else "best found, still OVER budget"
        lines.append(f"recommended keep-list ({rec['fp32_nodes']} nodes, {state}): "
                     + ", ".join(f"{k} x{v}" for k, v in rec["patterns"].items()))
        tensorrt_only = "" if report.get("runtime") == "tensorrt" else "   (TensorRT targets; see QNN GPU below)"
        lines.append("  --keep-fp32 " + " ".join(rec["keep_fp32_args"]) + tensorrt_only)
    if rec.get("build_command") and rec["keep_fp32"]:
        lines.append(f"  build:    {_long(rec['build_command'], 'recommendation.build_command')}")
    trt = rec["tensorrt"]
    if trt["flags"]:
        lines.append("  trtexec:  " + _long(" ".join(trt["flags"]), "recommendation.tensorrt.flags"))
    qnn = rec["qnn"]
    lines.append(f"  QNN GPU:  {qnn['hub_profile_options']} -- {qnn['why']}")
    for alt in qnn["alternatives"]:
        lines.append(f"            or: {alt}")
    lines.append(f"  check on all images: {_long(rec['fidelity_command'], 'recommendation.fidelity_command')}")
    timing = report["timing"]
    lines.append(f"time {timing['total_s']:.0f}s (build {timing['build_s']:.0f}s, "
                 f"range analysis {timing['analysis_s']:.0f}s "
                 f"at <= {timing.get('analysis_peak_rss_mib', 0):.0f} MiB resident, "
                 f"reference {timing['reference_s']:.0f}s, search {timing['search_s']:.0f}s with "
                 f"{timing['evaluations']} evaluations and {timing.get('screenings', 0)} screenings); "
                 f"peak memory {timing['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)
