"""The drift report as a person reads it: the terminal tables and ``fidelity.md``."""

from __future__ import annotations

from edgedeploy.evaluation.fidelity.drift import (NEAR_TIE_SHIFT, NONFINITE, REORDERINGS, RESOLUTION, ROUNDING,
                                                  SPREAD_SHARE, WITHIN_BUDGET)
from edgedeploy.evaluation.fidelity.report import CI_METHOD, METRICS, CategoryDrift, FidelityReport, fmt_interval, fmt_number

DRIFT_HEADER = ["category", "n", "pair pts", "host AUROC", "device AUROC", "drift", "95% CI", "near-ties",
                "near-tie sum", "reorderings", "reorder drift", "res. ties", "spread ratio", "gate drift", "spearman",
                "kendall", "max|Δs|", "mean|Δs|", "flips", "check", "decided by"]
SHORT_RULE = {WITHIN_BUDGET: "within budget", ROUNDING: "near-ties: rounding", REORDERINGS: "reorderings",
              RESOLUTION: "FP16 ties", NEAR_TIE_SHIFT: "near-tie shift", NONFINITE: "NaN/inf"}


def _e(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1e}"


def _check(report: FidelityReport, c: CategoryDrift | None) -> str:
    if c is None:
        return "PASS" if report.passed else "FAIL"
    if not c.defined:
        return "undefined"
    if report.gate == "category" or c.nonfinite:
        return "ok" if c.passed else "FAIL"
    return "-"


def _near_cell(drift, one_sided) -> str:
    return fmt_number(drift, 3, sign=True) + (" (1-sided)" if one_sided else "")


def _ratio_cell(ratio) -> str:
    if ratio is None:
        return "n/a"
    return ("inf" if ratio == float("inf") else f"{ratio:.3f}") + ("" if ratio <= SPREAD_SHARE else " (over)")


def drift_rows(report: FidelityReport) -> list[list[str]]:
    out = []
    width = len(DRIFT_HEADER)
    for c in report.categories:
        if not c.defined:
            out.append([c.category, str(c.n)] + ["n/a"] * (width - 4) + [_check(report, c), "left out"])
            continue
        out.append([c.category, str(c.n), f"{c.pair_points:.3f}", fmt_number(c.host_auroc, 2), fmt_number(c.device_auroc, 2),
                    fmt_number(c.drift, 3, sign=True), fmt_interval(c.ci), str(c.near_ties),
                    _near_cell(c.near_tie_drift, c.near_tie_one_sided), str(c.reorderings),
                    fmt_number(c.reordering_gross, 3), f"{c.resolution_ties} ({fmt_number(c.resolution_drift, 3, sign=True)})",
                    _ratio_cell(c.spread_ratio), fmt_number(c.gate_drift, 3), fmt_number(c.spearman, 4),
                    fmt_number(c.kendall, 4), _e(c.max_abs_diff), _e(c.mean_abs_diff), f"{100 * c.flip_share:.1f}%",
                    _check(report, c), SHORT_RULE.get(c.decided_by, c.decided_by)])
    m = report.mean
    ratios = [c.spread_ratio for c in report.defined if c.spread_ratio is not None]
    out.append(["mean", str(m["n"]), "", fmt_number(m["host_auroc"], 2), fmt_number(m["device_auroc"], 2),
                fmt_number(m["drift"], 3, sign=True), fmt_interval(m.get("ci")), str(m["near_ties"]),
                _near_cell(m.get("near_tie_drift"), m.get("near_tie_one_sided")), str(m["reorderings"]),
                fmt_number(m["reordering_gross"], 3),
                f"{m.get('resolution_ties', 0)} ({fmt_number(m.get('resolution_drift'), 3, sign=True)})",
                "worst " + _ratio_cell(max(ratios)) if ratios else "n/a", fmt_number(m.get("gate_drift"), 3),
                fmt_number(m["spearman"], 4), fmt_number(m["kendall"], 4), _e(m["max_abs_diff"]),
                _e(m["mean_abs_diff"]), f"{100 * m['flip_share']:.1f}%", _check(report, None),
                SHORT_RULE.get(report.decided_by, report.decided_by)])
    return out


def _metric_cell(host: dict, device: dict, key: str) -> str:
    if key not in host:
        return "n/a"
    if key not in device:
        return f"{host[key]:.2f} / n/a"
    return f"{host[key]:.2f} / {device[key]:.2f} ({device[key] - host[key]:+.2f})"


def metric_keys(report: FidelityReport) -> list[tuple[str, str]]:
    """The metrics at least one category reports on the host side."""
    shown = {k for c in report.categories for k in c.host_metrics}
    return [(k, label) for k, label in METRICS if k in shown]


