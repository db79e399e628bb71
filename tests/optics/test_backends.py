"""fourier == direct, guard bands, pseudo-negativity, optical == fourier, gradients, chunking."""
import itertools

import pytest
import torch

from lightning_convshare.layers import ConvShareLinear, DirectConv
from lightning_convshare.optics import FourierConv, OpticalConv, create_backend, noise_disabled, set_backend
from lightning_convshare.optics.encoding import recombine_passes, split_signed
from lightning_convshare.surgery import apply_surgery
from tests.conftest import tiny_vit


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def layers_of(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, ConvShareLinear)}


# real ConvShare geometries from surgery on tiny ViTs: 6x8 (non-square) token maps, 192-dim fc1 -> 12x16,
# class token or class + register tokens; valid/same, odd/even/per-role kernels (fc2 is strided)
SURGERY = {
    "valid-full": dict(padding="valid", kernel_size="full"),
    "valid-k3-crop": dict(padding="valid", kernel_size=3, out_policy="crop"),
    "valid-k2x5-crop": dict(padding="valid", kernel_size=[2, 5], out_policy="crop"),
    "same-k3": dict(padding="same", kernel_size=3),
    "same-k4": dict(padding="same", kernel_size=4),
    "same-per-role": dict(padding="same", kernel_size={"qkv": 5, "proj": 3, "fc1": 5, "fc2": 7}),
}
MODELS = {"cls+2reg": {"reg_tokens": 2}, "no-cls": {"class_token": False, "global_pool": "avg"}}


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "nonshared"])
@pytest.mark.parametrize("model_kw", list(MODELS.values()), ids=list(MODELS))
@pytest.mark.parametrize("surgery", list(SURGERY.values()), ids=list(SURGERY))
def test_fourier_equals_direct_on_real_layers(surgery, model_kw, shared):
    torch.manual_seed(0)
    model = tiny_vit(depth=1, **model_kw)
    apply_surgery(model, {"name": "convshare", **surgery, "shared": shared, "backend": "direct"})
    # a small SLM: several planes per layer (chunking: test_fourier_stays_under_its_memory_budget...)
    fourier = {"name": "fourier", "slm_resolution": [30, 44]}
    n_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    for name, layer in layers_of(model).items():
        x = torch.randn(2, n_tokens, layer.in_features)
        ref = layer(x)
        layer.backend = create_backend(fourier)
        out = layer(x)
        assert out.shape == ref.shape
        assert rel(out, ref) <= 1e-4, name


def test_fourier_model_equals_direct_model():
    torch.manual_seed(0)
    direct, fourier = tiny_vit(), tiny_vit()
    fourier.load_state_dict(direct.state_dict())
    apply_surgery(direct, {"name": "convshare", "padding": "same", "kernel_size": 3})
    apply_surgery(fourier, {"name": "convshare", "padding": "same", "kernel_size": 3, "backend": {"name": "fourier"}})
    x = torch.randn(4, 1, 16, 16)
    assert rel(fourier(x), direct(x)) <= 1e-4


@pytest.mark.parametrize("kernel, guard", [(3, 1), (5, 2), (4, 2)])
def test_guard_band_one_pixel_short_leaks(kernel, guard):
    """Same padding reaches (k-1)/2 pixels past each map: that many dark pixels keep tiles apart."""
    torch.manual_seed(0)
    layer = ConvShareLinear(48, 48, kernel_size=kernel, padding="same")
    x = torch.randn(2, 9, 48)
    ref = layer(x)
    outs = {}
    for g in ("auto", guard, guard - 1):
        layer.backend = FourierConv(slm_resolution=64, guard=g)
        outs[g] = layer(x)
    assert layer.backend.layout((6, 8), (kernel, kernel), (1, 1), (6, 8)).guard == (guard - 1, guard - 1)
    assert rel(outs["auto"], ref) <= 1e-5 and rel(outs[guard], ref) <= 1e-5
    leak = (outs[guard - 1] - ref).abs().reshape(2, 9, -1, 6, 8)  # B, N, m, h, w
    assert rel(outs[guard - 1], ref) > 1e-2  # neighbours' light reaches the read pixels
    r = kernel // 2
    interior = leak[..., r:-r or None, r:-r or None]
    assert interior.max() <= 1e-5 * ref.abs().max()  # ... only within the kernel's reach of a tile edge


