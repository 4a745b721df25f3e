"""``edgedeploy fidelity --write-threshold``: the decision threshold, chosen on the host and carried by the bundle.

A bundle's ``manifest.json`` gets a ``decision`` record (read on the device by ``edgedeploy.runtime.decision``):

* **the rule**: ``f1-max`` (the threshold of the best F1 on the benchmark, ``edgedeploy.evaluation.metrics.f1_max``)
  or ``max-fpr`` (``--max-fpr R``: the lowest threshold that calls at most a fraction R of the normal images NG);
* **one threshold over all images**, and **one per category** where the category allows the rule (both classes for
  F1-max, normal images for a false-positive rate);
* **where it sits**: any threshold between the highest score called OK and the lowest called NG gives the same
  decisions on the calibration images; the record takes the midpoint of that gap, the widest margin either way, so
  that a score moved a little (FP16, another runtime) keeps its decision. ``f1_max`` itself returns the lowest NG
  score, where a device score a hair lower flips. Where every image is on one side (every image NG: a model that
  does not separate the classes), the threshold goes the FP16 error model's margin past the last score, eps = 2^-5 of
  its scale;
* **the device's threshold**: the host decisions at the host's threshold are the reference; the device's threshold
  is the one that reproduces them best on the device's own scores of the same images (fewest flips, then the
  midpoint of that gap on the device's scores, the one nearest the host's threshold among equals). Where the device
  is offset from the host (QNN HTP's one-sided FP16 error, a runtime's different rounding) it moves with the
  offset; where the device scores equal the host's it is the host's. Both values, and the flips at each, are kept;
* **the model card's polarity**: scores are oriented (higher = more anomalous, the card applied), so NG is always
  ``score >= threshold``; each threshold is also written in the model's raw units (``raw``) with the polarity;
* **what it was calibrated on**: the benchmark, its root, the categories, image counts, a hash over every image's
  sha256, and ``decision_calibration.csv`` beside the manifest (every image: hash, label, both scores, the four
  decisions), itself hashed in the record;
* **the model's hash** (the manifest's ``model.sha256``): a threshold written for another model is refused on the
  device; ``edgedeploy build`` keeps the record only while it rebuilds the same graph;
* **the overlays' colour scale** (``map_range``): the host's maps of the calibration images, normal median to the
  anomalous 99.5th percentile (``edgedeploy.runtime.overlay.scale_from_maps``).

A threshold is written only when the gate passed (a device that ranks images differently has no threshold to
share with the host). The manifest is read again just before it is written, only ``decision`` is replaced, and
every file is written atomically (the calibration file first, the manifest last).
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Callable

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.runtime.decision import CALIBRATION_FILE, DECISION_VERSION, NG, OK, raw_threshold

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------- choosing


def margin(score: float, scores: np.ndarray) -> float:
    """How far past ``score`` a threshold goes where no score lies beyond it (every image NG, or every image OK):
    what the FP16 error model lets a score move, eps = 2^-5 of its scale (max(|score|, the median |score|)), the
    gate's own near-tie bound (``drift.py``)."""
    from edgedeploy.evaluation.fidelity.drift import FP16_RELATIVE_ERROR

    scale = max(abs(float(score)), float(np.median(np.abs(scores))) if len(scores) else 0.0)
    return FP16_RELATIVE_ERROR * scale


def _below(score: float, scores: np.ndarray) -> float:
    t = float(score) - margin(score, scores)
    return t if t < score else float(np.nextafter(score, -np.inf))


def _above(score: float, scores: np.ndarray) -> float:
    t = float(score) + margin(score, scores)
    return t if t > score else float(np.nextafter(score, np.inf))


