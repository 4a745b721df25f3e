"""The drift gate's perturbation cases, shared by test_gate.py and the full-size acceptance test.

``EDGEDEPLOY_GATE_SEEDS=11,12,13`` runs them with other seeds.
"""

from __future__ import annotations

import os

import numpy as np

from edgedeploy.runtime.batch import ScoredBenchmark
from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable

GATE_SEEDS = [int(s) for s in os.environ.get("EDGEDEPLOY_GATE_SEEDS", "0,1,2,3,4,5,6,7,8,9").split(",")]


def scored(bench, scores, label="x") -> ScoredBenchmark:
    rows = [ScoreRow(s.rel_path, s.category, s.label, float(v)) for s, v in zip(bench.samples, scores)]
    return ScoredBenchmark(label, ScoreTable({"runner": label}, rows))


def fp16_noise(host: np.ndarray, seed: int, limit: float = 6e-3) -> np.ndarray:
    """Independent noise at the FP16 level seen on the demo: |Δs| up to ``limit``."""
    return host + np.random.default_rng(seed).uniform(-limit, limit, host.size)


def real_reordering(bench, host: np.ndarray, seed: int, fraction: float = 0.2, drop: float = 0.05) -> np.ndarray:
    """A fifth of each category's anomalous scores lowered by 0.05."""
    rng = np.random.default_rng(seed)
    device = host.copy()
    for category in bench.categories:
        anomalous = [i for i, s in enumerate(bench.samples) if s.category == category and s.label == 1]
        chosen = rng.choice(anomalous, size=max(1, round(fraction * len(anomalous))), replace=False)
        device[chosen] -= drop
    return device


def large_noise(host: np.ndarray, seed: int, std: float = 0.1) -> np.ndarray:
    """Independent noise with a standard deviation of 0.1 on the scores."""
    return host + np.random.default_rng(seed).normal(0.0, std, host.size)
