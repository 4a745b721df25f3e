"""The graph fidelity checks: the bundle's ``model.onnx``, made by the pipeline's own stages.

``edgedeploy build`` runs load -> export -> simplify -> audit -> compile and writes the bundle.
Fidelity needs the graph only, byte for byte the bundle's ``model.onnx``: it runs the same export
and simplify stages on the same stage cache (``OUT/.stages``, so a graph already built by
``edgedeploy build`` is reused in about a second) and audits the result, but neither rewrites the
user's bundle (its manifest and compile record stay as they are) nor runs the compile stage
(which may submit paid AI Hub jobs).

The checkpoint is resolved once, as ``build`` resolves it: ``--checkpoint``, else the recipe's
built-in default (``edgedeploy.checkpoints``), else seeded reference weights. The same file feeds
the export and the PyTorch host reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..audit import AuditReport, audit_onnx
from ..errors import EdgeDeployError
from ..hashing import sha256_file
from ..profiles import DeviceProfile
from ..recipes import Recipe

SEEDED = "seeded"
Log = Callable[[str], None]


@dataclass
class Checkpoint:
    path: Path | None            # None: seeded reference weights
    sha256: str                  # file hash, or "seeded"
    description: str             # what a person reads: a path, the built-in default, or seeded weights
    builtin_default: bool = False

    @property
    def seeded(self) -> bool:
        return self.path is None


@dataclass
class Graph:
    model_path: Path
    model_sha256: str
    checkpoint: Checkpoint
    audit: AuditReport
    stage_lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def resolve_checkpoint(recipe: Recipe, checkpoint: Path | None, log: Log) -> Checkpoint:
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise EdgeDeployError(f"checkpoint {checkpoint} does not exist: check the --checkpoint path")
        return Checkpoint(Path(checkpoint), sha256_file(checkpoint), str(checkpoint))
    from ..checkpoints import default_checkpoint, default_mismatch

    default = default_checkpoint(recipe)
    if default is not None:
        return Checkpoint(default.path, sha256_file(default.path), default.describe(), builtin_default=True)
    mismatch = default_mismatch(recipe)
    if mismatch:
        log(f"warning: {mismatch}")
    return Checkpoint(None, SEEDED, "seeded reference weights (no --checkpoint, no built-in default for this recipe)")


def prepare_graph(recipe: Recipe, profile: DeviceProfile, out_dir: Path, checkpoint: Path | None,
                  log: Log) -> Graph:
    """Export and simplify (stage-cached under ``out_dir/.stages``), then audit against ``profile``."""
    from ..fsutil import ensure_writable_dir
    from ..pipeline import _export_stage, _simplify_stage, _stage_line
    from ..stages import StageCache

    ckpt = resolve_checkpoint(recipe, checkpoint, log)
    cache = StageCache(ensure_writable_dir(out_dir) / ".stages")
    export, _ = _export_stage(cache, recipe, ckpt.path, log)
    simplified = _simplify_stage(cache, recipe, export)
    model_path = simplified.output_path(cache.root, "model.onnx")
    audit = audit_onnx(model_path, profile)
    return Graph(model_path, simplified.outputs["model.onnx"]["sha256"], ckpt, audit,
                 [_stage_line(export), _stage_line(simplified)], [*export.warnings, *simplified.warnings])
