"""Wall time and peak memory of a cold and a warm `edgedeploy build`, side by side in one run.

    python benchmarks/bench_build.py [--target rb5-gen2] [--recipe edgezsad-tinyvit21m-512]

Each build runs in its own process (so peak RSS is that build's own); the warm build reuses the
cold build's output folder, which is what a user's second run does.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_build(target: str, recipe: str, out: str) -> None:
    sys.path.insert(0, str(ROOT))
    from edgedeploy.host.pipeline import build
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.core.model_recipes import load_recipe

    start = time.perf_counter()
    result = build(load_recipe(recipe), load_profile(target), Path(out), log=lambda line: None)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "passed": result.audit.passed,
                      "cached": [s.cached for s in result.stages]}))


def measure(target: str, recipe: str, out: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--one", "--target", target, "--recipe", recipe, "--out", out],
                          capture_output=True, text=True, check=True)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    stats["process_seconds"] = time.perf_counter() - start
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="rb5-gen2")
    parser.add_argument("--recipe", default="edgezsad-tinyvit21m-512")
    parser.add_argument("--out")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_build(args.target, args.recipe, args.out)
        return
    with tempfile.TemporaryDirectory() as out:
        cold = measure(args.target, args.recipe, out)
        warm = measure(args.target, args.recipe, out)
    print(f"build {args.recipe} for {args.target}")
    print(f"{'':6s} {'build s':>9s} {'process s':>10s} {'peak MiB':>9s}  stages reused")
    for name, stats in (("cold", cold), ("warm", warm)):
        print(f"{name:6s} {stats['seconds']:9.2f} {stats['process_seconds']:10.2f} {stats['peak_mib']:9.0f}  {stats['cached']}")
    print(f"warm / cold wall time: {warm['process_seconds'] / cold['process_seconds']:.3f} "
          f"(cold is {cold['process_seconds'] / warm['process_seconds']:.1f}x slower)")


if __name__ == "__main__":
    main()
