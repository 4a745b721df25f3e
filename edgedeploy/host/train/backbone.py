"""Backbone initialisation for training: seeded, a timm TinyViT state dict on disk, or timm's hub.

* ``seeded``: the model recipe's seed, exactly the seeded reference weights (no pretrained
  features: said aloud, and recorded). A heads-only checkpoint over it stores only the heads.
* a file: a timm TinyViT state dict (``.pth``/``.pt``/``.safetensors``; plain, or wrapped in
  ``state_dict``/``model``; ``backbone.``/``model.``/``module.`` prefixes removed; classifier
  ``head.*`` ignored), loaded strictly into the pruned backbone.
* ``package``: the model recipe's pretrained weights, read from the installed package its
  ``pretrained:`` section names (hash pinned); ``seeded_model`` has already loaded them. A
  heads-only checkpoint over it stores only the heads and records the weights file's hash.
* ``hub``: ``timm.create_model(<backbone>, pretrained=True)``, after a quick reachability check of
  the Hugging Face hub so that an offline machine gets one clear line instead of a minute of retries.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgedeploy.core.errors import CheckpointError
from edgedeploy.core.hashing import sha256_file
from edgedeploy.host.model.checkpoint import backbone_fingerprint, load_checkpoint_state, state_mismatch
from edgedeploy.host.model.edgezsad import EdgeZSAD
from edgedeploy.core.errors import TrainError

HUB_HOST = "huggingface.co"
_PREFIXES = ("module.", "model.", "backbone.")


@dataclass
class BackboneInit:
    kind: str                     # seeded | package | file | hub
    sha256: str                   # fingerprint of the backbone weights the run starts from
    seed: int | None = None
    source: str | None = None     # file name (no directory: recorded in checkpoints) or hub model name
    file_sha256: str | None = None
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "sha256": self.sha256}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.source is not None:
            out["source"] = self.source
        if self.file_sha256 is not None:
            out["file_sha256"] = self.file_sha256
        return out

    def describe(self) -> str:
        if self.kind == "seeded":
            return "a seeded (untrained) TinyViT backbone"
        if self.kind == "package":
            return f"a pretrained {self.source} backbone"
        if self.kind == "hub":
            return f"a pretrained TinyViT backbone (timm hub {self.source})"
        return f"a TinyViT backbone from {self.source}"


def init_backbone(model: EdgeZSAD, spec: str, seed: int, recipe=None) -> BackboneInit:
    """Initialise ``model.backbone`` in place (built by ``seeded_model``, so "seeded" and "package"
    need nothing more); ``recipe`` is the model recipe."""
    spec = str(spec).strip()
    pretrained = getattr(recipe, "pretrained", None)
    if pretrained is not None and spec != "package":
        raise TrainError(f"model recipe {recipe.name} takes its backbone from {pretrained.package} (pretrained); "
                         f"--backbone-weights {spec} does not apply: leave it out, or pass 'package'")
    if spec == "package":
        if pretrained is None:
            name = getattr(recipe, "name", model.config.backbone)
            raise TrainError(f"--backbone-weights package: model recipe {name} names no pretrained weights package; "
                             "use seeded, hub or a state-dict FILE")
        from edgedeploy.host.model.pretrained import checked_weights_file

        path, digest = checked_weights_file(recipe)
        return BackboneInit("package", backbone_fingerprint(model.backbone), source=f"{pretrained.package}:{path.name}",
                            file_sha256=digest)
    if spec == "seeded":
        info = BackboneInit("seeded", backbone_fingerprint(model.backbone), seed=seed)
        info.notes.append(f"backbone: seeded random TinyViT weights (model recipe seed {seed}), not pretrained: "
                          "its features are untrained; pass --backbone-weights FILE (or hub) for a pretrained backbone")
        return info
    if spec == "hub":
        return _from_hub(model)
    return _from_file(model, Path(spec))


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_backbone_state(model: EdgeZSAD, state: dict[str, torch.Tensor], what: str) -> None:
    state = {k: v for k, v in _strip(state).items() if not k.startswith("head.")}
    expected = model.backbone.state_dict()
    missing, unexpected, wrong = state_mismatch(expected, state)
    backbone = model.config.backbone
    if missing or unexpected:
        raise TrainError(f"{what} is not a timm {backbone} state dict: {len(missing)} missing keys "
                         f"(first: {', '.join(missing[:4]) or '-'}), {len(unexpected)} unexpected "
                         f"(first: {', '.join(unexpected[:4]) or '-'}); pass the weights of {backbone}")
    if wrong:
        raise TrainError(f"{what} does not fit {backbone}: {len(wrong)} tensors have other shapes "
                         f"(first: {'; '.join(wrong[:2])}); is it another TinyViT size or resolution?")
    model.backbone.load_state_dict({k: state[k] for k in expected}, strict=True)
    for module in model.backbone.modules():  # rebuild the INT32 gather tables of the export rewrites
        if hasattr(module, "prepare") and hasattr(module, "attention_bias_idxs"):
            module.prepare()


def _from_file(model: EdgeZSAD, path: Path) -> BackboneInit:
    if not path.is_file():
        raise TrainError(f"--backbone-weights {path} does not exist (give a timm TinyViT state dict, 'hub' or 'seeded')")
    try:
        state, _ = load_checkpoint_state(path)
    except CheckpointError as exc:
        raise TrainError(f"--backbone-weights: {exc}") from None
    load_backbone_state(model, state, f"--backbone-weights {path}")
    return BackboneInit("file", backbone_fingerprint(model.backbone), source=path.name, file_sha256=sha256_file(path))


def hub_reachable(host: str = HUB_HOST, timeout: float = 4.0) -> str | None:
    """None when ``host:443`` answers; otherwise the reason it does not."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        return "HF_HUB_OFFLINE is set"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as exc:
        return " ".join(str(exc).split()) or type(exc).__name__


def _from_hub(model: EdgeZSAD) -> BackboneInit:
    import timm

    name = model.config.backbone
    reason = hub_reachable()
    if reason is not None:
        raise TrainError(f"cannot download timm's pretrained {name} weights: {HUB_HOST} is not reachable ({reason}); "
                         f"on a machine with network save timm.create_model('{name}', pretrained=True).state_dict() "
                         "with torch.save and pass that file as --backbone-weights FILE (or --backbone-weights seeded)")
    try:
        pretrained = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:  # hub, auth, cache and parsing errors come in many types
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise TrainError(f"timm could not load pretrained {name} weights ({text}); pass a downloaded state dict "
                         "as --backbone-weights FILE") from None
    load_backbone_state(model, pretrained.state_dict(), f"timm hub weights for {name}")
    tag = getattr(pretrained, "pretrained_cfg", {}).get("tag") if hasattr(pretrained, "pretrained_cfg") else None
    return BackboneInit("hub", backbone_fingerprint(model.backbone), source=f"{name}.{tag}" if tag else name)
