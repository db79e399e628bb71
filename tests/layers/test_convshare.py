import itertools

import pytest
import torch
from torch import nn

from lightning_convshare.errors import GeometryError
from lightning_convshare.layers import ConvShareLinear, DirectConv


def naive_convshare(layer: ConvShareLinear, x: torch.Tensor) -> torch.Tensor:
    """Loop-by-loop reference: zero pad each token map, slide each kernel, flatten (kernel, row, col)."""
    g = layer.geometry
    B, N, _ = x.shape
    (h, w), (kh, kw), (sh, sw), (oh, ow) = g.map_shape, g.kernel, g.stride, g.out_shape
    top, bottom, left, right = g.pad
    out = torch.zeros(B, N, g.num_kernels, oh, ow, dtype=torch.float64)
    for bi, n in itertools.product(range(B), range(N)):
        pm = torch.zeros(h + top + bottom, w + left + right, dtype=torch.float64)
        pm[top:top + h, left:left + w] = x[bi, n].double().reshape(h, w)
        bank = layer.weight.double() if layer.shared else layer.weight[n].double()
        for k, i, j in itertools.product(range(g.num_kernels), range(oh), range(ow)):
            out[bi, n, k, i, j] = (pm[i * sh:i * sh + kh, j * sw:j * sw + kw] * bank[k]).sum()
    out = out.flatten(2)[..., : layer.out_features]
    return out + layer.bias.double() if layer.bias is not None else out


CASES = [
    dict(in_features=48, out_features=144, kernel_size="full", padding="valid"),
    dict(in_features=48, out_features=48, kernel_size=[3, 5], padding="valid", out_policy="crop"),
    dict(in_features=48, out_features=48, kernel_size=5, padding="valid", out_policy="crop"),
    dict(in_features=48, out_features=144, kernel_size=3, padding="same"),
    dict(in_features=48, out_features=48, kernel_size=4, padding="same"),
    dict(in_features=192, out_features=48, kernel_size=3, padding="same"),  # fc2-like: strided
    dict(in_features=64, out_features=64, kernel_size=5, padding="valid"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['in_features']}-{c['out_features']}-{c['kernel_size']}-{c['padding']}")
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("impl", DirectConv.IMPLS)
def test_matches_loop_reference(case, shared, impl):
    n_tokens = 5
    layer = ConvShareLinear(**case, shared=shared, num_tokens=n_tokens, backend=DirectConv(impl)).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, n_tokens, case["in_features"], dtype=torch.float64)
    out = layer(x)
    assert out.shape == (2, n_tokens, case["out_features"])
    torch.testing.assert_close(out, naive_convshare(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shared", [True, False])
def test_from_linear_whole_map_equals_linear(shared):
    linear = nn.Linear(48, 144)
    layer = ConvShareLinear.from_linear(linear, shared=shared, num_tokens=7)
    x = torch.randn(3, 7, 48)
    torch.testing.assert_close(layer(x), linear(x), rtol=0, atol=1e-6)


def test_from_linear_other_geometry_copies_bias_only():
    linear = nn.Linear(64, 192)
    layer = ConvShareLinear.from_linear(linear, kernel_size=3, padding="same")
    assert torch.equal(layer.bias, linear.bias)
    assert layer.weight.shape == (3, 3, 3)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(kernel_size="full"), (192, 8, 8)),
        (dict(kernel_size=5), (12, 5, 5)),
        (dict(kernel_size=3, padding="same"), (3, 3, 3)),
        (dict(kernel_size=3, padding="same", shared=False, num_tokens=17), (17, 3, 3, 3)),
    ],
)
def test_kernel_bank_shapes(kwargs, shape):
    layer = ConvShareLinear(64, 192, **kwargs)
    assert tuple(layer.weight.shape) == shape
    assert layer(torch.randn(2, 17, 64)).shape == (2, 17, 192)


def test_any_leading_dims_and_no_bias():
    layer = ConvShareLinear(64, 64, bias=False, kernel_size=3, padding="same")
    assert layer.bias is None and layer(torch.randn(2, 3, 17, 64)).shape == (2, 3, 17, 64)


def test_gradients_reach_kernels_and_bias():
    layer = ConvShareLinear(64, 256, kernel_size=3, padding="same")
    layer(torch.randn(2, 5, 64)).square().mean().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0


def test_error_names_layer_and_working_kernels():
    with pytest.raises(GeometryError, match=r"blocks\.1\.mlp\.fc2: .*16x16 token map.*\[9, 13, 15, 16\]"):
        ConvShareLinear(256, 64, kernel_size=3, padding="valid", name="blocks.1.mlp.fc2")


def test_non_shared_needs_token_count():
    with pytest.raises(ValueError, match="num_tokens"):
        ConvShareLinear(64, 64, shared=False)
    layer = ConvShareLinear(64, 64, shared=False, num_tokens=17)
    with pytest.raises(ValueError, match="built for 17 tokens but got 26"):
        layer(torch.randn(1, 26, 64))


def test_backend_seam_is_used():
    class Doubling(DirectConv):
        def forward(self, maps, weight, stride):
            return 2 * super().forward(maps, weight, stride)

    a = ConvShareLinear(64, 64, bias=False, kernel_size=3, padding="same")
    b = ConvShareLinear(64, 64, bias=False, kernel_size=3, padding="same", backend=Doubling())
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(b(x), 2 * a(x))
