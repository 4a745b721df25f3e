"""``edgedeploy train``: the source-side training recipe (Real-IAD-DR and the demo default).

Modules (torch is imported only by ``features``, ``backbone``, ``loop`` and ``ckptio``):

* ``recipe``   training-recipe schema and loader (``recipes/train/*.yaml``), ``--source`` parsing;
* ``sampling`` the fixed, seeded per-category sampling of normal and anomalous source images;
* ``backbone`` backbone initialisation (seeded, a timm state dict on disk, timm's hub);
* ``features`` the frozen-backbone feature cache (heads-only mode);
* ``loop``     losses, AdamW + warmup/cosine schedule, interval states, resume, evaluation;
* ``ckptio``   byte-stable checkpoint files (safetensors, JSON metadata in the header);
* ``cli``      the click command.

See ``docs/training.md``.
"""

from edgedeploy.core.errors import TrainError

__all__ = ["TrainError"]
