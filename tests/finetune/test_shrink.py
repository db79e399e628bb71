"""Shrinking conversion (conversion/shrink.py): a trained ViT annealed into small-kernel ConvShare form."""
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from lightning_convshare.conversion import (
    ShrinkingLayer,
    ShrinkSchedule,
    as_target,
    shrink_metrics,
    shrink_state,
    shrinking_layers,
    tap_index,
    window_distance,
)
from lightning_convshare.errors import ConfigError
from lightning_convshare.layers import ConvShareLinear
from lightning_convshare.lit import create_module
from lightning_convshare.models import load_run_checkpoint
from lightning_convshare.surgery import LAYER_INITS
from lightning_convshare.surgery.init import conv_matrix
from tests.conftest import TINY, tiny_vit
from tests.finetune.test_lstsq import GEOMETRIES

NAME = "vit_tiny_patch16_224"
SURGERIES = {
    "same_k3": dict(name="convshare", padding="same", kernel_size=3, init="lstsq"),
    "valid_k3_crop": dict(name="convshare", kernel_size=3, out_policy="crop", init="lstsq"),
}
SHRINK = {"support": [0.0, 0.5], "blend": [0.25, 0.75], "ease": "cosine"}


def _layer(case):
    d_in, d_out, opts = GEOMETRIES[case]
    linear, conv = nn.Linear(d_in, d_out).double(), ConvShareLinear(d_in, d_out, **opts).double()
    LAYER_INITS.get("lstsq")(conv, linear)
    return ShrinkingLayer(linear, conv)


@pytest.mark.parametrize("case", GEOMETRIES)
def test_tap_index_and_window_distance_describe_the_conv_matrix(case):
    layer = _layer(case)
    g = layer.conv.geometry
    index = tap_index(g)
    w = torch.randn(g.num_kernels, *g.kernel, dtype=torch.float64)
    M = conv_matrix(w, g)
    torch.testing.assert_close(M, torch.where(index >= 0, w.flatten()[index.clamp_min(0)], torch.zeros_like(M)))
    dist = window_distance(g)
    assert torch.equal(dist == 0, index >= 0)  # inside the window of its output <=> a tap reaches the pixel
    assert dist.min() == 0 and dist.max() >= 1


@pytest.mark.parametrize("case", GEOMETRIES)
def test_the_anneal_goes_from_the_linear_layer_to_the_conv_layer(case):
    layer = _layer(case)
    x = torch.randn(2, 5, layer.conv.in_features, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.linear(x), rtol=0, atol=0)  # the start is the linear layer, exactly
    layer.set_state(0.5, 0.5)
    weight, bias = layer.effective()
    torch.testing.assert_close(layer(x), x @ weight.T + bias)  # the blend is one linear map
    torch.testing.assert_close(weight, 0.5 * layer.linear_part() + 0.5 * conv_matrix(layer.conv.weight, layer.conv.geometry))
    gaps = layer.gaps()
    assert 0 < gaps["outside"] < 1 and 0 < gaps["linear"] < 1
    layer.set_state(1.0, 0.99)  # support shrunk: the linear weights outside the windows are exactly zero
    assert torch.all(layer.linear_part()[~layer.inside] == 0) and torch.all(layer.effective()[0][~layer.inside] == 0)
    assert layer.gaps()["outside"] == 0 and layer.support == layer.conv.geometry.kernel[0]
    layer.set_state(1.0, 1.0)  # the end: the ConvShare layer itself, at its target size
    torch.testing.assert_close(layer(x), layer.conv(x), rtol=0, atol=0)
    layer.convert_()
    assert layer.converted and layer.gaps() == {"outside": 0.0, "linear": 0.0}
    assert layer.conv.weight.shape[-2:] == layer.conv.geometry.kernel and layer.conv.geometry.kernel[0] < layer.conv.geometry.map_shape[0]
    torch.testing.assert_close(layer(x), layer.conv(x), rtol=0, atol=0)
    # every gradient reaches both parts while blending
    layer.converted = False
    layer.set_state(0.5, 0.5)
    layer(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.linear.weight, layer.conv.weight, layer.conv.bias))


def test_schedule():
    s = ShrinkSchedule.create({"support": [0.0, 0.4], "blend": [0.2, 0.6], "ease": "linear"})
    assert s.end == 0.6 and s.at(0.0) == (0.0, 0.0) and s.at(0.2) == pytest.approx((0.5, 0.0))
    assert s.at(0.4) == pytest.approx((1.0, 0.5)) and s.at(0.9) == (1.0, 1.0)
    assert ShrinkSchedule.create({}).ease == "cosine" and ShrinkSchedule.create({"ease": "cosine"}).at(0.075)[0] < 0.25
    with pytest.raises(ConfigError, match=r"support = \[0.5, 0.2\] must satisfy"):
        ShrinkSchedule.create({"support": [0.5, 0.2]})
    with pytest.raises(ConfigError, match="must be \\[start, end\\]"):
        ShrinkSchedule.create({"blend": 0.5})
    with pytest.raises(ConfigError, match="must end by the end of the blend"):
        ShrinkSchedule.create({"support": [0.0, 0.8], "blend": [0.0, 0.5]})
    with pytest.raises(ConfigError, match="unknown distill.shrink options \\['radius'\\]"):
        ShrinkSchedule.create({"radius": 2})
    with pytest.raises(ConfigError, match="ease 'step'"):
        ShrinkSchedule.create({"ease": "step"})


