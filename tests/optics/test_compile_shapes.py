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
    # the width goes 48 -> 64 -> 48 and the padding changes on the way back (each compiles cold in ~25 s here)
    for dim, padding, kernel in [(48, "valid", "full"), (64, "valid", "full"), (48, "same", 3)]:
        compiled, eager = _pair(dim, padding, kernel)
        with torch.no_grad():
            got, want = compiled(x), eager(x)
        assert got.shape == want.shape == (6, 10), (dim, padding, kernel)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_changing_a_live_backends_numbers_reaches_the_compiled_simulation():
    """The compiled simulation keeps only its value guards (camera.value_guards_only): a number changed on a
    backend after the first compile (ADC bits, photons, noise off) still changes what it computes, exactly as
    a backend built with that number."""
    from lightning_convshare.optics import physical_backends

    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    cfg = compose(["optics=optical", "model.depth=1", "model.embed_dim=32", "model.num_heads=2"])
    base = create_network(ModelSpec.from_hparams(cfg.model, dict(cfg.surgery))).model.eval()
    backend = OmegaConf.to_container(cfg.optics, resolve=True)
    noise = [{"name": "shot", "photons": 1e3}, {"name": "adc", "bits": 12}]

    def run(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            for b in physical_backends(model):
                b.reset_noise()
            return model(x)

    live = copy.deepcopy(base)
    set_backend(live, {**backend, "noise": noise, "compile": True})
    first = run(live)
    for b in physical_backends(live):  # a coarser ADC and more light, set on the live backends
        for stage in b.stages:
            if hasattr(stage, "bits"):
                stage.bits = 4
            if hasattr(stage, "photons"):
                stage.photons = 1e5
    changed = run(live)
    fresh = copy.deepcopy(base)
    set_backend(fresh, {**backend, "noise": [{"name": "shot", "photons": 1e5}, {"name": "adc", "bits": 4}],
                        "compile": True})
    assert not torch.allclose(first, changed)
    torch.testing.assert_close(changed, run(fresh), rtol=0, atol=0)
    for b in physical_backends(live):
        b.noise_enabled = False
    clean = copy.deepcopy(base)
    set_backend(clean, {**backend, "noise": [], "compile": True})
    torch.testing.assert_close(run(live), run(clean), rtol=1e-6, atol=1e-6)


def test_the_guard_filter_keeps_value_guards_and_drops_identity_guards():
    from types import SimpleNamespace

    from lightning_convshare.optics.camera import INDUCTOR_OPTIONS, value_guards_only

    def entry(name, guard_type, is_global=False):
        return SimpleNamespace(name=name, guard_type=guard_type, is_global=is_global)

    kept = value_guards_only([
        entry("L['maps']", "TENSOR_MATCH"),
        entry("L['backend'].stages[2].bits", "CONSTANT_MATCH"),
        entry("L['layout'].tile", "SEQUENCE_LENGTH"),
        entry("L['backend'].encoding", "TYPE_MATCH"),
        entry("L['maps']", "DUPLICATE_INPUT", is_global=True),
        entry("G['group_amax']", "CLOSURE_MATCH", is_global=True),
        entry("G['TINY']", "CONSTANT_MATCH", is_global=True),
        entry("L['backend'].camera_chain", "CLOSURE_MATCH"),
        entry("dict(type(L['layout']).__dict__)['lead'].fget.__code__", "ID_MATCH"),
        entry("L['layout'].__dict__", "NOT_PRESENT_IN_GENERIC_DICT"),
    ])
    assert kept == [True, True, True, True, True, False, False, False, False, False]
    if hasattr(torch.compiler, "skip_guard_on_globals_unsafe"):
        assert INDUCTOR_OPTIONS["guard_filter_fn"] is value_guards_only


def _scaled(x, factor=2.0, *, shift=1.0):
    return x * factor + shift


def test_each_variant_compiles_its_own_copy_of_the_code(monkeypatch):
    """``camera.compiled(fn, variant)``: one Dynamo cache per variant (a copy of the code object each), the
    same results as the function, defaults and keyword defaults kept; ``None`` compiles the function itself."""
    from lightning_convshare.optics import camera

    monkeypatch.setattr(camera, "_COMPILED", {})
    copy_ = camera._own_code(_scaled, 3)
    assert copy_.__code__ is not _scaled.__code__ and copy_.__name__ == "_scaled__3"
    assert copy_(torch.ones(2)).tolist() == [3.0, 3.0] and copy_(torch.ones(2), 3.0, shift=0.0).tolist() == [3.0, 3.0]
    x = torch.arange(4.0)
    runs = {v: camera.compiled(_scaled, v) for v in (None, (4,), (8,))}
    assert len({id(r) for r in runs.values()}) == 3 and camera.compiled(_scaled, (4,)) is runs[(4,)]
    for run in runs.values():
        torch.testing.assert_close(run(x), _scaled(x), rtol=0, atol=0)
    assert sorted(camera._COMPILED, key=str) == sorted([("_scaled", v) for v in runs], key=str)