def test_valid_padding_needs_no_guard():
    ref = ConvShareLinear(48, 48, kernel_size=3, padding="valid", out_policy="crop")
    layer = ConvShareLinear(48, 48, kernel_size=3, padding="valid", out_policy="crop", backend=FourierConv(slm_resolution=64))
    layer.load_state_dict(ref.state_dict())
    assert layer.backend.layout((6, 8), (3, 3), (1, 1), (4, 6)).guard == (0, 0)  # tiles touch: 8 x 8 = 64 per plane
    x = torch.randn(2, 5, 48)
    assert rel(layer(x), ref(x)) <= 1e-5


def test_pseudo_negativity_recombination_is_exact():
    torch.manual_seed(0)
    x, k = torch.randn(5, 7), torch.randn(7, 3)
    parts = split_signed(x)  # 2, 5, 7 non-negative
    assert (parts >= 0).all() and torch.equal(parts[0] - parts[1], x)
    kp = split_signed(k)  # 2, 7, 3
    passes = torch.einsum("ati,bij->atbj", parts, kp)[:, None]  # A, G=1, T, Bk, m
    assert (passes >= 0).all()
    torch.testing.assert_close(recombine_passes(passes)[0], x @ k, rtol=0, atol=1e-6)
    # the whole four-pass intensity pipeline without noise reproduces the signed conv
    for kwargs in (dict(kernel_size="full"), dict(kernel_size=3, padding="same")):
        ref = ConvShareLinear(48, 144, **kwargs)
        four = ConvShareLinear(48, 144, **kwargs, backend=OpticalConv(slm_resolution=64))
        four.load_state_dict(ref.state_dict())
        tokens = torch.randn(3, 7, 48)
        assert rel(four(tokens), ref(tokens)) <= 1e-5


EFFECTS = [
    {"noise": [{"name": "slm", "input_levels": 16, "kernel_levels": 8}]},
    {"aperture": 0.8},
    {"noise": [{"name": "psf", "sigma": 0.8}, {"name": "adc", "bits": 6}]},
    {"aperture": 0.9, "noise": [{"name": "slm", "levels": 32}, {"name": "psf", "sigma": 0.6}, {"name": "adc", "bits": 8}]},
]


@pytest.mark.parametrize("effects", EFFECTS, ids=["slm", "aperture", "psf+adc", "all"])
@pytest.mark.parametrize("shared, guard", [(True, "auto"), (True, 0), (False, "auto"), (False, 2)])
def test_optical_equals_fourier_with_the_same_effects(effects, shared, guard):
    """float64: ADC rounding would turn float32 rounding differences into whole steps on rare pixels."""
    torch.manual_seed(0)
    ref = ConvShareLinear(48, 144, kernel_size=3, padding="same", shared=shared, num_tokens=7).double()
    x = torch.randn(4, 7, 48, dtype=torch.float64)
    outs = []
    for cls in (FourierConv, OpticalConv):
        layer = ConvShareLinear(48, 144, kernel_size=3, padding="same", shared=shared, num_tokens=7,
                                backend=cls(slm_resolution=[40, 56], guard=guard, readout="intensity", **effects))
        layer.double().load_state_dict(ref.state_dict())
        outs.append(layer(x))
    assert rel(outs[1], outs[0]) <= 1e-10
    assert rel(outs[0], ref(x)) > 1e-3  # the effects do change the result


def test_fused_camera_matches_stage_by_stage():
    torch.manual_seed(0)
    noise = [{"name": "shot", "photons": 1e3}, {"name": "read", "sigma": 1e-2}, {"name": "adc", "bits": 6}]
    x = torch.randn(8, 17, 64, requires_grad=True)
    results = []
    for fused in (True, False):
        layer = ConvShareLinear(64, 192, backend=OpticalConv(noise=noise, grad="pathwise")).train()
        torch.manual_seed(1)
        torch.nn.init.normal_(layer.weight, std=0.1)
        if not fused:
            layer.backend.camera_chain = lambda: None  # the dispatcher falls back to stage by stage
        assert layer.backend.camera_path() == ("fused" if fused else "stages")
        y = layer(x)
        results.append((y, *torch.autograd.grad(y.square().sum(), [x, layer.weight])))
    for a, b in zip(*results, strict=True):
        assert rel(a, b) <= 1e-5