def _gap_midpoint(scores: np.ndarray, ng_from: float) -> float:
    """The midpoint between ``ng_from`` (the lowest score called NG) and the highest score below it; a margin
    below ``ng_from`` where no score is below it."""
    below = scores[scores < ng_from]
    return float((below.max() + ng_from) / 2.0) if below.size else _below(ng_from, scores)


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The F1-max decisions (``f1_max``: NG when score >= its threshold), as the midpoint of their gap."""
    from edgedeploy.evaluation.metrics import f1_max

    _, lowest_ng = f1_max(labels, scores)
    return _gap_midpoint(scores, lowest_ng)


def fpr_threshold(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold calling at most ``max_fpr`` of the normal images NG, as the midpoint of its gap."""
    normal = np.sort(scores[labels == 0])[::-1]
    allowed = int(math.floor(max_fpr * len(normal) + 1e-9))  # normal images that may be NG
    ok_from = normal[allowed]                                 # this normal score and everything tied with it stay OK
    above = scores[scores > ok_from]
    if not above.size:
        return _above(ok_from, scores)
    return float((ok_from + above.min()) / 2.0)


def recalibrate(reference: np.ndarray, device: np.ndarray, host_threshold: float) -> float:
    """The device threshold that reproduces the ``reference`` decisions (bool, NG) best on the ``device`` scores
    (finite ones): fewest flips, the midpoint of its gap, nearest ``host_threshold`` among equals."""
    order = np.argsort(device, kind="stable")
    d, ref = device[order], reference[order].astype(np.int64)
    n = len(d)
    if n == 0:
        return host_threshold
    ng_before = np.concatenate([[0], np.cumsum(ref)])          # reference NG among the k lowest (called OK)
    ok_after = (n - np.arange(n + 1)) - (ref.sum() - ng_before)  # reference OK among the rest (called NG)
    flips = ng_before + ok_after
    cuts = [k for k in range(n + 1) if k in (0, n) or d[k - 1] < d[k]]
    best = min(flips[k] for k in cuts)
    candidates = []
    for k in cuts:
        if flips[k] != best:
            continue
        if k == 0:    # every image NG: at least a margin below the lowest device score
            t = min(host_threshold, _below(d[0], d))
        elif k == n:  # every image OK: at least a margin above the highest
            t = max(host_threshold, _above(d[-1], d))
        else:
            t = float((d[k - 1] + d[k]) / 2.0)
        candidates.append(t)
    return min(candidates, key=lambda t: (abs(t - host_threshold), t))


def _rates(labels: np.ndarray, ng: np.ndarray) -> dict:
    tp = int(np.count_nonzero(ng & (labels == 1)))
    fp = int(np.count_nonzero(ng & (labels == 0)))
    n_pos, n_neg = int(np.count_nonzero(labels == 1)), int(np.count_nonzero(labels == 0))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / n_pos if n_pos else None
    f1 = (2 * tp / (2 * tp + fp + (n_pos - tp))) if n_pos else None
    return {"ng": int(np.count_nonzero(ng)), "f1": f1, "precision": precision, "tpr": recall,
            "fpr": fp / n_neg if n_neg else None}


def scope_thresholds(labels: np.ndarray, host: np.ndarray, device: np.ndarray, rule: str, max_fpr: float | None,
                     polarity: str) -> dict:
    """The record of one scope (all images, or one category): host and device thresholds, rates and flips."""
    labels = np.asarray(labels)
    t_h = f1_threshold(labels, host) if rule == "f1-max" else fpr_threshold(labels, host, float(max_fpr))
    host_ng = host >= t_h
    finite = np.isfinite(device)
    t_d = recalibrate(host_ng[finite], device[finite], t_h)
    flips_at_host = int(np.count_nonzero((device[finite] >= t_h) != host_ng[finite]))
    flips = int(np.count_nonzero((device[finite] >= t_d) != host_ng[finite]))
    return {"images": int(len(labels)), "normal": int(np.count_nonzero(labels == 0)),
            "anomalous": int(np.count_nonzero(labels == 1)),
            "host": {"threshold": t_h, "raw": raw_threshold(t_h, polarity), **_rates(labels, host_ng)},
            "device": {"threshold": t_d, "raw": raw_threshold(t_d, polarity),
                       **_rates(labels[finite], device[finite] >= t_d), "offset": t_d - t_h,
                       "recalibrated": t_d != t_h, "flips_at_host_threshold": flips_at_host, "flips": flips,
                       "nonfinite": int(np.count_nonzero(~finite))}}


