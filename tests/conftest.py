"""Shared test set-up: 2 threads, offline W&B and hub, fixed seeds, tiny timm ViTs and configs."""
from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

TINY = dict(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=48, depth=2, num_heads=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vit(name: str = "vit_tiny_patch16_224", **overrides) -> torch.nn.Module:
    """A tiny timm ViT (img 16, patch 4, dim 48 -> 6x8 maps, depth 2) in eval mode."""
    return timm.create_model(name, pretrained=False, **{**TINY, **overrides}).eval()


@pytest.fixture
def tiny_cfg(tmp_path):
    """Compose a tiny, fast config (synthetic data, CSV logging, CPU) with extra overrides."""
    from lightning_convshare.config import compose

    def _compose(*overrides: str):
        return compose([
            "data=synthetic", "logger=csv", "trainer=cpu",
            "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
            "trainer.max_epochs=2", f"run.root={tmp_path / 'runs'}",
            *overrides,
        ])

    return _compose
