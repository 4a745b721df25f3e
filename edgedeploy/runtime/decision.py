"""The bundle's decision threshold, read on the device: OK or NG for one image score.

``edgedeploy fidelity --write-threshold`` (``edgedeploy.evaluation.fidelity.threshold``) stores a ``decision``
record in the bundle's ``manifest.json``; this module reads it back, checks that it was written for the graph the
runner runs (the record holds the manifest's ``model.sha256``: a threshold written for another model is refused),
and picks the threshold that applies: the overall one or a category's, the host's (FP32: ONNX Runtime on
``model.onnx``) or the device's (recalibrated on the device's own scores where they are offset from the host's).

Scores here are the oriented scores every runner returns (``ModelCard.read_outputs``: the card's polarity applied,
higher = more anomalous), so one rule holds for every model: **NG when score >= threshold**. The record also keeps
each threshold in the model's raw output units (``raw``), for a model whose card says lower = more anomalous.

numpy-free and torch-free: the device side runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from edgedeploy.core.errors import EdgeDeployError

DECISION_VERSION = 1
CALIBRATION_FILE = "decision_calibration.csv"
RULES = ("f1-max", "max-fpr")
NG, OK = "NG", "OK"
# runners that run the bundle's FP32 graph as the host does (ONNX Runtime on model.onnx): the host's threshold applies
HOST_RUNNERS = ("onnxruntime-cpu",)
HOW_TO_ADD = ("add one on the host with `edgedeploy fidelity --bench BENCH --target {target} --write-threshold` "
              "(same --out, checkpoint and recipe as the build), then copy the bundle's manifest.json (and "
              f"{CALIBRATION_FILE}) to the device again")


class DecisionError(EdgeDeployError):
    """A bundle's decision record is malformed, was written for another model, or lacks the category asked for."""


@dataclass(frozen=True)
class Threshold:
    """The threshold one scoring run applies, and where it came from."""

    value: float          # oriented score units: NG when score >= value
    raw: float            # the same threshold in the model's raw output units
    polarity: str         # the card's: "higher" (NG when raw >= raw threshold) or "lower" (NG when raw <= it)
    rule: str             # "f1-max" or "max-fpr"
    scope: str            # "overall" or the category's name
    side: str             # "host" or "device"
    host_value: float     # the host's threshold for the same scope (equal to value on the host side)
    max_fpr: float | None = None

    def decide(self, score: float) -> str:
        """``NG`` when ``score`` (oriented) >= the threshold, ``OK`` below it, ``""`` for a NaN/inf score."""
        if not math.isfinite(score):
            return ""
        return NG if score >= self.value else OK

    def describe(self) -> str:
        rule = "F1-max on the calibration benchmark" if self.rule == "f1-max" else \
            f"false-positive rate <= {self.max_fpr:g} on normal images"
        side = ("the host's (the FP32 graph)" if self.side == "host" else
                "the device's" + ("" if self.value == self.host_value else f", recalibrated (host {self.host_value:.6g})"))
        scope = "overall" if self.scope == "overall" else f"category {self.scope}"
        return f"threshold {self.value:.6g} ({scope}, {rule}; {side})"

    def header(self) -> dict[str, str]:
        return {"threshold": repr(self.value), "threshold_raw": repr(self.raw), "threshold_scope": self.scope,
                "threshold_rule": self.rule + (f" {self.max_fpr:g}" if self.max_fpr is not None else ""),
                "threshold_side": self.side, "threshold_host": repr(self.host_value),
                "decision_rule": "NG when score >= threshold (scores oriented: higher = more anomalous; the card's "
                                 f"polarity is {self.polarity}, so NG when the raw output is "
                                 f"{'>=' if self.polarity == 'higher' else '<='} {self.raw!r})"}


def raw_threshold(value: float, polarity: str) -> float:
    """An oriented threshold in the model's raw output units (the card flips a 'lower' model's sign)."""
    return -value if polarity == "lower" else value


