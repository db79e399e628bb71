"""The gathered-weight ``direct`` implementation equals the literal per-map convolution.

``impl: gather`` runs a ConvShare layer as one ``F.linear`` whose weight is gathered from the kernel
bank; ``impl: conv`` pads every token map and convolves it. They must agree in values and in the
gradients of the kernels, the bias and the input, for every geometry the layer supports.
"""
import pytest
import torch
import torch.nn.functional as F

import lightning_convshare.layers.backend as backend
from lightning_convshare.layers import ConvShareLinear, DirectConv, conv_operator
from lightning_convshare.layers.backend import auto_impl, gathered_weight

CASES = {
    "same-3": dict(in_features=48, out_features=144, kernel_size=3, padding="same"),
    "same-4-even": dict(in_features=48, out_features=48, kernel_size=4, padding="same"),
    "same-2x4": dict(in_features=48, out_features=96, kernel_size=[2, 4], padding="same"),
    "same-3-strided-fc2": dict(in_features=192, out_features=48, kernel_size=3, padding="same"),
    "same-4-strided-crop": dict(in_features=256, out_features=60, kernel_size=4, padding="same", out_policy="crop"),
    "valid-5": dict(in_features=64, out_features=64, kernel_size=5, padding="valid"),
    "valid-3-crop": dict(in_features=64, out_features=192, kernel_size=3, padding="valid", out_policy="crop"),
    "valid-2x4-crop": dict(in_features=48, out_features=48, kernel_size=[2, 4], padding="valid", out_policy="crop"),
    "valid-3-crop-fc2": dict(in_features=256, out_features=64, kernel_size=3, padding="valid", out_policy="crop"),
    "valid-full": dict(in_features=48, out_features=144, kernel_size="full", padding="valid"),
}
TOKENS = 5


def _pair(case: dict, shared: bool) -> tuple[ConvShareLinear, ConvShareLinear]:
    """The same layer (same kernels and bias) with ``impl: gather`` and with ``impl: conv``, in float64."""
    gather = ConvShareLinear(**case, shared=shared, num_tokens=TOKENS, backend=DirectConv("gather")).double()
    with torch.no_grad():
        gather.bias.normal_()
    conv = ConvShareLinear(**case, shared=shared, num_tokens=TOKENS, backend=DirectConv("conv")).double()
    conv.load_state_dict(gather.state_dict())
    return gather, conv


def _values_and_grads(layer: ConvShareLinear, x: torch.Tensor, grad: torch.Tensor):
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(grad)
    return out.detach(), x.grad, layer.weight.grad, layer.bias.grad


@pytest.mark.parametrize("native", [True, False], ids=["index_select", "tap-gather"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-token"])
@pytest.mark.parametrize("name", list(CASES))
def test_gather_equals_literal_conv_in_values_and_gradients(name, shared, native, monkeypatch):
    # both backward paths of the gathered weight: the native scatter-add (small matrices) and the
    # gather of each tap's entries (large ones)
    monkeypatch.setattr(backend, "NATIVE_GATHER_MAX", 1 << 30 if native else 0)
    case = CASES[name]
    gather, conv = _pair(case, shared)
    assert gather.backend.runs_as_linear(gather.geometry, 1) and not conv.backend.runs_as_linear(conv.geometry, 1 << 20)
    x = torch.randn(3, TOKENS, case["in_features"], dtype=torch.float64)
    grad = torch.randn(3, TOKENS, case["out_features"], dtype=torch.float64)
    for got, want, what in zip(_values_and_grads(gather, x, grad), _values_and_grads(conv, x, grad),
                               ("output", "input gradient", "kernel gradient", "bias gradient"), strict=True):
        assert got.shape == want.shape, what
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"{name}: {what}")


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name", ["same-3", "same-3-strided-fc2", "valid-3-crop"])
def test_gathered_weight_holds_exactly_the_taps(name, shared):
    """Every matrix entry is one kernel tap or zero: the matrix equals the conv of the identity basis bit for bit,
    cropped to the real pixels and the layer's outputs."""
    layer = ConvShareLinear(**CASES[name], shared=shared, num_tokens=TOKENS).double()
    g = layer.geometry
    (hp, wp), (h, w), (top, _, left, _) = g.padded_shape, g.map_shape, g.pad
    basis = torch.eye(hp * wp, dtype=torch.float64).reshape(hp * wp, 1, hp, wp)
    if shared:
        A = F.conv2d(basis, layer.weight.unsqueeze(1), stride=g.stride).flatten(1)  # Hp*Wp, m*P
    else:
        bank = layer.weight.reshape(-1, 1, *g.kernel)  # N*m, 1, kh, kw
        A = F.conv2d(basis.expand(-1, TOKENS, -1, -1), bank, stride=g.stride, groups=TOKENS)
        A = A.reshape(hp * wp, TOKENS, -1).transpose(0, 1)  # N, Hp*Wp, m*P
    pixels = ((torch.arange(h)[:, None] + top) * wp + torch.arange(w) + left).flatten()
    want = A[..., pixels, : g.out_features].transpose(-1, -2)  # [N,] D_out, D_in
    assert torch.equal(gathered_weight(layer.weight, g), want)
    assert torch.equal(conv_operator(layer.weight, (hp, wp), g.stride), A)


def test_gather_under_bf16_autocast_matches_float32():
    layer = ConvShareLinear(**CASES["same-3"], backend=DirectConv("gather"))
    x = torch.randn(4, TOKENS, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), rtol=0.05, atol=0.05)
    out.float().square().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.abs().sum() > 0


