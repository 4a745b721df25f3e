"""Is the FP16 emulation a fair stand-in for real FP16? Checked against Qualcomm's QNN HTP arithmetic.

Scores demo images three ways, in one process, on the rb5-gen2 bundle's graph (the graph the RB5 Gen2 runs):

* the host reference: ONNX Runtime FP32 on the CPU;
* the FP16 emulation ``edgedeploy fidelity`` uses by default (every activation rounded to FP16, FP32 arithmetic);
* the QNN HTP backend in FP16 (``onnxruntime-qnn``; on an x86_64 host, Qualcomm's arithmetic emulated on the CPU);

and prints, for the emulation and for the HTP each against the host: Spearman, max and 99th-percentile |Δscore|,
max and 99th-percentile |Δmap| (raw maps, model resolution), the raw image-AUROC drift (mean over categories), the
99th-percentile relative error the gate's FP16 error model sees, the near-ties and real reorderings and the gate's
verdict (gate drift, the near-ties' signed sum, the rule that decided); then how the two errors relate (ratio,
correlation, sign).

    python benchmarks/qnn_fp16_check.py --recipe edgezsad-tinyvit5m-224           # every demo image, small recipe
    python benchmarks/qnn_fp16_check.py --limit 2                                  # a few full-size images

Scores are cached (``$EDGEDEPLOY_CACHE/scores``), so an interrupted run resumes. Without onnxruntime-qnn it refuses
in one line (exit 2).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _scores(scored, bench) -> np.ndarray:
    rows = scored.table.by_path()
    return np.array([rows[s.rel_path].score for s in bench.samples], dtype=np.float64)


def _map_diffs(host, device, bench) -> np.ndarray:
    """Every pixel's |Δ| of the raw anomaly maps, all images together."""
    return np.concatenate([np.abs(np.asarray(device.maps[s.rel_path], np.float64)
                                  - np.asarray(host.maps[s.rel_path], np.float64)).ravel() for s in bench.samples])


def _line(name: str, report, host: np.ndarray, device: np.ndarray, maps: np.ndarray) -> str:
    from scipy import stats

    diff = np.abs(device - host)
    return (f"{name:<16} spearman {stats.spearmanr(host, device).statistic:.5f}  max|Δs| {diff.max():.2e}  "
            f"p99|Δs| {np.percentile(diff, 99):.2e}  max|Δmap| {maps.max():.2e}  p99|Δmap| {np.percentile(maps, 99):.2e}  "
            f"drift {report.mean['drift']:+.3f}  p99 rel. error {report.error_p99:.2e} (eps {report.epsilon:.2e})  "
            f"{report.mean['near_ties']} near-ties (signed {report.mean['near_tie_drift']:+.3f}"
            f"{', one-sided' if report.mean['near_tie_one_sided'] else ''}), {report.mean['reorderings']} reorderings "
            f"({report.mean['reordering_gross']:.3f}), {report.mean['resolution_ties']} resolution ties, gate drift "
            f"{report.gate_value:.3f} -> {report.verdict().split(':')[0]} ({report.decided_by})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=None, help="model recipe (default edgezsad-tinyvit21m-512)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the built-in default)")
    parser.add_argument("--categories", default=None, help="demo categories, comma-separated (default: all three)")
    parser.add_argument("--limit", type=int, default=0, help="at most N images per category (default 0: all)")
    parser.add_argument("--out", type=Path, default=None, help="build folder for the stage cache (default: a temp dir)")
    args = parser.parse_args(argv)

    from edgedeploy.core.errors import EdgeDeployError
    from edgedeploy.runtime.qnn import import_qnn, machine, versions

    try:
        import_qnn("benchmarks/qnn_fp16_check.py")
    except EdgeDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from edgedeploy.core.model_recipes import DEFAULT_RECIPE, load_recipe
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.evaluation.data import load_benchmark
    from edgedeploy.evaluation.data.subset import select
    from edgedeploy.evaluation.fidelity.bundle_graph import prepare_graph
    from edgedeploy.evaluation.fidelity.compare import compare
    from edgedeploy.host.runners import fp16_emulation_runner, graph_runner, qnn_htp_runner
    from edgedeploy.runtime.batch import score_benchmark
    from edgedeploy.runtime.cache import ScoreCache

    recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
    profile = load_profile("rb5-gen2")
    out = args.out or Path(tempfile.mkdtemp(prefix="qnn-fp16-check-"))
    graph = prepare_graph(recipe, profile, out, args.checkpoint, _log)
    bench = select(load_benchmark("demo", None, args.categories.split(",") if args.categories else None), args.limit)
    ckpt = graph.checkpoint.sha256 or "seeded"
    v = versions()
    _log(f"model {recipe.name}, {graph.checkpoint.description}; rb5-gen2 graph {graph.model_sha256[:16]}; "
         f"{len(bench)} demo images; onnxruntime-qnn {v['onnxruntime_qnn']} (QNN SDK {v['qnn_sdk']}) on {machine()}")
    runners = {
        "host FP32": graph_runner(graph.model_path, recipe, ckpt, model_sha256=graph.model_sha256),
        "FP16 emulation": fp16_emulation_runner(graph.model_path, recipe, ckpt, model_sha256=graph.model_sha256),
        "QNN HTP FP16": qnn_htp_runner(graph.model_path, recipe, ckpt, profile, model_sha256=graph.model_sha256),
    }
    scored, seconds = {}, {}
    for name, runner in runners.items():
        start = time.perf_counter()
        scored[name] = score_benchmark(runner, bench, ScoreCache(runner.identity()), progress=False)
        seconds[name] = time.perf_counter() - start
        _log(scored[name].summary())
    host = _scores(scored["host FP32"], bench)
    print(f"against ONNX Runtime FP32 on the rb5-gen2 graph of {recipe.name}, {len(bench)} demo images "
          f"({', '.join(bench.categories)}):")
    errors = {}
    for name in ("FP16 emulation", "QNN HTP FP16"):
        device = _scores(scored[name], bench)
        report = compare(scored["host FP32"], scored[name], bench, max_drift=0.2, top=0)
        print(_line(name, report, host, device, _map_diffs(scored["host FP32"], scored[name], bench)))
        errors[name] = device - host
    emulation, htp = errors["FP16 emulation"], errors["QNN HTP FP16"]
    ratio = np.abs(htp).mean() / max(np.abs(emulation).mean(), 1e-30)
    above = np.count_nonzero(htp > 0)
    print(f"QNN HTP error / emulation error: mean |Δs| ratio {ratio:.1f}x, max ratio "
          f"{np.abs(htp).max() / max(np.abs(emulation).max(), 1e-30):.1f}x; correlation of the two errors "
          f"{np.corrcoef(emulation, htp)[0, 1]:.2f}; HTP above the host on {above} of {len(htp)} images")
    for name in runners:
        done = scored[name].computed
        print(f"time {name}: " + (f"{seconds[name] / done:.2f} s per image ({done} scored)" if done
                                  else f"all {len(bench)} images from the score cache (not timed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
