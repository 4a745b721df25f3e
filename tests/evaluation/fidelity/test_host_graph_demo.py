"""The host's optimised graph (edgedeploy.host.fastgraph) against the shipped graph on real demo images."""

from __future__ import annotations

import numpy as np

from edgedeploy.host.fastgraph import HOST_GRAPH_VERSION
from edgedeploy.host.runners import graph_runner


def test_optimised_runner_matches_the_shipped_graph_on_demo_images(small_model, small_recipe):
    """The host copy of the small recipe's graph against the graph itself on real demo images: within the
    recipe's tolerance, another cache identity, the same model hash in the score file."""
    from edgedeploy.evaluation.data import load_batch, load_benchmark

    demo = load_benchmark("demo")
    images = load_batch([s.path for s in demo.samples[::24]], small_recipe.model.input_size)
    plain = graph_runner(small_model, small_recipe, "seeded")
    fast = graph_runner(small_model, small_recipe, "seeded", optimised=True)
    (s0, m0), (s1, m1) = plain.infer(images), fast.infer(images)
    assert np.max(np.abs(s1 - s0)) <= small_recipe.tolerance and np.max(np.abs(m1 - m0)) <= small_recipe.tolerance
    assert fast.identity() != plain.identity() and fast.model_sha256 == plain.model_sha256
    assert fast.meta()["host_graph"] == HOST_GRAPH_VERSION and "host_graph_max_abs_diff_score" in fast.meta()