BACKENDS = {
    "direct-conv": {"name": "direct", "impl": "conv"},
    "fourier-field": {"name": "fourier"},
    "fourier-intensity": {"name": "fourier", "readout": "intensity", "noise": [{"name": "shot", "photons": 1e4}]},
    "optical-noisy": {"name": "optical", "aperture": 0.9, "grad": "pathwise",
                      "noise": [{"name": "slm"}, {"name": "shot", "photons": 1e4}, {"name": "read"}, {"name": "adc"}]},
    "optical-psf": {"name": "optical", "grad": "pathwise",
                    "noise": [{"name": "psf", "sigma": 0.7}, {"name": "shot", "photons": 1e4}]},
    "optical-ideal-grad": {"name": "optical", "noise": [{"name": "shot", "photons": 1e4}, {"name": "adc"}]},
    "wave": {"name": "wave", "slm_resolution": [24, 32]},
}


GRADIENT_CASES = [  # the wave reference shares fourier's code path for non-shared kernels: shared only (slow)
    pytest.param(spec, shared, id=f"{name}-{'shared' if shared else 'nonshared'}")
    for name, spec in BACKENDS.items() for shared in (True, False) if shared or name != "wave"
]


@pytest.mark.parametrize("spec, shared", GRADIENT_CASES)
def test_gradients_reach_the_weights_through_every_backend(spec, shared):
    torch.manual_seed(0)
    layer = ConvShareLinear(48, 48, kernel_size=3, padding="same", shared=shared, num_tokens=3,
                            backend=create_backend(spec)).train()
    x = torch.randn(2, 3, 48, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    for name, grad in (("weight", layer.weight.grad), ("bias", layer.bias.grad), ("input", x.grad)):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    if spec["name"] in ("fourier",) and "noise" not in spec:  # the ideal simulation has the exact gradient
        ref = ConvShareLinear(48, 48, kernel_size=3, padding="same", shared=shared, num_tokens=3)
        ref.load_state_dict(layer.state_dict())
        ref(x.detach()).square().sum().backward()
        assert rel(layer.weight.grad, ref.weight.grad) <= 1e-4


def test_fourier_stays_under_its_memory_budget_by_chunking():
    torch.manual_seed(0)
    layer = ConvShareLinear(64, 64, backend=FourierConv(slm_resolution=[32, 48], memory_budget_mb=0.25))
    x = torch.randn(4, 17, 64)
    out = layer(x)
    plan = layer.backend.last_plan
    assert plan.planes == 3 and plan.kernels == 64
    assert plan.naive_bytes > 0.25 * 2**20  # the naive planes x kernels product would not fit
    assert plan.chunk_bytes <= 0.25 * 2**20 and plan.chunks > 1
    layer.backend.memory_budget_mb = 1e4  # one chunk: the same numbers
    torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-6)


def test_noise_off_is_exactly_noise_free_and_seeds_reproduce():
    torch.manual_seed(0)
    model = tiny_vit(depth=1)
    apply_surgery(model, {"name": "convshare", "padding": "same", "kernel_size": 3})
    x = torch.randn(2, 1, 16, 16)
    set_backend(model, {"name": "optical"})
    clean = model(x)
    noisy_spec = {"name": "optical", "noise": [{"name": "shot", "photons": 100}, {"name": "read", "sigma": 0.01},
                                               {"name": "adc", "bits": 6}]}
    set_backend(model, noisy_spec)
    with noise_disabled(model):
        assert torch.equal(model(x), clean)
    a = model(x)
    assert not torch.equal(a, clean)
    set_backend(model, noisy_spec)  # fresh backends: the same seeded streams
    assert torch.equal(model(x), a)
    set_backend(model, {**noisy_spec, "seed": 1})
    assert not torch.equal(model(x), a)
    zero = {"name": "optical", "noise": [{"name": "shot", "photons": None}, {"name": "read", "sigma": 0},
                                         {"name": "adc", "bits": None}]}
    set_backend(model, zero)
    assert torch.equal(model(x), clean)


def test_backend_overrides_per_layer():
    model = tiny_vit()
    apply_surgery(model, {"name": "convshare", "backend": {"name": "optical"},
                          "backend_overrides": {"blocks.*.mlp.fc2": {"name": "fourier"}, "blocks.0.attn.qkv": "direct"}})
    kinds = {n: type(m.backend).__name__ for n, m in layers_of(model).items()}
    assert kinds["blocks.0.mlp.fc2"] == kinds["blocks.1.mlp.fc2"] == "FourierConv"
    assert kinds["blocks.0.attn.qkv"] == "DirectConv" and kinds["blocks.1.attn.qkv"] == "OpticalConv"
    from lightning_convshare.errors import ConfigError

    with pytest.raises(ConfigError, match="match no converted layer"):
        apply_surgery(tiny_vit(), {"name": "convshare", "backend_overrides": {"blocks.*.mlp.fc3": "fourier"}})


