import copy

import pytest
import timm
import torch
from timm.models import tiny_vit

from edgedeploy.host.model.rewrites import (ExportFriendlyAttention, ExportFriendlyTinyVitBlock, fast_attention_buffers,
                                           make_export_friendly)


def _with_random_biases(model):
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, tiny_vit.Attention):
            module.attention_biases.data = torch.randn(module.attention_biases.shape, generator=generator)
    return model


@pytest.mark.parametrize("window, size", [(7, 14), (7, 7), (7, 10)])
def test_block_matches_timm(window, size):
    torch.manual_seed(0)
    block = _with_random_biases(tiny_vit.TinyVitBlock(dim=64, num_heads=2, window_size=window)).eval()
    ours = copy.deepcopy(block)
    make_export_friendly(ours)
    assert isinstance(ours, ExportFriendlyTinyVitBlock) and isinstance(ours.attn, ExportFriendlyAttention)
    x = torch.randn(2, size, size, 64)
    with torch.no_grad():
        assert torch.allclose(block(x), ours(x), atol=1e-5, rtol=0)


def test_backbone_matches_timm_and_keeps_state_dict_keys():
    torch.manual_seed(0)
    model = _with_random_biases(timm.create_model("tiny_vit_5m_224", pretrained=False, num_classes=0)).eval()
    ours = copy.deepcopy(model)
    assert make_export_friendly(ours) == 20
    assert list(ours.state_dict()) == list(model.state_dict())
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
        got = ours.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
    for a, b in zip(ref, got):
        assert (a - b).abs().max().item() < 1e-5


def _max_exported_rank(block, path):
    import onnx

    torch.onnx.export(block, (torch.randn(1, 8, 8, 32),), str(path), opset_version=17, dynamo=False)
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    return max(len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info)


def test_exported_block_stays_within_rank_4(tmp_path):
    torch.manual_seed(0)
    block = tiny_vit.TinyVitBlock(dim=32, num_heads=2, window_size=4).eval()
    assert _max_exported_rank(copy.deepcopy(block), tmp_path / "timm.onnx") == 6
    make_export_friendly(block)
    assert _max_exported_rank(block, tmp_path / "ours.onnx") <= 4


@pytest.mark.parametrize("resolution", [(7, 7), (3, 5), (16, 16)])
def test_vectorised_attention_bias_table_is_timms(resolution):
    original = tiny_vit.Attention._init_buffers
    attn = tiny_vit.Attention(dim=16, key_dim=8, num_heads=2, resolution=resolution)  # timm's own loop
    expected = attn.attention_bias_idxs.clone()
    with fast_attention_buffers():
        fast = tiny_vit.Attention(dim=16, key_dim=8, num_heads=2, resolution=resolution)
    assert torch.equal(fast.attention_bias_idxs, expected) and fast.attention_bias_idxs.dtype == expected.dtype
    assert int(expected.max()) < attn.attention_biases.shape[1]
    assert tiny_vit.Attention._init_buffers is original  # restored on exit
