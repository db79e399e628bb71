import pytest
import torch

from lightning_convshare.layers import AttentionRecorder, ConvProjection, CvTAttention
from lightning_convshare.surgery import apply_surgery
from tests.conftest import tiny_vit


@pytest.mark.parametrize("stride, out_tokens", [(1, 1 + 16), (2, 1 + 4)])
def test_projection_shapes_and_class_token_passthrough(stride, out_tokens):
    proj = ConvProjection(48, (4, 4), num_prefix_tokens=1, kernel_size=3, stride=stride)
    torch.nn.init.normal_(proj.conv.weight)
    x = torch.randn(2, 17, 48)
    out = proj.train()(x)
    assert out.shape == (2, out_tokens, 48)
    assert torch.equal(out[:, 0], x[:, 0])  # the class token is not convolved


def test_register_tokens_pass_through():
    proj = ConvProjection(48, (4, 4), num_prefix_tokens=5)
    x = torch.randn(2, 21, 48)
    assert torch.equal(proj(x)[:, :5], x[:, :5])


def test_identity_init_keeps_the_timm_function_in_eval():
    ref = tiny_vit()
    model = tiny_vit()
    model.load_state_dict(ref.state_dict())
    apply_surgery(model, "cvt_proj")
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(model.eval()(x), ref(x), rtol=1e-4, atol=1e-4)  # BatchNorm eps only


def test_kv_stride_shrinks_keys_and_attention_is_recorded():
    model = tiny_vit()
    apply_surgery(model, {"name": "cvt_proj", "kv_stride": 2})
    assert isinstance(model.blocks[0].attn, CvTAttention)
    with AttentionRecorder(model) as rec:
        model(torch.randn(2, 1, 16, 16))
    assert rec.maps["blocks.0.attn"].shape == (2, 4, 17, 5)


def test_split_projections_become_convshare_layers():
    from lightning_convshare.layers import ConvShareLinear

    model = tiny_vit()
    apply_surgery(model, {"name": "cvt_proj", "convshare": {"padding": "same", "kernel_size": 3}})
    attn = model.blocks[0].attn
    assert all(isinstance(getattr(attn, n), ConvShareLinear) for n in ("q", "k", "v", "proj"))
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 5)
