"""What the bench-and-target commands (``fidelity``, ``precision``) share: their common options and
the inputs those resolve to (device profile, model recipe, benchmark, report folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import ensure_writable_dir

if TYPE_CHECKING:
    from edgedeploy.evaluation.data import Benchmark
    from edgedeploy.core.profiles import DeviceProfile
    from edgedeploy.core.model_recipes import Recipe
    from edgedeploy.host.intake import ImportedModel


@dataclass
class BenchTargetOptions:
    bench: str
    target: str
    data_root: Path | None = None
    categories: list[str] | None = None
    checkpoint: Path | None = None
    recipe: str | None = None
    out: Path = Path("out")
    report_dir: Path | None = None  # default OUT/<command>/<bench>-<target>
    onnx: Path | None = None        # any anomaly model as ONNX (edgedeploy.host.intake), instead of EdgeZSAD
    card: Path | None = None

    def check_checkpoint(self) -> None:
        from edgedeploy.host.intake import require_onnx_only

        require_onnx_only(self.onnx, self.checkpoint, self.recipe, self.card)
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise EdgeDeployError(f"checkpoint {self.checkpoint} does not exist: check the --checkpoint path")

    def model_words(self) -> list[str]:
        """The command-line options that pick this model again."""
        if self.onnx is not None:
            return ["--onnx", str(self.onnx)] + (["--card", str(self.card)] if self.card is not None else [])
        words = ["--checkpoint", str(self.checkpoint)] if self.checkpoint is not None else []
        return words + (["--recipe", self.recipe] if self.recipe else [])


@dataclass
class BenchTargetInputs:
    profile: DeviceProfile
    recipe: Recipe | ImportedModel  # EdgeZSAD's recipe, or the model brought with --onnx
    bench: Benchmark
    report_dir: Path


def refuse_unwritable(report_dir: Path | None, out: Path) -> None:
    """The folder a bench-and-target command writes to (``--report``, else ``--out``), proved writable at once."""
    if report_dir is not None:
        ensure_writable_dir(report_dir, "--report")
    else:
        ensure_writable_dir(out, "--out")


def resolve_inputs(opts: BenchTargetOptions, command: str) -> BenchTargetInputs:
    """Load the profile, recipe and benchmark ``opts`` name, and make the (writable) report folder."""
    from edgedeploy.evaluation.data import load_benchmark
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.core.model_recipes import DEFAULT_RECIPE, load_recipe

    refuse_unwritable(opts.report_dir, opts.out)  # before anything slow (a demo first made, a build)
    profile = load_profile(opts.target)
    if opts.onnx is not None:
        from edgedeploy.host.intake import load_imported

        recipe = load_imported(opts.onnx, opts.card)
    else:
        recipe = load_recipe(opts.recipe or DEFAULT_RECIPE)
    bench = load_benchmark(opts.bench, opts.data_root, opts.categories)
    report_dir = ensure_writable_dir(opts.report_dir or Path(opts.out) / command / f"{bench.name}-{profile.name}",
                                     "--report" if opts.report_dir else "--out")
    return BenchTargetInputs(profile, recipe, bench, report_dir)
