"""A subset of a benchmark: at most N images per category, half normal and half anomalous, evenly spaced.

``edgedeploy precision`` searches on one, and ``edgedeploy fidelity --limit`` scores one where the device
stand-in is slow (Qualcomm's HTP backend on the host CPU). numpy only.
"""

from __future__ import annotations

import numpy as np

from edgedeploy.evaluation.data.benchmarks import Benchmark


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced through ``items`` (all of them when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(items):
        return list(items)
    if n == 1:
        return [items[len(items) // 2]]
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in dict.fromkeys(picks.tolist())]


def split_counts(n_good: int, n_bad: int, per_category: int) -> tuple[int, int]:
    """(normal, anomalous) images :func:`select` takes from a category holding ``n_good`` + ``n_bad``: half and
    half, the other class filling in where one runs short; all of them when ``per_category`` <= 0."""
    if per_category <= 0:
        return n_good, n_bad
    take_bad = min(n_bad, per_category // 2)
    take_good = min(n_good, per_category - take_bad)
    return take_good, min(n_bad, per_category - take_good)


def select(bench, per_category: int):
    """At most ``per_category`` images per category, half normal and half anomalous, evenly spaced."""
    if per_category <= 0:
        return bench
    samples = []
    for _, items in bench.by_category().items():
        good = [s for s in items if s.label == 0]
        bad = [s for s in items if s.label == 1]
        n_good, n_bad = split_counts(len(good), len(bad), per_category)
        samples += spread(good, n_good) + spread(bad, n_bad)
    samples.sort(key=lambda s: (s.category, s.rel_path))
    return Benchmark(bench.name, bench.root, tuple(samples))
