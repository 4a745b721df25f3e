"""Inference latency from the times a runner recorded (``Runner.inference_times``), in one place.

The first ``WARMUP_IMAGES`` images are left out (lazy initialisation, caches, clocks ramping up);
what each time covers is the runner's to say (ONNX Runtime: ``session.run`` on the CPU; TensorRT:
``execute_async_v3`` plus the stream synchronisation). Decoding and pre-processing are never in it.

Standard library only: a copy travels in the Jetson bundle beside ``engine_metadata.py``, which
summarises trtexec's exported times with it where edgedeploy may not be installed.
"""

from __future__ import annotations

import statistics

WARMUP_IMAGES = 1
KEYS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "images_per_s", "latency_images")
REFERENCE_KEYS = ("reference_latency_ms", "reference_latency_source")  # the paper's figure, in a score header
# The model a profile's reference_latency (the paper's figure) was measured with: EdgeZSAD, TinyViT-21M-512 +
# EdgeGLR at 512x512. Beside any other model (the 224 small recipe, an --onnx model) it compares nothing.
PAPER_RECIPE = "edgezsad-tinyvit21m-512"
PAPER_INPUT_SIZE = 512


def _percentiles(values: list[float], points: tuple[int, ...]) -> list[float]:
    """Linearly interpolated percentiles (numpy's default method)."""
    if len(values) == 1:
        return [values[0]] * len(points)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return [cuts[p - 1] for p in points]


def latency_summary(seconds: list[float], warmup: int = WARMUP_IMAGES) -> dict[str, float] | None:
    """Median, p90, p99 and mean in ms, images/s and the count, over the images after the warm-up; None if none."""
    ms = [1000.0 * float(s) for s in seconds[warmup:]]
    if not ms:
        return None
    p50, p90, p99 = _percentiles(ms, (50, 90, 99))
    mean = statistics.fmean(ms)
    return {"latency_ms_p50": round(p50, 3), "latency_ms_p90": round(p90, 3), "latency_ms_p99": round(p99, 3),
            "latency_ms_mean": round(mean, 3), "images_per_s": round(1000.0 / mean, 2) if mean > 0 else float("inf"),
            "latency_images": len(ms)}


def latency_line(summary: dict | None, what: str, after: str = f"after {WARMUP_IMAGES} warm-up") -> str:
    if not summary:
        return f"latency: not measured ({what})"
    return (f"latency ({what}; {summary['latency_images']:g} images {after}): median "
            f"{summary['latency_ms_p50']:.2f} ms, p90 {summary['latency_ms_p90']:.2f} ms, p99 "
            f"{summary['latency_ms_p99']:.2f} ms, mean {summary['latency_ms_mean']:.2f} ms, "
            f"{summary['images_per_s']:.1f} images/s")


def is_paper_model(recipe: str | None, input_size: int | str | None) -> bool:
    """Whether the paper's latency may stand beside ours: the model is the paper's (recipe ``PAPER_RECIPE``, a
    manifest's or score header's recipe name) fed ``PAPER_INPUT_SIZE`` images. The one rule every place that shows
    a profile's ``reference_latency`` follows (``edgedeploy score``, its header, fidelity, bench_engine.sh)."""
    try:
        return recipe == PAPER_RECIPE and int(input_size) == PAPER_INPUT_SIZE
    except (TypeError, ValueError):
        return False


def manifest_is_paper_model(manifest: dict | None) -> bool:
    """:func:`is_paper_model` for a bundle's manifest.json: its recipe's name and the input size its card feeds
    (an ``--onnx`` model's recipe is ``onnx-<file>``, never the paper's)."""
    manifest = manifest or {}
    recipe = manifest.get("recipe") or {}
    card = (manifest.get("model") or {}).get("card") or {}
    return is_paper_model(recipe.get("name"), card.get("input_size", recipe.get("input_size")))


def reference_line(reference: dict | None, device: str) -> str:
    """The paper's latency for the device (a profile's ``reference_latency``), labelled as such, or ''."""
    if not reference or reference.get("ms") is None:
        return ""
    return (f"reference, the paper's figure, not measured here: {float(reference['ms']):g} ms per image on {device} "
            f"({reference.get('source', 'no source given')})")


def header_reference(reference: dict | None) -> dict[str, str]:
    """The score-file header fields that carry the paper's figure beside the measured latency."""
    if not reference or reference.get("ms") is None:
        return {}
    return {"reference_latency_ms": f"{float(reference['ms']):g}",
            "reference_latency_source": str(reference.get("source", ""))}


def from_header(meta: dict[str, str]) -> dict | None:
    """The latency a score file's header carries (with the paper's reference figure when recorded for the paper's
    model: an older file may carry it beside another model's), or None."""
    if not all(k in meta for k in KEYS):
        return None
    try:
        summary: dict = {k: float(meta[k]) for k in KEYS}
        if meta.get("reference_latency_ms") and is_paper_model(meta.get("recipe"), meta.get("image_size")):
            summary["reference"] = {"ms": float(meta["reference_latency_ms"]),
                                    "source": meta.get("reference_latency_source", "")}
    except ValueError:
        return None
    return summary
