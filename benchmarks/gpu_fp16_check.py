"""Is the FP16 emulation a fair stand-in for real FP16? One prepared check for a machine with a CUDA GPU.

Scores the demo benchmark (or ``--categories`` of it) three ways, in one process:

* the host reference, PyTorch FP32 on the GPU (TF32 off);
* the FP16 emulation ``edgedeploy fidelity`` uses by default (the bundle's graph with every activation
  rounded to FP16, ONNX Runtime on the CPU);
* real FP16 arithmetic, the model ``.half()`` on the GPU (tensor-core kernels: ``--device torch-fp16``);

and prints, for the emulation and for real FP16 each against the host: Spearman, max and 99th-percentile
|Δs|, the raw image-AUROC drift per category and its mean, the near-tie bound, and the near-ties and
real reorderings the gate counts; then the agreement of the emulation with real FP16.

    python benchmarks/gpu_fp16_check.py                        # full TinyViT-21M-512 default, 144 images
    python benchmarks/gpu_fp16_check.py --recipe edgezsad-tinyvit5m-224 --categories brick

Without a CUDA GPU it refuses in one line (exit 2).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _scores(scored, bench) -> np.ndarray:
    rows = scored.table.by_path()
    return np.array([rows[s.rel_path].score for s in bench.samples], dtype=np.float64)


def _line(name: str, report, host: np.ndarray, device: np.ndarray) -> str:
    from scipy import stats

    diff = np.abs(device - host)
    drifts = ", ".join(f"{c.category} {c.drift:+.3f}" for c in report.defined if c.drift is not None)
    return (f"{name:<22} spearman {stats.spearmanr(host, device).statistic:.5f}  max|Δs| {diff.max():.2e}  "
            f"p99|Δs| {np.percentile(diff, 99):.2e}  drift mean {report.mean['drift']:+.3f} ({drifts})  "
            f"FP16 error model eps {report.epsilon:.2e}: {report.mean['near_ties']} near-ties, "
            f"{report.mean['reorderings']} real reorderings  -> {report.verdict().split(':')[0]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=None, help="model recipe (default edgezsad-tinyvit21m-512)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the built-in default)")
    parser.add_argument("--categories", default=None, help="demo categories, comma-separated (default: all three)")
    parser.add_argument("--out", type=Path, default=None, help="build folder for the stage cache (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    from edgedeploy.core.errors import EdgeDeployError
    from edgedeploy.host.gpu import gpu_name, require_cuda

    try:
        require_cuda("benchmarks/gpu_fp16_check.py")
    except EdgeDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from edgedeploy.evaluation.data import load_benchmark
    from edgedeploy.evaluation.fidelity.bundle_graph import prepare_graph
    from edgedeploy.evaluation.fidelity.compare import compare
    from edgedeploy.host.runners import TorchRunner, fp16_emulation_runner
    from edgedeploy.runtime.batch import score_benchmark
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.core.model_recipes import DEFAULT_RECIPE, load_recipe

    recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-fp16-check-"))
    graph = prepare_graph(recipe, load_profile("jetson-orin-nano"), out, args.checkpoint, _log)
    categories = args.categories.split(",") if args.categories else None
    bench = load_benchmark("demo", None, categories)
    ckpt = graph.checkpoint
    _log(f"GPU {gpu_name()}; model {recipe.name}, {ckpt.description}; {len(bench)} demo images")
    torch_args = (recipe, ckpt.path, ckpt.sha256 or "seeded", graph.model_sha256)
    runners = {
        "host FP32 (CUDA)": TorchRunner(*torch_args, batch_size=args.batch_size, device="cuda"),
        "FP16 emulation": fp16_emulation_runner(graph.model_path, recipe, ckpt.sha256 or "seeded",
                                                model_sha256=graph.model_sha256),
        "real FP16 (CUDA)": TorchRunner(*torch_args, batch_size=args.batch_size, device="cuda", half=True),
    }
    scored = {}
    for name, scorer in runners.items():
        scored[name] = score_benchmark(scorer, bench, progress=False)
        _log(scored[name].summary())
    host_name = "host FP32 (CUDA)"
    host = _scores(scored[host_name], bench)
    print(f"against {host_name} on {gpu_name()}, {len(bench)} images:")
    for name in ("FP16 emulation", "real FP16 (CUDA)"):
        report = compare(scored[host_name], scored[name], bench, max_drift=0.2, top=0)
        print(_line(name, report, host, _scores(scored[name], bench)))
    emulated, real = _scores(scored["FP16 emulation"], bench), _scores(scored["real FP16 (CUDA)"], bench)
    from scipy import stats

    print(f"emulation vs real FP16: spearman {stats.spearmanr(emulated, real).statistic:.5f}, "
          f"max|Δs| {np.abs(emulated - real).max():.2e}; mean |Δs| against the host: emulation "
          f"{np.abs(emulated - host).mean():.2e}, real FP16 {np.abs(real - host).mean():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
