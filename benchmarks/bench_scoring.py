"""Host scoring speed: ONNX Runtime vs PyTorch eager on the same images, measured side by side.

Scores the same pre-processed images with the scorers ``edgedeploy fidelity`` runs: PyTorch FP32
eager (``TorchRunner``, the host reference), the bundle's graph under ONNX Runtime FP32
(``graph_runner``) and its FP16 emulation (``fp16_emulation_runner``); then a re-run served from the
score cache. Rounds alternate the runners, so a busy machine slows them alike; the best round of
each is reported, and the ratio ONNX Runtime / PyTorch (target >= 2x on the full 512 model).
PyTorch runs with glibc's stock malloc first; then both runners again with the malloc thresholds
``edgedeploy.host.hostmem`` sets for fidelity and train (process-wide, hence measured second).

    python benchmarks/bench_scoring.py                 # full TinyViT-21M-512, 8 demo images, 2 rounds
    python benchmarks/bench_scoring.py --quick         # small TinyViT-5M-224 recipe, a smoke run
    python benchmarks/bench_scoring.py --images 16 --rounds 3 --batch-size 1

The graph is made (or reused) with the stage cache under ``--out`` (default ``out``), as
``edgedeploy fidelity`` does; the model is the recipe's built-in default checkpoint when it has one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from edgedeploy.evaluation.data import Benchmark, load_batch, load_benchmark  # noqa: E402
from edgedeploy.runtime.cache import ScoreCache  # noqa: E402
from edgedeploy.host.runners import TorchRunner, fp16_emulation_runner, graph_runner
from edgedeploy.runtime.batch import score_benchmark  # noqa: E402
from edgedeploy.evaluation.fidelity.bundle_graph import prepare_graph  # noqa: E402
from edgedeploy.host.hostmem import keep_freed_memory  # noqa: E402
from edgedeploy.core.profiles import load_profile  # noqa: E402
from edgedeploy.core.model_recipes import DEFAULT_RECIPE, load_recipe  # noqa: E402

SMALL_RECIPE = "edgezsad-tinyvit5m-224"
TUNED_TORCH = "PyTorch eager FP32, hostmem"
TUNED_ORT = "ONNX Runtime FP32, hostmem"


def timed(scorer, images: np.ndarray) -> tuple[float, np.ndarray]:
    """Seconds to score ``images`` in the scorer's batches, and the scores."""
    start = time.perf_counter()
    scores = []
    for begin in range(0, len(images), scorer.batch_size):
        scores.append(scorer.infer(images[begin:begin + scorer.batch_size])[0])
    return time.perf_counter() - start, np.concatenate(scores)


