"""Benchmarks and the shared image pre-processing.

Public API::

    Sample, Benchmark, BENCHMARK_NAMES, load_benchmark, read_visa_split
    load_image, load_batch, load_mask            (edgedeploy.evaluation.data.preprocess)
    ensure_demo, demo_cache_dir                  (edgedeploy.evaluation.data.demo)

No torch here: the device side runs this with numpy and Pillow only.
"""

from edgedeploy.evaluation.data.benchmarks import (
    BENCHMARK_NAMES,
    IMAGE_EXTENSIONS,
    Benchmark,
    Sample,
    data_root_env_var,
    load_benchmark,
    parse_categories,
)
from edgedeploy.evaluation.data.demo import demo_cache_dir, ensure_demo
from edgedeploy.evaluation.data.preprocess import load_batch, load_image, load_mask
from edgedeploy.evaluation.data.splitfiles import read_visa_split

__all__ = [
    "BENCHMARK_NAMES",
    "IMAGE_EXTENSIONS",
    "Benchmark",
    "Sample",
    "data_root_env_var",
    "demo_cache_dir",
    "ensure_demo",
    "load_batch",
    "load_benchmark",
    "load_image",
    "load_mask",
    "parse_categories",
    "read_visa_split",
]
