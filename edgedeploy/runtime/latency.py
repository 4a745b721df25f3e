"""Inference latency from the times a runner recorded (``Runner.inference_times``), in one place.

The first ``WARMUP_IMAGES`` images are left out (lazy initialisation, caches, clocks ramping up);
what each time covers is the runner's to say (ONNX Runtime: ``session.run`` on the CPU; TensorRT:
``execute_async_v3`` plus the stream synchronisation). Decoding and pre-processing are never in it.
"""

from __future__ import annotations

import numpy as np

WARMUP_IMAGES = 1
KEYS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "images_per_s", "latency_images")


def latency_summary(seconds: list[float], warmup: int = WARMUP_IMAGES) -> dict[str, float] | None:
    """Median, p90, p99 and mean in ms, images/s and the count, over the images after the warm-up; None if none."""
    timed = np.asarray(seconds[warmup:], dtype=np.float64)
    if timed.size == 0:
        return None
    ms = 1000.0 * timed
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {"latency_ms_p50": round(float(p50), 3), "latency_ms_p90": round(float(p90), 3),
            "latency_ms_p99": round(float(p99), 3), "latency_ms_mean": round(mean, 3),
            "images_per_s": round(1000.0 / mean, 2) if mean > 0 else float("inf"), "latency_images": int(timed.size)}


def latency_line(summary: dict | None, what: str) -> str:
    if not summary:
        return f"latency: not measured ({what})"
    return (f"latency ({what}; {summary['latency_images']:g} images after {WARMUP_IMAGES} warm-up): median "
            f"{summary['latency_ms_p50']:.2f} ms, p90 {summary['latency_ms_p90']:.2f} ms, p99 "
            f"{summary['latency_ms_p99']:.2f} ms, mean {summary['latency_ms_mean']:.2f} ms, "
            f"{summary['images_per_s']:.1f} images/s")


def from_header(meta: dict[str, str]) -> dict[str, float] | None:
    """The latency a score file's header carries, or None."""
    if not all(k in meta for k in KEYS):
        return None
    try:
        return {k: float(meta[k]) for k in KEYS}
    except ValueError:
        return None
