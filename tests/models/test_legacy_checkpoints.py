"""Checkpoints written before the models/ package (tests/fixtures/legacy) load and evaluate as they did."""
from pathlib import Path

import pytest
import torch

from lightning_convshare.lit import ConvShareClassifier
from lightning_convshare.models import load_run_checkpoint, read_run_checkpoint
from lightning_convshare.optics import OpticalConv, noise_disabled

LEGACY = Path(__file__).parent.parent / "fixtures" / "legacy"
CASES = {"train": "train_same_k3_optical.ckpt", "converted": "converted_valid_k3_crop.ckpt"}


@pytest.fixture(scope="module")
def expected():
    return torch.load(LEGACY / "expected_logits.pt", weights_only=True)


@pytest.mark.parametrize("key", list(CASES))
def test_a_legacy_checkpoint_rebuilds_its_network_backend_and_noise(key, expected):
    path = LEGACY / CASES[key]
    x = expected["input"]
    module = ConvShareClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected[f"{key}/module"], rtol=1e-5, atol=1e-6)  # same noise draws
        with noise_disabled(module):
            torch.testing.assert_close(module(x), expected[f"{key}/noise_free"], rtol=1e-5, atol=1e-6)
        net = load_run_checkpoint(path).model.eval()
        torch.testing.assert_close(net(x), expected[f"{key}/network"], rtol=1e-5, atol=1e-6)
    backend = module.net.blocks[0].attn.qkv.backend
    assert isinstance(backend, OpticalConv) == (key == "train")
    assert read_run_checkpoint(path)["hyper_parameters"]["model"]["name"] == "vit_tiny_patch16_224"
