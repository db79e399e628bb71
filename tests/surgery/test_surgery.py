import copy

import pytest
import timm
import torch

from lightning_convshare.errors import ConfigError, GeometryError, UnknownNameError
from lightning_convshare.layers import Attention, ConvShareLinear
from lightning_convshare.surgery import VARIANTS, apply_surgery, register_variant
from tests.conftest import tiny_vit

# timm ViT families: class token, no class token (avg pool), registers, qk_norm, DeiT distilled (2 prefix tokens)
VIT_CONFIGS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "avgpool_no_cls": ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg")),
    "registers": ("vit_tiny_patch16_224", dict(reg_tokens=4)),
    "qk_norm": ("vit_tiny_patch16_224", dict(qk_norm=True)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
}
SURGERIES = {
    "convshare_valid_full": dict(name="convshare"),
    "convshare_valid_k3_crop": dict(name="convshare", kernel_size=3, out_policy="crop"),
    "convshare_same_k3": dict(name="convshare", padding="same", kernel_size=3),
    "convshare_same_nonshared": dict(name="convshare", padding="same", kernel_size=3, shared=False),
    "convshare_mlp_only_last_block": dict(name="convshare", targets=["mlp"], blocks=[-1], padding="same", kernel_size=5),
}


@pytest.mark.parametrize("family", VIT_CONFIGS)
def test_whole_map_valid_conversion_matches_timm_logits(family):
    name, kwargs = VIT_CONFIGS[family]
    ref = tiny_vit(name, **kwargs)
    model = copy.deepcopy(ref)
    report = apply_surgery(model, {"name": "convshare", "padding": "valid", "kernel_size": "full"})
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
    assert sum(isinstance(m, ConvShareLinear) for m in model.modules()) == 4 * len(model.blocks)
    assert report.params_before == report.params_after


@pytest.mark.parametrize("variant", VARIANTS.names())
def test_every_registered_variant_runs_with_defaults(variant):
    model = tiny_vit().train()
    apply_surgery(model, variant)
    out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("surgery", SURGERIES)
@pytest.mark.parametrize("family", ["vit", "registers", "deit_distilled"])
def test_variants_keep_shapes_and_train_every_parameter(surgery, family):
    name, kwargs = VIT_CONFIGS[family]
    model = tiny_vit(name, **kwargs).train()
    apply_surgery(model, SURGERIES[surgery])
    out = model(torch.randn(3, 1, 16, 16))
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_report_lists_replacements_and_param_counts():
    model = tiny_vit()
    report = apply_surgery(model, dict(name="convshare", padding="same", kernel_size=3))
    names = [r.name for r in report.layers]
    assert "blocks.0.attn" in names and "blocks.1.mlp.fc2" in names
    conv = [r for r in report.layers if r.role in ("qkv", "proj", "fc1", "fc2")]
    assert len(conv) == 8
    assert report.params_after < report.params_before
    assert report.params_after == sum(p.numel() for p in model.parameters())
    fc2 = next(r for r in report.layers if r.name == "blocks.1.mlp.fc2")
    assert "stride 2x2" in fc2.after and fc2.params_after == 9 + 48
    assert "params" in str(report)


def test_per_layer_kernel_mapping_and_block_selection():
    model = tiny_vit(embed_dim=64)  # 8x8 maps, hidden 256 = 16x16
    apply_surgery(model, dict(name="convshare", kernel_size={"qkv": 5, "proj": 5, "fc1": 5, "fc2": 9}, blocks=[1]))
    assert isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)  # block 0 untouched
    assert isinstance(model.blocks[0].attn, Attention)  # but records like the others
    assert model.blocks[1].mlp.fc2.geometry.kernel == (9, 9)
    assert model.blocks[1].attn.qkv.geometry.num_kernels == 12
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 5)


def test_keeps_device_and_dtype():
    model = tiny_vit().double()
    apply_surgery(model, dict(name="convshare", padding="same", kernel_size=3))
    assert {p.dtype for p in model.parameters()} == {torch.float64}


def test_geometry_error_names_the_layer():
    with pytest.raises(GeometryError, match=r"blocks\.0\.mlp\.fc2: .*12x16 token map.*\[11, .full.\]"):
        apply_surgery(tiny_vit(), dict(name="convshare", kernel_size=3))