def test_backends_know_the_layer_padding_however_they_are_assigned():
    layer = ConvShareLinear(48, 48, kernel_size=5, padding="same", backend=OpticalConv())
    assert layer.backend.pad == (2, 2, 2, 2)
    layer.backend = FourierConv()
    assert layer.backend.pad == (2, 2, 2, 2)
    assert isinstance(ConvShareLinear(48, 48).backend, DirectConv)


@pytest.mark.parametrize("impl", ["conv", "matrix", "fft"])
def test_optical_window_correlation_impls_agree(impl):
    torch.manual_seed(0)
    ref = ConvShareLinear(48, 144, kernel_size=3, padding="same")
    layer = ConvShareLinear(48, 144, kernel_size=3, padding="same", backend=OpticalConv(impl=impl, readout="field"))
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 48)
    assert rel(layer(x), ref(x)) <= 1e-5


NOISE = [{"name": "shot", "photons": 1e3}, {"name": "read", "sigma": 1e-3}, {"name": "adc", "bits": 8}]


@pytest.mark.parametrize("geometry", [dict(), dict(kernel_size=3, padding="same")], ids=["whole-map", "same-k3"])
@pytest.mark.parametrize("name", ["optical", "fourier"])
def test_ideal_grad_is_the_simulated_forward_with_the_noise_free_gradient(name, geometry):
    """grad=ideal: the same forward values (the same draws) as pathwise, and exactly the gradient of
    the noise-free convolution at the same input and weights."""
    torch.manual_seed(0)
    ref = ConvShareLinear(64, 96, **geometry)
    x = torch.randn(4, 17, 64, requires_grad=True)
    grad_out = torch.randn(4, 17, 96)
    results = {}
    for grad in ("pathwise", "ideal"):
        spec = {"name": name, "readout": "intensity", "noise": NOISE, "slm_resolution": [64, 96], "grad": grad}
        layer = ConvShareLinear(64, 96, **geometry, backend=create_backend(spec)).train()
        layer.load_state_dict(ref.state_dict())
        y = layer(x)
        results[grad] = (y.detach(), *torch.autograd.grad(y, (x, layer.weight), grad_out))
    y_ref = ref(x)
    g_ref = torch.autograd.grad(y_ref, (x, ref.weight), grad_out)
    assert torch.equal(results["ideal"][0], results["pathwise"][0])
    assert rel(results["ideal"][0], y_ref) > 1e-3  # the forward is the noisy measurement
    for got, want in zip(results["ideal"][1:], g_ref, strict=True):  # the same maths, summed in another order
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(results["pathwise"][1:], g_ref, strict=True):  # through the simulation: near, not equal
        assert 0 < rel(got, want) < 0.5  # (the reparameterised noise term is large on dim pixels at 1e3 photons)


def test_pathwise_gradient_through_the_adc_stays_bounded():
    """Readings rounded to zero carry no gradient (the sqrt recovery's derivative there is 1 / 0):
    through 8-bit ADC, shot and read noise the pathwise gradient stays close to the ideal one."""
    torch.manual_seed(0)
    ref = ConvShareLinear(64, 192)
    x = torch.randn(16, 17, 64, requires_grad=True)
    grads = []
    for layer in (ref, ConvShareLinear(64, 192, backend=OpticalConv(noise=NOISE, grad="pathwise")).train()):
        layer.load_state_dict(ref.state_dict())
        grads.append(torch.autograd.grad(layer(x).square().sum(), layer.weight)[0])
    cosine = float((grads[0] * grads[1]).sum() / (grads[0].norm() * grads[1].norm()))
    assert cosine > 0.95 and 0.8 < float(grads[1].norm() / grads[0].norm()) < 1.25


