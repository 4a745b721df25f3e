"""PNG plots of a fidelity run: host vs device ROC per category, host vs device score scatter, and
the score difference (device - host) against the host score.

matplotlib is imported here only, with the Agg backend (no display needed). Each figure is a grid
with one panel per category; files are written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgedeploy.evaluation.data import Benchmark
from edgedeploy.core.files import atomic_path
from edgedeploy.runtime.batch import ScoredBenchmark

_COLUMNS = 4
HOST_COLOUR = "#1f4e99"
DEVICE_COLOUR = "#d9480f"


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) over all distinct thresholds, anomalous when score >= threshold, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.concatenate([[0.0], fp[last] / n_neg]), np.concatenate([[0.0], tp[last] / n_pos])


def _grid(n: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = min(_COLUMNS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.6 * cols, 6.0), 3.5 * rows + 0.9), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return plt, fig, list(axes.flat[:n])


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _per_category(bench: Benchmark, host: ScoredBenchmark, device: ScoredBenchmark):
    h, d = host.table.by_path(), device.table.by_path()
    for category, samples in bench.by_category().items():
        paths = [s.rel_path for s in samples]
        yield (category, np.array([s.label for s in samples]), np.array([h[p].score for p in paths]),
               np.array([d[p].score for p in paths]))


def plot_roc(path: Path, bench: Benchmark, host: ScoredBenchmark, device: ScoredBenchmark, title: str,
             aurocs: dict[str, tuple[float | None, float | None]]) -> Path:
    data = list(_per_category(bench, host, device))
    plt, fig, axes = _grid(len(data))
    for ax, (category, labels, hs, ds) in zip(axes, data):
        h_auc, d_auc = aurocs.get(category, (None, None))
        fpr, tpr = roc_curve(labels, hs)
        ax.plot(fpr, tpr, color=HOST_COLOUR, lw=2.2, label=f"host {_pts(h_auc)}", drawstyle="default")
        finite = np.isfinite(ds)
        if finite.all():
            fpr, tpr = roc_curve(labels, ds)
            ax.plot(fpr, tpr, color=DEVICE_COLOUR, lw=1.3, ls="--", label=f"device {_pts(d_auc)}")
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls=":")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        _label(ax, category, "false positive rate", "true positive rate")
        ax.legend(loc="lower right", fontsize=8, title="image AUROC", title_fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _save(plt, fig, path)


def plot_scatter(path: Path, bench: Benchmark, host: ScoredBenchmark, device: ScoredBenchmark, title: str) -> Path:
    data = list(_per_category(bench, host, device))
    plt, fig, axes = _grid(len(data))
    for ax, (category, labels, hs, ds) in zip(axes, data):
        finite = np.isfinite(ds)
        both = np.concatenate([hs, ds[finite]])
        lo, hi = float(both.min()), float(both.max())
        pad = (hi - lo) * 0.05 or 1e-3
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=0.8, ls=":", zorder=1)
        _scatter_classes(ax, hs, ds, labels, finite)
        if (~finite).any():
            ax.text(0.02, 0.98, f"{int((~finite).sum())} NaN/inf device scores", transform=ax.transAxes,
                    va="top", fontsize=7, color="#c92a2a")
        diff = np.abs(ds[finite] - hs[finite])
        ax.text(0.98, 0.02, f"max |Δ| {diff.max() if diff.size else float('nan'):.1e}", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="0.3")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        _label(ax, category, "host score", "device score")
        ax.legend(loc="upper left" if not (~finite).any() else "center left", fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _save(plt, fig, path)


def plot_difference(path: Path, bench: Benchmark, host: ScoredBenchmark, device: ScoredBenchmark, title: str) -> Path:
    """Device - host score against the host score: where the scatter's diagonal hides the error."""
    data = list(_per_category(bench, host, device))
    plt, fig, axes = _grid(len(data))
    for ax, (category, labels, hs, ds) in zip(axes, data):
        finite = np.isfinite(ds)
        delta = ds - hs
        ax.axhline(0.0, color="0.6", lw=0.8, ls=":", zorder=1)
        _scatter_classes(ax, hs, delta, labels, finite)
        _label(ax, category, "host score", "device - host score")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.legend(loc="best", fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _save(plt, fig, path)


def _scatter_classes(ax, x: np.ndarray, y: np.ndarray, labels: np.ndarray, finite: np.ndarray) -> None:
    """Normal images green, anomalous red; points with a non-finite device score left out."""
    for label, colour, name in ((0, "#2b8a3e", "normal"), (1, "#c92a2a", "anomalous")):
        sel = (labels == label) & finite
        ax.scatter(x[sel], y[sel], s=14, color=colour, alpha=0.75, label=name, edgecolors="none", zorder=2)


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_plots(folder: Path, bench: Benchmark, host: ScoredBenchmark, device: ScoredBenchmark,
                aurocs: dict[str, tuple[float | None, float | None]], subtitle: str) -> dict[str, str]:
    """Write ``roc.png`` and ``scatter.png`` into ``folder``; return {title: file name}."""
    roc = plot_roc(folder / "roc.png", bench, host, device, f"Image ROC, host vs device\n{subtitle}", aurocs)
    scatter = plot_scatter(folder / "scatter.png", bench, host, device, f"Image scores, host vs device\n{subtitle}")
    difference = plot_difference(folder / "difference.png", bench, host, device,
                                 f"Score difference, device - host\n{subtitle}")
    return {"Host vs device ROC per category": roc.name, "Host vs device image scores": scatter.name,
            "Score difference (device - host) vs host score": difference.name}
