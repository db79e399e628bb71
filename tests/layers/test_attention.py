import pytest
import torch

from lightning_convshare.layers import Attention, AttentionRecorder
from lightning_convshare.surgery import apply_surgery
from tests.conftest import tiny_vit


@pytest.mark.parametrize("kwargs", [dict(), dict(qk_norm=True), dict(reg_tokens=2)])
def test_recording_keeps_outputs_and_returns_probabilities(kwargs):
    model = tiny_vit(**kwargs)
    x = torch.randn(2, 1, 16, 16)
    ref = model(x)
    apply_surgery(model, "vit")
    torch.testing.assert_close(model(x), ref)  # fused path: the same module objects
    with AttentionRecorder(model) as rec:
        recorded = model(x)
    torch.testing.assert_close(recorded, ref, rtol=1e-5, atol=1e-5)
    n = 16 + 1 + kwargs.get("reg_tokens", 0)
    assert list(rec.maps) == ["blocks.0.attn", "blocks.1.attn"]
    for a in rec.maps.values():
        assert a.shape == (2, 4, n, n)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, n))


def test_recording_is_switched_off_and_cleared_after_the_block():
    model = tiny_vit()
    apply_surgery(model, "vit")
    with pytest.raises(RuntimeError):
        with AttentionRecorder(model):
            model(torch.randn(1, 1, 16, 16))
            raise RuntimeError("boom")
    attn = model.blocks[0].attn
    assert attn.record is False and attn.attn_probs is None


def test_recorder_without_recording_modules_says_what_to_do():
    with pytest.raises(ValueError, match="apply a surgery variant"):
        with AttentionRecorder(tiny_vit()):
            pass


def test_recorded_maps_keep_graph_when_asked():
    model = tiny_vit()
    apply_surgery(model, "vit")
    with AttentionRecorder(model, detach=False) as rec:
        model(torch.randn(1, 1, 16, 16))
    rec.maps["blocks.1.attn"].sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_standalone_attention_matches_timm():
    from timm.layers import Attention as TimmAttention

    timm_attn = TimmAttention(48, num_heads=4, qkv_bias=True).eval()
    ours = Attention.from_timm(timm_attn)
    x = torch.randn(2, 9, 48)
    torch.testing.assert_close(ours(x), timm_attn(x))
    fresh = Attention(48, num_heads=4, qkv_bias=True)
    assert fresh(x).shape == (2, 9, 48)