def side_for(runner_name: str) -> str:
    """Which calibrated threshold a runner's scores meet: the host's for the FP32 graph, else the device's."""
    return "host" if runner_name in HOST_RUNNERS else "device"


def record_of(manifest: Mapping[str, Any] | None) -> dict | None:
    """The manifest's decision record, or None where it has none."""
    if not manifest or manifest.get("decision") is None:
        return None
    record = manifest["decision"]
    if not isinstance(record, dict) or record.get("version") != DECISION_VERSION:
        version = record.get("version") if isinstance(record, dict) else None
        raise DecisionError(f"the bundle's decision record (manifest.json decision, version {version!r}) is not one "
                            f"this edgedeploy reads (version {DECISION_VERSION}): write it again with "
                            "`edgedeploy fidelity --write-threshold`")
    return record


def check_model(record: Mapping[str, Any], manifest: Mapping[str, Any], runner_sha: str | None, where: str) -> None:
    """Refuse a threshold written for another model: the record's hash must be the bundle's graph, and the graph the
    runner runs (``runner_sha``, where it knows it)."""
    wanted = str(record.get("model_sha256") or "")
    bundle = str((manifest.get("model") or {}).get("sha256") or "")
    for what, sha in (("the bundle's model.onnx (manifest model.sha256)", bundle), (f"the model scored ({where})", runner_sha)):
        if sha and sha != "unknown" and sha != wanted:
            target = (manifest.get("target") or {}).get("name", "TARGET")
            raise DecisionError(f"the bundle's decision threshold was written for model {wanted[:16] or '?'}, but "
                                f"{what} is {sha[:16]}: a threshold written for another model is refused; "
                                + HOW_TO_ADD.format(target=target))


def choose(record: Mapping[str, Any], category: str | None, runner_name: str) -> Threshold:
    """The threshold for ``category`` (None: the overall one) on the side ``runner_name`` stands for."""
    polarity = str(record.get("polarity", "higher"))
    if category is None:
        entry, scope = record.get("overall"), "overall"
    else:
        cats = record.get("categories") or {}
        if category not in cats:
            known = ", ".join(sorted(cats)) or "none (the benchmark had no category with both classes)"
            raise DecisionError(f"--category {category}: the bundle's decision record has no threshold for it "
                                f"(categories: {known}); drop --category for the overall threshold")
        entry, scope = cats[category], category
    side = side_for(runner_name)
    try:
        host_value = float(entry["host"]["threshold"])
        value = float(entry[side]["threshold"])
    except (KeyError, TypeError, ValueError):
        raise DecisionError(f"the bundle's decision record has no {side} threshold for {scope}: write it again with "
                            "`edgedeploy fidelity --write-threshold`") from None
    if not (math.isfinite(value) and math.isfinite(host_value)):
        raise DecisionError(f"the bundle's decision record holds a non-finite threshold for {scope}: write it again")
    max_fpr = record.get("max_fpr")
    return Threshold(value, raw_threshold(value, polarity), polarity, str(record.get("rule", "f1-max")), scope, side,
                     host_value, float(max_fpr) if max_fpr is not None else None)


def map_range(record: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """The overlays' fixed colour scale the record carries (host maps of the calibration images), or None."""
    if not record:
        return None
    value = record.get("map_range")
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and hi > lo else None


def carried_decision(previous: Mapping[str, Any] | None, model_sha256: str) -> dict:
    """``{"decision": record}`` from a previous manifest whose record was written for ``model_sha256`` (a rebuild of
    the same graph keeps its threshold), else ``{}``."""
    try:
        record = record_of(previous)
    except DecisionError:
        return {}
    if record and record.get("model_sha256") == model_sha256:
        return {"decision": record}
    return {}


def kept_decision(bundle_dir, model_sha256: str) -> dict:
    """What ``edgedeploy build`` keeps of the manifest it replaces: ``{"decision": record}`` when the bundle's previous
    manifest holds a decision record written for the same graph, else ``{}`` (a new graph drops the threshold)."""
    import json
    from pathlib import Path

    try:
        previous = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return carried_decision(previous if isinstance(previous, dict) else None, model_sha256)
