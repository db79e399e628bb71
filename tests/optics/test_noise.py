"""Each noise stage has the expected statistics; modes, seeds and bad options."""
import pytest
import torch

from lightning_convshare.errors import ConfigError, UnknownNameError
from lightning_convshare.optics import NOISE_STAGES, create_noise
from lightning_convshare.optics.camera import camera_chain
from lightning_convshare.optics.encoding import quantize


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


SIGNALS = torch.tensor([0.05, 0.2, 0.5, 1.0])


@pytest.mark.parametrize("mode", ["exact", "surrogate"])
def test_shot_noise_variance_is_proportional_to_the_signal(mode):
    stage = NOISE_STAGES.create({"name": "shot", "photons": 400, "mode": mode})
    signal = SIGNALS[:, None].expand(4, 100_000)
    out = stage.output(signal, gen())
    torch.testing.assert_close(out.mean(1), SIGNALS, rtol=0, atol=3e-3)
    var = out.var(1)
    torch.testing.assert_close(var / SIGNALS, torch.full((4,), 1 / 400), rtol=0.05, atol=0)  # Var = I / photons
    if mode == "exact":  # whole photon counts
        counts = out * 400
        assert torch.allclose(counts, counts.round(), atol=1e-3)


def test_shot_noise_modes_follow_training_and_the_surrogate_is_differentiable():
    stage = NOISE_STAGES.create({"name": "shot", "photons": 100})
    stage.train()
    assert not stage.exact
    x = torch.full((1000,), 0.3, requires_grad=True)
    stage.output(x, gen()).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 1).any()  # reparameterised: d/dI of sqrt(I/photons) eps
    stage.eval()
    assert stage.exact


def test_read_noise_is_gaussian_with_sigma():
    stage = NOISE_STAGES.create({"name": "read", "sigma": 0.02})
    out = stage.output(torch.full((200_000,), 0.5), gen())
    assert abs(out.mean() - 0.5) < 2e-4 and abs(out.std() - 0.02) < 4e-4
    assert abs(((out - 0.5).abs() < 0.02).float().mean() - 0.6827) < 0.01  # one-sigma mass


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_adc_yields_at_most_2_to_the_bits_levels(bits):
    stage = NOISE_STAGES.create({"name": "adc", "bits": bits})
    x = torch.linspace(-0.2, 1.2, 10_001, requires_grad=True)
    out = stage.output(x, None)
    values = out.detach().unique()
    assert len(values) <= 2**bits and len(values) == 2**bits  # the full range is covered
    assert values.min() == 0 and values.max() == 1  # clipped to full scale
    assert (out.detach() - x.detach().clamp(0, 1)).abs().max() <= 0.5 / (2**bits - 1) + 1e-6
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through


def test_slm_quantises_inputs_and_kernels_to_their_levels():
    stage = NOISE_STAGES.create({"name": "slm", "input_levels": 4, "kernel_levels": 16})
    x = torch.rand(10_000)
    assert len(stage.input(x, None).unique()) <= 4 and len(stage.kernel(x, None).unique()) <= 16
    signed = torch.rand(10_000) * 2 - 1  # a field-readout pass spans [-1, 1]
    q = stage.input(signed, None)
    assert len(q.unique()) <= 4 and q.min() >= -1 and q.max() <= 1
    assert NOISE_STAGES.create({"name": "slm", "levels": 8}).kernel_levels == 8


def test_psf_spreads_a_point_and_conserves_light():
    stage = NOISE_STAGES.create({"name": "psf", "sigma": 1.0})
    assert stage.context == 3
    img = torch.zeros(1, 15, 15)
    img[0, 7, 7] = 1.0
    out = stage.output(img, None)
    assert out.shape == img.shape and abs(out.sum() - 1) < 1e-6
    assert out[0, 7, 7] < 0.2 and out[0, 7, 8] > 0.05 and torch.allclose(out[0], out[0].T)
    assert stage.output(img, None, valid=True).shape == (1, 9, 9)  # the context is consumed


def test_zero_strength_stages_are_the_identity():
    x = torch.rand(1000)
    for spec in ({"name": "shot", "photons": None}, {"name": "read", "sigma": 0}, {"name": "adc", "bits": None},
                 {"name": "psf", "sigma": 0}):
        assert torch.equal(NOISE_STAGES.create(spec).output(x, gen()), x)


def test_consecutive_gaussians_fuse_with_summed_variance():
    x = torch.full((200_000,), 0.25)
    out = camera_chain(x.sqrt(), torch.ones(()), a=1 / 100, b=0.01**2, gen=gen())
    intensity = out.square()
    assert abs(intensity.var() - (0.25 / 100 + 1e-4)) / (0.25 / 100 + 1e-4) < 0.03


def test_quantize_rounds_to_levels():
    torch.testing.assert_close(quantize(torch.tensor([0.0, 0.26, 0.74, 1.3]), 3), torch.tensor([0.0, 0.5, 0.5, 1.0]))


def test_stage_registry_and_bad_options():
    assert {"shot", "read", "adc", "slm", "psf"} <= set(NOISE_STAGES.names())
    stages = create_noise([{"name": "shot", "photons": "1e4"}, "adc"])  # YAML reads 1e4 as a string
    assert stages[0].photons == 1e4 and stages[1].bits == 8
    with pytest.raises(UnknownNameError, match="Did you mean 'shot'"):
        create_noise([{"name": "shots"}])
    with pytest.raises(ConfigError, match="does not accept"):
        create_noise([{"name": "adc", "bit": 8}])
    with pytest.raises(ConfigError, match="not a number"):
        create_noise([{"name": "read", "sigma": "lots"}])
    with pytest.raises(ConfigError, match="must be positive"):
        create_noise([{"name": "shot", "photons": 0}])