@pytest.fixture
def source(tmp_path):
    """A tiny ViT with confident logits (untrained ones are near uniform), as a weights file."""
    ref = tiny_vit()
    with torch.no_grad():
        ref.head.weight.mul_(5)
        for block in ref.blocks:
            block.attn.qkv.weight.mul_(6)
    path = tmp_path / "teacher.safetensors"
    save_file(ref.state_dict(), str(path))
    return ref, path


def _student(path, surgery, **distill):
    return create_module(OmegaConf.create({
        "model": {"name": NAME, "pretrained": False, **TINY}, "surgery": surgery, "init_from": None,
        "optim": {"name": "adamw", "lr": 1e-3}, "loss": {"label_smoothing": 0.0},
        "distill": {"source": str(path), "shrink": SHRINK, **distill},
    }))


@pytest.mark.parametrize("surgery", SURGERIES)
def test_shrinking_starts_as_the_vit_and_ends_as_the_target_architecture(source, surgery, tmp_path):
    ref, path = source
    module = _student(path, SURGERIES[surgery]).eval()
    layers = shrinking_layers(module.net)
    assert sorted(layers) == sorted(f"blocks.{b}.{p}" for b in range(2) for p in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    x = torch.randn(4, 1, 16, 16)
    logits = module(x)
    with as_target(module.net):  # the one-shot conversion is far from the ViT: the comparison below can fail
        assert (module(x) - ref(x)).abs().max() > 0.5
    torch.testing.assert_close(logits, ref(x), rtol=0, atol=1e-5)  # the start: the ViT's logits
    torch.testing.assert_close(logits, module.teacher(x), rtol=0, atol=1e-5)  # and the teacher's
    assert not module.fully_converted and module.converted_blocks() == []

    def saved(name):
        ckpt = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
        module.on_save_checkpoint(ckpt)
        torch.save(ckpt, tmp_path / name)
        return ckpt, load_run_checkpoint(tmp_path / name).model.eval()

    shrink_state(module.net, module.shrink, 0.4)  # half-way: a checkpoint rebuilds the network as it is (linear form)
    ckpt, rebuilt = saved("half.ckpt")
    assert ckpt["hyper_parameters"]["surgery"]["blocks"] == [] and not any(".linear." in k for k in ckpt["state_dict"])
    torch.testing.assert_close(rebuilt(x), module(x))
    with as_target(module.net):  # what converting now would give
        target = module(x)
    shrink_state(module.net, module.shrink, module.shrink.end - 1e-9)
    before = module(x)
    assert shrink_state(module.net, module.shrink, module.shrink.end) == list(layers)
    assert module.fully_converted and module.converted_blocks() == [0, 1]
    torch.testing.assert_close(module(x), before, atol=1e-5, rtol=1e-4)  # converting at the end changes nothing
    torch.testing.assert_close(module(x), target)
    metrics = shrink_metrics(module.net)
    assert metrics == {"support": 3.0, "blend": 1.0, "outside": 0.0, "linear": 0.0}
    ckpt, rebuilt = saved("end.ckpt")  # the end: a plain ConvShare checkpoint with 3x3 kernels everywhere
    assert ckpt["hyper_parameters"]["surgery"].get("blocks") is None
    convs = [m for m in rebuilt.modules() if isinstance(m, ConvShareLinear)]
    assert len(convs) == 8 and all(m.geometry.kernel == (3, 3) and m.weight.shape[-2:] == (3, 3) for m in convs)
    torch.testing.assert_close(rebuilt(x), module(x))


def test_a_few_steps_reduce_the_distillation_loss_while_shrinking(source):
    _, path = source
    module = _student(path, SURGERIES["same_k3"], logit_weight=1.0, attn_weight=1.0).train()
    shrink_state(module.net, module.shrink, 0.45)  # support nearly 3x3, output partly the ConvShare layers': drifted
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 5, (16,))
    opt = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    first = module.distill_losses(x, y)
    for _ in range(10):
        loss = module.distill_losses(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = module.distill_losses(x, y)
    assert first["kd"] > 0.01 and last["kd"] < 0.7 * first["kd"], (first["kd"], last["kd"])
    assert last["attn"] < first["attn"]


def test_shrink_options_are_checked(source):
    _, path = source
    with pytest.raises(ConfigError, match="choose one"):
        _student(path, SURGERIES["same_k3"], progressive={"every_n_epochs": 1})
    with pytest.raises(ConfigError, match="unknown distill.shrink options"):
        _student(path, SURGERIES["same_k3"], shrink={"tie": [0, 1]})
    with pytest.raises(ConfigError, match="shared kernels"):
        _student(path, {**SURGERIES["same_k3"], "shared": False})
