"""The EdgeZSAD model and its checkpoints (imports torch: import lazily from the CLI)."""

from edgedeploy.host.model.checkpoint import LoadedModel, build_model, load_checkpoint_state
from edgedeploy.host.model.edgezsad import EdgeGLR, EdgeZSAD

__all__ = ["EdgeGLR", "EdgeZSAD", "LoadedModel", "build_model", "load_checkpoint_state"]