def metric_rows(report: FidelityReport) -> tuple[list[str], list[list[str]]]:
    keys = metric_keys(report)
    header = ["category"] + [f"{label} host / device (drift)" for _, label in keys]
    rows = [[c.category] + [_metric_cell(c.host_metrics, c.device_metrics, k) for k, _ in keys]
            for c in report.categories if c.defined]
    m = report.mean
    rows.append(["mean"] + [_metric_cell(m["host_metrics"], m["device_metrics"], k) for k, _ in keys])
    return header, rows


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for k, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, len(row))]
        if k == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(cells).rstrip())
    return lines


def error_model_line(report: FidelityReport) -> str:
    """What FP16 explains and what the device did, relative to the scores' scale."""
    measured = report.error_p99
    parts = []
    for c in report.defined:
        if c.spread_ratio is None:
            continue
        parts.append(f"{c.category} {_ratio_cell(c.spread_ratio)}, gain {fmt_number(c.error_gain, 4)}, "
                     f"{c.beyond_fp16} beyond eps")
    model = ("FP16 error model" if not report.quantized else
             f"error model for the {report.precision.upper()} QDQ graph (no swap excused: eps = 0)")
    return (f"{model}: eps = {report.epsilon:.2e} relative per score; device's 99th-percentile relative "
            f"error {'n/a' if measured is None else f'{measured:.2e}'} (after each category's resistant line "
            f"d = a + b*h); RMS error / robust host spread (<= {SPREAD_SHARE:g}), gain b and images beyond eps: "
            f"{'; '.join(parts) if parts else 'n/a'}")


def device_latency_line(report: FidelityReport) -> str:
    """The latency the device's score file recorded (``edgedeploy score``), with the paper's figure it carries, or ''."""
    from edgedeploy.runtime.latency import latency_line, reference_line

    latency = report.info.get("device_latency")
    if not latency:
        return ""
    reference = reference_line(latency.get("reference"), report.info.get("target_display_name") or report.target)
    return f"device {latency_line(latency, latency.get('timed') or 'from the score file')}" + (f"; {reference}" if reference else "")


def mover_lines(report: FidelityReport, top: int) -> list[str]:
    lines = []
    for m in report.top_movers(top):
        tag = f"  [{m.reorderings} real reorderings]" if m.reorderings else ""
        lines.append(f"  {m.path}  rank {m.host_rank:g} -> {m.device_rank:g}  score {m.host_score:.5f} -> "
                     f"{m.device_score:.5f}{tag}")
    return lines


def nonfinite_lines(report: FidelityReport, markdown: bool = False) -> list[str]:
    """The images whose device score is NaN or inf, every one, first in the report."""
    lines = []
    for c in report.categories:
        if c.nonfinite:
            names = ", ".join(f"`{p}`" if markdown else p for p in c.nonfinite)
            lines.append(f"NaN/inf device scores in {c.category} ({len(c.nonfinite)}): {names}")
    if markdown and lines:
        lines = [line for text in lines for line in (text, "")]
    return lines


def terminal_table(report: FidelityReport, top: int = 5) -> str:
    lines = nonfinite_lines(report) + _aligned(DRIFT_HEADER, drift_rows(report))
    lines.append("")
    header, rows = metric_rows(report)
    lines += _aligned(header, rows)
    lines.append("")
    lines.append(f"AUROC, AP, F1-max, AUPRO in points; drift = device - host; pair pts = points one normal/anomalous "
                 f"pair is worth; 95% CI: {CI_METHOD}. host: {report.host}; device: {report.device}")
    lines.append(error_model_line(report))
    latency = device_latency_line(report)
    if latency:
        lines.append(latency)
    movers = mover_lines(report, top)
    if movers:
        lines.append("images whose rank moved most, real reorderings first (rank 1 = most anomalous in its category):")
        lines += movers
    for text in (report.small_note(),):
        if text:
            lines.append(f"note: {text}")
    for c in report.categories:
        for note in c.notes[:1] if not c.defined else [n for n in c.notes if not c.nonfinite]:
            lines.append(f"note: {note}")
    lines.append(report.rule())
    if report.pixel_line():
        lines.append(report.pixel_line())
    lines.append(report.verdict())
    return "\n".join(lines)


