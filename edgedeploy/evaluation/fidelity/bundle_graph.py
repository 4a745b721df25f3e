"""The graph fidelity checks: the bundle's ``model.onnx``, made by the pipeline's own stages.

``edgedeploy build`` runs load -> export -> simplify -> audit -> compile and writes the bundle.
Fidelity needs the graph only, byte for byte the bundle's ``model.onnx``: it runs the same export
and simplify stages on the same stage cache (``OUT/.stages``, so a graph already built by
``edgedeploy build`` is reused in about a second) and audits the result, but neither rewrites the
user's bundle (its manifest and compile record stay as they are) nor runs the compile stage
(which may submit paid AI Hub jobs).

The checkpoint is resolved once, as ``build`` resolves it: ``--checkpoint``, else the recipe's
built-in default (``edgedeploy.host.checkpoints``), else seeded reference weights. The same file feeds
the export and the PyTorch host reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgedeploy.host.audit import AuditReport
from edgedeploy.host.pipeline import Checkpoint, resolve_checkpoint  # noqa: F401  (re-exported for callers)
from edgedeploy.core.profiles import DeviceProfile
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.host.intake import ImportedModel

Log = Callable[[str], None]


@dataclass
class Graph:
    model_path: Path
    model_sha256: str
    checkpoint: Checkpoint
    audit: AuditReport
    model: Recipe | ImportedModel  # an imported model's card as the intake stage completed it
    stage_lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def prepare_graph(recipe: Recipe | ImportedModel, profile: DeviceProfile, out_dir: Path, checkpoint: Path | None,
                  log: Log) -> Graph:
    """Export and simplify (stage-cached under ``out_dir/.stages``), then audit against ``profile``."""
    from edgedeploy.host.pipeline import _stage_line, audit_stage, build_graph
    from edgedeploy.host.stages import StageCache

    built = build_graph(recipe, out_dir, checkpoint, log=lambda line: log(line) if line.startswith("warning") else None,
                        profile=profile)  # the target's graph: for rb5-gen2 with its GELUs as ONNX Gelu
    audit, _ = audit_stage(StageCache(Path(out_dir) / ".stages"), built.model_path, built.model_sha256, profile)
    return Graph(built.model_path, built.model_sha256, built.checkpoint, audit, built.model,
                 [_stage_line(stage) for stage in built.stages])  # their warnings: logged above