def _usable(labels: np.ndarray, rule: str) -> str | None:
    """Why a scope cannot take the rule, or None."""
    if rule == "f1-max" and (labels.min() == labels.max()):
        return "F1-max needs normal and anomalous images"
    if rule == "max-fpr" and not np.any(labels == 0):
        return "a false-positive rate needs normal images"
    return None


# ------------------------------------------------------------------------------------------- checks


def check_threshold_options(opts) -> None:
    """``--write-threshold`` / ``--max-fpr`` against the rest of the options (before any work)."""
    if opts.max_fpr is not None and not opts.write_threshold:
        raise EdgeDeployError("--max-fpr chooses the threshold --write-threshold writes: add --write-threshold")
    if opts.max_fpr is not None and not (0.0 <= opts.max_fpr < 1.0 and math.isfinite(opts.max_fpr)):
        raise EdgeDeployError(f"--max-fpr {opts.max_fpr}: give the share of normal images that may be called NG, "
                              "0 <= R < 1 (0.01 = 1%)")
    if opts.write_threshold and opts.host_scores is not None:
        raise EdgeDeployError("--write-threshold writes into the bundle the model run checked: it needs the model "
                              "(drop --host-scores; --device-scores FILE with the model run is fine)")


def check_bundle(bundle_dir: Path, model_sha256: str) -> dict:
    """The bundle the threshold goes into must exist and hold the graph checked here (before scoring)."""
    from edgedeploy.runtime.bundle import read_manifest

    if not (Path(bundle_dir) / "manifest.json").is_file():
        raise EdgeDeployError(f"--write-threshold writes into the bundle {bundle_dir}, which does not exist: run "
                              f"`edgedeploy build --target {Path(bundle_dir).name}` with the same --out, checkpoint and "
                              "recipe first")
    manifest = read_manifest(bundle_dir)
    shipped = str((manifest.get("model") or {}).get("sha256") or "")
    if shipped != model_sha256:
        raise EdgeDeployError(f"--write-threshold: {bundle_dir}/model.onnx ({shipped[:16] or '?'}) is not the graph "
                              f"checked here ({model_sha256[:16]}): a threshold is only valid for the model it was "
                              "calibrated on; rebuild the bundle with the same checkpoint and recipe, or drop "
                              "--write-threshold")
    return manifest


# ------------------------------------------------------------------------------------------- the record


