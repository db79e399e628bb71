"""Signed-value encodings: each equals direct noise-free and uses the passes it declares; the offset
encodings' shot-noise variance matches its analytic expression; float32 conditioning."""
import pytest
import torch

from lightning_convshare.layers import ConvShareLinear
from lightning_convshare.optics import FourierConv, OpticalConv, WaveConv, create_backend
from lightning_convshare.optics.signed import SIGNED_ENCODINGS, create_encoding

ENCODINGS = {"pseudo_negativity": 4, "input_offset": 2, "kernel_offset": 2, "offset": 1}
GEOMETRIES = {
    "valid-full": dict(kernel_size="full"),
    "valid-k3": dict(kernel_size=3, out_policy="crop"),
    "same-k3": dict(kernel_size=3, padding="same"),
    "same-k4-strided-fc2": dict(kernel_size=4, padding="same"),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_the_registry_declares_the_pass_counts():
    assert set(SIGNED_ENCODINGS.names()) == set(ENCODINGS)
    for name, passes in ENCODINGS.items():
        assert create_encoding(name).passes == passes
        assert create_backend({"name": "optical", "encoding": name}).passes == passes
    assert create_backend({"name": "optical", "encoding": "offset", "readout": "field"}).passes == 1


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "nonshared"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES.values()), ids=list(GEOMETRIES))
@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("cls", [OpticalConv, FourierConv], ids=["optical", "fourier"])
def test_each_encoding_equals_direct_noise_free_with_its_passes(cls, encoding, geometry, shared):
    """float64 (the algebra; float32 below); a small SLM puts the maps on several planes."""
    torch.manual_seed(0)
    ref = ConvShareLinear(48, 144, shared=shared, num_tokens=7, **geometry).double()
    layer = ConvShareLinear(48, 144, shared=shared, num_tokens=7, **geometry,
                            backend=cls(slm_resolution=[30, 44], encoding=encoding, readout="intensity")).double()
    layer.load_state_dict(ref.state_dict())
    seen = []
    field = layer.backend.field if cls is OpticalConv else layer.backend.camera_field
    if cls is OpticalConv:
        layer.backend.field = lambda x, k, layout: seen.append((x.shape[0], k.shape[0])) or field(x, k, layout)
    else:
        layer.backend.camera_field = lambda s, k, fft: seen.append((s.shape[0], k.shape[1])) or field(s, k, fft)
    x = torch.randn(3, 7, 48, dtype=torch.float64)
    assert rel(layer(x), ref(x)) <= 1e-5
    A, Bk = seen[0]
    assert A * Bk == ENCODINGS[encoding]  # input parts x kernel parts: the passes the camera takes


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_encodings_in_float32_on_the_default_models_layers(encoding):
    """The offsets cancel in the electronics: float32 keeps ~1e-5 relative for 64-tap kernels, the one-pass
    offset about 3e-5 at 256 taps (docs/optics.md); the camera's own 16-bit ADC step is 1.5e-5 of full scale."""
    torch.manual_seed(0)
    bound = {"pseudo_negativity": 2e-6, "input_offset": 1.5e-5, "kernel_offset": 1e-5, "offset": 6e-5}[encoding]
    for d_in, d_out in ((64, 192), (256, 64)):  # 8x8 and 16x16 whole-map kernels (qkv, fc2)
        ref = ConvShareLinear(d_in, d_out)
        layer = ConvShareLinear(d_in, d_out, backend=OpticalConv(encoding=encoding))
        layer.load_state_dict(ref.state_dict())
        x = torch.randn(16, 17, d_in)
        assert rel(layer(x), ref(x)) <= bound


@pytest.mark.parametrize("encoding, bound", [("pseudo_negativity", 5e-3), ("input_offset", 2e-2), ("offset", 6e-2)])
def test_the_wave_reference_runs_every_encoding(encoding, bound):
    """Wave optics against `fourier` with the same encoding (bench/wave.py's setting: 3x3 smooth kernel, random
    maps, embed 2 x lens 2). The propagation's residual is relative to all the light on the camera; an offset's
    light cancels electronically, so the residual of the result grows with it (measured 1.9e-3, 9.8e-3, 4.5e-2)."""
    torch.manual_seed(0)
    smooth = torch.tensor([[0.2, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 0.2]], dtype=torch.float64)[None]
    x = torch.randn(1, 3, 48, dtype=torch.float64)
    outs = []
    for backend in (WaveConv(slm_resolution=[32, 48], encoding=encoding),
                    FourierConv(slm_resolution=[32, 48], encoding=encoding, readout="intensity")):
        layer = ConvShareLinear(48, 48, kernel_size=3, padding="same", backend=backend).double()
        with torch.no_grad():
            layer.weight.copy_(smooth)
        outs.append(layer(x))
    assert rel(outs[0], outs[1]) <= bound


@pytest.mark.parametrize("encoding", ["offset", "input_offset", "kernel_offset"])
def test_offset_encoding_shot_noise_variance_matches_its_analytic_expression(encoding):
    """Shot noise of e photo-electrons at full scale: each recovered pass sqrt(fs (I + n)) has variance
    fs / (4 e); the result x * k = sum w y - offsets has (sx sk)^2 sum_ab w_ab^2 fs_ab / (4 e) (fs_ab: the
    brightest read pixel's y^2 of pass ab's plane), the same at every pixel."""
    torch.manual_seed(0)
    e, draws = 1e4, 400
    layer = ConvShareLinear(64, 32, backend=OpticalConv(encoding=encoding, noise=[{"name": "shot", "photons": e, "mode": "surrogate"}]))
    x = torch.randn(4, 17, 64)
    with torch.no_grad():
        outs = torch.stack([layer(x) for _ in range(draws)])  # draws, B, N, 32
    var = outs.var(dim=0)  # per pixel
    # by hand: the normalised parts and their fields (one plane holds all 68 maps; full scales per kernel)
    maps = x.reshape(68, 64)
    k = layer.weight.detach().reshape(32, 64)
    sx, sk = maps.abs().max(), k.abs().max(dim=1).values  # plane full scale, kernel full scales
    xn, kn = maps / sx, k / sk[:, None]
    enc = create_encoding(encoding)
    u = ((xn + 1) / 2)[None] if enc.offsets_inputs else torch.stack((xn.clamp_min(0), (-xn).clamp_min(0)))  # A, T, D
    v = ((kn + 1) / 2)[None] if enc.offsets_kernels else torch.stack((kn.clamp_min(0), (-kn).clamp_min(0)))  # Bk, m, D
    y = torch.einsum("atd,bmd->abtm", u, v)  # A, Bk, T, m: every pass's field
    fs = y.square().amax(dim=2)  # A, Bk, m: the brightest read pixel of each pass's plane
    w2 = torch.tensor(enc.weights).square()[..., None]  # A, Bk, 1
    analytic = (w2 * fs).sum(dim=(0, 1)) / (4 * e) * (sx * sk) ** 2  # m
    if encoding == "offset":  # written out: 16 fs / (4 e) = 4 fs / e
        torch.testing.assert_close(analytic, 4 * fs[0, 0] / e * (sx * sk) ** 2)
    assert torch.allclose(analytic, enc.shot_noise_variance(fs, e) * (sx * sk) ** 2)
    measured = var.reshape(68, 32).mean(dim=0)  # per kernel, over its 68 pixels
    ratio = measured / analytic
    assert ((ratio - 1).abs() < 0.05).all(), ratio
