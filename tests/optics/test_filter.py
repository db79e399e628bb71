"""The Fourier-plane filter models: declared levels, exactness without quantisation, real impulse
responses, and the same error statistics in `optical` (window grid) and `fourier` (plane grid)."""
import math

import pytest
import torch

from lightning_convshare.errors import ConfigError
from lightning_convshare.layers import ConvShareLinear
from lightning_convshare.optics import FourierConv, OpticalConv
from lightning_convshare.optics.device import create_device
from lightning_convshare.optics.fourier_plane import FILTER_MODULATIONS, create_filter


def spectra(n: int = 6, size: int = 5, grid: int = 12) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.fft.fft2(torch.rand(n, size, size, dtype=torch.float64), s=(grid, grid))  # full (Hermitian) spectra


def distinct_angles(phase: torch.Tensor) -> int:
    """Distinct phases modulo 2 pi (rounded to 1e-9 rad)."""
    return len(torch.unique(torch.round(torch.remainder(phase, 2 * math.pi) * 1e9) % round(2 * math.pi * 1e9)))


@pytest.mark.parametrize("levels, phase_levels", [(8, 16), (4, 3), (256, 256)])
def test_a_quantised_complex_filter_has_at_most_its_levels(levels, phase_levels):
    f = create_filter("complex", levels, phase_levels)
    h = spectra()
    h = h / h.abs().amax(dim=(-2, -1), keepdim=True)
    values = f.device_values(h.abs(), h.angle())
    assert len(torch.unique(values["amplitude"])) <= levels
    assert distinct_angles(values["phase"]) <= phase_levels
    realised = f.realise(spectra())
    assert len(torch.unique(torch.round(realised.abs() / realised.abs().amax(dim=(-2, -1), keepdim=True) * 1e9))) <= levels


@pytest.mark.parametrize("levels", [2, 16, 256])
def test_phase_and_amplitude_only_filters_show_at_most_their_levels(levels):
    h = spectra()
    h = h / h.abs().amax(dim=(-2, -1), keepdim=True)
    phases = create_filter("phase", levels).device_values(h.abs(), h.angle())["phase"]  # 2 pixels per value
    assert distinct_angles(phases) <= levels
    amplitudes = create_filter("amplitude", levels).device_values(h.abs(), h.angle())["amplitude"]  # 3 pixels per value
    assert len(torch.unique(amplitudes)) <= levels and amplitudes.min() >= 0 and amplitudes.max() <= 1


def test_unquantised_filters_are_exact_and_complex_unlimited_is_the_ideal():
    assert create_filter("complex") is None  # nothing to simulate: the exact matched filter
    h = spectra()
    for name in ("phase", "amplitude"):  # the encodings themselves are exact; only their levels quantise
        torch.testing.assert_close(create_filter(name).realise(h), h, rtol=0, atol=1e-12 * float(h.abs().max()))


@pytest.mark.parametrize("name", ["complex", "phase", "amplitude"])
def test_a_filter_error_shrinks_with_its_levels(name):
    """The quantised filter converges to the exact one as its levels grow: no error beyond the levels' (an
    amplitude-only filter's Burckhardt components reach 2 / sqrt(3) of the peak magnitude; clipping them at
    the modulator's full amplitude used to cost an offset-encoded 3x3 kernel 3% whatever the levels)."""
    torch.manual_seed(0)
    k = (torch.rand(50, 3, 3, dtype=torch.float64) + 1) / 2  # offset-encoded kernels: a strong DC term
    h = torch.fft.fft2(k, s=(18, 18))
    errors = []
    for levels in (256, 4096, 65536):
        f = create_filter(name, levels, levels if name == "complex" else None)
        kernel = torch.fft.ifft2(f.realise(h)).real[..., :3, :3]
        errors.append(float((kernel - k).norm() / k.norm()))
    assert errors[0] < 2e-2 and errors[1] < 2e-3 and errors[2] < 2e-4, errors
    values = create_filter("amplitude", 256).device_values(h.abs() / h.abs().amax(dim=(-2, -1), keepdim=True), h.angle())
    assert values["amplitude"].max() == 1 and values["amplitude"].min() >= 0  # the largest component at full amplitude


@pytest.mark.parametrize("name, levels", [("complex", 16), ("phase", 16), ("amplitude", 4)])
def test_the_quantisers_keep_a_real_kernel_real(name, levels):
    """Odd-symmetric quantisers keep a Hermitian spectrum Hermitian, so the realised impulse response is real."""
    f = create_filter(name, levels, 16 if name == "complex" else None)
    realised = f.realise(spectra())
    kernel = torch.fft.ifft2(realised)
    assert kernel.imag.abs().max() <= 1e-12 * kernel.real.abs().max()
    assert (realised - spectra()).abs().max() > 1e-3 * spectra().abs().max()  # it did quantise


