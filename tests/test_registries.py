"""Every entry of every registry builds and works, as timm parametrises its tests over ``list_models``.

A new conv backend, noise stage, layer init, surgery variant or DataModule is tested here without
writing a test: it must build with its defaults (plus the small sizes below, for speed), run a
forward pass without NaN and, where it has parameters, give every parameter a gradient.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_convshare.layers import ConvShareLinear
from lightning_convshare.lit import DATAMODULES, create_datamodule
from lightning_convshare.optics import CONV_BACKENDS, NOISE_STAGES, create_backend
from lightning_convshare.surgery import LAYER_INITS, VARIANTS, apply_surgery
from tests.conftest import TINY, tiny_vit
from tests.finetune.test_datasets import write_fake_cifar100

#: options that keep the physical simulations small (a 16x16 modulator plane); unknown names get none
SMALL_BACKENDS = {"fourier": {"slm_resolution": [16, 16]}, "optical": {"slm_resolution": [16, 16], "compile": False},
                  "wave": {"slm_resolution": [16, 16]}}


def _layer(backend) -> ConvShareLinear:
    """16 -> 16 features on 4x4 token maps with same-padded 3x3 kernels (a real local filter)."""
    return ConvShareLinear(16, 16, kernel_size=3, padding="same", backend=backend, name="blocks.0.attn.proj")


def _finite_grads(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} has no finite gradient"
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", CONV_BACKENDS.names())
def test_every_conv_backend_runs_forward_and_backward(name):
    layer = _layer(create_backend({"name": name, **SMALL_BACKENDS.get(name, {})})).train()
    x = torch.randn(2, 4, 16, requires_grad=True)  # B, N tokens, D
    out = layer(x)
    assert out.shape == (2, 4, 16)
    _finite_grads(layer, x, out)
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NOISE_STAGES.names())
def test_every_noise_stage_runs_in_the_optical_backend(name):
    backend = create_backend({"name": "optical", **SMALL_BACKENDS["optical"], "noise": [{"name": name}]})
    layer = _layer(backend).train()
    x = torch.randn(2, 4, 16, requires_grad=True)
    out = layer(x)
    _finite_grads(layer, x, out)
    layer.eval()
    with torch.no_grad():
        assert torch.isfinite(layer(x)).all()  # evaluation samples the stage exactly


@pytest.mark.parametrize("init", LAYER_INITS.names())
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_every_layer_init_gives_a_working_layer(init, padding):
    linear = nn.Linear(16, 16)
    layer = ConvShareLinear(16, 16, kernel_size=3, padding=padding, out_policy="crop")
    LAYER_INITS.get(init)(layer, linear)
    assert torch.isfinite(layer.weight).all() and torch.isfinite(layer.bias).all()
    x = torch.randn(3, 4, 16, requires_grad=True)
    _finite_grads(layer, x, layer(x))


def _variant_options(name: str) -> dict:
    return {"name": name} if name != "convshare" else {"name": name, "padding": "same", "kernel_size": 3}


@pytest.mark.parametrize("name", [n for n in VARIANTS.names() if not n.startswith("_")])
def test_every_surgery_variant_keeps_shapes_and_trains_every_parameter(name):
    model = tiny_vit().train()
    report = apply_surgery(model, _variant_options(name))
    assert report.variant == name
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    out = model(x)
    assert out.shape == (2, TINY["num_classes"])
    _finite_grads(model, x, out)


def _datamodule_options(name: str, tmp_path) -> dict:
    """Small sizes, and generated files for the DataModules that read a dataset from disk."""
    if name == "cifar100":
        write_fake_cifar100(tmp_path, n_train=20, n_test=10)
        return {"root": str(tmp_path), "batch_size": 4}
    if name == "imagefolder":
        from PIL import Image

        for split in ("train", "val"):
            for label in ("cat", "dog"):
                folder = tmp_path / split / label
                folder.mkdir(parents=True)
                for i in range(3):
                    Image.new("RGB", (12, 12), (40 * i, 80, 120 if label == "cat" else 200)).save(folder / f"{i}.png")
        return {"root": str(tmp_path), "img_size": 16, "num_classes": 2, "batch_size": 4}
    return {"batch_size": 4}


@pytest.mark.parametrize("name", DATAMODULES.names())
def test_every_datamodule_yields_labelled_batches_of_its_declared_shape(name, tmp_path):
    dm = create_datamodule({"name": name, **_datamodule_options(name, tmp_path)})
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        x, y = next(iter(loader))
        assert x.shape[1:] == (dm.in_chans, dm.img_size, dm.img_size) and x.dtype == torch.float32
        assert torch.isfinite(x).all() and y.dtype == torch.long
        assert int(y.min()) >= 0 and int(y.max()) < dm.num_classes
    assert len(dm.class_names) == dm.num_classes
