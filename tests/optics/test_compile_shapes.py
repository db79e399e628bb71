"""The compiled simulation in one process across models of different sizes (a regression test: with
automatic dynamic shapes, torch reused one layer's graph for another width after a model of another size
had run, and returned wrong shapes)."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from lightning_convshare.config import compose
from lightning_convshare.models import ModelSpec, create_network
from lightning_convshare.optics import set_backend

pytestmark = pytest.mark.slow


def _pair(dim: int, padding: str, kernel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same network with the device's filter and no noise, compiled and eager."""
    cfg = compose(["optics=optical", "optics.noise=[]", "model.depth=1", f"model.embed_dim={dim}", "model.num_heads=4",
                   f"surgery.padding={padding}", f"surgery.kernel_size={kernel}"])
    spec = ModelSpec.from_hparams(cfg.model, dict(cfg.surgery))
    eager = create_network(spec).model.eval()
    compiled = copy.deepcopy(eager)
    backend = OmegaConf.to_container(cfg.optics, resolve=True)
    set_backend(compiled, {**backend, "compile": True})
    set_backend(eager, {**backend, "compile": False})
    return compiled, eager


def test_models_of_different_widths_in_one_process_get_their_own_graphs():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 16, 16)
    for dim, padding, kernel in [(48, "valid", "full"), (64, "valid", "full"), (64, "same", 3), (48, "same", 3)]:
        compiled, eager = _pair(dim, padding, kernel)
        with torch.no_grad():
            got, want = compiled(x), eager(x)
        assert got.shape == want.shape == (6, 10), (dim, padding, kernel)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