def quantization_rows(info: dict) -> list[str]:
    """fidelity.md's rows for a quantised device graph: what it is, its calibration, which runtime ran it."""
    q = info.get("quantization")
    if not q:
        return []
    overlap = q.get("overlap_with_evaluated")
    overlap_text = ("not checked" if overlap is None else
                    f"{overlap} of the evaluated images" + (" (allowed: --allow-calibration-overlap; the evaluation is "
                                                            "not independent of the calibration)" if overlap else ""))
    return [f"| device graph | {q['precision'].upper()} QDQ graph (`{q['sha256'][:16]}`), {q['origin']}; "
            f"{q['activation_bits']}-bit activations, {q['weight_type']} weights, {q['kept_float']} nodes kept float |",
            f"| calibration | {q['images']} normal images ({q['source']}), {q['method']}; image sha256s in "
            f"fidelity.json; overlap with the evaluated images: {overlap_text} |",
            f"| verdict produced by | {q['verdict_by']} |"]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        if row[0] == "mean":
            row = [f"**{cell}**" if cell else cell for cell in row]
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return out


def markdown_report(report: FidelityReport, plots: dict[str, str] | None = None, top: int = 5) -> str:
    info = report.info
    verdict = report.verdict()
    lines = [f"# Fidelity: {report.bench} on {report.target}", "",
             f"**{'PASS' if report.passed else 'FAIL'}** — {verdict.split(': ', 1)[1]}", "",
             *nonfinite_lines(report, markdown=True),
             "| | |", "|---|---|", f"| host (reference) | {report.host} |", f"| device | {report.device} |"]
    for key, label in (("model", "model"), ("recipe", "recipe"), ("model_sha256", "bundle model.onnx sha256"),
                       ("data_root", "benchmark root"), ("keep_fp32", "kept in FP32")):
        if info.get(key):
            lines.append(f"| {label} | `{info[key]}` |")
    lines += quantization_rows(info)
    lines += [f"| gate | {report.gate} (`--gate`), budget {report.max_drift:g} points (`--max-drift`)"
              + (f"; pixel AUROC and AUPRO: {report.max_pixel_drift:g} points (`--max-pixel-drift`)"
                 if report.max_pixel_drift is not None else "") + " |",
              f"| {'FP16 error model' if not report.quantized else 'error model'} | eps = {report.epsilon:.2e} relative "
              f"per score{'' if not report.quantized else ' (a quantised device: no swap is excused as a near-tie)'} |",
              "", "## The rule", "", report.rule() + ".", "", error_model_line(report) + ".", ""]
    if report.pixel_line():
        lines += [report.pixel_line() + ".", ""]
    lines += [f"95% intervals: {CI_METHOD}.", ""]
    latency = device_latency_line(report)
    if latency:
        lines += [latency + ".", ""]
    for note in report.notes:
        lines += [f"> {note}", ""]
    lines += ["## Drift per category", ""] + _md_table(DRIFT_HEADER, drift_rows(report))
    lines += ["", "AUROC in points (x100). drift = device AUROC - host AUROC; pair pts: the points one "
              "normal/anomalous pair is worth (the resolution); near-ties / reorderings: pairs whose order moved "
              "within / beyond what FP16 rounding explains (the rule above); near-tie sum: the near-ties' signed points "
              "(1-sided: its 99% interval excludes 0, and it is charged); reorder drift: the points the reorderings carry, "
              "both directions; res. ties: pairs the host ordered that the device ties (their net points are charged); "
              "spread ratio: RMS error / robust host spread (over 0.25: nothing is excused); gate drift: what the gate "
              "charges; decided by: the rule that decided the verdict. spearman / kendall: rank correlation of the image scores. max|Δs| / mean|Δs|: absolute "
              "score difference. flips: share of images whose decision (anomalous when score >= the host's F1-max "
              "threshold) differs. The mean row averages over categories and pools pair counts, differences and "
              "flips over images.", ""]
    header, rows = metric_rows(report)
    lines += ["## Metrics, host / device (drift)", ""] + _md_table(header, rows) + [""]
    small = report.small_note()
    if small:
        lines += [f"Resolution: {small}.", ""]
    map_diffs = [c for c in report.categories if c.max_map_diff is not None]
    if map_diffs:
        lines += ["Max |Δ| of the raw anomaly maps: " + ", ".join(f"{c.category} {c.max_map_diff:.2e}"
                                                                  for c in map_diffs) + ".", ""]
    lines += ["## Images whose rank moved most", "", "Images in real reorderings come first.", "",
              "| image | category | label | host rank | device rank | host score | device score | real reorderings |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in report.categories:
        for m in c.movers[:top]:
            lines.append(f"| `{m.path}` | {m.category} | {m.label} | {m.host_rank:g} | {m.device_rank:g} | "
                         f"{m.host_score:.6f} | {m.device_score:.6f} | {m.reorderings} |")
    from edgedeploy.evaluation.fidelity import overlays, threshold  # the decision threshold, the movers' overlays

    lines += threshold.markdown_lines(info) + overlays.markdown_lines(info)
    if plots:
        lines += ["", "## Plots", ""]
        for title, name in plots.items():
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"
