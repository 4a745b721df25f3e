"""Export-friendly, numerically equivalent replacements for timm TinyViT modules.

timm's TinyViT window attention partitions windows through rank-6 views, which Qualcomm backends
reject (rank limit 5), and gathers its relative-position biases with an INT64 index table. The
replacements below compute the same function with tensors of rank <= 4 and INT32 gather indices,
and always take the explicit (non-fused) attention path so the exported graph is plain
MatMul/Softmax. They are applied by swapping the class of each module in place, so parameters,
buffers and state-dict keys stay exactly those of timm.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from timm.models import tiny_vit


class ExportFriendlyAttention(tiny_vit.Attention):
    """Attention whose bias gather reads an INT32 index table kept as its own buffer.

    The table must stay a gather at run time: materialised, the biases of one 32x32-window block
    of TinyViT-21M-512 would be a 48 MiB constant (12 heads x 1024 x 1024), against 4 MiB of indices.
    """

    def prepare(self) -> None:
        flat = self.attention_bias_idxs.reshape(-1).to(torch.int32)
        self.register_buffer("flat_bias_idxs", flat, persistent=False)

    def get_attention_biases(self, device: torch.device) -> torch.Tensor:
        n = self.attention_bias_idxs.shape[0]
        return torch.index_select(self.attention_biases, 1, self.flat_bias_idxs).reshape(self.num_heads, n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn_bias = self.get_attention_biases(x.device)
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q = q.permute(0, 2, 1, 3) * self.scale
        k = k.permute(0, 2, 3, 1)
        v = v.permute(0, 2, 1, 3)
        attn = (q @ k + attn_bias).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.out_dim)
        return self.proj(x)


class ExportFriendlyTinyVitBlock(tiny_vit.TinyVitBlock):
    """TinyViT block whose window partition and reverse never exceed rank 4.

    (B, H, W, C) is viewed as (B*nH, ws, nW, ws*C): merging the batch into the window-row axis and
    each window row's width into the channel axis keeps the memory order, so one transpose of the
    two middle axes yields the same windows timm builds with a rank-6 view.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        shortcut = x
        if h == ws and w == ws:
            x = self.attn(x.reshape(b, h * w, c)).reshape(b, h, w, c)
        else:
            pad_b = (ws - h % ws) % ws
            pad_r = (ws - w % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            x = x.reshape(b * nh, ws, nw, ws * c).transpose(1, 2).reshape(b * nh * nw, ws * ws, c)
            x = self.attn(x)
            x = x.reshape(b * nh, nw, ws, ws * c).transpose(1, 2).reshape(b, ph, pw, c)
            if pad_b or pad_r:
                x = x[:, :h, :w].contiguous()
        x = shortcut + self.drop_path1(x)
        x = self.local_conv(x.permute(0, 3, 1, 2))
        x = x.reshape(b, c, h * w).transpose(1, 2)
        x = x + self.drop_path2(self.mlp(x))
        return x.reshape(b, h, w, c)


def attention_bias_indices(height: int, width: int) -> torch.Tensor:
    """timm's ``attention_bias_idxs`` for a ``height x width`` window, without its Python double loop.

    timm numbers each offset ``(|dy|, |dx|)`` between two window points in order of first appearance,
    scanning point pairs row-major. The pairs of point (0, 0) come first and already show every offset,
    in row-major order, so the number of ``(dy, dx)`` is ``dy * width + dx``: the same table, built in
    milliseconds instead of the seconds the loop takes for TinyViT-21M-512's 32x32 windows.
    """
    ys = torch.arange(height).repeat_interleave(width)
    xs = torch.arange(width).repeat(height)
    return (ys[:, None] - ys[None, :]).abs() * width + (xs[:, None] - xs[None, :]).abs()


def _init_buffers_vectorised(self: tiny_vit.Attention) -> None:
    device = self.attention_bias_idxs.device
    self.attention_bias_idxs.copy_(attention_bias_indices(*self.resolution).to(device))
    self.attention_bias_cache = {}


@contextmanager
def fast_attention_buffers() -> Iterator[None]:
    """Within the block, timm TinyViT attention builds its bias index table with
    :func:`attention_bias_indices` (same values; tested against timm's loop)."""
    original = tiny_vit.Attention._init_buffers
    tiny_vit.Attention._init_buffers = _init_buffers_vectorised
    try:
        yield
    finally:
        tiny_vit.Attention._init_buffers = original


_REPLACEMENTS = {
    tiny_vit.Attention: ExportFriendlyAttention,
    tiny_vit.TinyVitBlock: ExportFriendlyTinyVitBlock,
}


def make_export_friendly(module: torch.nn.Module) -> int:
    """Swap every timm TinyViT Attention/Block inside ``module`` for its equivalent; return the count."""
    swapped = 0
    for sub in module.modules():
        replacement = _REPLACEMENTS.get(type(sub))
        if replacement is not None:
            sub.__class__ = replacement
            if hasattr(sub, "prepare"):
                sub.prepare()
            swapped += 1
    return swapped
