"""Each noise stage has the expected statistics; modes, seeds and bad options."""
import pytest
import torch

from lightning_convshare.errors import ConfigError, UnknownNameError
from lightning_convshare.optics import NOISE_STAGES, create_noise
from lightning_convshare.optics.encoding import camera_chain, quantize


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
def test_compiled_camera_chain_matches_eager_with_the_same_draws():
    """optical compile=true: torch.compile'd camera math, the same random stream, the same gradients."""
    from lightning_convshare.layers import ConvShareLinear
    from lightning_convshare.optics import OpticalConv

    noise = [{"name": "shot", "photons": 1e3}, {"name": "read", "sigma": 1e-3}, {"name": "adc", "bits": 8}]
    outs, grads = [], []
    for compile_ in (False, True):
        torch.manual_seed(0)
        layer = ConvShareLinear(64, 192, kernel_size=3, padding="same", backend=OpticalConv(noise=noise, compile=compile_))
        x = torch.randn(4, 17, 64, requires_grad=True)
        out = layer(x)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out.square().sum(), (x, layer.weight)))
    assert "compile=True" in repr(layer.backend)
    diff = (outs[0] - outs[1]).abs()
    # float rounding may move a value across an ADC level: allow a handful of such flips, nothing else
    assert (diff > 1e-4).float().mean() < 1e-3 and diff.median() < 1e-6
    from lightning_convshare.optics import encoding

    assert {"_camera_forward", "_camera_backward"} <= set(encoding._COMPILED)  # the compiled path ran
    for g_eager, g_compiled in zip(*grads, strict=True):
        assert float((g_eager - g_compiled).norm() / g_eager.norm()) < 1e-3


def test_optical_compile_must_be_a_boolean():
    from lightning_convshare.optics import create_backend

    with pytest.raises(ConfigError, match="compile='yes' must be true or false"):
        create_backend({"name": "optical", "compile": "yes"})
