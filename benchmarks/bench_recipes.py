"""The recipes side by side: graph size, and ONNX Runtime CPU time per image of each exported graph,
as a ratio to the built-in default's, measured in one run on the same images.

    python benchmarks/bench_recipes.py [--recipes A,B,...] [--images 6] [--threads 2] [--out DIR]

Each recipe's graph is built (or reused) under OUT/<recipe>/.stages with its shipped heads; each is
timed on the same demo test images after one warm-up run, in rounds (A B C, A B C, ...) so that load
from other work on the machine falls on every recipe alike. This is the host's CPU, not a device's
speed: the ratio says how much more or less work one recipe's graph is than another's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

DEFAULT_RECIPES = ("edgezsad-tinyvit21m-512", "edgezsad-efficientnet-lite0-512", "edgezsad-litemedsam-tinyvit5m-256",
                   "edgezsad-tinyvit5m-224")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/bench-recipes"))
    args = parser.parse_args()

    import numpy as np
    import onnx
    import onnxruntime as ort

    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.evaluation.data.benchmarks import load_benchmark
    from edgedeploy.evaluation.data.preprocess import load_image
    from edgedeploy.host.pipeline import build_graph

    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    samples = list(load_benchmark("demo", None, None, "test").samples)[:: max(1, 144 // args.images)][:args.images]
    sessions, inputs, sizes = {}, {}, {}
    for name in names:
        recipe = load_recipe(name)
        graph = build_graph(recipe, args.out / name, log=lambda line: None)
        model = onnx.load(str(graph.model_path), load_external_data=False)
        sizes[name] = (len(model.graph.node), graph.model_path.stat().st_size / 2**20)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions[name] = ort.InferenceSession(str(graph.model_path), options, providers=["CPUExecutionProvider"])
        side = recipe.model.input_size
        inputs[name] = [load_image(s.path, side)[None] for s in samples]
        sessions[name].run(None, {recipe.input_name: inputs[name][0]})  # warm-up
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            feed = load_recipe(name).input_name
            for x in inputs[name]:
                start = time.perf_counter()
                sessions[name].run(None, {feed: x})
                seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds[names[0]])
    print(f"ONNX Runtime {ort.__version__} CPU, {args.threads} threads, {len(samples)} demo images x {args.rounds} rounds, "
          f"interleaved; ratio = median / {names[0]}'s median")
    print(f"{'recipe':36s} {'nodes':>6s} {'MiB':>6s} {'ms/image':>9s} {'ratio':>6s}")
    for name in names:
        median = statistics.median(seconds[name])
        print(f"{name:36s} {sizes[name][0]:6d} {sizes[name][1]:6.1f} {1000 * median:9.1f} {median / base:6.2f}")
    assert np.isfinite(base)


if __name__ == "__main__":
    main()
