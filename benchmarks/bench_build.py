"""Wall time, CPU time and peak memory of a cold and a warm `edgedeploy build`, and where the cold one spends it.

    python benchmarks/bench_build.py [--target rb5-gen2] [--recipe edgezsad-tinyvit21m-512]

Each build runs in its own process (so peak RSS and CPU time are that build's own); the warm build
reuses the cold build's output folder, which is what a user's second run does. The cold build's
breakdown times the pipeline's own steps (imports, model construction, the PyTorch reference, the
ONNX trace, each ONNX Runtime verification, onnxsim, the audit) by wrapping them in that process.
CPU time (user + system) is printed beside wall time: on a machine shared with other work the
wall time of the same build moves a lot, its CPU time much less.
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


# (module, attribute, label): the steps of a cold build, timed where they are called
STEPS = (("edgedeploy.host.model", "build_model", "model construction (timm + seeded weights + checkpoint)"),
         ("edgedeploy.host.export", "torch_outputs", "PyTorch reference on the verification photos"),
         ("torch.onnx", "export", "torch.onnx.export (trace)"),
         ("edgedeploy.host.export", "run_onnx", "ONNX Runtime verification (export and simplify)"),
         ("onnxsim", "simplify", "onnxsim"),
         ("edgedeploy.host.pipeline", "audit_onnx", "audit"))


def _time_steps() -> dict[str, float]:
    """Wrap each step of STEPS so that its seconds add up in the returned dict (imports happen here)."""
    import functools
    import importlib

    spent: dict[str, float] = {}
    for module_name, attribute, label in STEPS:
        module = importlib.import_module(module_name)
        original = getattr(module, attribute)

        @functools.wraps(original)
        def timed(*args, _original=original, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - start

        setattr(module, attribute, timed)
    return spent


def one_build(target: str, recipe: str, out: str, breakdown: bool) -> None:
    start = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from edgedeploy.host.pipeline import build
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.core.model_recipes import load_recipe

    spent = _time_steps() if breakdown else {}
    imports = time.perf_counter() - start
    start = time.perf_counter()
    result = build(load_recipe(recipe), load_profile(target), Path(out), log=lambda line: None)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "imports": imports, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_mib": usage.ru_maxrss / 1024, "passed": result.audit.passed,
                      "cached": [s.cached for s in result.stages], "steps": spent}))


def measure(target: str, recipe: str, out: str, breakdown: bool = False) -> dict:
    start = time.perf_counter()
    command = [sys.executable, __file__, "--one", "--target", target, "--recipe", recipe, "--out", out]
    proc = subprocess.run(command + (["--breakdown"] if breakdown else []), capture_output=True, text=True, check=True)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    stats["process_seconds"] = time.perf_counter() - start
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="rb5-gen2")
    parser.add_argument("--recipe", default="edgezsad-tinyvit21m-512")
    parser.add_argument("--out")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_build(args.target, args.recipe, args.out, args.breakdown)
        return
    with tempfile.TemporaryDirectory() as out:
        cold = measure(args.target, args.recipe, out, breakdown=True)
        warm = measure(args.target, args.recipe, out)
    print(f"build {args.recipe} for {args.target}")
    print(f"{'':6s} {'build s':>9s} {'process s':>10s} {'CPU s':>7s} {'peak MiB':>9s}  stages reused")
    for name, stats in (("cold", cold), ("warm", warm)):
        print(f"{name:6s} {stats['seconds']:9.2f} {stats['process_seconds']:10.2f} {stats['cpu_seconds']:7.1f} "
              f"{stats['peak_mib']:9.0f}  {stats['cached']}")
    print("\nwhere the cold build's wall time goes:")
    print(f"  {'interpreter start and imports (torch, timm, onnx, onnxsim)':<58} {cold['process_seconds'] - cold['seconds']:6.2f} s")
    for label, seconds in cold["steps"].items():
        print(f"  {label:<58} {seconds:6.2f} s")
    rest = cold["seconds"] - sum(cold["steps"].values())
    print(f"  {'the rest (checkpoint, hashing, writing files, bundle)':<58} {rest:6.2f} s")
    print(f"warm / cold wall time: {warm['process_seconds'] / cold['process_seconds']:.3f} "
          f"(cold is {cold['process_seconds'] / warm['process_seconds']:.1f}x slower)")


if __name__ == "__main__":
    main()