def test_bad_backend_options_fail_clearly():
    from lightning_convshare.errors import ConfigError, GeometryError

    with pytest.raises(ConfigError, match="readout=intensity"):
        create_backend({"name": "fourier", "noise": [{"name": "shot"}]})  # the default readout is field
    with pytest.raises(ConfigError, match="does not accept"):
        create_backend({"name": "optical", "photons": 3})
    with pytest.raises(ConfigError, match="grad 'exact' is not one of"):
        create_backend({"name": "optical", "grad": "exact"})
    layer = ConvShareLinear(48, 48, kernel_size=3, padding="same", backend=OpticalConv(slm_resolution=6))
    with pytest.raises(GeometryError, match="slm_resolution >= 8"):
        layer(torch.randn(1, 2, 48))


def test_all_backends_registered():
    from lightning_convshare.optics import CONV_BACKENDS

    assert {"direct", "fourier", "optical", "wave"} <= set(CONV_BACKENDS.names())
    assert list(itertools.islice(CONV_BACKENDS, 1))


@pytest.mark.parametrize("spec", [{"name": "fourier"}, {"name": "optical", "noise": [{"name": "adc"}]}], ids=["fourier", "optical"])
def test_mixed_precision_simulates_in_float32(spec):
    torch.manual_seed(0)
    ref = ConvShareLinear(48, 144, kernel_size=3, padding="same")
    layer = ConvShareLinear(48, 144, kernel_size=3, padding="same", backend=create_backend(spec))
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
        maps = torch.randn(2, 5, 8, 8, dtype=torch.bfloat16)
        assert layer.backend(maps, layer.weight, (1, 1)).dtype == torch.bfloat16  # the backend keeps the dtype
    full = layer(x)  # the same simulation in float32: only the bf16 rounding of the inputs differs
    assert torch.isfinite(out).all() and rel(out.float(), full) < 0.03


@pytest.mark.parametrize("kw", [{"kernel_size": 3, "padding": "same"}, {}], ids=["same-k3", "valid-whole-map"])
def test_the_ideal_gradient_trains_under_bf16_autocast(kw):
    """trainer=gpu's bf16-mixed on the optical backend (grad ideal): between autocast linears the maps and the
    upstream gradient are bfloat16 and the weight float32; the backward computes in their common type and
    returns each input's type, close to the float32 gradient (the convolution-backward path and the whole-map
    matrix path)."""
    torch.manual_seed(0)
    before, after = torch.nn.Linear(32, 48), torch.nn.Linear(144, 10)
    layer = ConvShareLinear(48, 144, backend=create_backend({"name": "optical", "noise": [], "grad": "ideal"}), **kw)
    x = torch.randn(2, 5, 32)
    grads = {}
    for precision in ("bf16", "float32"):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            h = before(xi)
            assert h.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
            out = after(layer(h))
        out.float().square().mean().backward()
        assert layer.weight.grad.dtype == torch.float32 and xi.grad.dtype == torch.float32
        grads[precision] = (xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone())
    for got, want in zip(grads["bf16"], grads["float32"], strict=True):
        assert torch.isfinite(got).all() and rel(got, want) < 0.05


@pytest.mark.parametrize("variant", [
    {"name": "castling", "convshare": {"padding": "same", "kernel_size": 3}},
    {"name": "cvt_proj", "kv_stride": 2, "convshare": {"kernel_size": 3, "out_policy": "crop"}},
])
def test_castling_and_cvt_convshare_layers_run_through_the_4f_backends(variant):
    """The variants' ConvShare linears (cvt's split q/k/v included) take the optical backends like any other."""
    torch.manual_seed(0)
    model = tiny_vit(depth=1)
    apply_surgery(model, variant)
    model.eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ConvShareLinear)}
    assert len(layers) == (4 if variant["name"] == "cvt_proj" else 2) + 2  # attention linears + fc1, fc2
    x = torch.randn(2, 1, 16, 16)
    direct = model(x)
    set_backend(model, {"name": "fourier", "slm_resolution": [40, 60]})
    assert all(type(m.backend).__name__ == "FourierConv" for m in layers.values())
    assert rel(model(x), direct) <= 1e-4
    set_backend(model, {"name": "optical", "readout": "field"})
    assert rel(model(x), direct) <= 1e-4
    set_backend(model, {"name": "optical"})  # camera intensity readout, four pseudo-negative passes
    clean = model(x)
    assert rel(clean, direct) <= 1e-3
    set_backend(model, {"name": "optical", "noise": [{"name": "shot", "photons": 1e5}, {"name": "adc", "bits": 10}]})
    noisy = model(x)
    assert 0 < rel(noisy, clean) < 0.2
    noisy.square().mean().backward()
    grads = [m.weight.grad for m in layers.values()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
