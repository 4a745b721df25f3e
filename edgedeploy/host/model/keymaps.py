"""Key maps from pretrained weights files to the backbones' state-dict names (one per ``pretrained.layout``).

Each map takes the file's state dict and returns the backbone's, renamed, with the tensors
untouched; keys the backbone does not use (a classifier, SAM's neck and decoders) are returned
separately so that a test can account for every key of the file.

``efficientnet-lite``: efficientnet_pytorch's names (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``
...), one flat list of blocks, to timm's ``tf_efficientnet_lite*`` (``conv_stem``, ``bn1``,
``blocks.S.B.conv_pw`` ...), blocks grouped by stage. A block with no expansion conv is timm's
``DepthwiseSeparableConv`` (``conv_dw, bn1, conv_pw, bn2``); the others are ``InvertedResidual``
(``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``).

``litemedsam-tinyvit``: MobileSAM's TinyViT (``image_encoder.patch_embed.seq.N.c``,
``layers.I.blocks.J``, ``layers.I.downsample``) to timm's TinyViT (``patch_embed.convN.conv``,
``stages.I.blocks.J``, ``stages.I+1.downsample``): the original merges patches at the end of a
stage, timm at the start of the next. Conv2d_BN's ``c`` is timm's ConvNorm ``conv``.
"""

from __future__ import annotations

import re
from typing import Callable

from edgedeploy.core.errors import CheckpointError

# efficientnet_pytorch module names -> timm's, per block kind
_EFFNET_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EFFNET_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_lite(state: dict, stage_depths: list[int]) -> tuple[dict, dict]:
    """(timm state dict, keys left over); ``stage_depths`` is the timm model's ``[len(s) for s in blocks]``."""
    where = [(s, b) for s, depth in enumerate(stage_depths) for b in range(depth)]
    expanded = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out: dict = {}
    for key, tensor in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if block:
            index, name, rest = int(block.group(1)), block.group(2), block.group(3)
            if index >= len(where):
                raise CheckpointError(f"weights key {key}: block {index} is beyond the backbone's {len(where)} blocks "
                                      "(another EfficientNet-Lite size?)")
            table = _EFFNET_EXPANDED if index in expanded else _EFFNET_DEPTHWISE
            if name not in table:
                raise CheckpointError(f"weights key {key}: unknown block module {name!r} for the efficientnet-lite layout")
            stage, position = where[index]
            out[f"blocks.{stage}.{position}.{table[name]}.{rest}"] = tensor
            continue
        top, _, rest = key.partition(".")
        if top not in _EFFNET_TOP:
            raise CheckpointError(f"weights key {key} is not an efficientnet_pytorch EfficientNet-Lite key")
        out[f"{_EFFNET_TOP[top]}.{rest}"] = tensor
    extra = {k: v for k, v in out.items() if k.startswith("classifier.")}
    return {k: v for k, v in out.items() if k not in extra}, extra


def litemedsam_tinyvit(state: dict, stage_depths: list[int]) -> tuple[dict, dict]:
    """(timm TinyViT state dict, keys left over: SAM's neck, prompt encoder and mask decoder)."""
    out: dict = {}
    extra: dict = {}
    for key, tensor in state.items():
        if not key.startswith("image_encoder.") or key.startswith("image_encoder.neck."):
            extra[key] = tensor
            continue
        name = key.removeprefix("image_encoder.")
        name = re.sub(r"^patch_embed\.seq\.0\.", "patch_embed.conv1.", name)
        name = re.sub(r"^patch_embed\.seq\.2\.", "patch_embed.conv2.", name)
        merge = re.match(r"layers\.(\d+)\.downsample\.(.+)$", name)
        if merge:
            name = f"stages.{int(merge.group(1)) + 1}.downsample.{merge.group(2)}"
        name = re.sub(r"^layers\.", "stages.", name)
        name = re.sub(r"\.c\.(weight|bias)$", r".conv.\1", name)
        out[name] = tensor
    if not out:
        raise CheckpointError("the weights file holds no image_encoder.* keys: it is not a LiteMedSAM checkpoint")
    return out, extra


LAYOUTS: dict[str, Callable[[dict, list[int]], tuple[dict, dict]]] = {
    "efficientnet-lite": efficientnet_lite,
    "litemedsam-tinyvit": litemedsam_tinyvit,
}
