"""How long the drift gate takes to judge a large benchmark: `edgedeploy fidelity --host-scores A --device-scores B
--no-plots` on two score files of N rows, this tree against another git revision, side by side in one run.

    python benchmarks/bench_gate.py                          # 100,000 rows in 10 categories, against HEAD~1
    python benchmarks/bench_gate.py --against 0693b79 --rows 100000 --categories 10 --repeats 3

The files are written once (host: two classes of normal scores, device: the host with FP16-level relative noise, so
the near-tie machinery does real work); each repeat runs both trees one after the other, and the best of each is
compared (the ratio is what to quote; the seconds depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_files(folder: Path, rows: int, categories: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    labels = rng.random(rows) < 0.5
    cats = np.arange(rows) % categories
    host = 0.3 + 0.1 * rng.normal(size=rows) + 0.15 * labels
    device = host * (1.0 + 2.0 ** -10 * rng.normal(size=rows))
    paths = []
    for name, scores in (("host.csv", host), ("device.csv", device)):
        lines = ["# edgedeploy-scores: 1", "# bench: big", "path,category,label,score"]
        lines += [f"c{c}/{i:06d}.png,c{c},{int(lab)},{float(s)!r}" for i, (c, lab, s) in enumerate(zip(cats, labels, scores))]
        path = folder / name
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def time_once(tree: Path, host: Path, device: Path, report: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, "-m", "edgedeploy.cli", "fidelity", "--host-scores", str(host), "--device-scores",
               str(device), "--no-plots", "--report", str(report)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{tree}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD~1", help="git revision to compare with (default HEAD~1)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        other = tmp / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(other), args.against], check=True)
        try:
            host, device = write_files(tmp, args.rows, args.categories)
            best = {"this tree": float("inf"), args.against: float("inf")}
            for _ in range(args.repeats):
                best["this tree"] = min(best["this tree"], time_once(ROOT, host, device, tmp / "r1"))
                best[args.against] = min(best[args.against], time_once(other, host, device, tmp / "r2"))
            for name, seconds in best.items():
                print(f"{name:>12}: {seconds:.2f} s for {args.rows} rows in {args.categories} categories (best of "
                      f"{args.repeats}, the whole command)")
            print(f"ratio this tree / {args.against}: {best['this tree'] / best[args.against]:.2f}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
