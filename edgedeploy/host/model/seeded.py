"""Seeded weights that are the same bits on every CPU.

torch's random initialisers (``normal_``, ``uniform_``, ``trunc_normal_``) run vectorised kernels
chosen per instruction set, so one ``torch.manual_seed`` gives other weights on an AVX2 machine
than on an AVX-512 one. The seeded reference weights, and the backbone the built-in default's
heads were trained on, are drawn here instead, from numpy's ``PCG64`` with one stream per tensor
keyed by (seed, tensor name), using only operations that IEEE 754 rounds exactly the same way
everywhere: integer generator steps, ``(x >> 11) * 2**-53`` doubles, ``+ - * /`` and ``sqrt``.
No ``log``/``exp``/``cos`` (their SIMD variants differ by an ulp between instruction sets).

The rule for each kind of tensor (what torch/timm would draw, with the same variance):

==================================  ===========================================================
tensor                              drawn as
==================================  ===========================================================
``Linear.weight`` in the backbone   N(0, 0.02²) (timm's TinyViT init), approximated by the
                                    Irwin-Hall sum of 12 uniforms: exact variance, bounded at ±6σ
``Linear.weight`` / ``.bias``       U(-1/√fan_in, 1/√fan_in) (PyTorch's default for ``Linear``)
elsewhere (the readout)
``Conv2d.weight`` / ``.bias``       U(-1/√fan_in, 1/√fan_in) (PyTorch's default for ``Conv2d``)
``EdgeGLR.prototypes``              N(0, 1), Irwin-Hall as above
anything else                       left as the module built it, which must be a constant fill
                                    (BatchNorm/LayerNorm ones and zeros, zero attention biases,
                                    integer index tables); any other tensor is an error, since it
                                    would carry torch's RNG
==================================  ===========================================================

The backbone's ``Linear`` biases are zeros in timm's init and stay so.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import nn

BACKBONE_LINEAR_STD = 0.02
SEEDED_INIT_VERSION = "pcg64-irwin-hall/1"
_IRWIN_HALL_TERMS = 12  # variance of a sum of 12 U(0,1) is exactly 1
_IRWIN_HALL_CHUNK = 1 << 15  # rows per block: 3 MiB of uniforms, not gigabytes for a 21M-parameter backbone


def tensor_stream(seed: int, name: str) -> np.random.Generator:
    """The generator for one tensor: PCG64 seeded by ``seed`` and spawned by the tensor's name."""
    words = hashlib.sha256(name.encode()).digest()[:16]
    key = tuple(int.from_bytes(words[i:i + 4], "little") for i in range(0, 16, 4))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=int(seed), spawn_key=key)))


def uniform_symmetric(rng: np.random.Generator, count: int, bound: float) -> np.ndarray:
    """``count`` draws of U(-bound, bound) in float64."""
    return (2.0 * rng.random(count) - 1.0) * bound


def irwin_hall_normal(rng: np.random.Generator, count: int, std: float) -> np.ndarray:
    """``count`` approximately normal draws N(0, std²): (sum of 12 uniforms - 6) * std, summed in a
    fixed order so no reduction kernel can reorder the additions."""
    out = np.empty(count)
    for begin in range(0, count, _IRWIN_HALL_CHUNK):  # the stream drawn in order, a cache-sized block at a time
        u = rng.random((min(_IRWIN_HALL_CHUNK, count - begin), _IRWIN_HALL_TERMS))
        total = u[:, 0].copy()
        for k in range(1, _IRWIN_HALL_TERMS):
            total += u[:, k]
        out[begin:begin + len(u)] = (total - 6.0) * std
    return out


def _fan_in(weight: torch.Tensor) -> int:
    return int(weight.shape[1] * math.prod(weight.shape[2:])) if weight.dim() > 1 else int(weight.shape[0])


def _rule(module: nn.Module, leaf: str, in_backbone: bool, fan_in: int | None):
    """(kind, parameter) for a tensor that is drawn, or None for one left as built."""
    if isinstance(module, nn.Linear) and in_backbone:
        return ("normal", BACKBONE_LINEAR_STD) if leaf == "weight" else None
    if isinstance(module, (nn.Linear, nn.Conv2d)) and leaf in ("weight", "bias"):
        return ("uniform", 1.0 / math.sqrt(fan_in))
    if leaf == "prototypes":
        return ("normal", 1.0)
    return None


def _draw(seed: int, name: str, tensor: torch.Tensor, rule) -> torch.Tensor:
    kind, value = rule
    rng = tensor_stream(seed, name)
    count = tensor.numel()
    values = uniform_symmetric(rng, count, value) if kind == "uniform" else irwin_hall_normal(rng, count, value)
    return torch.from_numpy(values.astype(np.float32).reshape(tuple(tensor.shape)))


def _is_constant(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    flat = tensor.detach().reshape(-1)
    return bool(torch.all(flat == flat[0]))


def seeded_init(module: nn.Module, seed: int, prefix: str = "", backbone_prefix: str = "backbone.") -> list[str]:
    """Draw every random tensor of ``module`` in place; return the names drawn (``prefix`` + local name).

    ``prefix`` is the module's name inside the whole model, so the readout re-initialised alone
    draws exactly what it gets inside the whole model.
    """
    drawn: list[str] = []
    modules = dict(module.named_modules())
    with torch.no_grad():
        for local, tensor in module.state_dict(keep_vars=True).items():
            name = prefix + local
            owner_name, _, leaf = local.rpartition(".")
            owner = modules[owner_name]
            fan_in = _fan_in(owner.weight) if isinstance(owner, (nn.Linear, nn.Conv2d)) else None
            rule = _rule(owner, leaf, name.startswith(backbone_prefix), fan_in)
            if rule is None:
                if not _is_constant(tensor):
                    raise RuntimeError(f"seeded_init: {name} ({type(owner).__name__}.{leaf}) has no rule and is not a "
                                       "constant fill: add its rule to edgedeploy/model/seeded.py")
                continue
            tensor.copy_(_draw(seed, name, tensor, rule))
            drawn.append(name)
    return drawn