@pytest.mark.slow
def test_compiled_four_pass_camera_equals_the_per_pass_chain_with_the_same_draws():
    """optical compile=true: one kernel for the four passes' camera and their recombination, drawing
    Philox normals; fed the same draws, the eager per-pass chain gives the same values and gradients."""
    from lightning_convshare.optics import camera

    torch.manual_seed(0)
    y = torch.rand(2, 1, 40, 2, 24, 1, 1, dtype=torch.float64).requires_grad_()  # A, G, T, Bk, m, oh, ow
    fs = y.detach().amax(dim=(1, 2), keepdim=True).square()  # one plane per pass and kernel
    a, b, levels = 1 / 1e3, 1e-3**2, 256
    out = camera.camera_recombined(y, fs, a, b, levels, gen=gen(3))
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, y, grad_out)

    seed = torch.randint(0, 2**62, (), generator=gen(3))  # the seed the kernel took from the generator
    eps = camera._four_pass_noise(out.shape, "cpu", seed)
    signs = (1, -1, -1, 1)  # ++ - +- - -+ + --
    expected, expected_grad = 0, torch.zeros_like(y)
    for (i, j), e, sign in zip([(0, 0), (0, 1), (1, 0), (1, 1)], eps, signs, strict=True):
        yi, fi = y.detach()[i, :, :, j], fs[i, :, :, j].expand_as(out)
        o, std = camera._camera_forward_eager(yi, fi, e.double(), a, b, levels)
        expected = expected + sign * o
        ratio = torch.where(o > 0, yi / o.clamp_min(1e-12), 0.0)
        expected_grad[i, :, :, j] = sign * grad_out * ratio * (e / std * (a / 2) + 1)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-9, atol=1e-12)
    # the draws are float32: the compiled log/cos may differ from eager's in the last bit
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-9)
    assert {"_recombined_forward", "_recombined_backward"} <= {name for name, _ in camera._COMPILED}  # compiled path
    assert (out.detach() - (y[0, :, :, 0] - y[0, :, :, 1] - y[1, :, :, 0] + y[1, :, :, 1]).detach()).abs().max() > 1e-3


@pytest.mark.slow
def test_compiled_optical_layer_is_seeded_and_has_the_eager_noise_statistics():
    from lightning_convshare.layers import ConvShareLinear
    from lightning_convshare.optics import OpticalConv, noise_disabled, reset_noise

    noise = [{"name": "shot", "photons": 1e3}, {"name": "read", "sigma": 1e-3}, {"name": "adc", "bits": 8}]
    x = torch.randn(8, 17, 64)
    residual = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        layer = ConvShareLinear(64, 192, kernel_size=3, padding="same", backend=OpticalConv(noise=noise, compile=compile_))
        with torch.no_grad():
            with noise_disabled(layer):
                clean = layer(x)
            first = layer(x)
            reset_noise(layer)
            again = layer(x)
            other = layer(x)
        assert torch.equal(first, again) and not torch.equal(first, other)  # reproducible from the seed, fresh per call
        residual[compile_] = first - clean
    assert "compile=True" in repr(layer.backend)
    ratio = residual[True].std() / residual[False].std()
    assert 0.95 < ratio < 1.05, ratio  # the same noise level from Philox draws as from torch.randn
    assert not torch.allclose(residual[True], residual[False])  # other draws (Philox, not torch.randn)


def test_optical_compile_must_be_a_boolean():
    from lightning_convshare.optics import create_backend

    with pytest.raises(ConfigError, match="compile='yes' must be true or false"):
        create_backend({"name": "optical", "compile": "yes"})


def test_a_compile_failure_is_a_clear_config_error(monkeypatch):
    """No C++ compiler (CPU) or Triton (GPU): say so and how to run without compiling."""
    from lightning_convshare.layers import ConvShareLinear
    from lightning_convshare.optics import OpticalConv, camera

    class CppCompileError(RuntimeError):
        pass

    CppCompileError.__module__ = "torch._inductor.exc"

    def failing_compile(fn, **kwargs):  # torch.compile's signature
        def run(*args):
            raise CppCompileError("C++ compile error\nCommand: g++ ... not found")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(camera, "_COMPILED", {})
    layer = ConvShareLinear(64, 96, backend=OpticalConv(noise=[{"name": "shot", "photons": 1e3}], compile=True)).train()
    with pytest.raises(ConfigError, match=r"C\+\+ compile error\). It needs a C\+\+ compiler.*optics.compile=false"):
        layer(torch.randn(2, 5, 64))


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["offset"])  # the default; the others compile the same code with other weights
def test_compiled_simulation_matches_eager_for_every_encoding(encoding):
    """compile=true runs the whole simulated layer as compiled kernels (no autograd through it): the
    deterministic effects (device filter, SLM levels, ADC) give eager's values; the noise has eager's level."""
    from lightning_convshare.layers import ConvShareLinear
    from lightning_convshare.optics import OpticalConv, noise_disabled

    torch.manual_seed(0)
    x = torch.randn(8, 17, 64, dtype=torch.float64)
    noise = ["device"]
    results = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        layer = ConvShareLinear(64, 192, backend=OpticalConv(device="lcos-scmos", noise=noise, encoding=encoding, compile=compile_)).double()
        with torch.no_grad():
            with noise_disabled(layer):
                clean = layer(x)
            layer.backend.stages = layer.backend.stages[:1]  # the SLM's levels only: deterministic
            slm = layer(x)
            layer.backend.stages = OpticalConv(device="lcos-scmos", noise=noise).stages.double()
            noisy = layer(x)
        results[compile_] = clean, slm, noisy - clean
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-9, atol=1e-10)
    ratio = results[True][2].std() / results[False][2].std()
    assert 0.95 < ratio < 1.05, ratio