def alternate_rounds(runners, images: np.ndarray, rounds: int, best: dict[str, float],
                     outputs: dict[str, np.ndarray]) -> None:
    """Time every runner once per round, in turn; keep each one's best time and last scores."""
    for round_no in range(1, rounds + 1):
        for name, scorer in runners:
            seconds, outputs[name] = timed(scorer, images)
            best[name] = min(best.get(name, float("inf")), seconds)
            print(f"round {round_no}: {name:<28} {len(images) / seconds:6.2f} images/s "
                  f"({seconds / len(images):.3f} s/image)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small recipe {SMALL_RECIPE} instead of the full model")
    parser.add_argument("--recipe", default=None, help=f"recipe (default {DEFAULT_RECIPE})")
    parser.add_argument("--images", type=int, default=8, help="demo images scored per round (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept (default 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="PyTorch batch size (default 4, as fidelity)")
    parser.add_argument("--target", default="jetson-orin-nano")
    parser.add_argument("--out", type=Path, default=Path("out"), help="build folder (default out)")
    args = parser.parse_args(argv)

    recipe = load_recipe(args.recipe or (SMALL_RECIPE if args.quick else DEFAULT_RECIPE))
    start = time.perf_counter()
    graph = prepare_graph(recipe, load_profile(args.target), args.out, None, log=print)
    model, model_sha, ckpt = graph.model_path, graph.model_sha256, graph.checkpoint
    print(f"model: {recipe.name} ({recipe.model.backbone}, {recipe.model.input_size}px), {ckpt.description}; "
          f"graph {model_sha[:16]} ready in {time.perf_counter() - start:.1f}s; {os.cpu_count()} CPUs")

    demo = load_benchmark("demo")
    samples = demo.samples[:: max(1, len(demo.samples) // args.images)][: args.images]
    images = load_batch([s.path for s in samples], recipe.model.input_size)
    # stock glibc malloc first (the baseline a user's own PyTorch loop gets); the thresholds
    # edgedeploy.host.hostmem sets for fidelity and train are process-wide, so they are measured after
    torch_scorer = TorchRunner(recipe, ckpt.path, ckpt.sha256, model_sha, batch_size=args.batch_size,
                               tune_malloc=False)
    ort_scorer = graph_runner(model, recipe, ckpt.sha256, model_sha256=model_sha)
    fp16_scorer = fp16_emulation_runner(model, recipe, ckpt.sha256, model_sha256=model_sha)
    runners = [("PyTorch eager FP32", torch_scorer), ("ONNX Runtime FP32", ort_scorer),
               ("ONNX Runtime FP16 emulation", fp16_scorer)]
    for _, scorer in runners:  # warm-up: model build, session creation, first-run allocations
        scorer.infer(images[:1])

    best: dict[str, float] = {}
    outputs: dict[str, np.ndarray] = {}
    alternate_rounds(runners, images, args.rounds, best, outputs)
    tuned = keep_freed_memory()
    if tuned:
        tuned_runners = [(TUNED_TORCH, torch_scorer), (TUNED_ORT, ort_scorer)]
        alternate_rounds(tuned_runners, images, args.rounds, best, outputs)
        runners += tuned_runners

    # a re-run: every image served from the score cache
    with tempfile.TemporaryDirectory() as tmp:
        subset = Benchmark(demo.name, demo.root, tuple(samples))
        cache = ScoreCache(ort_scorer.identity(), Path(tmp))
        score_benchmark(ort_scorer, subset, cache, progress=False)
        start = time.perf_counter()
        again = score_benchmark(ort_scorer, subset, ScoreCache(ort_scorer.identity(), Path(tmp)), progress=False)
        cached_seconds = time.perf_counter() - start
        assert again.computed == 0

    n = len(images)
    print(f"\n{'runner (same ' + str(n) + ' images, best of ' + str(args.rounds) + ')':<40}{'images/s':>10}{'s/image':>10}")
    for name, _ in runners:
        print(f"{name:<40}{n / best[name]:>10.2f}{best[name] / n:>10.3f}")
    print(f"{'score cache re-run':<40}{n / cached_seconds:>10.1f}{cached_seconds / n:>10.4f}")
    ratio = best["PyTorch eager FP32"] / best["ONNX Runtime FP32"]
    emu = best["ONNX Runtime FP16 emulation"] / best["ONNX Runtime FP32"]
    agree = float(np.max(np.abs(outputs["ONNX Runtime FP32"] - outputs["PyTorch eager FP32"])))
    print(f"\nspeed ratio ONNX Runtime / PyTorch eager: {ratio:.2f}x (target >= 2x on the full 512 model)")
    if tuned:
        print(f"with edgedeploy.host.hostmem's malloc thresholds (as fidelity runs): PyTorch eager "
              f"{best['PyTorch eager FP32'] / best[TUNED_TORCH]:.2f}x faster than stock, ONNX Runtime / PyTorch "
              f"{best[TUNED_TORCH] / best[TUNED_ORT]:.2f}x")
    print(f"FP16 emulation costs {emu:.2f}x the FP32 ONNX Runtime time")
    print(f"max |score ORT - score PyTorch| on these images: {agree:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
