"""Pixel-metric benchmark on an MVTec-AD-sized synthetic test split.

Times ``edgedeploy.evaluation.metrics.pixel_auroc`` against ``sklearn.metrics.roc_auc_score`` on the same
flattened pixels (and checks they agree to 1e-9), and times ``aupro`` alone.

    python benchmarks/bench_metrics.py            # 1,725 maps of 256x256 (~113M pixels)
    python benchmarks/bench_metrics.py --quick    # 200 maps, a smoke run

Each measurement runs in a forked child, so its peak-RSS growth over the already-loaded data
is its own ("peak extra MiB"); where fork is unavailable only times are reported.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from edgedeploy.evaluation.metrics import aupro, pixel_auroc  # noqa: E402

NORMAL_SHARE = 0.27


def synthetic_split(n_maps: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks with 1-4 elliptic blobs on ~73% of images; float32 maps = noise + blob signal.

    The maps are floored at their 20th percentile so a large tie group exists, as with
    ReLU-style or clipped anomaly maps.
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_maps, size, size), dtype=bool)
    maps = rng.standard_normal((n_maps, size, size), dtype=np.float32)
    maps *= 0.5
    rows, cols = np.ogrid[:size, :size]
    anomalous = rng.permutation(n_maps)[int(round(NORMAL_SHARE * n_maps)) :]
    for i in anomalous:
        for _ in range(rng.integers(1, 5)):
            r0, c0 = rng.integers(0, size, 2)
            ry, rx = rng.integers(max(2, size // 64), max(3, size // 10), 2)
            blob = ((rows - r0) / ry) ** 2 + ((cols - c0) / rx) ** 2 <= 1.0
            masks[i] |= blob
            maps[i][blob] += np.float32(rng.uniform(0.3, 1.5))
    np.maximum(maps, np.percentile(maps[::7], 20).astype(np.float32), out=maps)
    return masks, maps


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(fn, *args):
    """(value, seconds, peak extra MiB or None), running ``fn`` in a forked child if possible."""
    if not hasattr(os, "fork"):
        start = time.perf_counter()
        value = fn(*args)
        return value, time.perf_counter() - start, None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            before = _peak_mib()
            start = time.perf_counter()
            value = fn(*args)
            result = (value, time.perf_counter() - start, _peak_mib() - before)
        except BaseException as exc:  # reported by the parent
            result = exc
        with os.fdopen(write_end, "wb") as pipe:
            pickle.dump(result, pipe)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result = pickle.load(pipe)
    os.waitpid(pid, 0)
    if isinstance(result, BaseException):
        raise result
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 maps instead of 1,725")
    parser.add_argument("--size", type=int, default=256, help="map side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_maps = 200 if args.quick else 1725

    start = time.perf_counter()
    masks, maps = synthetic_split(n_maps, args.size, args.seed)
    print(
        f"data: {n_maps} maps {args.size}x{args.size} float32, {masks.size / 1e6:.1f}M pixels, "
        f"{masks.mean() * 100:.2f}% anomalous pixels, "
        f"{int((~masks.any(axis=(1, 2))).sum())} normal images, "
        f"built in {time.perf_counter() - start:.1f}s"
    )

    ours, t_ours, m_ours = measure(pixel_auroc, masks, maps)
    ref, t_ref, m_ref = measure(roc_auc_score, masks.ravel(), maps.ravel())
    pro, t_pro, m_pro = measure(aupro, masks, maps)

    def mib(m):
        return "n/a" if m is None else f"{m:.0f}"

    print(f"\n{'what':<36}{'value':>14}{'seconds':>10}{'peak extra MiB':>16}")
    print(f"{'edgedeploy pixel_auroc':<36}{ours:>14.10f}{t_ours:>10.2f}{mib(m_ours):>16}")
    print(f"{'sklearn roc_auc_score (flattened)':<36}{ref:>14.10f}{t_ref:>10.2f}{mib(m_ref):>16}")
    print(f"{'edgedeploy aupro (fpr <= 0.3)':<36}{pro:>14.10f}{t_pro:>10.2f}{mib(m_pro):>16}")
    ratio = t_ref / t_ours
    agree = abs(ours - ref) <= 1e-9
    print(f"\nspeed ratio sklearn / ours (pixel AUROC): {ratio:.1f}x (target >= 5x)")
    print(f"values agree to 1e-9: {'yes' if agree else 'NO'} (|diff| = {abs(ours - ref):.2e})")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
