import copy
import time

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from lightning_convshare.errors import ConfigError
from lightning_convshare.models import ModelSpec, create_network, linear_state_dict, resolve_source, save_run_checkpoint
from lightning_convshare.models import sources as model_sources
from lightning_convshare.surgery import apply_surgery
from tests.conftest import TINY, tiny_vit

NAME = "vit_tiny_patch16_224"


def _save(model, path):
    if path.suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_weights_file_goes_through_timms_pretrained_path_and_converts_exactly(tmp_path, suffix, monkeypatch):
    ref = tiny_vit()
    path = _save(ref, tmp_path / f"tiny{suffix}")
    calls = []
    real = timm.models._builder.load_pretrained
    monkeypatch.setattr(timm.models._builder, "load_pretrained",
                        lambda model, pretrained_cfg=None, **kw: calls.append(dict(pretrained_cfg)) or real(model, pretrained_cfg, **kw))
    backbone = create_network(ModelSpec(NAME, TINY, {"name": "convshare", "padding": "valid", "kernel_size": "full"},
                                        pretrained=str(path)))
    assert calls and calls[0]["file"] == str(path) and calls[0]["num_classes"] == 5 and calls[0]["input_size"][0] == 1
    x = torch.randn(8, 1, 16, 16)
    torch.testing.assert_close(backbone.model.eval()(x), ref(x), rtol=0, atol=1e-5)
    assert backbone.report.params_after == backbone.report.params_before


def test_file_defaults_head_and_channels_and_timm_adapts_them(tmp_path):
    ref = tiny_vit()
    path = _save(ref, tmp_path / "tiny.safetensors")
    arch = {k: v for k, v in TINY.items() if k not in ("num_classes", "in_chans")}
    kept = create_network(ModelSpec(NAME, arch, pretrained=str(path))).model  # class count and channels read from the file
    assert kept.head.weight.shape == (5, 48) and kept.patch_embed.proj.in_channels == 1
    torch.testing.assert_close(kept.head.weight, ref.head.weight)
    rgb = create_network(ModelSpec(NAME, {**TINY, "in_chans": 3, "num_classes": 7}, pretrained=str(path))).model
    torch.testing.assert_close(rgb.patch_embed.proj.weight, adapt_input_conv(3, ref.patch_embed.proj.weight.detach(), base_chans=1))
    assert rgb.head.weight.shape == (7, 48)  # reset for another class count
    torch.testing.assert_close(rgb.blocks[1].mlp.fc2.weight, ref.blocks[1].mlp.fc2.weight)


def test_position_embeddings_are_resampled_by_timm_for_another_image_size(tmp_path):
    ref = tiny_vit()
    path = _save(ref, tmp_path / "tiny.safetensors")
    big = create_network(ModelSpec(NAME, {**TINY, "img_size": 32}, pretrained=str(path))).model
    assert big.pos_embed.shape == (1, 1 + 8 * 8, 48)
    expected = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=(8, 8), num_prefix_tokens=1)
    torch.testing.assert_close(big.pos_embed, expected)
    assert big(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_run_checkpoint_is_loaded_in_its_exact_linear_form(tmp_path):
    """A ConvShare network (here same padding, 3x3) is stored as dense matrices: a timm ViT computes the same."""
    net = tiny_vit()
    apply_surgery(net, dict(name="convshare", padding="same", kernel_size=3))
    hp = {"model": {"name": NAME, **TINY}, "surgery": dict(name="convshare", padding="same", kernel_size=3)}
    path = save_run_checkpoint(tmp_path / "same3.ckpt", net, hp)
    x = torch.randn(4, 1, 16, 16)
    linear = create_network(ModelSpec.from_source(str(path))).model.eval()  # architecture kwargs from the checkpoint
    torch.testing.assert_close(linear(x), net.eval()(x), rtol=1e-4, atol=1e-5)
    assert isinstance(linear.blocks[0].attn.qkv, torch.nn.Linear)
    again = create_network(ModelSpec.from_source(str(path), surgery=dict(name="convshare", padding="same", kernel_size=3,
                                                                         init="lstsq"))).model
    torch.testing.assert_close(again.eval()(x), net(x), rtol=1e-4, atol=1e-5)  # the matrices are convs: lstsq is exact
    assert resolve_source(path).num_classes() == 5
    per_token = tiny_vit()
    apply_surgery(per_token, dict(name="convshare", padding="same", kernel_size=3, shared=False))
    with pytest.raises(ConfigError, match="shared=false"):
        linear_state_dict(per_token)


def test_weights_that_do_not_fit_name_the_mismatch(tmp_path):
    path = _save(tiny_vit(), tmp_path / "tiny.safetensors")
    with pytest.raises(ConfigError, match=r"do not fit timm vit_tiny_patch16_224.*size mismatch"):
        create_network(ModelSpec(NAME, {**TINY, "embed_dim": 64}, pretrained=str(path)))
    with pytest.raises(ConfigError, match="num_classes is null; set data.num_classes"):
        create_network(ModelSpec(NAME, {**TINY, "num_classes": None}))


def test_hub_weights_fail_within_seconds_when_hf_hub_offline_is_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set and they are not in the local cache"):
        create_network(ModelSpec(NAME, TINY, pretrained=NAME))
    assert time.time() - start < 15


def test_hub_weights_fail_within_seconds_without_network(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probed = []
    monkeypatch.setattr(model_sources, "_reachable", lambda url, timeout=3.0: probed.append(url) or False)
    monkeypatch.setattr(model_sources, "_cached_weights", lambda cfg: None)
    start = time.time()
    with pytest.raises(ConfigError, match=r"did not answer within 3 s \(no network\?\).*--checkpoint FILE"):
        create_network(ModelSpec(NAME, TINY, pretrained=NAME))
    assert time.time() - start < 5 and probed == ["https://huggingface.co"]
    with pytest.raises(ConfigError, match="Invalid pretrained tag"):
        create_network(ModelSpec.from_source(f"{NAME}.no_such_tag"))


def test_hub_weights_come_from_the_cache_without_network(monkeypatch, tmp_path):
    ref = tiny_vit()
    cached = _save(ref, tmp_path / "model.safetensors")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(model_sources, "_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(model_sources, "_cached_weights", lambda cfg: cached)
    model = create_network(ModelSpec(NAME, TINY, pretrained=NAME)).model.eval()
    for key, value in ref.state_dict().items():  # everything but the head: timm resets the hub model's 1000-class head
        if not key.startswith("head."):
            torch.testing.assert_close(model.state_dict()[key], value)
    assert model.pretrained_cfg["file"] == str(cached)


def test_reachability_probe_is_one_quick_request():
    start = time.time()
    assert model_sources._reachable("http://127.0.0.1:9", timeout=2) is False  # nothing listens: refused at once
    assert time.time() - start < 3


def test_linear_state_dict_roundtrip_keeps_the_model():
    net = tiny_vit()
    ref = copy.deepcopy(net)
    apply_surgery(net, dict(name="convshare"))
    state = linear_state_dict(net)
    assert set(state) == set(ref.state_dict())
    fresh = tiny_vit()
    fresh.load_state_dict(state)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(fresh(x), ref(x))