def test_filter_efficiencies_and_pixels_per_value():
    assert FILTER_MODULATIONS.get("complex").efficiency == FILTER_MODULATIONS.get("phase").efficiency == 1.0
    assert FILTER_MODULATIONS.get("amplitude").efficiency == pytest.approx(0.0760, abs=1e-4)
    assert [FILTER_MODULATIONS.get(n).pixels_per_value for n in ("complex", "phase", "amplitude")] == [(1, 1), (1, 2), (1, 3)]
    with pytest.raises(ConfigError, match="phase-only filter has one `levels`"):
        create_filter("phase", 16, 16)


@pytest.mark.parametrize("geometry", [dict(kernel_size="full"), dict(kernel_size=3, padding="same")], ids=["valid-full", "same-k3"])
@pytest.mark.parametrize("modulation", ["complex", "phase", "amplitude"])
def test_optical_and_fourier_realise_a_device_filter_with_the_same_error_statistics(modulation, geometry):
    """`fourier` quantises the spectrum on the plane's FFT grid (the literal filter), `optical` on each tile's
    window grid: not the same values, the same size of error (within a factor 2), and none without levels."""
    torch.manual_seed(0)
    exact = create_device({"preset": "paper", "filter": {"modulation": modulation}})
    coarse = create_device({"preset": "paper", "filter": {"modulation": modulation, "levels": 16}})
    ref = ConvShareLinear(48, 144, **geometry).double()
    x = torch.randn(3, 7, 48, dtype=torch.float64)
    errors = {}
    for cls in (OpticalConv, FourierConv):
        for dev in (exact, coarse):
            layer = ConvShareLinear(48, 144, **geometry, backend=cls(slm_resolution=64, device=dev, readout="intensity")).double()
            layer.load_state_dict(ref.state_dict())
            with torch.no_grad():
                errors[cls.__name__, dev is coarse] = float((layer(x) - ref(x)).norm() / ref(x).norm())
    assert errors["OpticalConv", False] <= 1e-10 and errors["FourierConv", False] <= 1e-10
    ratio = errors["OpticalConv", True] / errors["FourierConv", True]
    assert errors["FourierConv", True] > 1e-3 and 0.5 < ratio < 2, errors


@pytest.mark.parametrize("h, w", [(8, 8), (7, 5), (6, 9), (1, 4), (12, 12)])
def test_the_dft_matrices_are_rfft2_and_irfft2(h, w):
    from lightning_convshare.optics.fourier_plane import dft_matrices

    torch.manual_seed(0)
    k = torch.randn(5, h, w, dtype=torch.float64)
    forward, inverse = dft_matrices(h, w, torch.float64)
    spectrum = torch.fft.rfft2(k)
    parts = (k.reshape(5, h * w) @ forward).view(5, 2, h, w // 2 + 1)
    torch.testing.assert_close(parts[:, 0], spectrum.real, rtol=0, atol=1e-12)
    torch.testing.assert_close(parts[:, 1], spectrum.imag, rtol=0, atol=1e-12)
    # any half spectrum, Hermitian or not: irfft2 keeps the real part of the self-conjugate columns' terms
    edited = spectrum + torch.randn_like(spectrum)
    back = (torch.cat((edited.real, edited.imag), dim=-2).reshape(5, -1) @ inverse).view(5, h, w)
    torch.testing.assert_close(back, torch.fft.irfft2(edited, s=(h, w)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, levels", [("phase", 256), ("amplitude", 2), ("complex", 16)])
@pytest.mark.parametrize("size, kernel", [((8, 8), (8, 8)), ((8, 8), (3, 3)), ((9, 7), (2, 4)), ((16, 16), (16, 16))])
def test_realised_kernels_equal_the_fft_route_in_values_and_gradients(name, levels, size, kernel):
    """Small grids go through DFT matrices, large ones (16x16 here) through the FFT: the same impulse
    responses as irfft2(realise(rfft2(k))) and the same straight-through gradient."""
    from lightning_convshare.optics.fourier_plane import DFT_MAX_PIXELS, realised_kernels

    torch.manual_seed(0)
    f = create_filter(name, levels)
    k = torch.randn(4, 3, *kernel, dtype=torch.float64, requires_grad=True)
    got = realised_kernels(f, k, size)
    want = torch.fft.irfft2(f.realise(torch.fft.rfft2(k, s=size)), s=size)
    assert got.shape == (4, 3, *size)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert not torch.allclose(got, torch.nn.functional.pad(k, (0, size[1] - kernel[1], 0, size[0] - kernel[0])))
    g = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad((got * g).sum(), k)[0], torch.autograd.grad((want * g).sum(), k)[0])
    assert (size[0] * size[1] <= DFT_MAX_PIXELS) == (size != (16, 16))
