import math

import pytest
import torch

from lightning_convshare.layers import AttentionRecorder, linear_angular_attention, linear_angular_probs
from lightning_convshare.surgery import apply_surgery
from tests.conftest import tiny_vit


def explicit_linear_angular(q, k, v):
    """The N x N form, written from the definition: (1/2 + cos(q, k)/pi) normalised per query."""
    cos = torch.einsum("bhnd,bhmd->bhnm", q, k) / (q.norm(dim=-1)[..., :, None] * k.norm(dim=-1)[..., None, :])
    sim = 0.5 + cos / math.pi
    return (sim / sim.sum(-1, keepdim=True)) @ v


def test_associative_form_equals_materialised_form():
    q, k, v = (torch.randn(2, 3, 50, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(linear_angular_attention(q, k, v), explicit_linear_angular(q, k, v))
    probs = linear_angular_probs(q, k)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 50, dtype=torch.float64))
    assert probs.min() > 0  # 1/2 + cos/pi >= 1/2 - 1/pi > 0: a proper distribution


def test_linear_term_of_the_angular_kernel():
    """1 - theta/pi and its linear term 1/2 + cos/pi agree to first order around orthogonal vectors."""
    cos = torch.tensor([-0.2, -0.1, -0.05, 0.05, 0.1, 0.2], dtype=torch.float64)
    residual = (1 - torch.arccos(cos) / math.pi) - (0.5 + cos / math.pi)
    ratio = residual / (cos**3 / (6 * math.pi))  # the next Taylor term: the residual is third order
    assert ((ratio > 1) & (ratio < 1.05)).all(), ratio


def castling_model(**options):
    model = tiny_vit()
    apply_surgery(model, {"name": "castling", **options})
    return model


def test_recorded_attention_is_the_implied_matrix_and_output_uses_it():
    model = castling_model(aux_softmax=False)
    attn = model.blocks[0].attn
    x = torch.randn(2, 17, 48)
    with AttentionRecorder(model):
        out_recorded = attn(x)
        probs = attn.attn_probs
    assert probs.shape == (2, 4, 17, 17)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 17))
    torch.testing.assert_close(attn(x), out_recorded)  # recording does not change the output


def test_softmax_branch_is_off_in_eval_and_without_effect_once_its_mask_is_zero():
    model = castling_model(mask_init=1.0)
    x = torch.randn(2, 1, 16, 16)
    model.train()
    with_mask = model(x)
    model.eval()
    assert not torch.allclose(model(x), with_mask)  # the branch is active while training
    for blk in model.blocks:
        torch.nn.init.zeros_(blk.attn.mask)
    model.train()  # no dropout in tiny_vit: train and eval differ only by the branch
    torch.testing.assert_close(model(x), model.eval()(x))


def test_eval_never_touches_the_softmax_branch(monkeypatch):
    model = castling_model().eval()
    calls = []
    monkeypatch.setattr(torch.Tensor, "softmax", lambda self, *a, **k: calls.append(1) or torch.Tensor.exp(self))
    model(torch.randn(1, 1, 16, 16))
    assert not calls


def test_aux_loss_drives_the_mask_to_zero():
    model = castling_model(mask_weight=1e-3)
    masks = [blk.attn.mask for blk in model.blocks]
    opt = torch.optim.Adam(masks, lr=0.1)
    start = sum(m.abs().mean().item() for m in masks)
    for _ in range(60):
        loss = sum(blk.attn.aux_loss() for blk in model.blocks)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sum(m.abs().mean().item() for m in masks) < 0.1 * start


def test_prefix_tokens_get_no_depthwise_residual():
    model = castling_model(aux_softmax=False)
    attn = model.blocks[0].attn
    torch.nn.init.normal_(attn.residual.conv.weight)
    v = torch.randn(2, 4, 17, 12)
    res = attn.residual(v)
    assert res[:, :, 0].abs().max() == 0 and res[:, :, 1:].abs().max() > 0


def test_weights_transfer_from_timm():
    import copy

    ref = tiny_vit()
    model = copy.deepcopy(ref)
    apply_surgery(model, "castling")
    for name in ("qkv", "proj"):
        assert torch.equal(getattr(model.blocks[0].attn, name).weight, getattr(ref.blocks[0].attn, name).weight)


def test_cost_grows_linearly():
    """No N x N tensor is formed outside recording and the training-only branch."""
    model = castling_model(aux_softmax=False).eval()
    seen = []
    hook = torch.nn.Module.register_forward_hook
    for blk in model.blocks:
        hook(blk.attn, lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(torch.randn(1, 1, 16, 16))
    assert all(s[-1] == 48 for s in seen)


def test_variant_rejects_dynamic_image_size():
    from lightning_convshare.errors import ConfigError

    with pytest.raises(ConfigError, match="fixed image size"):
        apply_surgery(tiny_vit(dynamic_img_size=True), "castling")


def test_gate_anneals_and_switches_the_branch_off_in_training_too():
    model = castling_model(mask_decay=(0.25, 0.75))
    attn = model.blocks[0].attn
    gates = []
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        attn.on_progress(p)
        gates.append(attn.branch_gate)
    assert gates[:2] == [1.0, 1.0] and gates[2] == pytest.approx(0.5) and gates[3:] == [0.0, 0.0]
    for blk in model.blocks:
        blk.attn.on_progress(0.9)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(model.train()(x), model.eval()(x))  # switched off: training = inference
    state = model.state_dict()
    fresh = castling_model()
    fresh.load_state_dict(state)
    assert fresh.blocks[0].attn.branch_gate == 0.0  # the schedule's state is checkpointed
