"""EdgeZSAD: a backbone (timm TinyViT, or another recipe backbone from ``backbones.py``) with the
EdgeGLR global-local readout.

Graph interface (what export, the device runners and fidelity rely on):
input ``image`` float32 (N, 3, S, S) in [0, 1] — the normalisation (ImageNet's, or the pretrained
weights' own) happens inside the model; outputs ``score`` (N,) — fused anomalous probability — and
``anomaly_map`` (N, 1, S/16, S/16): the local stages pooled to 1/16 of the input. Upsampling and
smoothing the map are post-processing outside the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgedeploy.core.model_recipes import MAP_STRIDE, ModelConfig
from edgedeploy.host.model.backbones import create_backbone, static_same_padding
from edgedeploy.host.model.rewrites import fast_attention_buffers, make_export_friendly

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _unit(x: torch.Tensor, dim: int, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)


class EdgeGLR(nn.Module):
    """Global-local readout.

    The global branch pools the deepest stage, projects it and compares it with two learned
    prototypes (normal, anomalous) by cosine similarity; the local branch projects the mid-level
    stages cell by cell (the "sparse" part: only those stages, pooled to one grid) and compares each
    cell with the same prototypes. A softmax over the two temperature-scaled similarities equals
    the sigmoid of their difference, which is what is computed (one op fewer on the device).
    """

    def __init__(self, global_channels: int, local_channels: list[int], local_strides: list[int],
                 embed_dim: int, temperature: float, fusion_alpha: float, top_k: int):
        super().__init__()
        self.global_proj = nn.Linear(global_channels, embed_dim)
        self.local_proj = nn.ModuleList(nn.Conv2d(c, embed_dim, kernel_size=1) for c in local_channels)
        self.prototypes = nn.Parameter(torch.randn(2, embed_dim))
        if any(s > MAP_STRIDE or MAP_STRIDE % s for s in local_strides):
            raise ValueError(f"local stages with strides {local_strides} cannot be pooled to the map's 1/{MAP_STRIDE}")
        self.pool_factors = [MAP_STRIDE // s for s in local_strides]
        self.temperature = temperature
        self.fusion_alpha = fusion_alpha
        self.top_k = top_k

    def _anomaly_direction(self) -> torch.Tensor:
        normal, anomalous = _unit(self.prototypes, dim=1).unbind(0)
        return (anomalous - normal) / self.temperature

    def global_score(self, deepest: torch.Tensor) -> torch.Tensor:
        pooled = deepest.mean(dim=(2, 3))
        embedding = _unit(self.global_proj(pooled), dim=1)
        return torch.sigmoid(embedding @ self._anomaly_direction())

    def anomaly_map(self, mid_level: list[torch.Tensor]) -> torch.Tensor:
        cells = 0
        for feat, proj, factor in zip(mid_level, self.local_proj, self.pool_factors):
            projected = proj(feat)
            if factor > 1:
                projected = F.avg_pool2d(projected, kernel_size=factor, stride=factor)
            cells = cells + projected
        cells = _unit(cells, dim=1)
        direction = self._anomaly_direction().reshape(1, -1, 1, 1)
        return torch.sigmoid((cells * direction).sum(dim=1, keepdim=True))

    def forward(self, deepest: torch.Tensor, mid_level: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.anomaly_map(mid_level)
        k = min(self.top_k, amap.shape[2] * amap.shape[3])
        local = amap.flatten(1).topk(k, dim=1).values.mean(dim=1)
        score = self.fusion_alpha * self.global_score(deepest) + (1.0 - self.fusion_alpha) * local
        return score, amap


class EdgeZSAD(nn.Module):
    def __init__(self, config: ModelConfig, pixel_mean: tuple[float, ...] = IMAGENET_MEAN,
                 pixel_std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.config = config
        with fast_attention_buffers():
            self.backbone = create_backbone(config)
        static_same_padding(self.backbone, config.input_size)
        stages = sorted({*config.local_stages, config.global_stage})
        self.backbone.prune_intermediate_layers(stages, prune_head=True)
        info = {i: self.backbone.feature_info[i] for i in stages}
        self.stage_indices = stages
        self.readout = EdgeGLR(
            global_channels=info[config.global_stage]["num_chs"],
            local_channels=[info[i]["num_chs"] for i in config.local_stages],
            local_strides=[info[i]["reduction"] for i in config.local_stages],
            embed_dim=config.embed_dim,
            temperature=config.temperature,
            fusion_alpha=config.fusion_alpha,
            top_k=config.top_k,
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).reshape(1, 3, 1, 1), persistent=False)
        make_export_friendly(self.backbone)

    def features(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        x = (image - self.pixel_mean) / self.pixel_std
        feats = self.backbone.forward_intermediates(x, indices=self.stage_indices, intermediates_only=True)
        return dict(zip(self.stage_indices, feats))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(image)
        return self.readout(feats[self.config.global_stage], [feats[i] for i in self.config.local_stages])

    @property
    def map_stride(self) -> int:
        return MAP_STRIDE
