"""Seeded weights are the same bits on every CPU: numpy PCG64 streams, not torch's RNG kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from edgedeploy.host.checkpoints import CHECKPOINTS_DIR, read_safetensors_metadata
from edgedeploy.host.model.checkpoint import backbone_fingerprint, seeded_model
from edgedeploy.host.model.seeded import irwin_hall_normal, seeded_init, tensor_stream, uniform_symmetric
from edgedeploy.core.model_recipes import DEFAULT_RECIPE

SHIPPED = CHECKPOINTS_DIR / f"{DEFAULT_RECIPE}.safetensors"
_FINGERPRINT = ("from edgedeploy.host.model.checkpoint import backbone_fingerprint, seeded_model; "
                "from edgedeploy.core.model_recipes import load_recipe; import torch; "
                "print(torch.backends.cpu.get_cpu_capability(), "
                "backbone_fingerprint(seeded_model(load_recipe({name!r})).backbone))")


def _fingerprint_under(capability: str, recipe: str) -> tuple[str, str]:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    done = subprocess.run([sys.executable, "-c", _FINGERPRINT.format(name=recipe)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    used, fingerprint = done.stdout.split()
    return used, fingerprint


def test_backbone_fingerprint_is_the_recorded_one_under_every_capability():
    """The default's backbone, rebuilt under ATen's scalar and AVX2 kernels, is the one its heads were trained on."""
    recorded = read_safetensors_metadata(SHIPPED)["backbone_init"]["sha256"]
    seen = {}
    for capability in ("default", "avx2"):
        used, fingerprint = _fingerprint_under(capability, DEFAULT_RECIPE)
        seen[capability] = fingerprint
        assert used.lower() in (capability, "default"), used  # avx2 falls back to default on a CPU without it
    assert seen == {"default": recorded, "avx2": recorded}


def test_seeded_weights_ignore_torch_rng(small_recipe):
    torch.manual_seed(123)
    a = seeded_model(small_recipe).state_dict()
    torch.manual_seed(456)
    b = seeded_model(small_recipe).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rules_give_the_documented_distributions():
    rng = tensor_stream(0, "x")
    u = uniform_symmetric(rng, 200_000, 0.5)
    assert -0.5 <= u.min() and u.max() < 0.5 and abs(u.var() - 0.25 / 3) < 1e-3
    n = irwin_hall_normal(tensor_stream(0, "y"), 200_000, 0.02)
    assert abs(n.std() - 0.02) < 2e-4 and np.abs(n).max() <= 6 * 0.02
    assert not np.array_equal(tensor_stream(0, "a").random(4), tensor_stream(0, "b").random(4))
    assert not np.array_equal(tensor_stream(0, "a").random(4), tensor_stream(1, "a").random(4))


def test_known_draws_are_pinned():
    """The streams are part of the recorded fingerprint: a numpy that changed PCG64 or SeedSequence fails here."""
    values = uniform_symmetric(tensor_stream(0, "backbone.stages.0.conv.weight"), 3, 1.0)
    assert values.tolist() == [0.13485643211578568, 0.475916446771395, -0.8264902782763426]
    normal = irwin_hall_normal(tensor_stream(0, "readout.prototypes"), 2, 1.0)
    assert normal.tolist() == [-0.008315036457451797, -1.2944593274208804]


def test_every_random_tensor_has_a_rule(small_recipe):
    model = seeded_model(small_recipe)
    kinds = {(type(dict(model.named_modules())[k.rpartition('.')[0]]).__name__, k.rpartition('.')[2])
             for k in seeded_init(model, 0)}
    assert ("Linear", "weight") in kinds and ("Conv2d", "weight") in kinds and ("EdgeGLR", "prototypes") in kinds
    backbone_linear = [m for n, m in model.backbone.named_modules() if isinstance(m, nn.Linear)]
    assert backbone_linear and all(torch.count_nonzero(m.bias) == 0 for m in backbone_linear if m.bias is not None)


def test_unknown_random_tensor_is_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.mystery = nn.Parameter(torch.randn(3))

    with pytest.raises(RuntimeError, match="mystery"):
        seeded_init(Odd(), 0)


def test_readout_alone_draws_what_the_whole_model_draws(small_recipe):
    whole = seeded_model(small_recipe, seed=7)
    other = seeded_model(small_recipe, seed=0)
    seeded_init(other.readout, 7, prefix="readout.")
    for key, value in whole.readout.state_dict().items():
        assert torch.equal(value, other.readout.state_dict()[key]), key
    assert backbone_fingerprint(other.backbone) != backbone_fingerprint(whole.backbone)