def test_non_vit_model_gets_a_clear_error():
    with pytest.raises(ConfigError, match="supports timm VisionTransformer.*got ResNet"):
        apply_surgery(timm.create_model("resnet18", pretrained=False), "convshare")


def test_unknown_variant_and_option_suggest_fixes():
    with pytest.raises(UnknownNameError, match=r"unknown surgery variant 'convshar'. Did you mean 'convshare'"):
        apply_surgery(tiny_vit(), "convshar")
    with pytest.raises(ConfigError, match=r"'paddin' \(did you mean 'padding'\?\)"):
        apply_surgery(tiny_vit(), dict(name="convshare", paddin="same"))
    with pytest.raises(ConfigError, match="unknown layer roles"):
        apply_surgery(tiny_vit(), dict(name="convshare", kernel_size={"qkv": 3, "mlp": 3}))
    with pytest.raises(ConfigError, match="out of range for a 2-block model"):
        apply_surgery(tiny_vit(), dict(name="convshare", blocks=[5]))


def test_registering_a_variant_is_a_few_lines():
    @register_variant("_test_half_heads")
    def _half(model):
        from lightning_convshare.surgery.core import swap_attention

        return swap_attention(model)

    try:
        assert "_test_half_heads" in VARIANTS.names("_test*")
        assert apply_surgery(tiny_vit(), "_test_half_heads").variant == "_test_half_heads"
    finally:
        VARIANTS._entries.pop("_test_half_heads")


def test_weights_file_loads_through_timms_pretrained_path_with_head(tmp_path):
    from safetensors.torch import save_file

    from lightning_convshare.models import ModelSpec, create_network

    ref = tiny_vit()
    path = tmp_path / "tiny.safetensors"
    save_file(ref.state_dict(), str(path))
    kwargs = {k: v for k, v in __import__("tests.conftest", fromlist=["TINY"]).TINY.items()}
    loaded = create_network(ModelSpec("vit_tiny_patch16_224", kwargs, "vit", pretrained=str(path))).model.eval()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x), ref(x))  # head kept: the file's class count was passed to timm
    other = create_network(ModelSpec.from_source(str(path), name="vit_tiny_patch16_224",
                                                 kwargs={**kwargs, "num_classes": 3})).model
    assert other.head.weight.shape[0] == 3  # a different class count resets the head
    with pytest.raises(ConfigError, match="does not exist"):
        create_network(ModelSpec("vit_tiny_patch16_224", kwargs, pretrained=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ConfigError, match="needs the timm architecture name"):
        ModelSpec.from_source(str(path))


ATTENTION_VARIANTS = {
    "castling": {"name": "castling"},
    "castling_convshare": {"name": "castling", "convshare": {"padding": "same", "kernel_size": 3}},
    "cvt_proj": {"name": "cvt_proj"},
    "cvt_proj_stride2_convshare": {"name": "cvt_proj", "kv_stride": 2, "convshare": {"kernel_size": "full"}},
}


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_attention_variants_train_without_nan_and_every_parameter_learns(variant):
    model = tiny_vit(class_token=False, global_pool="avg").train()  # every token reaches the logits
    apply_surgery(model, ATTENTION_VARIANTS[variant])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 5
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y) + sum(
            m.aux_loss() for m in model.modules() if hasattr(m, "aux_loss"))
        opt.zero_grad()
        loss.backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
        assert not no_grad, no_grad
        opt.step()
    assert torch.isfinite(loss)


def test_class_token_pooling_leaves_only_the_last_blocks_patch_paths_without_gradient():
    """With token pooling, the last block's patch-token outputs never reach the logits (documented)."""
    for variant, dead in {"castling": {"blocks.1.attn.residual.conv.weight"},
                          "cvt_proj": {"blocks.1.attn.conv_q.conv.weight", "blocks.1.attn.conv_q.norm.weight",
                                       "blocks.1.attn.conv_q.norm.bias"}}.items():
        model = tiny_vit().train()
        apply_surgery(model, variant)
        model(torch.randn(4, 1, 16, 16)).sum().backward()
        assert {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()} == dead
