"""Anomaly-detection metrics: exact, tie-correct and vectorised.

Image level: :func:`image_auroc`, :func:`image_ap`, :func:`f1_max`. Pixel level:
:func:`pixel_auroc`, :func:`aupro`. Reporting: :func:`evaluate_category` (points, x100),
:func:`mean_over_categories`, and :func:`rank_correlations` for host-vs-device agreement.
Invalid or degenerate input raises :class:`MetricInputError`, a ``ValueError``.
"""

from edgedeploy.evaluation.metrics._checks import MetricInputError
from edgedeploy.evaluation.metrics.image import f1_max, image_ap, image_auroc
from edgedeploy.evaluation.metrics.pixel import aupro, pixel_auroc
from edgedeploy.evaluation.metrics.summary import evaluate_category, mean_over_categories, rank_correlations

__all__ = [
    "MetricInputError",
    "aupro",
    "evaluate_category",
    "f1_max",
    "image_ap",
    "image_auroc",
    "mean_over_categories",
    "pixel_auroc",
    "rank_correlations",
]