def _calibration_rows(bench, host, device, overall: dict, categories: dict) -> tuple[str, str]:
    """decision_calibration.csv's text, and the hash over every image's sha256 (sorted by path)."""
    import csv
    import io

    from edgedeploy.core.hashing import sha256_file

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "category", "label", "sha256", "host_score", "device_score", "host_overall",
                     "device_overall", "host_category", "device_category"))
    host_rows, device_rows = host.table.by_path(), device.table.by_path()
    lines = []

    def decide(score: float, t: float | None) -> str:
        return "" if t is None or not math.isfinite(score) else (NG if score >= t else OK)

    for s in sorted(bench.samples, key=lambda s: s.rel_path):
        sha = sha256_file(s.path)
        lines.append(f"{sha}  {s.rel_path}")
        h, d = host_rows[s.rel_path].score, device_rows[s.rel_path].score
        cat = categories.get(s.category)
        writer.writerow((s.rel_path, s.category, s.label, sha, repr(h), repr(d),
                         decide(h, overall["host"]["threshold"]), decide(d, overall["device"]["threshold"]),
                         decide(h, cat["host"]["threshold"] if cat else None),
                         decide(d, cat["device"]["threshold"] if cat else None)))
    import hashlib

    return buf.getvalue(), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def build_record(report, bench, host, device, model_sha256: str, card, rule: str, max_fpr: float | None) -> dict:
    """The decision record (without the calibration file's hash, which ``write_threshold`` adds)."""
    from edgedeploy import __version__
    from edgedeploy.runtime.overlay import scale_from_maps

    host_rows, device_rows = host.table.by_path(), device.table.by_path()
    samples = list(bench.samples)
    labels = np.array([s.label for s in samples])
    h = np.array([host_rows[s.rel_path].score for s in samples], dtype=np.float64)
    d = np.array([device_rows[s.rel_path].score for s in samples], dtype=np.float64)
    why = _usable(labels, rule)
    if why:
        raise EdgeDeployError(f"--write-threshold: {why}, and the images checked have "
                              f"{int(np.count_nonzero(labels == 0))} normal and {int(np.count_nonzero(labels == 1))} "
                              "anomalous images")
    overall = scope_thresholds(labels, h, d, rule, max_fpr, card.polarity)
    categories, skipped = {}, {}
    for category in sorted({s.category for s in samples}):
        idx = np.array([i for i, s in enumerate(samples) if s.category == category])
        reason = _usable(labels[idx], rule)
        if reason:
            skipped[category] = reason
            continue
        categories[category] = scope_thresholds(labels[idx], h[idx], d[idx], rule, max_fpr, card.polarity)
    maps = [host.maps.get(s.rel_path) for s in samples] if host.maps else []
    scale = None
    if maps and all(m is not None for m in maps):
        scale = scale_from_maps(maps, labels, card.input_size, card.smooth_sigma)
    return {
        "version": DECISION_VERSION,
        "model_sha256": model_sha256,
        "polarity": card.polarity,
        "rule": rule,
        "max_fpr": max_fpr,
        "decision_rule": "NG when score >= threshold, scores oriented (higher = more anomalous: the model card's "
                         f"polarity, {card.polarity}, applied); raw: the threshold in the model's output units "
                         f"(NG when the raw score is {'>=' if card.polarity == 'higher' else '<='} raw)",
        "placement": "midway between the highest score called OK and the lowest called NG on the calibration images "
                     "(the rule's decisions there, the widest margin)",
        "device_threshold": "recalibrated on the device's scores of the same images to reproduce the host's decisions "
                            "(fewest flips, midpoint of that gap); equal to the host's where the scores are",
        "overall": overall,
        "categories": categories,
        "skipped_categories": skipped,
        "host": {"runner": host.table.meta.get("runner", ""), "label": host.label},
        "device": {"runner": device.table.meta.get("runner", ""), "label": device.label},
        "map_range": list(scale) if scale else None,
        "gate": {"passed": report.passed, "verdict": report.verdict()},
        "calibration": {"bench": bench.name, "data_root": str(bench.root),
                        "categories": sorted({s.category for s in samples}), "images": len(samples),
                        "normal": int(np.count_nonzero(labels == 0)), "anomalous": int(np.count_nonzero(labels == 1))},
        "written_by": {"edgedeploy": __version__, "command": "edgedeploy fidelity --write-threshold",
                       "utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()},
    }


def write_threshold(opts, report, bench, host, device, bundle_dir: Path, model_sha256: str, card,
                    log: Log) -> dict:
    """Choose the thresholds, say them, and (when the gate passed) write the record and its calibration file into
    ``bundle_dir``; the record also goes into ``report.info["decision"]`` (fidelity.json, fidelity.md)."""
    from edgedeploy.core.files import write_json_atomic, write_text_atomic
    from edgedeploy.core.hashing import sha256_file
    from edgedeploy.runtime.bundle import MANIFEST

    rule = "max-fpr" if opts.max_fpr is not None else "f1-max"
    record = build_record(report, bench, host, device, model_sha256, card, rule, opts.max_fpr)
    text, images_sha = _calibration_rows(bench, host, device, record["overall"], record["categories"])
    record["calibration"].update({"images_sha256": images_sha, "file": CALIBRATION_FILE})
    for line in summary_lines(record):
        log(line)
    bundle_dir = Path(bundle_dir)
    written = report.passed
    if written:
        manifest = check_bundle(bundle_dir, model_sha256)  # read again, just before writing: only decision changes
        write_text_atomic(bundle_dir / CALIBRATION_FILE, text)
        record["calibration"]["file_sha256"] = sha256_file(bundle_dir / CALIBRATION_FILE)
        manifest["decision"] = record
        write_json_atomic(bundle_dir / MANIFEST, manifest)
        log(f"decision threshold written to {bundle_dir / MANIFEST} (decision) and {bundle_dir / CALIBRATION_FILE}; "
            f"copy both to the device with the bundle")
    else:
        log(f"note: decision threshold NOT written to {bundle_dir / MANIFEST}: the gate failed, so the device does not "
            "rank images like the host and no threshold carries over; fix the drift first")
    report.info["decision"] = {**record, "written": written,
                               "manifest": str(bundle_dir / MANIFEST) if written else None}
    return record


def summary_lines(record: dict) -> list[str]:
    rule = "F1-max" if record["rule"] == "f1-max" else f"false-positive rate <= {record['max_fpr']:g}"
    lines = [f"decision threshold ({rule}; NG when score >= threshold): " + scope_text("overall", record["overall"])]
    for name, entry in record["categories"].items():
        lines.append(f"  {scope_text(name, entry)}")
    for name, why in record["skipped_categories"].items():
        lines.append(f"  {name}: no threshold ({why})")
    return lines


def scope_text(name: str, entry: dict) -> str:
    h, d = entry["host"], entry["device"]
    device = (f"device {d['threshold']:.6g} (recalibrated, offset {d['offset']:+.3g})" if d["recalibrated"] else
              f"device {d['threshold']:.6g} (the host's)")
    rates = f"F1 {100 * h['f1']:.1f}" if h.get("f1") is not None else ""
    if h.get("fpr") is not None:
        rates += f"{', ' if rates else ''}FPR {100 * h['fpr']:.1f}%"
    return (f"{name}: host {h['threshold']:.6g} ({rates}), {device}; flips host/device {d['flips_at_host_threshold']} at "
            f"the host's threshold, {d['flips']} at the device's"
            + (f"; {d['nonfinite']} NaN/inf device scores" if d["nonfinite"] else ""))


def markdown_lines(info: dict) -> list[str]:
    """fidelity.md's "Decision threshold" section, from ``report.info["decision"]`` ([] when not asked for)."""
    record = info.get("decision")
    if not record:
        return []
    rule = "F1-max" if record["rule"] == "f1-max" else f"false-positive rate <= {record['max_fpr']:g} on normal images"
    where = (f"written to `{record['manifest']}` (`decision`) and `{CALIBRATION_FILE}` beside it" if record["written"]
             else "**not written**: the gate failed")
    lines = ["", "## Decision threshold", "",
             f"NG when score >= threshold; rule {rule}, placed midway in the gap between the calibration images called "
             f"OK and NG; {where}. The device's threshold is recalibrated on the device's scores of the same images to "
             "reproduce the host's decisions. Flips: images whose device decision differs from the host's decision.", "",
             "| scope | images | host threshold | device threshold | offset | host F1 | host FPR | flips at the host's "
             "threshold | flips at the device's |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def pct(value) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    for name, entry in [("overall", record["overall"]), *record["categories"].items()]:
        h, d = entry["host"], entry["device"]
        lines.append(f"| {name} | {entry['images']} | {h['threshold']:.6g} | {d['threshold']:.6g} | {d['offset']:+.3g} | "
                     f"{pct(h.get('f1'))} | {pct(h.get('fpr'))}% | {d['flips_at_host_threshold']} | {d['flips']} |")
    for name, why in record.get("skipped_categories", {}).items():
        lines.append(f"| {name} | | no threshold: {why} | | | | | | |")
    if record.get("map_range"):
        lo, hi = record["map_range"]
        lines += ["", f"Overlay colour scale recorded for the device (`map_range`): [{lo:.4g}, {hi:.4g}]."]
    return lines + [""]