def test_seam_impls_agree():
    """At the backend seam (padded maps in, ``(B, N, m, oh, ow)`` out) matrix and gather are the gathered
    operator, and equal the literal conv."""
    maps = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    for weight in (torch.randn(4, 3, 2, dtype=torch.float64), torch.randn(3, 4, 3, 2, dtype=torch.float64)):
        want = DirectConv("conv")(maps, weight, (2, 1))
        assert want.shape == (2, 3, 4, 4, 6)
        for impl in ("matrix", "gather", "auto"):
            torch.testing.assert_close(DirectConv(impl)(maps, weight, (2, 1)), want, rtol=1e-12, atol=1e-12)


def test_auto_rule():
    # the default model's layers at a batch of 64 (17 tokens): the dense form
    assert auto_impl((10, 10), (3, 3), (1, 1), 64 * 17) == "matrix"  # same 3x3, 8x8 maps
    assert auto_impl((17, 17), (3, 3), (2, 2), 64 * 17) == "matrix"  # fc2: 16x16 -> 8x8
    assert auto_impl((16, 16), (16, 16), (1, 1), 1) == "matrix"  # whole map: the kernels are the matrix
    # wide maps, small kernels: the matrix does too many multiply-adds, or is too large for a few maps
    assert auto_impl((64, 64), (3, 3), (1, 1), 1 << 16) == "conv"
    assert auto_impl((50, 66), (3, 3), (1, 1), 17) == "conv"
    # large kernels with many outputs, where the caller has an FFT
    assert auto_impl((64, 64), (33, 33), (1, 1), 1, fft=True) == "fft"
    assert auto_impl((64, 64), (33, 33), (1, 1), 1) == "conv"


def test_which_layers_run_as_linear():
    same = ConvShareLinear(64, 192, kernel_size=3, padding="same").geometry
    wide = ConvShareLinear(4096, 4096, kernel_size=3, padding="same").geometry
    whole = ConvShareLinear(64, 192).geometry
    assert DirectConv("auto").runs_as_linear(same, 64 * 17)
    assert not DirectConv("auto").runs_as_linear(wide, 64 * 17)
    assert DirectConv("gather").runs_as_linear(wide, 1)
    assert not DirectConv("conv").runs_as_linear(whole, 64 * 17)  # conv: the literal convolution, always
    assert DirectConv("matrix").runs_as_linear(whole, 1) and not DirectConv("matrix").runs_as_linear(same, 64 * 17)

    class Scaled(DirectConv):  # a subclass that changes the conv is always called
        def forward(self, maps, weight, stride):
            return 0.5 * super().forward(maps, weight, stride)

    assert not Scaled("gather").runs_as_linear(same, 64 * 17)


def test_optical_windows_use_the_same_rule(monkeypatch):
    import lightning_convshare.optics.optical as optical

    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return auto_impl(*args, **kwargs)

    monkeypatch.setattr(optical, "auto_impl", spy)
    windows, kernels = torch.randn(2, 3, 10, 10), torch.randn(4, 3, 3)
    out = optical.correlate_windows(windows, kernels, (1, 1))
    assert calls == [(((10, 10), (3, 3), (1, 1), 6), {"fft": True})]
    torch.testing.assert_close(out, DirectConv("conv")(windows, kernels, (1, 1)), rtol=1e-5, atol=1e-5)
